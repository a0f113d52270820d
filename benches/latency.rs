//! End-to-end latency of the Matrix bridge on the local stack (Dovecot + Postfix, Synapse, Delta Chat, the daemon), paced, next to the floors it cannot beat measured in the same run, with the ratios #14 sets targets for.
//!
//! Run: `bash tests/servers/install.sh && cargo bench --bench latency` (release build of
//! everything), or a debug harness against the release daemon:
//! `cargo test --bench latency -- --bench` (it runs
//! `target/release/coi-bridge` when that exists; `--daemon PATH` picks another). Options:
//! `--samples N` (30), `--pace-ms MS` (1500), `--burst N` (100; 0 skips it), `--out FILE`
//! (also write the Markdown there). Under `cargo test` without `--bench` it only says how to
//! run it. It measures; it asserts nothing about time.
//!
//! **Why paced.** Every series sends one message, waits until it arrived, then sleeps so
//! sends start `--pace-ms` apart. Delta Chat core rate-limits the sends of a non-bot account
//! (about one a second once a short burst is used up), so a series sent back to back
//! measures Delta Chat's own send limiter, not the bridge: the 999 ms this harness once
//! reported for Delta Chat → Matrix was that limiter. On top of the pacing, both Delta Chat
//! senders here (Alice, who writes into the bridged group, and Bob, who writes to Alice
//! for the Delta Chat → Delta Chat floor) are bot accounts (`bot = 1`), which core does
//! not limit, so both sides of each comparison use the same kind of sender.
//!
//! Series, 1 sample = 1 message:
//! - floor: SMTP → IMAP IDLE: a plain SMTP delivery until an IDLEing IMAP client hears it;
//! - floor: Synapse send → /sync: Mara's send until her own long-polling /sync returns it;
//! - floor: Delta Chat → Delta Chat: Bob sends in his verified 1:1 chat with Alice (the
//!   same core process, the same servers) until Alice's core emits IncomingMsg;
//! - Delta Chat → Matrix: Alice's send into the bridged group until Mara's /sync has it;
//! - Matrix → Delta Chat: Mara's PUT /send until Alice's core emits IncomingMsg.
//!
//! Ratios: Matrix → Delta Chat p50 / Delta Chat → Delta Chat p50 (target ≤ 1.05), and
//! Delta Chat → Matrix / (IMAP floor + Synapse floor) at p50 and p90 (target ≤ 1.05).

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
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
use support::synapse::send_as;

const USAGE: &str = "usage: latency [--samples N] [--pace-ms MS] [--burst N] [--daemon PATH] [--out FILE]";

struct Opts {
    samples: usize,
    pace: Duration,
    burst: usize,
    daemon: Option<PathBuf>,
    out: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self { samples: 30, pace: Duration::from_millis(1500), burst: 100, daemon: None, out: None };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
            match a.as_str() {
                "--bench" => {}
                "--samples" => o.samples = num(val()?)? as usize,
                "--pace-ms" => o.pace = Duration::from_millis(num(val()?)?),
                "--burst" => o.burst = num(val()?)? as usize,
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
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("latency: an end-to-end harness; run it with `cargo bench --bench latency` (see its doc comment)");
        return;
    }
    let mut opts = Opts::parse(&args).unwrap_or_else(|e| {
        eprintln!("latency: {e}");
        std::process::exit(2)
    });
    let daemon = common::choose_daemon(opts.daemon.take());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(opts, daemon));
}

/// Sleeps out the rest of the pace of a sample that started at `t0`.
async fn pace(o: &Opts, t0: Instant) {
    tokio::time::sleep(o.pace.saturating_sub(t0.elapsed())).await;
}

/// One series' figures in milliseconds: p50, p90, min, max.
struct Figures {
    name: &'static str,
    n: usize,
    p50: f64,
    p90: f64,
    min: f64,
    max: f64,
}

fn figures(name: &'static str, mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    Figures {
        name,
        n: samples.len(),
        p50: ms(pick(&samples, 0.5)),
        p90: ms(pick(&samples, 0.9)),
        min: ms(samples[0]),
        max: ms(samples[samples.len() - 1]),
    }
}

impl Figures {
    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            self.name, self.n, self.p50, self.p90, self.min, self.max
        )
    }
}

/// Floor: a mail delivered by SMTP until an IDLEing IMAP client hears of it (Carol's
/// mailbox: no Delta Chat account reads it).
async fn imap_idle_floor(s: &Stack, o: &Opts) -> Vec<Duration> {
    let mut session = s.mail.imap("carol").await;
    session.select("INBOX").await.expect("select");
    let mut out = Vec::new();
    for i in 0..o.samples {
        let mut idle = session.idle();
        idle.init().await.expect("IDLE");
        let mail =
            support::chat_mail("dave@example.org", "carol@example.org", &format!("floor-{i}@localhost"), "floor");
        let t0 = Instant::now();
        {
            let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(30));
            let (woke, ()) = tokio::join!(wait, s.mail.deliver("dave@example.org", &["carol@example.org"], &mail));
            woke.expect("IDLE wakes");
        }
        out.push(t0.elapsed());
        session = idle.done().await.expect("DONE");
        pace(o, t0).await;
    }
    out
}

/// Floor: a Matrix user's send until their own long-polling /sync returns it.
async fn synapse_floor(s: &Stack, o: &Opts) -> Vec<Duration> {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("floor {i}");
        let txn = format!("floor-{i}");
        let t0 = Instant::now();
        let send = send_as(&s.hs, &s.mara, &s.room, "m.room.message", &txn, json!({"msgtype": "m.text", "body": body}));
        tokio::join!(send, sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &body));
        out.push(t0.elapsed());
        pace(o, t0).await;
    }
    out
}

/// Waits for Alice's next IncomingMsg after `mark` and checks it carries `body`.
async fn alice_receives(s: &Stack, mark: usize, body: &str) {
    let ev =
        s.dc.wait_event_since(mark, s.alice, "IncomingMsg", Duration::from_secs(60), |e| e["kind"] == "IncomingMsg")
            .await;
    let m = s.dc.call("get_message", json!([s.alice, ev["msgId"]])).await;
    assert_eq!(m["text"], json!(body), "the message measured is the one sent");
}

/// Floor: Bob (a bot account on the same core and servers) writes to Alice in their
/// verified 1:1 chat; Alice's core reports it.
async fn dc_to_dc(s: &Stack, o: &Opts, bob: u64, chat: &Value) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("dc to dc {i}");
        let mark = s.dc.mark();
        let t0 = Instant::now();
        s.dc.call("misc_send_text_message", json!([bob, chat, body])).await;
        alice_receives(s, mark, &body).await;
        out.push(t0.elapsed());
        pace(o, t0).await;
    }
    out
}

/// Delta Chat sends; the event reaches Mara's /sync through the bridge.
async fn coi_to_matrix(s: &Stack, o: &Opts) -> Vec<Duration> {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("to matrix {i}");
        let t0 = Instant::now();
        s.alice_says(&body).await;
        sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &body).await;
        out.push(t0.elapsed());
        pace(o, t0).await;
    }
    out
}

/// Mara sends; Delta Chat reports the incoming message.
async fn matrix_to_coi(s: &Stack, o: &Opts) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..o.samples {
        let body = format!("to coi {i}");
        let mark = s.dc.mark();
        let t0 = Instant::now();
        s.send(&format!("lat-{i}"), json!({"msgtype": "m.text", "body": body})).await;
        alice_receives(s, mark, &body).await;
        out.push(t0.elapsed());
        pace(o, t0).await;
    }
    out
}

/// A burst each way, back to back (bot sender): how long until all of it is through.
async fn throughput(s: &Stack, n: usize) -> (f64, f64) {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let t0 = Instant::now();
    for i in 0..n {
        s.alice_says(&format!("burst to matrix {i}")).await;
    }
    sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &format!("burst to matrix {}", n - 1)).await;
    let to_matrix = n as f64 / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for i in 0..n {
        s.send(&format!("burst-{i}"), json!({"msgtype": "m.text", "body": format!("burst to coi {i}")})).await;
    }
    support::eventually(Duration::from_secs(300), "the burst at Alice", || async {
        let got = s.dc.chat_texts(s.alice, &s.group).await.iter().filter(|t| t.starts_with("burst to coi ")).count();
        (got == n).then_some(())
    })
    .await;
    let to_coi = n as f64 / t0.elapsed().as_secs_f64();
    (to_matrix, to_coi)
}

async fn metrics(s: &Stack) -> common::Histograms {
    common::histograms(&s.daemon.http_get("/metrics").await.map(|(_, b)| b).unwrap_or_default())
}

async fn run(o: Opts, daemon: String) {
    let Some(s) = Stack::new().await else {
        eprintln!("latency: the test servers are not installed; run `bash tests/servers/install.sh`");
        std::process::exit(1);
    };
    s.dc.call("set_config", json!([s.alice, "bot", "1"])).await;
    let (bob, bob_chat) = bob(&s).await;
    let core =
        s.dc.call("get_system_info", json!([])).await["deltachat_core_version"].as_str().unwrap_or("?").to_owned();
    // Warm up: ghosts registered and joined, keys exchanged, connections open.
    s.alice_says("warm-up").await;
    s.body("warm-up").await;
    s.send("warm", json!({"msgtype": "m.text", "body": "warm-up from Matrix"})).await;
    s.at_alice("warm-up from Matrix").await;
    let mark = s.dc.mark();
    s.dc.call("misc_send_text_message", json!([bob, bob_chat, "warm-up from Bob"])).await;
    alice_receives(&s, mark, "warm-up from Bob").await;

    let imap = figures("floor: SMTP → IMAP IDLE wake-up", imap_idle_floor(&s, &o).await);
    let synapse = figures("floor: Synapse send → /sync", synapse_floor(&s, &o).await);
    let dcdc = figures("floor: Delta Chat → Delta Chat (send → IncomingMsg)", dc_to_dc(&s, &o, bob, &bob_chat).await);
    let before = metrics(&s).await;
    let to_matrix = figures("Delta Chat → Matrix (send → /sync)", coi_to_matrix(&s, &o).await);
    let to_matrix_hops = common::histogram_means(&before, &metrics(&s).await);
    let before = metrics(&s).await;
    let to_coi = figures("Matrix → Delta Chat (send → IncomingMsg)", matrix_to_coi(&s, &o).await);
    let to_coi_hops = common::histogram_means(&before, &metrics(&s).await);
    let burst = if o.burst > 0 { Some(throughput(&s, o.burst).await) } else { None };

    let mut md = String::new();
    let mut line = |l: &str| {
        println!("{l}");
        md.push_str(l);
        md.push('\n');
    };
    line(&common::facts(&core));
    line(&format!("- {daemon}"));
    line(&format!(
        "- paced: one message at a time, sends {} ms apart, {} per series; Delta Chat senders are bots \
         (Delta Chat core rate-limits a non-bot's sends to about one a second: back to back, a series \
         would measure that limiter, not the bridge)",
        o.pace.as_millis(),
        o.samples
    ));
    line("");
    line("| path | n | p50 ms | p90 ms | min ms | max ms |");
    line("|---|---|---|---|---|---|");
    for f in [&imap, &synapse, &dcdc, &to_matrix, &to_coi] {
        line(&f.row());
    }
    line("");
    line("| ratio | value | target |");
    line("|---|---|---|");
    line(&format!("| Matrix → Delta Chat p50 / Delta Chat → Delta Chat p50 | {:.2} | ≤ 1.05 |", to_coi.p50 / dcdc.p50));
    line(&format!(
        "| Delta Chat → Matrix p50 / (IMAP floor p50 + Synapse floor p50) | {:.2} | ≤ 1.05 |",
        to_matrix.p50 / (imap.p50 + synapse.p50)
    ));
    line(&format!(
        "| Delta Chat → Matrix p90 / (IMAP floor p90 + Synapse floor p90) | {:.2} | ≤ 1.05 |",
        to_matrix.p90 / (imap.p90 + synapse.p90)
    ));
    line("");
    line("The daemon's own histograms over each series (mean per observation, from /metrics):");
    for (dir, hops) in [("Delta Chat → Matrix", &to_matrix_hops), ("Matrix → Delta Chat", &to_coi_hops)] {
        line(&format!("- {dir}:"));
        for h in hops {
            line(&format!("  - {h}"));
        }
    }
    if let Some((m, c)) = burst {
        line("");
        line(&format!(
            "Throughput, a burst of {} back to back (bot sender): Delta Chat → Matrix {m:.1} msg/s, \
             Matrix → Delta Chat {c:.1} msg/s",
            o.burst
        ));
    }
    if let Some(out) = &o.out {
        std::fs::write(out, md).expect("write --out");
    }
}
