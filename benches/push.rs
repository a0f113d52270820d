//! Delta Chat → Matrix with and without Dovecot's push events (#15), in one run on the local stack (Dovecot + Postfix, Synapse, Delta Chat, the daemon), next to Delta Chat → Delta Chat on the same servers.
//!
//! Run: `bash tests/servers/install.sh && cargo test --bench push -- --bench` (a debug
//! harness; it runs `target/release/coi-bridge` when that exists, `--daemon PATH` picks
//! another), or `cargo bench --bench push`. Options: `--samples N` (30), `--pace-ms MS`
//! (1500), `--out FILE` (also write the Markdown there). Under `cargo test` without
//! `--bench` it only says how to run it. It measures; it asserts nothing about time, only
//! that push was used when on and not when off.
//!
//! Series, 1 sample = 1 message, paced (one at a time, sends `--pace-ms` apart; both Delta
//! Chat senders are bot accounts, which core does not rate-limit):
//! - Delta Chat → Delta Chat: Bob writes to Alice in their verified 1:1 chat until Alice's
//!   core emits IncomingMsg (Delta Chat's own delivery: IMAP IDLE, 0.5 s batching);
//! - Delta Chat → Matrix, push off: Alice's send into the bridged group until Mara's /sync
//!   has it; the daemon hears of the mail through IDLE;
//! - Delta Chat → Matrix, push on: the same after Dovecot's push_notification (OX driver)
//!   was pointed at the daemon and `[imap] push = true` set.

// It uses a part of the tests' support.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{bob, initial_since, ms, pick, sync_until_body};
use serde_json::{Value, json};
use support::bridged::Stack;

const USAGE: &str = "usage: push [--samples N] [--pace-ms MS] [--daemon PATH] [--out FILE]";
const SECRET: &str = "push-bench-secret-0123456789";

struct Opts {
    samples: usize,
    pace: Duration,
    daemon: Option<PathBuf>,
    out: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts { samples: 30, pace: Duration::from_millis(1500), daemon: None, out: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--bench" => {}
            "--samples" => o.samples = num(val()?)? as usize,
            "--pace-ms" => o.pace = Duration::from_millis(num(val()?)?),
            "--daemon" => o.daemon = Some(PathBuf::from(val()?)),
            "--out" => o.out = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if o.samples == 0 {
        return Err(format!("--samples must be at least 1\n{USAGE}"));
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("push: an end-to-end harness; run it with `cargo test --bench push -- --bench` (see its doc comment)");
        return;
    }
    let mut opts = parse(&args).unwrap_or_else(|e| {
        eprintln!("push: {e}");
        std::process::exit(2)
    });
    let daemon = common::choose_daemon(opts.daemon.take());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(opts, daemon));
}

/// p50, p90, min, max in ms.
fn row(name: &str, mut samples: Vec<Duration>) -> (String, f64) {
    samples.sort();
    let p50 = ms(pick(&samples, 0.5));
    let line = format!(
        "| {name} | {} | {p50:.0} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        ms(pick(&samples, 0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
    (line, p50)
}

/// Delta Chat sends; the event reaches Mara's /sync through the bridge.
async fn coi_to_matrix(s: &Stack, o: &Opts, tag: &str) -> Vec<Duration> {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("to matrix {tag} {i}");
        let t0 = Instant::now();
        s.alice_says(&body).await;
        sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &body).await;
        out.push(t0.elapsed());
        tokio::time::sleep(o.pace.saturating_sub(t0.elapsed())).await;
    }
    out
}

/// Bob (a bot on the same core) writes to Alice in their verified 1:1 chat.
async fn dc_to_dc(s: &Stack, o: &Opts, bob: u64, chat: &Value) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("dc to dc {i}");
        let mark = s.dc.mark();
        let t0 = Instant::now();
        s.dc.call("misc_send_text_message", json!([bob, chat, body])).await;
        alice_receives(s, mark, &body).await;
        out.push(t0.elapsed());
        tokio::time::sleep(o.pace.saturating_sub(t0.elapsed())).await;
    }
    out
}

async fn alice_receives(s: &Stack, mark: usize, body: &str) {
    let ev =
        s.dc.wait_event_since(mark, s.alice, "IncomingMsg", Duration::from_secs(60), |e| e["kind"] == "IncomingMsg")
            .await;
    let m = s.dc.call("get_message", json!([s.alice, ev["msgId"]])).await;
    assert_eq!(m["text"], json!(body), "the message measured is the one sent");
}

/// Points Dovecot's push events for the bridge at the daemon, restarts Dovecot, and
/// restarts the daemon with `[imap] push = true`.
async fn push_on(s: &mut Stack) {
    use std::os::unix::fs::PermissionsExt as _;
    let url = format!("http://coi:{SECRET}@127.0.0.1:{}/push/dovecot", s.as_port);
    let out = std::process::Command::new(s.mail.dir.join("push.sh"))
        .args([url.as_str(), support::BRIDGE])
        .output()
        .expect("push.sh");
    assert!(out.status.success(), "push.sh: {}", String::from_utf8_lossy(&out.stderr));
    s.daemon.stop();
    s.mail.stop_dovecot();
    s.mail.start_dovecot();
    let file = s.state.path().join("push-secret");
    std::fs::write(&file, SECRET).expect("secret");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = std::fs::read_to_string(&s.daemon.config).expect("config").replacen(
        "[imap]\n",
        &format!("[imap]\npush = true\npush_secret_file = \"{}\"\n", file.display()),
        1,
    );
    std::fs::write(&s.daemon.config, text).expect("config");
    s.daemon.restart();
    s.daemon.wait_ready().await;
}

async fn metric(s: &Stack, sample: &str) -> f64 {
    s.daemon.metric(sample).await.unwrap_or(0.0)
}

async fn warm_up(s: &Stack, tag: &str) {
    let body = format!("warm-up {tag}");
    s.alice_says(&body).await;
    s.body(&body).await;
}

async fn run(o: Opts, daemon: String) {
    let Some(mut s) = Stack::new().await else {
        eprintln!("push: the test servers are not installed; run `bash tests/servers/install.sh`");
        std::process::exit(1);
    };
    s.dc.call("set_config", json!([s.alice, "bot", "1"])).await;
    let (bob, bob_chat) = bob(&s).await;
    let core =
        s.dc.call("get_system_info", json!([])).await["deltachat_core_version"].as_str().unwrap_or("?").to_owned();
    warm_up(&s, "idle").await;
    let mark = s.dc.mark();
    s.dc.call("misc_send_text_message", json!([bob, bob_chat, "warm-up from Bob"])).await;
    alice_receives(&s, mark, "warm-up from Bob").await;

    let dcdc = dc_to_dc(&s, &o, bob, &bob_chat).await;
    let off = coi_to_matrix(&s, &o, "idle").await;
    let fetches_off = metric(&s, "coi_bridge_imap_push_fetches_total").await;
    push_on(&mut s).await;
    warm_up(&s, "push").await;
    let on = coi_to_matrix(&s, &o, "push").await;
    let accepted = metric(&s, "coi_bridge_push_events_total{result=\"accepted\"}").await;
    let fetches = metric(&s, "coi_bridge_imap_push_fetches_total").await;
    assert_eq!(fetches_off, 0.0, "push off: no fetch was woken by push");
    assert!(accepted >= o.samples as f64 && fetches >= 1.0, "push on was used: {accepted} events, {fetches} fetches");

    let mut md = String::new();
    let mut line = |l: &str| {
        println!("{l}");
        md.push_str(l);
        md.push('\n');
    };
    line(&common::facts(&core));
    line(&format!("- {daemon}"));
    line(&format!(
        "- paced: sends {} ms apart, {} per series; Delta Chat senders are bots",
        o.pace.as_millis(),
        o.samples
    ));
    line("");
    line("| path | n | p50 ms | p90 ms | min ms | max ms |");
    line("|---|---|---|---|---|---|");
    let (dcdc_row, dcdc_p50) = row("Delta Chat → Delta Chat (send → IncomingMsg)", dcdc);
    let (off_row, off_p50) = row("Delta Chat → Matrix, push off: IDLE (send → /sync)", off);
    let (on_row, on_p50) = row("Delta Chat → Matrix, push on (send → /sync)", on);
    for r in [&dcdc_row, &off_row, &on_row] {
        line(r);
    }
    line("");
    line(&format!(
        "push on: p50 {on_p50:.0} ms (target ≤ 150), {:.2} × Delta Chat → Delta Chat, {:.2} × push off; \
         {accepted} events accepted, {fetches} fetches woken by push",
        on_p50 / dcdc_p50,
        on_p50 / off_p50
    ));
    if let Some(out) = &o.out {
        std::fs::write(out, md).expect("write --out");
    }
}
