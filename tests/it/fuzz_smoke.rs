//! A bounded smoke of every fuzz target in each `cargo test`: the targets' bodies (fuzz/targets/) on their seed corpus (fuzz/seed.sh) and on deterministic mutations of it. Coverage-guided runs are `bash fuzz/run.sh` (README, "Fuzzing").
//!
//! A cold libFuzzer build of the fuzz crate takes close to an hour on these machines, so
//! CI runs the same bodies here instead, on the normal test build; a panic fails the test
//! and leaves the input in target/fuzz-smoke/.

#[path = "../../fuzz/targets/appservice_txn.rs"]
mod appservice_txn;
#[path = "../../fuzz/targets/autocrypt.rs"]
mod autocrypt;
#[path = "../../fuzz/targets/decrypt.rs"]
mod decrypt;
#[path = "../../fuzz/targets/invite_link.rs"]
mod invite_link;
#[path = "../../fuzz/targets/matrix_html.rs"]
mod matrix_html;
#[path = "../../fuzz/targets/parse.rs"]
mod parse;
#[path = "../../fuzz/targets/pgpmime.rs"]
mod pgpmime;
#[path = "../../fuzz/targets/telegram_update.rs"]
mod telegram_update;
#[path = "../../fuzz/targets/text.rs"]
mod text;
#[path = "../../fuzz/targets/vcard.rs"]
mod vcard;

use std::path::{Path, PathBuf};

/// A target: its name, its body, and how many mutated inputs it gets.
type Target = (&'static str, fn(&[u8]), usize);

/// Every target (decryption is slower, so it gets fewer inputs).
const TARGETS: &[Target] = &[
    ("parse", parse::run, 5000),
    ("text", text::run, 5000),
    ("matrix_html", matrix_html::run, 8000),
    ("decrypt", decrypt::run, 1500),
    ("pgpmime", pgpmime::run, 5000),
    ("autocrypt", autocrypt::run, 8000),
    ("invite_link", invite_link::run, 8000),
    ("vcard", vcard::run, 8000),
    ("appservice_txn", appservice_txn::run, 8000),
    ("telegram_update", telegram_update::run, 8000),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One mutation of `seed`, with bytes from `other` for splices: what a fuzzer's first
/// minutes try (bit flips, interesting bytes, cuts, repeats, splices, boundary values).
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 => {
                let special = [b'&', b'<', b'>', b'=', b'\\', b'"', b'\n', b'\r', 0, 0xff, 0xc3, b'%', b';', b'{'];
                d.insert(at, special[rng.below(special.len())]);
            }
            2 => d.truncate(at),
            3 if at < d.len() => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                let chunk = d[at..end].to_vec();
                for _ in 0..rng.below(200) {
                    d.splice(at..at, chunk.iter().copied());
                }
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                d.splice(at..at, other[from..end].iter().copied());
            }
            5 if at < d.len() => {
                let end = (at + rng.below(32)).min(d.len());
                d.drain(at..end);
            }
            _ => {
                d.splice(at..at, "é🚀\u{202e}&#x10FFFF;&#99999999999;".bytes());
            }
        }
    }
    d
}

fn corpus(dir: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join(target)).expect("seeded").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).expect("seed")).collect()
}

/// Runs `run` on `input`; a panic is reported with the input kept for `fuzz/run.sh`.
fn exercise(target: &str, run: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| run(input)).is_err() {
        let dir = repo().join("target/fuzz-smoke");
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join(format!("{target}-crash.bin"));
        std::fs::write(&file, input).expect("keep the input");
        panic!("fuzz target {target} panicked; input kept in {}", file.display());
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    coi_bridge::init_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = std::process::Command::new("bash")
        .arg(repo().join("fuzz/seed.sh"))
        .env("FUZZ_CORPUS", dir.path())
        .output()
        .expect("run fuzz/seed.sh");
    assert!(seeded.status.success(), "seed.sh: {}", String::from_utf8_lossy(&seeded.stderr));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for &(target, run, mutations) in TARGETS {
        let seeds = corpus(dir.path(), target);
        assert!(!seeds.is_empty(), "{target} has seeds");
        for s in &seeds {
            exercise(target, run, s);
        }
        for _ in 0..mutations {
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            exercise(target, run, &mutate(&mut rng, seed, other));
        }
    }
}
