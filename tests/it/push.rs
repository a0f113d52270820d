//! Dovecot's push events (#15) through the daemon, against the real Dovecot (OX driver) + Postfix, Synapse and Delta Chat: with push on, messages arrive once each and in order and the fetch was woken by push; events lost or refused leave IDLE delivering everything; a forged event is refused and fetches nothing; `check`'s row says whether events arrive.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::bridged::{Stack, WAIT};
use crate::support::{self, BRIDGE, Daemon, Link, MailServer, eventually};

/// The shared secret of these tests (Dovecot puts it in its push URL).
const SECRET: &str = "push-test-secret-0123456789";

/// Writes the secret file (0600) into `state`; the `[imap]` keys that turn push on.
fn push_keys(state: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let file = state.join("push-secret");
    std::fs::create_dir_all(state).expect("state dir");
    std::fs::write(&file, format!("{SECRET}\n")).expect("secret file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!("push = true\npush_secret_file = \"{}\"", file.display())
}

/// Turns push on in an existing config (under its `[imap]`). IDLE is renewed only after
/// 10 to 20 minutes, so a renewal's fetch cannot stand in for IDLE's news or push events.
fn enable_push(config: &Path) {
    let state = config.parent().expect("the config's folder");
    let text = std::fs::read_to_string(config).expect("config");
    let text = text.replacen("[imap]\n", &format!("[imap]\n{}\n", push_keys(state)), 1);
    let text = text.replacen("idle_timeout_secs = 60\n", "idle_timeout_secs = 1200\n", 1);
    std::fs::write(config, text).expect("config");
}

/// The URL Dovecot puts its events to: the daemon on `port`, with `secret`.
fn url(port: u16, secret: &str) -> String {
    format!("http://coi:{secret}@127.0.0.1:{port}/push/dovecot")
}

/// Points `mail`'s Dovecot's push events for the bridge at `url` (`None`: off), and
/// restarts Dovecot so that every LMTP delivery from now on uses that (a reload leaves
/// LMTP processes of the old config serving a while).
fn dovecot_push(mail: &mut MailServer, url: Option<&str>) {
    let mut push = Command::new(mail.dir.join("push.sh"));
    match url {
        Some(u) => push.args([u, BRIDGE]),
        None => push.arg("off"),
    };
    let out = push.output().expect("push.sh");
    assert!(out.status.success(), "push.sh: {}", String::from_utf8_lossy(&out.stderr));
    mail.stop_dovecot();
    mail.start_dovecot();
}

async fn metric(d: &Daemon, sample: &str) -> f64 {
    d.metric(sample).await.unwrap_or(0.0)
}

const ACCEPTED: &str = "coi_bridge_push_events_total{result=\"accepted\"}";
const BAD_SECRET: &str = "coi_bridge_push_events_total{result=\"bad_secret\"}";
const FETCHES: &str = "coi_bridge_imap_push_fetches_total";

/// A bridged room whose daemon takes push events; Dovecot sends them to `url` (given the
/// daemon's port).
async fn push_stack(url: impl Fn(u16) -> String) -> Option<Stack> {
    let mut s = Stack::new().await?;
    s.daemon.stop();
    dovecot_push(&mut s.mail, Some(&url(s.as_port)));
    enable_push(&s.daemon.config);
    s.daemon.restart();
    s.daemon.wait_ready().await;
    Some(s)
}

/// Alice writes `texts` in turn; each must show in the room once, all in the order the
/// bridge's mailbox holds them (Postfix delivers mails sent back to back in parallel, so
/// that order may differ from the sending order; the bridge's is the mailbox's).
async fn each_once_in_order(s: &Stack, texts: &[String]) {
    let mut mids = Vec::new();
    for t in texts {
        let id = s.dc.call("misc_send_text_message", json!([s.alice, s.group, t])).await;
        let info = s.dc.call("get_message_info", json!([s.alice, id])).await;
        let mid = info.as_str().and_then(|i| i.lines().find_map(|l| l.strip_prefix("Message-ID: ")));
        mids.push((mid.expect("a Message-ID in the message info").trim_matches(['<', '>']).to_owned(), t.clone()));
    }
    let bodies: Vec<String> = eventually(WAIT, "every message in the room", || async {
        let all: Vec<String> = support::synapse::timeline(&s.hs, &s.mara, &s.room)
            .await
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .filter(|b| texts.contains(b))
            .collect();
        (texts.iter().all(|t| all.contains(t))).then_some(all)
    })
    .await;
    let order = mailbox_order(&s.mail).await;
    let mut expected: Vec<(usize, String)> = mids
        .into_iter()
        .map(|(mid, t)| (order.iter().position(|m| *m == mid).expect("the mail in the bridge's INBOX"), t))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, t)| t).collect();
    assert_eq!(bodies, expected, "each message once, in the mailbox's order");
}

/// The Message-IDs in the bridge's INBOX, in UID order.
async fn mailbox_order(mail: &MailServer) -> Vec<String> {
    use futures::TryStreamExt as _;
    let mut imap = mail.imap("bridge").await;
    imap.select("INBOX").await.expect("select");
    let mut fetched: Vec<_> = imap
        .uid_fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        .await
        .expect("fetch")
        .try_collect::<Vec<_>>()
        .await
        .expect("fetch stream");
    fetched.sort_by_key(|f| f.uid);
    let out = fetched
        .iter()
        .filter_map(|f| {
            let m = mail_parser::MessageParser::default().parse_headers(f.header()?)?;
            Some(m.message_id()?.to_owned())
        })
        .collect();
    drop(fetched);
    imap.logout().await.ok();
    out
}

#[tokio::test]
async fn with_push_on_messages_arrive_once_each_in_order_fetched_on_the_event() {
    coi_bridge::init_crypto();
    let Some(s) = push_stack(|port| url(port, SECRET)).await else { return };
    let before = metric(&s.daemon, FETCHES).await;
    let texts: Vec<String> = (1..=5).map(|i| format!("pushed {i}")).collect();
    each_once_in_order(&s, &texts).await;
    let accepted = metric(&s.daemon, ACCEPTED).await;
    assert!(accepted >= texts.len() as f64, "an event per mail: {accepted}");
    assert!(metric(&s.daemon, FETCHES).await > before, "a fetch woken by a push event");
    assert_eq!(metric(&s.daemon, BAD_SECRET).await, 0.0);
}

#[tokio::test]
async fn with_events_lost_or_refused_idle_still_delivers_everything() {
    coi_bridge::init_crypto();
    // Events to a port nothing listens on (1, below what tests draw): lost.
    let Some(mut s) = push_stack(|_| url(1, SECRET)).await else { return };
    let lost: Vec<String> = (1..=3).map(|i| format!("lost event {i}")).collect();
    each_once_in_order(&s, &lost).await;
    // Events with a wrong secret: refused.
    dovecot_push(&mut s.mail, Some(&url(s.as_port, "not-the-secret-0123456789")));
    s.daemon.wait_ready().await;
    let refused: Vec<String> = (1..=3).map(|i| format!("refused event {i}")).collect();
    each_once_in_order(&s, &refused).await;
    assert!(metric(&s.daemon, BAD_SECRET).await >= 3.0, "Dovecot's events were refused");
    assert_eq!(metric(&s.daemon, ACCEPTED).await, 0.0);
    assert_eq!(metric(&s.daemon, FETCHES).await, 0.0, "every mail came through IDLE");
}

/// A PUT to the daemon's push endpoint; its status.
async fn put(port: u16, auth: Option<&str>, body: String) -> u16 {
    let mut req = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port}/push/dovecot"))
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.expect("PUT").status().as_u16()
}

fn basic(secret: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("coi:{secret}")))
}

fn event(user: &str) -> String {
    format!(r#"{{"user":"{user}","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":7,"from":"x"}}"#)
}

#[tokio::test]
async fn a_forged_event_is_refused_and_fetches_nothing() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, &push_keys(state.path()));
    d.wait_ready().await;
    let port = d.http_port;
    assert_eq!(put(port, Some(&basic("forged-secret-0123456789")), event(BRIDGE)).await, 401);
    assert_eq!(put(port, None, event(BRIDGE)).await, 401, "no secret");
    assert_eq!(put(port, Some(&basic(SECRET)), "not json".into()).await, 400);
    assert_eq!(put(port, Some(&basic(SECRET)), event("nobody@example.org")).await, 404, "not an account here");
    let big = format!(r#"{{"user":"{BRIDGE}","snippet":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(put(port, Some(&basic(SECRET)), big).await, 413);
    // Time for a wrongly woken worker to have fetched.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&d, BAD_SECRET).await, 1.0, "the forged event is counted");
    assert_eq!(metric(&d, "coi_bridge_push_events_total{result=\"no_secret\"}").await, 1.0);
    assert_eq!(metric(&d, FETCHES).await, 0.0, "nothing was fetched for a refused event");
    assert_eq!(metric(&d, ACCEPTED).await, 0.0);
    assert!(d.log_text().contains("push event refused"), "a log line says so");
    assert!(!d.log_text().contains("forged-secret"), "the secret presented is not logged");

    // The same event with the secret wakes the worker: the counter that stayed is live.
    assert_eq!(put(port, Some(&basic(SECRET)), event(BRIDGE)).await, 202);
    eventually(Duration::from_secs(10), "a fetch woken by the event", || async {
        (metric(&d, FETCHES).await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(&d, ACCEPTED).await, 1.0);
    d.stop();
}

/// `coi-bridge check` with `config`; its table.
fn check(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(Daemon::bin())
        .args(["check", "--config"])
        .arg(config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", support::BRIDGE_PASSWORD)
        .output()
        .expect("run check");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn check_says_whether_push_events_arrive() {
    coi_bridge::init_crypto();
    let mut server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let config = support::write_config(&server, state.path(), Link::Plain, &push_keys(state.path()), port);
    dovecot_push(&mut server, Some(&url(port, SECRET)));

    // Nothing listens on [http] listen: check does, for the event.
    let (code, out) = check(&config);
    assert_eq!(support::check_row(&out, "imap push"), Some("ok"), "{out}");
    assert_eq!(code, Some(0), "{out}");

    // The daemon runs: its counter of accepted events moves.
    let mut d = Daemon::with_config(state.path(), config.clone(), port);
    d.wait_ready().await;
    let (_, out) = check(&config);
    assert_eq!(support::check_row(&out, "imap push"), Some("ok"), "{out}");
    assert!(out.contains("at the daemon"), "{out}");
    d.stop();

    // Dovecot sends no events: a clear failure with where to look.
    dovecot_push(&mut server, None);
    let (code, out) = check(&config);
    assert_eq!(support::check_row(&out, "imap push"), Some("FAIL"), "{out}");
    assert!(out.contains("no event within 5s") && out.contains("docs/OPERATIONS.md"), "{out}");
    assert_ne!(code, Some(0), "{out}");
    // The test mails were deleted again.
    let left = server.fetch_all("bridge").await;
    assert!(!left.iter().any(|m| String::from_utf8_lossy(m).contains("coi-bridge check: push event")), "deleted");
}
