//! The daemon against a real Dovecot + Postfix: pick-up through IDLE, the outbox round trip, restarts, crashes, outages, UIDVALIDITY changes and hostile mail.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coi_bridge::coi::{self, ChatMessage, Group, GroupChange, Limits, Mailbox};
use coi_bridge::config::EncryptionPolicy;
use coi_bridge::hub::e2ee::Identity;
use coi_bridge::hub::outbound::Outbound;
use coi_bridge::metrics::Metrics;
use coi_bridge::store::sqlite::SqliteStore;
use coi_bridge::store::{ChatKind, ChatRef, Direction, OutboxState, SMTP_TARGET, Store};
use coi_bridge::transport::smtp::{FailedDelivery, RetryPolicy, SmtpWorker};
use coi_bridge_api::Attachment;
use support::{BRIDGE, Daemon, Link, MailServer, chat_mail, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn count_in(store: &SqliteStore) -> usize {
    store.messages(Direction::In).await.expect("read messages").len()
}

async fn wait_recorded(d: &Daemon, n: usize) -> Vec<coi_bridge::store::StoredMessage> {
    let store = d.store().await;
    eventually(WAIT, &format!("{n} messages recorded"), || async {
        let all = store.messages(Direction::In).await.expect("read");
        (all.len() >= n).then_some(all)
    })
    .await
}

#[tokio::test]
async fn chat_mail_is_picked_up_by_idle_and_recorded_with_chat_text_attachments_and_reply() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Tls, "");
    d.wait_ready().await;

    // A 1:1 message, then a group reply with an attachment that quotes it.
    let first = chat_mail("alice@example.org", BRIDGE, "first-1@localhost", "Hello bridge");
    server.deliver("alice@example.org", &[BRIDGE], &first).await;
    let group = ChatMessage {
        message_id: "grp-2@localhost".into(),
        is_chat: true,
        from: Mailbox::new("bob@example.org", Some("Bob")),
        to: vec![Mailbox::new("alice@example.org", None), Mailbox::new(BRIDGE, None)],
        date: Some(1_795_000_000),
        subject: Some("Team".into()),
        in_reply_to: Some("first-1@localhost".into()),
        references: vec!["first-1@localhost".into()],
        group: Some(Group { id: "Xk3_mQ9-pL2vR8tY".into(), name: "Team".into(), change: None }),
        text: "Answer with a file".into(),
        quote: Some("Hello bridge".into()),
        attachments: vec![Attachment {
            name: "data.bin".into(),
            mime: "application/octet-stream".into(),
            data: (0..=255u8).cycle().take(5000).collect(),
        }],
        ..ChatMessage::default()
    };
    server.deliver("bob@example.org", &[BRIDGE], &coi::render(&group)).await;

    let recorded = wait_recorded(&d, 2).await;
    let store = d.store().await;
    let one = recorded.iter().find(|m| m.message_id == "first-1@localhost").expect("1:1 recorded");
    assert_eq!(one.text, "Hello bridge");
    let one_chat = store.chat(one.chat_id).await.expect("chat").expect("exists");
    assert_eq!((one_chat.kind, one_chat.key.as_str()), (ChatKind::Single, "alice@example.org"));

    let g = recorded.iter().find(|m| m.message_id == "grp-2@localhost").expect("group recorded");
    assert_eq!(g.text, "Answer with a file");
    assert_eq!(g.in_reply_to.as_deref(), Some("first-1@localhost"));
    assert_eq!(g.from_name, "Bob");
    assert_eq!(g.attachments.len(), 1);
    assert_eq!(g.attachments[0].name, "data.bin");
    assert_eq!(g.attachments[0].data, group.attachments[0].data);
    let g_chat = store.chat(g.chat_id).await.expect("chat").expect("exists");
    assert_eq!((g_chat.kind, g_chat.key.as_str(), g_chat.name.as_str()), (ChatKind::Group, "Xk3_mQ9-pL2vR8tY", "Team"));
    assert_eq!(g_chat.members, vec!["alice@example.org".to_string(), "bob@example.org".to_string()]);

    assert_eq!(d.metric("coi_bridge_inbound_recorded_total").await, Some(2.0));
    assert_eq!(d.stop(), Some(0), "clean exit on SIGTERM");
    assert!(!d.log_text().contains(support::BRIDGE_PASSWORD), "the password leaked into the log");
}

/// The outbound half of the daemon in-process: a store, the SMTP worker on the test
/// server's submission port (STARTTLS + AUTH), and the failure hook's reports.
struct OutboxRig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    worker: SmtpWorker,
    outbound: Outbound,
    failures: Arc<Mutex<Vec<FailedDelivery>>>,
    token: CancellationToken,
}

async fn outbox_rig(server: &MailServer, display_name: Option<&str>) -> OutboxRig {
    coi_bridge::init_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.expect("store"));
    let config = support::write_config(server, dir.path(), Link::Tls, "", support::free_port());
    let loaded = coi_bridge::config::load(&config).expect("config loads");
    let transport = coi_bridge::transport::smtp::transport(&loaded).expect("transport");
    let policy =
        RetryPolicy { base: Duration::from_millis(500), max_delay: Duration::from_secs(2), max_attempts: 1000 };
    let failures = Arc::new(Mutex::new(Vec::new()));
    let reports = failures.clone();
    let hook = Arc::new(move |f: FailedDelivery| reports.lock().expect("lock").push(f));
    let wake = coi_bridge::hub::wake::OutboxNotifier::new();
    let worker = SmtpWorker::new(transport, store.clone(), policy, wake.clone(), hook, Arc::new(Metrics::new()));
    // These tests are about the transport: the recipients have no keys, so plaintext.
    let identity = Arc::new(Identity::load_or_create(store.as_ref(), BRIDGE, None).await.expect("identity"));
    let outbound = Outbound::new(
        store.clone(),
        Mailbox::new(BRIDGE, display_name),
        identity,
        EncryptionPolicy::Opportunistic,
        wake,
    );
    OutboxRig { _dir: dir, store, worker, outbound, failures, token: CancellationToken::new() }
}

#[tokio::test]
async fn outbox_round_trip_reaches_another_mailbox_and_parses_back_the_same() {
    let server = mail_server!();
    let OutboxRig { _dir, store, worker, outbound, failures, token } = outbox_rig(&server, Some("COI Bridge")).await;

    let chat = ChatRef { kind: ChatKind::Group, key: "Grp_roundtrip_1".into(), name: "Round trip".into() };
    let msg = ChatMessage {
        from: Mailbox::new(BRIDGE, Some("Bob (Matrix)")),
        to: vec![Mailbox::new("alice@example.org", Some("Alice")), Mailbox::new("carol@example.org", None)],
        subject: Some("Round trip".into()),
        group: Some(Group {
            id: "Grp_roundtrip_1".into(),
            name: "Round trip".into(),
            change: Some(GroupChange::MemberAdded("carol@example.org".into())),
        }),
        in_reply_to: Some("parent@localhost".into()),
        references: vec!["parent@localhost".into()],
        // A reply carries its parent's quote: without one, In-Reply-To only threads.
        quote: Some("the parent's words".into()),
        text: "Grüße with a picture 🖼".into(),
        attachments: vec![
            Attachment {
                name: "pic.png".into(),
                mime: "image/png".into(),
                data: vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0],
            },
            Attachment {
                name: "big.bin".into(),
                mime: "application/octet-stream".into(),
                data: (0..100_000u32).map(|i| (i % 251) as u8).collect(),
            },
        ],
        ..ChatMessage::default()
    };
    let id = outbound
        .queue(chat, &["alice@example.org".into(), "carol@example.org".into()], msg.clone())
        .await
        .expect("queued");

    let run = worker.run(token.clone());
    let check = async {
        let mails = server.wait_for_mails("alice", 1, WAIT).await;
        token.cancel();
        mails
    };
    let ((), mails) = tokio::join!(run, check);
    assert_eq!(mails.len(), 1, "one mail in alice's INBOX");
    let back = coi::parse(&mails[0], &Limits::default()).expect("parses").message;
    assert_eq!(back.message_id, id);
    assert_eq!(back.from, Mailbox::new(BRIDGE, Some("Bob (Matrix)")));
    assert_eq!(back.sender, Some(Mailbox::new(BRIDGE, Some("COI Bridge"))), "relayed name goes with Sender");
    assert_eq!(back.text, msg.text);
    assert_eq!(back.attachments, msg.attachments);
    assert_eq!(back.group, msg.group);
    assert_eq!((back.in_reply_to, back.quote), (msg.in_reply_to, msg.quote));
    assert!(back.is_chat);
    assert_eq!(server.fetch_all("carol").await.len(), 1);
    assert_eq!(store.outbox_state(SMTP_TARGET, &id).await.expect("state"), Some(OutboxState::Done));
    assert!(failures.lock().expect("lock").is_empty());
}

/// Under `encryption = "opportunistic"` unsigned mail from a contact without a key is
/// theirs; never so for our own address, which only our own signature speaks for (`check`'s
/// push row, for one, sends a plain test mail from the account to itself).
#[tokio::test]
async fn an_unsigned_mail_from_our_own_address_is_not_attributed_to_us() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Tls, "");
    d.wait_ready().await;
    let own = chat_mail(BRIDGE, BRIDGE, "own-plain@localhost", "plain, from our own address");
    server.deliver(BRIDGE, &[BRIDGE], &own).await;
    let recorded = wait_recorded(&d, 1).await;
    let store = d.store().await;
    let m = recorded.iter().find(|m| m.message_id == "own-plain@localhost").expect("recorded");
    let chat = store.chat(m.chat_id).await.expect("chat").expect("exists");
    assert!(chat.key.starts_with("unverified:"), "an unsigned mail from us went to chat {:?}", chat.key);
    d.stop();
}

#[tokio::test]
async fn postfix_outage_keeps_the_outbox_and_delivers_in_order_when_it_returns() {
    let mut server = mail_server!();
    let OutboxRig { _dir, store, worker, outbound, failures, token } = outbox_rig(&server, None).await;

    server.stop_postfix();
    let chat = ChatRef { kind: ChatKind::Single, key: "alice@example.org".into(), name: "Alice".into() };
    let mut ids = Vec::new();
    for i in 0..6 {
        let m = ChatMessage { text: format!("in order {i}"), ..ChatMessage::default() };
        ids.push(outbound.queue(chat.clone(), &["alice@example.org".into()], m).await.expect("queued"));
    }
    let run = worker.run(token.clone());
    let check = async {
        // Failed attempts are recorded while Postfix is down; nothing is dropped.
        let store = store.clone();
        let first = ids[0].clone();
        eventually(WAIT, "a failed attempt recorded", || {
            let store = store.clone();
            let first = first.clone();
            async move {
                match store.outbox_state(SMTP_TARGET, &first).await.expect("state") {
                    Some(OutboxState::Pending { attempts, .. }) if attempts >= 2 => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        for id in &ids[1..] {
            assert_eq!(
                store.outbox_state(SMTP_TARGET, id).await.expect("state"),
                Some(OutboxState::Pending { attempts: 0, last_error: None }),
                "later messages of the chat wait behind the head"
            );
        }
        server.start_postfix();
        let mails = server.wait_for_mails("alice", 6, WAIT).await;
        token.cancel();
        mails
    };
    let ((), mails) = tokio::join!(run, check);
    // The mails go out one after another over one kept connection, and Postfix delivers
    // separate mails in parallel: the mailbox's order is Postfix's. Receivers order a chat
    // by Date (Delta Chat's sort timestamp), which the bridge makes strictly increasing
    // per chat (hub/outbound/smear.rs).
    let mut dated: Vec<(i64, String)> = mails
        .iter()
        .map(|m| coi::parse(m, &Limits::default()).expect("parses").message)
        .map(|m| (m.date.expect("a Date"), m.text))
        .collect();
    dated.sort();
    assert!(dated.windows(2).all(|w| w[0].0 < w[1].0), "every mail of the chat has its own second: {dated:?}");
    let texts: Vec<String> = dated.into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, (0..6).map(|i| format!("in order {i}")).collect::<Vec<_>>(), "delivered once each, in order");
    assert!(failures.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_5xx_is_a_permanent_failure_recorded_with_its_reason_and_reported() {
    let server = mail_server!();
    let OutboxRig { _dir, store, worker, outbound, failures, token } = outbox_rig(&server, None).await;
    // The test Postfix refuses other domains with 550 at RCPT.
    let bad = ChatRef { kind: ChatKind::Single, key: "nobody@elsewhere.invalid".into(), name: "x".into() };
    let bad_id = outbound
        .queue(
            bad,
            &["nobody@elsewhere.invalid".into()],
            ChatMessage { text: "lost?".into(), ..ChatMessage::default() },
        )
        .await
        .expect("queued");
    let good = ChatRef { kind: ChatKind::Single, key: "alice@example.org".into(), name: "A".into() };
    outbound
        .queue(good, &["alice@example.org".into()], ChatMessage { text: "fine".into(), ..ChatMessage::default() })
        .await
        .expect("queued");
    let run = worker.run(token.clone());
    let check = async {
        let mails = server.wait_for_mails("alice", 1, WAIT).await;
        let f = failures.clone();
        eventually(WAIT, "failure hook called", || {
            let f = f.clone();
            async move { (!f.lock().expect("lock").is_empty()).then_some(()) }
        })
        .await;
        token.cancel();
        mails
    };
    let ((), mails) = tokio::join!(run, check);
    assert_eq!(mails.len(), 1, "the good message is not blocked by the bad one");
    let reported = failures.lock().expect("lock").clone();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].message_id, bad_id);
    assert!(
        reported[0].reason.contains("550") || reported[0].reason.contains("outbound mail disabled"),
        "{:?}",
        reported[0]
    );
    match store.outbox_state(SMTP_TARGET, &bad_id).await.expect("state") {
        Some(OutboxState::Failed { reason }) => assert!(reason.contains("rejected"), "{reason}"),
        other => panic!("expected failed, got {other:?}"),
    }
}

#[tokio::test]
async fn one_refused_recipient_does_not_sink_the_mail_for_the_others() {
    let server = mail_server!();
    let OutboxRig { _dir, store, worker, outbound, failures, token } = outbox_rig(&server, None).await;
    // A group mail to a deliverable member and one the test Postfix refuses (550 at RCPT).
    let chat = ChatRef { kind: ChatKind::Group, key: "Xk3_mQ9-pL2vR8tY".into(), name: "Team".into() };
    let id = outbound
        .queue(
            chat,
            &["alice@example.org".into(), "nobody@elsewhere.invalid".into(), "bob@example.org".into()],
            ChatMessage { text: "to three, one refused".into(), ..ChatMessage::default() },
        )
        .await
        .expect("queued");
    let run = worker.run(token.clone());
    let check = async {
        let alice = server.wait_for_mails("alice", 1, WAIT).await;
        let bob = server.wait_for_mails("bob", 1, WAIT).await;
        let f = failures.clone();
        eventually(WAIT, "failure hook called", || {
            let f = f.clone();
            async move { (!f.lock().expect("lock").is_empty()).then_some(()) }
        })
        .await;
        token.cancel();
        (alice, bob)
    };
    let ((), (alice, bob)) = tokio::join!(run, check);
    assert_eq!((alice.len(), bob.len()), (1, 1), "the deliverable recipients got it once each");
    let reported = failures.lock().expect("lock").clone();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].message_id, id);
    assert!(reported[0].reason.contains("nobody@elsewhere.invalid"), "names the refused one: {:?}", reported[0]);
    assert!(!reported[0].reason.contains("alice@"), "{:?}", reported[0]);
    assert!(matches!(store.outbox_state(SMTP_TARGET, &id).await.expect("state"), Some(OutboxState::Done)));
}

#[tokio::test]
async fn restart_records_mail_delivered_while_down_exactly_once() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;
    assert_eq!(d.stop(), Some(0));

    for i in 0..50 {
        server
            .deliver(
                "alice@example.org",
                &[BRIDGE],
                &chat_mail("alice@example.org", BRIDGE, &format!("down-{i}@localhost"), &format!("while down {i}")),
            )
            .await;
    }
    server.wait_for_mails("bridge", 50, WAIT).await;
    d.restart();
    let all = wait_recorded(&d, 50).await;
    assert_eq!(all.len(), 50);
    assert_eq!(d.stop(), Some(0));

    // A second restart re-records none: the cursor was kept with the messages.
    d.restart();
    d.wait_ready().await;
    server
        .deliver("alice@example.org", &[BRIDGE], &chat_mail("alice@example.org", BRIDGE, "marker@localhost", "after"))
        .await;
    let all = wait_recorded(&d, 51).await;
    assert_eq!(all.len(), 51);
    assert_eq!(d.metric("coi_bridge_inbound_duplicates_total").await, Some(0.0), "nothing was fetched twice");
    let mut ids: Vec<_> = all.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 51);
    d.stop();
}

#[tokio::test]
async fn sigkill_in_the_middle_of_a_batch_loses_and_duplicates_nothing() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    // 200 mails with a 64 KiB attachment each, in place before the daemon first runs, so
    // that fetching and recording them takes long enough to be cut off.
    let payload: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    for i in 0..200 {
        let m = ChatMessage {
            message_id: format!("crash-{i}@localhost"),
            is_chat: true,
            from: Mailbox::new("alice@example.org", None),
            to: vec![Mailbox::new(BRIDGE, None)],
            date: Some(1_795_000_000 + i),
            text: format!("crash {i}"),
            attachments: vec![Attachment {
                name: "p.bin".into(),
                mime: "application/octet-stream".into(),
                data: payload.clone(),
            }],
            ..ChatMessage::default()
        };
        server.deliver("alice@example.org", &[BRIDGE], &coi::render(&m)).await;
    }
    server.wait_for_mails("bridge", 200, WAIT).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "batch_size = 10");
    let store = d.store().await;
    let deadline = std::time::Instant::now() + WAIT;
    let first_seen = loop {
        let n = count_in(&store).await;
        if n > 0 {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "nothing recorded; log:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    d.kill();
    let after_kill = count_in(&store).await;
    assert!(after_kill < 200, "the crash should land mid-way (got {after_kill}, first seen {first_seen})");
    // Whole batches only: a fetch round's first holds 8 mails (so a backlog starts
    // flowing soon), the others `batch_size`.
    assert!(after_kill >= 8 && (after_kill - 8) % 10 == 0, "only whole batches are committed (got {after_kill})");
    let cursor = store.imap_cursor("INBOX").await.expect("cursor").expect("set");
    assert_eq!(cursor.last_uid as usize, after_kill, "the cursor moved exactly with the recorded batches");

    d.restart();
    let all = wait_recorded(&d, 200).await;
    let mut ids: Vec<_> = all.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(all.len(), 200);
    assert!(all.iter().all(|m| m.attachments.len() == 1 && m.attachments[0].data == payload));
    d.stop();
}

#[tokio::test]
async fn dovecot_outage_reconnects_and_picks_up_mail_delivered_meanwhile() {
    coi_bridge::init_crypto();
    let mut server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;
    server
        .deliver("alice@example.org", &[BRIDGE], &chat_mail("alice@example.org", BRIDGE, "before@localhost", "before"))
        .await;
    wait_recorded(&d, 1).await;

    server.stop_dovecot();
    // Postfix queues the mail while Dovecot's LMTP is down.
    server
        .deliver("alice@example.org", &[BRIDGE], &chat_mail("alice@example.org", BRIDGE, "during@localhost", "during"))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(d.is_running(), "the daemon survives the outage");
    server.start_dovecot();

    // The reconnect backoff may have grown to tens of seconds during the outage (it is
    // capped at 60 s); allow for one full pause on a loaded machine.
    let store = d.store().await;
    let all = eventually(Duration::from_secs(150), "the mail delivered during the outage", || async {
        let all = store.messages(Direction::In).await.expect("read");
        all.iter().any(|m| m.message_id == "during@localhost").then_some(all)
    })
    .await;
    assert_eq!(all.len(), 2, "{all:?}");
    let reconnects = d.metric("coi_bridge_imap_reconnects_total").await.unwrap_or(0.0);
    assert!(reconnects >= 1.0, "reconnects counted: {reconnects}");
    d.stop();
}

#[tokio::test]
async fn uidvalidity_change_loses_and_duplicates_nothing() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;
    for i in 0..3 {
        server
            .deliver(
                "alice@example.org",
                &[BRIDGE],
                &chat_mail("alice@example.org", BRIDGE, &format!("old-{i}@localhost"), "old"),
            )
            .await;
    }
    wait_recorded(&d, 3).await;
    d.stop();

    // Recreate the mailbox: new UIDVALIDITY, UIDs start at 1 again. One old mail comes
    // back (a restored backup), two are new.
    std::fs::remove_dir_all(server.maildir("bridge")).expect("remove maildir");
    tokio::time::sleep(Duration::from_millis(1100)).await; // UIDVALIDITY is the creation second.
    for id in ["old-0@localhost", "new-0@localhost", "new-1@localhost"] {
        server.deliver("alice@example.org", &[BRIDGE], &chat_mail("alice@example.org", BRIDGE, id, "again")).await;
    }
    server.wait_for_mails("bridge", 3, WAIT).await;
    d.restart();
    let all = wait_recorded(&d, 5).await;
    let mut ids: Vec<_> = all.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["new-0@localhost", "new-1@localhost", "old-0@localhost", "old-1@localhost", "old-2@localhost"]
    );
    assert_eq!(d.metric("coi_bridge_imap_uidvalidity_changes_total").await, Some(1.0));
    assert_eq!(d.metric("coi_bridge_inbound_duplicates_total").await, Some(1.0));
    d.stop();
}

#[tokio::test]
async fn hostile_mail_is_logged_counted_and_never_blocks_the_mail_behind_it() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml");
    let huge_header = {
        let mut m = b"From: <mallory@example.org>\r\nMessage-ID: <huge@x>\r\nX-Huge: ".to_vec();
        m.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
        m.extend_from_slice(b"\r\n\r\nbody\r\n");
        m
    };
    let oversize = {
        let mut m = chat_mail("alice@example.org", BRIDGE, "oversize@localhost", "big");
        m.extend(
            std::iter::repeat_n(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 200_000)
                .flatten(),
        );
        m
    };
    let junk: Vec<u8> = (0..4096u32).map(|i| ((i * 7919 + 13) % 255 + 1) as u8).collect();
    let inputs: Vec<Vec<u8>> = vec![
        std::fs::read(fixtures.join("truncated-multipart.eml")).expect("fixture"),
        std::fs::read(fixtures.join("bad-base64.eml")).expect("fixture"),
        huge_header,
        std::fs::read(fixtures.join("missing-from.eml")).expect("fixture"),
        junk,
        oversize,
        chat_mail("alice@example.org", BRIDGE, "after-the-junk@localhost", "still flowing"),
    ];
    for raw in &inputs {
        server.append("bridge", raw).await;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "batch_size = 2\nmax_message_bytes = 12000000");
    let store = d.store().await;
    eventually(WAIT, "the good mail behind the bad ones", || async {
        store.message("after-the-junk@localhost").await.expect("read")
    })
    .await;
    assert!(d.is_running(), "no crash");
    // Truncated and bad-base64 mail is still a message, recorded with its defects counted.
    assert!(store.message("truncated@example.org").await.expect("read").is_some());
    assert!(store.message("badb64@example.org").await.expect("read").is_some());
    assert_eq!(store.rejected_count().await.expect("count"), 4, "huge header, missing From, junk, oversize kept aside");
    assert_eq!(d.metric("coi_bridge_inbound_rejected_total{reason=\"too_large\"}").await, Some(1.0));
    assert_eq!(d.metric("coi_bridge_inbound_rejected_total{reason=\"header_too_large\"}").await, Some(1.0));
    let missing_from = d.metric("coi_bridge_inbound_rejected_total{reason=\"missing_from\"}").await.unwrap_or(0.0);
    let not_mime = d.metric("coi_bridge_inbound_rejected_total{reason=\"not_mime\"}").await.unwrap_or(0.0);
    assert!(missing_from >= 1.0, "missing From counted");
    assert_eq!(missing_from + not_mime, 2.0, "missing From and junk counted");
    assert!(d.metric("coi_bridge_inbound_problems_total{problem=\"bad_encoding\"}").await.unwrap_or(0.0) >= 2.0);
    let log = d.log_text();
    assert!(log.contains("mail kept aside"), "a clear log line per rejected mail");
    assert!(log.contains("header section is"), "the reason is in the log");
    d.stop();
}

#[tokio::test]
async fn check_reports_each_server_and_fails_with_a_remedy() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(&server, state.path(), Link::Tls, "", support::free_port());
    let ok = std::process::Command::new(Daemon::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", support::BRIDGE_PASSWORD)
        .output()
        .expect("run check");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&ok.stderr));
    for item in ["config", "store", "imap", "imap idle", "smtp"] {
        assert_eq!(support::check_row(&out, item), Some("ok"), "{item:?} in:\n{out}");
    }

    // IMAP with STARTTLS on the plain port works too.
    let starttls = std::process::Command::new(Daemon::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", support::BRIDGE_PASSWORD)
        .env("COI_BRIDGE__IMAP__SECURITY", "starttls")
        .env("COI_BRIDGE__IMAP__PORT", server.imap_port().to_string())
        .output()
        .expect("run check");
    let out = String::from_utf8_lossy(&starttls.stdout);
    assert_eq!(starttls.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&starttls.stderr));
    assert!(support::check_row(&out, "imap") == Some("ok") && out.contains("Starttls"), "{out}");

    let bad = std::process::Command::new(Daemon::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "wrong")
        .env("COI_BRIDGE__SMTP__PORT", support::free_port().to_string())
        .output()
        .expect("run check");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(69), "{out}");
    assert!(support::check_row(&out, "imap") == Some("FAIL") && out.contains("refused the login"), "{out}");
    assert!(support::check_row(&out, "smtp") == Some("FAIL") && out.contains("nothing listens there"), "{out}");
    assert!(!out.contains("wrong") || !out.contains("password wrong"), "no secret in output");
}

#[tokio::test]
async fn opportunistic_sends_plaintext_only_to_recipients_without_a_key() {
    let server = mail_server!();
    let OutboxRig { _dir, store, worker, outbound, failures, token } = outbox_rig(&server, None).await;
    // Alice has a key on record, Carol (a classic e-mail user) has none.
    let alice_key = coi_bridge::coi::crypto::generate("alice@example.org", None).expect("key");
    let public = coi_bridge::coi::crypto::public(&alice_key);
    store
        .learn_contact_key(
            "alice@example.org",
            &coi_bridge::coi::crypto::fingerprint(&public),
            &coi_bridge::coi::crypto::public_to_bytes(&public),
            coi_bridge::store::keys::KeySource::Vcard,
            false,
        )
        .await
        .expect("key stored");
    let chat = ChatRef { kind: ChatKind::Group, key: "Mixed_group_1".into(), name: "Mixed".into() };
    let msg = ChatMessage {
        group: Some(Group { id: "Mixed_group_1".into(), name: "Mixed".into(), change: None }),
        text: "hello both".into(),
        ..ChatMessage::default()
    };
    outbound.queue(chat, &["alice@example.org".into(), "carol@example.org".into()], msg).await.expect("queued");
    let run = worker.run(token.clone());
    let check = async {
        let alice = server.wait_for_mails("alice", 1, WAIT).await;
        let carol = server.wait_for_mails("carol", 1, WAIT).await;
        token.cancel();
        (alice, carol)
    };
    let ((), (alice, carol)) = tokio::join!(run, check);
    assert_eq!((alice.len(), carol.len()), (1, 1), "one copy each");
    let alice_text = String::from_utf8_lossy(&alice[0]);
    assert!(
        alice_text.contains("multipart/encrypted") && !alice_text.contains("hello both"),
        "Alice's copy is encrypted"
    );
    let carol_msg = coi::parse(&carol[0], &Limits::default()).expect("parses").message;
    assert_eq!(carol_msg.text, "hello both", "Carol's copy is plaintext");
    assert!(carol_msg.autocrypt.is_some(), "with the bridge's Autocrypt header, so her client can answer encrypted");
    assert!(failures.lock().expect("lock").is_empty());
}
