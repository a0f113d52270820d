//! Operating the daemon: /metrics moving with traffic, /ready per part through outages, systemd's notify protocol, and an online backup while mail flows; real Dovecot + Postfix, Synapse and Delta Chat.

use crate::support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use serde_json::{Value, json};
use support::bridged::Stack;
use support::{Daemon, Link, MailServer, eventually};

const WAIT: Duration = Duration::from_secs(90);

/// The value of the sample `name{labels}` in a scrape (0 when absent).
fn sample(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(d: &Daemon) -> String {
    let (status, body) = d.http_get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

async fn ready(d: &Daemon) -> (u16, Value) {
    let (status, body) = d.http_get("/ready").await.expect("GET /ready");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/ready is not JSON ({e}): {body}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_the_dashboard_uses_real_metrics() {
    let Some(s) = Stack::new().await else { return };
    let before = scrape(&s.daemon).await;
    for i in 0..3 {
        s.alice_says(&format!("from COI {i}")).await;
        s.send(&format!("m{i}"), json!({"msgtype": "m.text", "body": format!("from Matrix {i}")})).await;
    }
    for i in 0..3 {
        s.body(&format!("from COI {i}")).await;
        s.at_alice(&format!("from Matrix {i}")).await;
    }
    // The Matrix side's deliveries are counted once the bridge recorded them.
    let after = eventually(WAIT, "the counters to move", || async {
        let now = scrape(&s.daemon).await;
        let moved = |k: &str, n: f64| sample(&now, k) >= sample(&before, k) + n;
        (moved("coi_bridge_messages_total{bridge=\"matrix\",direction=\"out\"}", 3.0)
            && moved("coi_bridge_messages_total{bridge=\"matrix\",direction=\"in\"}", 3.0)
            && moved("coi_bridge_messages_total{bridge=\"coi\",direction=\"in\"}", 3.0)
            && moved("coi_bridge_messages_total{bridge=\"coi\",direction=\"out\"}", 3.0)
            && moved("coi_bridge_delivery_latency_seconds_count{target=\"matrix\"}", 3.0)
            && moved("coi_bridge_delivery_latency_seconds_count{target=\"smtp\"}", 3.0))
        .then_some(now)
    })
    .await;
    // Exactly one count per message on the Matrix side, both ways (nothing else happened
    // there since the first scrape).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = scrape(&s.daemon).await;
    for key in [
        "coi_bridge_messages_total{bridge=\"matrix\",direction=\"out\"}",
        "coi_bridge_messages_total{bridge=\"matrix\",direction=\"in\"}",
    ] {
        assert_eq!(sample(&settled, key) - sample(&before, key), 3.0, "{key}");
    }
    // The health probe the container image uses answers 0 (from the config, and by URL).
    let probe = std::process::Command::new(Daemon::bin())
        .args(["health", "--config"])
        .arg(&s.daemon.config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", support::BRIDGE_PASSWORD)
        .output()
        .expect("run health");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let url = format!("http://127.0.0.1:{}/health", s.daemon.http_port);
    let probe = std::process::Command::new(Daemon::bin()).args(["health", "--url", &url]).output().expect("run");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let probe = std::process::Command::new(Daemon::bin())
        .args(["health", "--url", &format!("http://127.0.0.1:{}/nowhere", s.daemon.http_port)])
        .output()
        .expect("run");
    assert_eq!(probe.status.code(), Some(69), "a 404 is unhealthy");

    // The histogram is a real one: +Inf holds every observation, the sum is positive.
    assert_eq!(
        sample(&after, "coi_bridge_delivery_latency_seconds_bucket{target=\"matrix\",le=\"+Inf\"}"),
        sample(&after, "coi_bridge_delivery_latency_seconds_count{target=\"matrix\"}")
    );
    assert!(sample(&after, "coi_bridge_delivery_latency_seconds_sum{target=\"matrix\"}") > 0.0, "{after}");
    assert_eq!(sample(&after, "coi_bridge_bridge_state{bridge=\"matrix\",state=\"connected\"}"), 1.0, "{after}");
    assert_eq!(sample(&after, "coi_bridge_bridge_state{bridge=\"matrix\",state=\"starting\"}"), 0.0, "{after}");
    assert_eq!(sample(&after, "coi_bridge_imap_connected"), 1.0);
    for line in [
        "coi_bridge_outbox_depth{target=\"smtp\"}",
        "coi_bridge_outbox_oldest_age_seconds{target=\"matrix\"}",
        "coi_bridge_decrypt_failures_total",
        "coi_bridge_signature_failures_total{reason=\"unsigned\"}",
        "coi_bridge_build_info{version=",
    ] {
        assert!(after.lines().any(|l| l.starts_with(line)), "{line} missing from:\n{after}");
    }

    // Every metric the Grafana dashboard queries is one the daemon exports.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(repo.join("deploy/grafana/coi-bridge.json")).expect("dashboard");
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let source = std::fs::read_to_string(repo.join("src/metrics.rs")).expect("metrics source");
    let mut used = BTreeSet::new();
    for (i, _) in dashboard.match_indices("coi_bridge_") {
        let name: String =
            dashboard[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
        let base = ["_bucket", "_sum", "_count"].iter().fold(name.clone(), |n, sfx| {
            if n.starts_with("coi_bridge_delivery_latency_seconds") { n.trim_end_matches(sfx).to_owned() } else { n }
        });
        // Prose ("metrics prefixed coi_bridge_") is not a query.
        if base.len() > "coi_bridge_".len() {
            used.insert(base);
        }
    }
    assert!(used.len() >= 10, "the dashboard queries only {used:?}");
    for name in &used {
        let short = name.trim_start_matches("coi_bridge_");
        let exported = after.contains(&format!("# TYPE {name} "));
        // Labelled series appear after their first event; they must at least be registered.
        let registered = source.contains(&format!("\"{short}\""));
        assert!(exported || registered, "the dashboard queries {name}, which the daemon does not export");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_part_that_is_down_and_recovers() {
    let Some(mut s) = Stack::new().await else { return };
    let (status, body) = ready(&s.daemon).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    for part in ["store", "imap", "smtp", "bridge matrix"] {
        assert_eq!(body["parts"][part]["ok"], true, "{part}: {body}");
    }
    let (status, health) = s.daemon.http_get("/health").await.expect("GET /health");
    assert_eq!((status, health.contains("alive")), (200, true));

    // Dovecot down: not ready, and /ready says it is IMAP.
    s.mail.stop_dovecot();
    let body = eventually(WAIT, "/ready to turn 503 with IMAP down", || async {
        let (status, body) = ready(&s.daemon).await;
        (status == 503 && body["parts"]["imap"]["ok"] == false).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["parts"]["imap"]["state"], "reconnecting", "{body}");
    assert!(body["parts"]["imap"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    assert_eq!(body["parts"]["store"]["ok"], true, "{body}");
    assert_eq!(body["parts"]["bridge matrix"]["ok"], true, "{body}");
    assert_eq!(s.daemon.metric("coi_bridge_imap_connected").await, Some(0.0));

    s.mail.start_dovecot();
    eventually(WAIT, "/ready to be 200 again", || async {
        let (status, body) = ready(&s.daemon).await;
        (status == 200 && body["ready"] == true).then_some(())
    })
    .await;

    // Synapse down: the Matrix bridge's part says so, with the homeserver in the reason.
    s.hs.stop();
    let body = eventually(WAIT, "/ready to name the Matrix bridge", || async {
        let (status, body) = ready(&s.daemon).await;
        (status == 503 && body["parts"]["bridge matrix"]["ok"] == false).then_some(body)
    })
    .await;
    let reason = body["parts"]["bridge matrix"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains(&s.hs.url()), "{body}");
    assert_eq!(body["parts"]["imap"]["ok"], true, "{body}");
    assert_eq!(s.daemon.metric("coi_bridge_bridge_state{bridge=\"matrix\",state=\"reconnecting\"}").await, Some(1.0));
    s.hs.restart();
    eventually(WAIT, "the Matrix bridge to be ready again", || async {
        let (status, _) = ready(&s.daemon).await;
        (status == 200).then_some(())
    })
    .await;
}

/// Receives one datagram from systemd's side of the socket, within `within`.
fn recv(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_watchdog_and_stopping() {
    let Some(server) = MailServer::start() else { return };
    let state = tempfile::tempdir().expect("tempdir");
    let sock_path = state.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let port = support::free_port();
    let config = support::write_config(&server, state.path(), Link::Plain, "", port);
    let path = sock_path.display().to_string();
    // WatchdogSec=1s: a ping every half second.
    let mut d = Daemon::with_env(state.path(), config, port, &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")]);

    let first = recv(&sock).unwrap_or_else(|| panic!("no READY=1; log:\n{}", d.log_text()));
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let mut pings = 0;
    while pings < 3 {
        let m = recv(&sock).unwrap_or_else(|| panic!("the watchdog pings stopped after {pings}"));
        if m == "WATCHDOG=1" {
            pings += 1;
        }
    }
    let sock = tokio::task::spawn_blocking(move || {
        // Everything after SIGTERM, until the socket goes quiet.
        let mut seen = Vec::new();
        while let Some(m) = recv(&sock) {
            let stop = m.contains("STOPPING=1");
            seen.push(m);
            if stop {
                break;
            }
        }
        seen
    });
    assert_eq!(d.stop(), Some(0), "log:\n{}", d.log_text());
    let seen = sock.await.expect("receiver");
    assert!(seen.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "after SIGTERM: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_mail_flows_holds_every_message_committed_before() {
    let Some(server) = MailServer::start() else { return };
    let server = std::sync::Arc::new(server);
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;

    // Mail keeps arriving during the whole backup.
    let flow = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..120 {
                let id = format!("flow{i}@example.org");
                let mail = support::chat_mail("alice@example.org", support::BRIDGE, &id, &format!("message {i}"));
                server.deliver("alice@example.org", &[support::BRIDGE], &mail).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let store = d.store().await;
    use coi_bridge::store::{Direction, Store as _};
    let before: BTreeSet<String> = eventually(WAIT, "some mail recorded", || async {
        let ids: BTreeSet<String> =
            store.messages(Direction::In).await.expect("messages").into_iter().map(|m| m.message_id).collect();
        (ids.len() >= 20).then_some(ids)
    })
    .await;

    let file = state.path().join("backup.db");
    let out = tokio::process::Command::new(Daemon::bin())
        .args(["backup", "--config"])
        .arg(&d.config)
        .arg(&file)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "x")
        .output()
        .await
        .expect("run coi-bridge backup");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "backup failed: {stdout}\n{stderr}");
    assert!(stdout.contains("integrity ok"), "{stdout}");
    assert!(stderr.contains("backing up") && stderr.contains("100%"), "no progress shown: {stderr}");
    let still_flowing = !flow.is_finished();
    flow.await.expect("flow");

    let copy = rusqlite::Connection::open(&file).expect("the backup opens");
    let check: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    assert_eq!(check, "ok");
    let mut stmt = copy.prepare("SELECT message_id FROM message").expect("query");
    let in_copy: BTreeSet<String> =
        stmt.query_map([], |r| r.get(0)).expect("rows").collect::<Result<_, _>>().expect("ids");
    let missing: Vec<_> = before.difference(&in_copy).collect();
    assert!(missing.is_empty(), "committed before the backup but not in it: {missing:?}");
    // The daemon's own opener takes the copy (a restore is a file copy).
    drop(stmt);
    drop(copy);
    let restored = coi_bridge::store::sqlite::SqliteStore::open(&file).await.expect("the store opens the backup");
    assert!(restored.messages(Direction::In).await.expect("messages").len() >= before.len());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);
    assert!(still_flowing, "the backup should run while mail still arrives; make the flow longer");
    // A second backup to the same file is refused.
    let file_arg = file.display().to_string();
    let (code, _, err) = cli(&d.config, &["backup", &file_arg]);
    assert!(code != Some(0) && err.contains("already exists"), "{err}");
    d.stop();
}

fn cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(Daemon::bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", support::BRIDGE_PASSWORD)
        .output()
        .expect("run coi-bridge");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_asks_synapse_and_telegram_and_portals_lists_the_links() {
    let tg = support::telegram::FakeTelegram::start().await;
    let token = format!("{}\n", support::telegram::TOKEN);
    let extra = format!(
        "\n[[bridge]]\nid = \"tg\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"tg-token\"\n",
        tg.url()
    );
    let Some(s) = Stack::new_with_files(&extra, &[("tg-token", &token)]).await else { return };

    let (code, out, err) = cli(&s.daemon.config, &["check"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for item in ["config", "store", "imap", "imap idle", "smtp", "matrix matrix", "telegram tg"] {
        assert_eq!(support::check_row(&out, item), Some("ok"), "{item:?} in:\n{out}");
    }
    assert!(out.contains("registered as @coibot:localhost") && out.contains("getMe"), "{out}");

    // The same config with tokens the servers do not know: each row says so, with the fix.
    let bad = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&s.daemon.config).expect("config");
    std::fs::write(bad.path().join("coi-bridge.toml"), text).expect("config");
    let reg = std::fs::read_to_string(s.state.path().join("registration.yaml")).expect("registration");
    std::fs::write(bad.path().join("registration.yaml"), reg.replace("coi-as-token", "not-the-as-token"))
        .expect("registration");
    std::fs::write(bad.path().join("tg-token"), "1:wrong\n").expect("token");
    let (code, out, _) = cli(&bad.path().join("coi-bridge.toml"), &["check"]);
    assert_eq!(code, Some(69), "{out}");
    assert_eq!(support::check_row(&out, "matrix matrix"), Some("FAIL"), "{out}");
    assert!(out.contains("app_service_config_files"), "{out}");
    assert_eq!(support::check_row(&out, "telegram tg"), Some("FAIL"), "{out}");
    assert!(out.contains("@BotFather"), "{out}");
    assert!(!out.contains("1:wrong"), "the token must not be printed: {out}");
    assert_eq!(support::check_row(&out, "imap"), Some("ok"), "{out}");

    let (code, out, err) = cli(&s.daemon.config, &["portals"]);
    assert_eq!(code, Some(0), "{err}");
    let row = out.lines().find(|l| l.contains(&s.room)).unwrap_or_else(|| panic!("no row for {}:\n{out}", s.room));
    assert!(row.starts_with("matrix") && row.contains("group \"Garden Club\""), "{out}");
    assert!(out.starts_with("BRIDGE"), "{out}");

    // An operator unlinks it from the shell; messages from the room no longer reach COI.
    let (code, out, err) = cli(&s.daemon.config, &["unlink", "matrix", &s.room]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, out, _) = cli(&s.daemon.config, &["portals"]);
    assert!(!out.contains(&s.room), "{out}");
    let (code, _, err) = cli(&s.daemon.config, &["unlink", "matrix", &s.room]);
    assert_eq!(code, Some(1));
    assert!(err.contains("coi-bridge portals"), "{err}");
}

/// A plain chat mail as a stranger sends it.
fn stranger_mail(message_id: &str, extra_header: &str) -> Vec<u8> {
    format!(
        "From: Mallory <mallory@example.org>\r\nTo: {}\r\nSubject: Message from Mallory\r\n\
         Date: Mon, 30 Nov 2026 01:00:00 +0000\r\nMessage-ID: <{message_id}>\r\nChat-Version: 1.0\r\n{extra_header}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello from the quarantine\r\n",
        support::BRIDGE
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_apart_mail_is_pruned_at_start_listed_released_through_the_daemon_and_dropped() {
    use coi_bridge::store::retention::RetentionStore as _;
    use coi_bridge::store::{Direction, ImapCursor, Rejected, Store as _};
    let Some(server) = MailServer::start() else { return };
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;
    let store = d.store().await;
    // Mail set apart as ingest keeps it (under a folder of its own, so the daemon's IMAP
    // cursor is not touched); one of them 40 days old.
    let rejected = [
        Rejected { uid: 1, reason: "test: set apart".into(), raw: stranger_mail("released@example.org", "") },
        Rejected { uid: 2, reason: "not_mime: garbage".into(), raw: b"\x00\x01 not a mail".to_vec() },
        Rejected { uid: 3, reason: "too_large: left on the server".into(), raw: vec![] },
        Rejected { uid: 4, reason: "test: old".into(), raw: vec![b'x'; 100_000] },
    ];
    let cursor = ImapCursor { uid_validity: 1, last_uid: 4 };
    store.record_inbound("test", cursor, &[], &rejected).await.expect("record");
    let db = rusqlite::Connection::open(state.path().join("bridge.db")).expect("open");
    db.execute("UPDATE rejected SET recorded_at = recorded_at - 40 * 86400 WHERE reason = 'test: old'", [])
        .expect("age");
    drop(db);

    // The daemon prunes at start: the old one goes (30 days by default), and it counts.
    assert_eq!(d.stop(), Some(0));
    d.restart();
    d.wait_ready().await;
    let rows = eventually(WAIT, "the 40-day-old mail pruned at start", || async {
        let rows = store.set_apart().await.expect("list");
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r.reason != "test: old"));
    assert_eq!(d.metric("coi_bridge_pruned_total{what=\"rejected\"}").await, Some(1.0));
    let [mail, junk, large] = [rows[0].id, rows[1].id, rows[2].id];

    let (code, out, err) = cli(&d.config, &["quarantine"]);
    assert_eq!(code, Some(0), "{err}");
    for needle in ["ID", "FROM", "REASON", "Mallory <mallory@example.org>", "test: set apart", "not_mime", "too_large"]
    {
        assert!(out.contains(needle), "the list shows {needle:?}:\n{out}");
    }
    assert!(out.contains(&format!("\n{mail} ")) && out.contains("kept 30 days and 50 MiB"), "{out}");
    assert!(!out.contains('\x00'), "no control characters reach the terminal");

    // The large one has no copy; an unknown id is named.
    let (code, _, err) = cli(&d.config, &["quarantine", "release", &large.to_string()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("too large") && err.contains("imap.max_message_bytes"), "{err}");
    let (code, _, err) = cli(&d.config, &["quarantine", "release", "999"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no rejected mail 999"), "{err}");

    // Released, the running daemon takes it through ingest: recorded, and its row goes.
    let (code, out, err) = cli(&d.config, &["quarantine", "release", &mail.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("released {mail}")), "{out}");
    eventually(WAIT, "the released mail recorded and its row gone", || async {
        let gone = store.set_apart().await.expect("list").iter().all(|r| r.id != mail);
        let recorded = store.message("released@example.org").await.expect("read").is_some();
        (gone && recorded).then_some(())
    })
    .await;
    assert_eq!(d.metric("coi_bridge_released_total").await, Some(1.0));

    // The same message set apart again (other bytes, same Message-ID) and released:
    // ingest knows it, nothing is recorded twice, the row goes.
    let again = [Rejected {
        uid: 5,
        reason: "test: again".into(),
        raw: stranger_mail("released@example.org", "X-Again: 1\r\n"),
    }];
    store.record_inbound("test", cursor, &[], &again).await.expect("record");
    let id = store.set_apart().await.expect("list").iter().find(|r| r.reason == "test: again").expect("row").id;
    assert_eq!(cli(&d.config, &["quarantine", "release", &id.to_string()]).0, Some(0));
    eventually(WAIT, "the second release taken", || async {
        store.set_apart().await.expect("list").iter().all(|r| r.id != id).then_some(())
    })
    .await;
    let copies = store
        .messages(Direction::In)
        .await
        .expect("read")
        .into_iter()
        .filter(|m| m.message_id == "released@example.org")
        .count();
    assert_eq!(copies, 1, "released twice, recorded once");

    // Dropped, once.
    let (code, out, err) = cli(&d.config, &["quarantine", "drop", &junk.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("dropped {junk}")));
    assert_eq!(cli(&d.config, &["quarantine", "drop", &junk.to_string()]).0, Some(1));
    let left: Vec<i64> = store.set_apart().await.expect("list").iter().map(|r| r.id).collect();
    assert_eq!(left, vec![large]);
    assert_eq!(d.stop(), Some(0), "log:\n{}", d.log_text());
}

/// The `Message-ID` of a raw mail (case-insensitive header name), if any.
fn message_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .map(|l| l["message-id:".len()..].trim().to_owned())
}

/// The metric names (without the `coi_bridge_` prefix) in docs/OPERATIONS.md's table.
fn documented_metrics() -> BTreeSet<String> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ops = std::fs::read_to_string(repo.join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let table = ops.split("## Metrics").nth(1).expect("a Metrics section");
    table.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mail_in_the_mailbox_counts_once_and_every_metric_is_documented() {
    // The stack's set-up already took the group join through SecureJoin: key-exchange
    // steps are mail in, as the docs say, though they are answered, not recorded.
    let Some(s) = Stack::new().await else { return };
    let before = scrape(&s.daemon).await;
    s.alice_says("counted once").await;
    s.body("counted once").await;
    s.send("count-m", json!({"msgtype": "m.text", "body": "counted on the way out"})).await;
    s.at_alice("counted on the way out").await;
    // A mail set apart counts; the same mail fetched again does not.
    s.mail.append("bridge", &stranger_mail("count-stranger@example.org", "")).await;
    s.mail.append("bridge", &stranger_mail("count-stranger@example.org", "")).await;

    let (mails, counted) =
        eventually(WAIT, "messages_total{coi,in} to equal the distinct mails in the mailbox", || async {
            let inbox = s.mail.fetch_all("bridge").await;
            let ids: BTreeSet<String> = inbox.iter().filter_map(|m| message_id(m)).collect();
            assert!(ids.len() < inbox.len(), "the stranger's mail is in the mailbox twice");
            let counted =
                s.daemon.metric("coi_bridge_messages_total{bridge=\"coi\",direction=\"in\"}").await.unwrap_or(0.0);
            (counted == ids.len() as f64).then_some((ids.len(), counted))
        })
        .await;
    // The join alone is a vc-request and a vc-request-with-auth; with Alice's message
    // and the stranger's mail that is at least four.
    assert!(mails >= 4, "{mails} mails");
    // Nothing counts late: the count stays once the mailbox is quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inbox = s.mail.fetch_all("bridge").await;
    let ids: BTreeSet<String> = inbox.iter().filter_map(|m| message_id(m)).collect();
    let now = s.daemon.metric("coi_bridge_messages_total{bridge=\"coi\",direction=\"in\"}").await;
    assert_eq!(now, Some(ids.len() as f64), "was {counted} for {mails} mails");

    // The other documented counters this traffic moves.
    let scrape = scrape(&s.daemon).await;
    for (key, by) in [
        ("coi_bridge_outbox_deliveries_total{result=\"sent\",target=\"matrix\"}", 1.0),
        ("coi_bridge_outbox_deliveries_total{result=\"sent\",target=\"smtp\"}", 1.0),
        ("coi_bridge_inbound_recorded_total", 1.0),
        ("coi_bridge_inbound_duplicates_total", 1.0),
    ] {
        assert!(sample(&scrape, key) >= sample(&before, key) + by, "{key} did not move by {by}:\n{scrape}");
    }
    assert_eq!(sample(&scrape, "coi_bridge_store_up"), 1.0);

    // The docs' metrics table and what the daemon exports agree, both ways.
    // The registry's metrics, and the PostgreSQL relay's (registered only on PostgreSQL).
    let source = ["src/metrics.rs", "src/store/relay.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).expect("metrics source")
        })
        .collect::<String>();
    let documented = documented_metrics();
    assert!(documented.len() >= 20, "{documented:?}");
    for name in &documented {
        let exported = scrape.contains(&format!("# TYPE coi_bridge_{name} "));
        // A labelled series appears with its first event; it must at least be registered.
        let registered = source.contains(&format!("\"{name}\""));
        assert!(exported || registered, "docs/OPERATIONS.md documents {name}, which the daemon does not have");
    }
    // Every metric the daemon registers, also one with no series yet (a labelled one
    // before its first event), which the scrape does not show.
    for name in coi_bridge::metrics::Metrics::new().names() {
        assert!(
            documented.contains(name),
            "the daemon registers coi_bridge_{name}, which docs/OPERATIONS.md does not document"
        );
    }
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE coi_bridge_")) {
        let name = line.split(' ').next().unwrap_or_default();
        assert!(
            documented.contains(name),
            "the daemon exports coi_bridge_{name}, which docs/OPERATIONS.md does not document"
        );
    }
}
