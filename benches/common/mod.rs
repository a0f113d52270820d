//! What the end-to-end harnesses (latency, catchup) share: which daemon binary runs, the run's facts (date, commit, versions, machine), percentiles, /proc readings and /metrics histograms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The environment variable tests/support's `Daemon::bin()` honours.
pub const DAEMON_ENV: &str = "COI_TEST_DAEMON";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Picks the daemon binary: `--daemon PATH` if given, else `target/release/coi-bridge` if
/// it exists, else the build cargo made for this harness. Exports the choice for
/// tests/support and returns a line saying what runs (and whether it may be stale).
///
/// Call it before any thread starts (it sets an environment variable).
pub fn choose_daemon(explicit: Option<PathBuf>) -> String {
    let release = repo().join("target/release/coi-bridge");
    let (path, kind) = match explicit {
        Some(p) => (p, "given with --daemon"),
        None if release.is_file() => (release, "release build"),
        None => (PathBuf::from(env!("CARGO_BIN_EXE_coi-bridge")), "the build cargo made for this harness"),
    };
    // SAFETY: called from main before the runtime or any other thread exists.
    unsafe { std::env::set_var(DAEMON_ENV, &path) };
    let debug = path.to_string_lossy().contains("/debug/");
    let built = mtime(&path);
    let newest_src = newest_under(&repo().join("src")).max(newest_under(&repo().join("bridges")));
    let stale = match (built, newest_src) {
        (Some(b), Some(s)) if s > b => " — OLDER than the newest source file: rebuild it to measure this tree",
        _ => "",
    };
    format!(
        "daemon: {} ({kind}{}), built {}{stale}",
        path.display(),
        if debug { ", DEBUG: slower than release" } else { "" },
        built.map(utc).unwrap_or_else(|| "?".into())
    )
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn newest_under(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            if p.ends_with("target") { None } else { newest_under(&p) }
        } else if p.extension().is_some_and(|x| x == "rs") {
            mtime(&p)
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir("/")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Date, commit, versions of the servers and of Delta Chat core, machine: one Markdown
/// list for the results.
pub fn facts(dc_core: &str) -> String {
    let now = utc(SystemTime::now());
    let commit = output("git", &["-C", &repo().display().to_string(), "rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["-C", &repo().display().to_string(), "status", "--porcelain", "--untracked-files=no"])
        .is_empty();
    let dovecot = output("dovecot", &["--version"]);
    let postfix = output("postconf", &["-d", "-h", "mail_version"]);
    let py = repo().join("target/synapse-venv/bin/python");
    let synapse = output(&py.display().to_string(), &["-c", "import synapse; print(synapse.__version__)"]);
    let synapse = synapse.split_whitespace().next().unwrap_or("?").to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/debian_version").map(|v| format!("Debian {}", v.trim())).unwrap_or_default();
    format!(
        "- date: {now}\n- commit: {commit}{}\n- versions: Dovecot {dovecot}, Postfix {postfix}, Synapse {synapse}, \
         deltachat-rpc-server (core) {dc_core}\n- machine: {cores} cores ({cpu}), {:.1} GB RAM, {os}, loopback only",
        if dirty { " (with uncommitted changes in the tree)" } else { "" },
        mem as f64 / 1_048_576.0
    )
}

/// The value at quantile `q` (nearest rank) of sorted `samples`.
pub fn pick(samples: &[Duration], q: f64) -> Duration {
    samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// --- /proc -----------------------------------------------------------------------------

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}
const SC_CLK_TCK: i32 = 2;

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = s.rsplit_once(") ") else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let tck = unsafe { sysconf(SC_CLK_TCK) };
    (num(11) + num(12)) as f64 / if tck > 0 { tck as f64 } else { 100.0 }
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::to_owned))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0) as f64
        / 1024.0
}

/// One mapping of a process, as /proc/PID/smaps lists it.
pub struct Mapping {
    /// Its size in bytes.
    pub size: u64,
    /// `r-xp` and the like.
    pub perms: String,
    /// The file behind it; `None` for anonymous memory (`[heap]`, `[stack]` included).
    pub file: Option<String>,
    /// Its resident part, kB.
    pub rss_kb: u64,
}

/// The mappings of process `pid` (empty once it is gone).
pub fn mappings(pid: u32) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = words.next().unwrap_or_default().to_owned();
            let file = words.nth(3).filter(|n| !n.starts_with('[')).map(str::to_owned);
            out.push(Mapping { size: b - a, perms, file, rss_kb: 0 });
        } else if first == "Rss:"
            && let Some(m) = out.last_mut()
        {
            m.rss_kb = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    out
}

/// The RSS (kB) of a process by kind of mapping: thread stacks (anonymous 2 MiB mappings,
/// Rust's default), the rest of anonymous memory (malloc's heap and arenas), and files.
pub fn rss_split(pid: u32) -> (u64, u64, u64) {
    let (mut stacks, mut anon, mut file) = (0, 0, 0);
    for m in mappings(pid) {
        match (m.file.is_some(), m.size == 2 << 20) {
            (true, _) => file += m.rss_kb,
            (false, true) => stacks += m.rss_kb,
            (false, false) => anon += m.rss_kb,
        }
    }
    (stacks, anon, file)
}

// --- /metrics ------------------------------------------------------------------------------

/// Every `*_seconds_sum` and `*_seconds_count` sample of a /metrics page, by its full
/// name with labels.
pub type Histograms = BTreeMap<String, f64>;

pub fn histograms(page: &str) -> Histograms {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let base = name.split('{').next()?;
            (base.ends_with("_seconds_sum") || base.ends_with("_seconds_count"))
                .then(|| Some((name.to_owned(), v.parse().ok()?)))?
        })
        .collect()
}

/// The mean of every histogram that moved between two pages: "name{labels}: X ms over N".
pub fn histogram_means(before: &Histograms, after: &Histograms) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sum) in after {
        let Some(count_name) = name.split_once("_sum").map(|(a, b)| format!("{a}_count{b}")) else { continue };
        if !name.contains("_seconds_sum") {
            continue;
        }
        let n = after.get(&count_name).copied().unwrap_or(0.0) - before.get(&count_name).copied().unwrap_or(0.0);
        if n > 0.0 {
            let s = sum - before.get(name).copied().unwrap_or(0.0);
            out.push(format!("{}: {:.1} ms mean over {n}", name.replacen("_sum", "", 1), s / n * 1000.0));
        }
    }
    out
}

/// Busy CPU seconds of the whole machine so far (every core; /proc/stat's first line:
/// user, nice, system, irq, softirq, steal).
pub fn machine_busy_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let f: Vec<u64> =
        s.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf only reads a constant.
    let tck = unsafe { sysconf(SC_CLK_TCK) };
    busy as f64 / if tck > 0 { tck as f64 } else { 100.0 }
}

/// CPU seconds so far by kind of process (the daemon, Synapse, Postfix, Dovecot, Delta
/// Chat core, this harness): utime + stime of the live processes plus what they reaped
/// from children that ended (cutime + cstime), so short-lived server workers count too.
/// Only this harness's own stack counts: its descendants, and processes whose command
/// line names `own_dir` (Synapse, which detaches); other tests on the machine do not.
pub fn cpu_by_kind(own_dir: &str) -> BTreeMap<&'static str, f64> {
    // SAFETY: sysconf only reads a constant.
    let tck = unsafe { sysconf(SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let me = std::process::id().to_string();
    let ppid = |pid: &str| -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(s.rsplit_once(") ")?.1.split_whitespace().nth(1)?.to_owned())
    };
    let mine = |pid: &str| {
        let mut p = pid.to_owned();
        for _ in 0..16 {
            if p == me {
                return true;
            }
            match ppid(&p) {
                Some(up) if up != "0" && up != p => p = up,
                _ => return false,
            }
        }
        false
    };
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{name}/cmdline")).map(|c| String::from_utf8_lossy(&c).into_owned());
        let Ok(cmd) = cmd else { continue };
        if !(mine(&name) || (!own_dir.is_empty() && cmd.contains(own_dir))) {
            continue;
        }
        let kind = if name == me {
            "harness"
        } else if cmd.contains("coi-bridge") {
            "daemon"
        } else if cmd.contains("synapse") {
            "Synapse"
        } else if cmd.contains("postfix") || cmd.starts_with("smtpd") || cmd.starts_with("cleanup") {
            "Postfix"
        } else if cmd.contains("dovecot") {
            "Dovecot"
        } else if cmd.contains("deltachat-rpc-server") {
            "Delta Chat core"
        } else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{name}/stat")) else { continue };
        let Some((_, rest)) = s.rsplit_once(") ") else { continue };
        let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        let ticks: u64 = (11..=14).filter_map(|i| f.get(i)).sum();
        *out.entry(kind).or_insert(0.0) += ticks as f64 / tck;
    }
    out
}

/// "kind X s" for each kind whose CPU time grew, most first, and the machine's share.
pub fn cpu_split(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    busy: f64,
    wall: f64,
) -> String {
    let mut d: Vec<(&str, f64)> = after.iter().map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0))).collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let parts: Vec<String> = d.iter().filter(|(_, v)| *v > 0.0).map(|(k, v)| format!("{k} {v:.1} s")).collect();
    format!(
        "machine busy {busy:.1} of {:.1} CPU-s ({:.0} %): {}",
        wall * cores,
        busy / (wall * cores) * 100.0,
        parts.join(", ")
    )
}

/// Long-polls `/sync` as `token` from `since` until an event in `room` has `body`.
pub async fn sync_until_body(
    hs: &crate::support::synapse::Synapse,
    token: &str,
    room: &str,
    since: &mut String,
    body: &str,
) {
    use crate::support::synapse::{get_json, seg};
    loop {
        let url = format!("{}/_matrix/client/v3/sync?timeout=30000&since={}", hs.url(), seg(since));
        let v = get_json(&url, token, "sync").await;
        *since = v["next_batch"].as_str().expect("next_batch").to_owned();
        let events = v["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["content"]["body"] == body) {
            return;
        }
    }
}

/// The `next_batch` of a fresh `/sync` as `token`: where a series starts listening.
pub async fn initial_since(hs: &crate::support::synapse::Synapse, token: &str) -> String {
    let v = crate::support::synapse::get_json(&crate::support::synapse::fresh_sync_url(hs), token, "sync").await;
    v["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Bob: a second account on the same core, a bot, in a verified 1:1 chat with Alice
/// (he joins her contact link); returns his account and his chat with her.
pub async fn bob(s: &crate::support::bridged::Stack) -> (u64, serde_json::Value) {
    use serde_json::json;
    let bob = s.dc.account(&s.mail, "bob", "Bob").await;
    s.dc.call("set_config", json!([bob, "bot", "1"])).await;
    let qr = s.dc.call("get_chat_securejoin_qr_code", json!([s.alice, null])).await;
    let mark = s.dc.mark();
    let chat = s.dc.call("secure_join", json!([bob, qr])).await;
    s.dc.wait_event_since(mark, bob, "Bob joined Alice's contact", crate::support::bridged::WAIT, |e| {
        e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
    })
    .await;
    (bob, chat)
}
