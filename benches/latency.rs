//! End-to-end latency and throughput of the Matrix bridge on the local stack (Dovecot + Postfix, Synapse, Delta Chat, the daemon), next to the floors it cannot beat: raw IMAP IDLE delivery and raw Synapse send→sync.
//!
//! Run: `bash tests/servers/install.sh && cargo bench --bench latency` (writes nothing; copy
//! the table into docs/BENCHMARKS.md). Under `cargo test` it only says how to run it.
//! It measures; it asserts nothing about time.

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::bridged::Stack;
use support::synapse::{Synapse, seg, send_as};

/// Samples per latency series (the issue asks for at least 50).
const SAMPLES: usize = 50;
/// Messages per throughput burst.
const BURST: usize = 100;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency: an end-to-end harness; run it with `cargo bench --bench latency`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

/// p50, p90, min and max of a series, in milliseconds.
fn summary(name: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    )
}

/// Long-polls `/sync` as `token` from `since` until an event in `room` has `body`.
async fn sync_until_body(hs: &Synapse, token: &str, room: &str, since: &mut String, body: &str) {
    let http = reqwest::Client::new();
    loop {
        let v: Value = http
            .get(format!("{}/_matrix/client/v3/sync?timeout=30000&since={}", hs.url(), seg(since)))
            .bearer_auth(token)
            .send()
            .await
            .expect("sync")
            .json()
            .await
            .expect("json");
        *since = v["next_batch"].as_str().expect("next_batch").to_owned();
        let events = v["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["content"]["body"] == body) {
            return;
        }
    }
}

async fn initial_since(hs: &Synapse, token: &str) -> String {
    let v: Value = reqwest::Client::new()
        .get(support::synapse::fresh_sync_url(hs))
        .bearer_auth(token)
        .send()
        .await
        .expect("sync")
        .json()
        .await
        .expect("json");
    v["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Floor: a mail delivered by SMTP until an IDLEing IMAP client hears of it.
async fn imap_idle_floor(s: &Stack) -> Vec<Duration> {
    let mut session = s.mail.imap("bob").await;
    session.select("INBOX").await.expect("select");
    let mut out = Vec::new();
    for i in 0..SAMPLES {
        let mut idle = session.idle();
        idle.init().await.expect("IDLE");
        let mail = support::chat_mail("carol@example.org", "bob@example.org", &format!("floor-{i}@localhost"), "floor");
        let t0 = Instant::now();
        {
            let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(30));
            let (woke, ()) = tokio::join!(wait, s.mail.deliver("carol@example.org", &["bob@example.org"], &mail));
            woke.expect("IDLE wakes");
        }
        out.push(t0.elapsed());
        session = idle.done().await.expect("DONE");
    }
    out
}

/// Floor: a Matrix user's send until their own long-polling /sync returns it.
async fn synapse_floor(s: &Stack) -> Vec<Duration> {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let mut out = Vec::new();
    for i in 0..SAMPLES {
        let body = format!("floor {i}");
        let txn = format!("floor-{i}");
        let t0 = Instant::now();
        let send = send_as(&s.hs, &s.mara, &s.room, "m.room.message", &txn, json!({"msgtype": "m.text", "body": body}));
        tokio::join!(send, sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &body));
        out.push(t0.elapsed());
    }
    out
}

/// Delta Chat sends; the event reaches Mara's /sync through the bridge.
async fn coi_to_matrix(s: &Stack) -> Vec<Duration> {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let mut out = Vec::new();
    for i in 0..SAMPLES {
        let body = format!("to matrix {i}");
        let t0 = Instant::now();
        s.alice_says(&body).await;
        sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &body).await;
        out.push(t0.elapsed());
    }
    out
}

/// Mara sends; Delta Chat reports the incoming message.
async fn matrix_to_coi(s: &Stack) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..SAMPLES {
        let body = format!("to coi {i}");
        let mark = s.dc.mark();
        let t0 = Instant::now();
        s.send(&format!("lat-{i}"), json!({"msgtype": "m.text", "body": body})).await;
        let ev = s
            .dc
            .wait_event_since(mark, s.alice, "IncomingMsg", Duration::from_secs(60), |e| e["kind"] == "IncomingMsg")
            .await;
        out.push(t0.elapsed());
        let m = s.dc.call("get_message", json!([s.alice, ev["msgId"]])).await;
        assert_eq!(m["text"], json!(body), "the message measured is the one sent");
    }
    out
}

/// A burst each way: how long until all of it is through, in messages per second.
async fn throughput(s: &Stack) -> (f64, f64) {
    let mut since = initial_since(&s.hs, &s.mara).await;
    let t0 = Instant::now();
    for i in 0..BURST {
        s.alice_says(&format!("burst to matrix {i}")).await;
    }
    sync_until_body(&s.hs, &s.mara, &s.room, &mut since, &format!("burst to matrix {}", BURST - 1)).await;
    let to_matrix = BURST as f64 / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for i in 0..BURST {
        s.send(&format!("burst-{i}"), json!({"msgtype": "m.text", "body": format!("burst to coi {i}")})).await;
    }
    support::eventually(Duration::from_secs(300), "the burst at Alice", || async {
        let n = s.dc.chat_texts(s.alice, &s.group).await.iter().filter(|t| t.starts_with("burst to coi ")).count();
        (n == BURST).then_some(())
    })
    .await;
    let to_coi = BURST as f64 / t0.elapsed().as_secs_f64();
    (to_matrix, to_coi)
}

/// The bridge's own mean time for `target` over a series: outbox queueing to the target
/// accepting it, from the daemon's `delivery_latency_seconds` histogram (sum and count).
async fn latency_metric(s: &Stack, target: &str) -> (f64, f64) {
    let sum = s.daemon.metric(&format!("coi_bridge_delivery_latency_seconds_sum{{target=\"{target}\"}}")).await;
    let count = s.daemon.metric(&format!("coi_bridge_delivery_latency_seconds_count{{target=\"{target}\"}}")).await;
    (sum.unwrap_or(0.0), count.unwrap_or(0.0))
}

fn mean_ms(before: (f64, f64), after: (f64, f64)) -> String {
    let n = after.1 - before.1;
    if n <= 0.0 { "-".into() } else { format!("{:.0} ms over {n}", (after.0 - before.0) / n * 1000.0) }
}

async fn run() {
    let Some(s) = Stack::new().await else {
        eprintln!("latency: the test servers are not installed; run `bash tests/servers/install.sh`");
        std::process::exit(1);
    };
    // Warm up: ghosts registered and joined, keys exchanged, connections open.
    s.alice_says("warm-up").await;
    s.body("warm-up").await;
    s.send("warm", json!({"msgtype": "m.text", "body": "warm-up from Matrix"})).await;
    s.at_alice("warm-up from Matrix").await;

    let mut rows =
        vec!["| path | n | p50 ms | p90 ms | min ms | max ms |".to_owned(), "|---|---|---|---|---|---|".to_owned()];
    rows.push(summary("floor: SMTP → IMAP IDLE wake-up", &mut imap_idle_floor(&s).await));
    rows.push(summary("floor: Synapse send → /sync", &mut synapse_floor(&s).await));
    let before = latency_metric(&s, "matrix").await;
    rows.push(summary("Delta Chat → Matrix (send → /sync)", &mut coi_to_matrix(&s).await));
    let to_matrix_share = mean_ms(before, latency_metric(&s, "matrix").await);
    let before = latency_metric(&s, "smtp").await;
    rows.push(summary("Matrix → Delta Chat (send → IncomingMsg)", &mut matrix_to_coi(&s).await));
    let to_coi_share = mean_ms(before, latency_metric(&s, "smtp").await);
    let (to_matrix, to_coi) = throughput(&s).await;
    println!("{}", rows.join("\n"));
    println!(
        "\nthe bridge's own share (outbox queued → target accepted, from /metrics): to Matrix {to_matrix_share}, \
         to SMTP {to_coi_share}"
    );
    println!(
        "\nthroughput, a burst of {BURST}: Delta Chat → Matrix {to_matrix:.1} msg/s, Matrix → Delta Chat {to_coi:.1} msg/s"
    );
}
