//! Behaviour every store backend must have, run against SQLite.

use super::*;
use crate::coi::{Group, Mailbox};
use crate::store::SMTP_TARGET;
use coi_bridge_api::Attachment;

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("s.db")).await.expect("open");
    (dir, store)
}

fn chat(key: &str) -> ChatRef {
    ChatRef { kind: ChatKind::Single, key: key.into(), name: key.into() }
}

fn inbound(uid: u32, id: &str, chat_key: &str) -> InboundMessage {
    InboundMessage {
        uid,
        chat: chat(chat_key),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new(chat_key, Some("Peer")),
            text: format!("text of {id}"),
            attachments: vec![Attachment {
                name: "a.bin".into(),
                mime: "application/octet-stream".into(),
                data: vec![1, 2, 3],
            }],
            ..ChatMessage::default()
        },
        members_added: vec![chat_key.into()],
        members_removed: vec![],
        security: "verified",
        targets: vec![],
    }
}

fn outbound(id: &str, chat_key: &str) -> OutboundMail {
    OutboundMail {
        chat: chat(chat_key),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("me@x.org", None),
            text: id.into(),
            ..ChatMessage::default()
        },
        raw: format!("raw {id}").into_bytes(),
        envelope: Envelope { from: "me@x.org".into(), to: vec![chat_key.into()] },
        also: None,
        origin: crate::store::Origin::Local,
        targets: vec![],
    }
}

#[tokio::test]
async fn migrations_are_applied_once_and_newer_schemas_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).await.expect("open");
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    assert_eq!(s.schema_version().await.expect("version"), latest);
    drop(s);
    // Reopening applies nothing and keeps the data.
    let s = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(s.schema_version().await.expect("version"), latest);
    sqlx::raw_sql("PRAGMA user_version = 999").execute(&s.pool).await.expect("bump");
    drop(s);
    let err = SqliteStore::open(&path).await.err().expect("newer schema refused");
    assert!(format!("{err:#}").contains("newer than this coi-bridge knows"), "{err:#}");
}

#[tokio::test]
async fn batch_and_cursor_commit_together_and_dedupe_by_message_id() {
    let (_d, s) = fresh().await;
    let c1 = ImapCursor { uid_validity: 7, last_uid: 2 };
    let out = s
        .record_inbound("INBOX", c1, &[inbound(1, "a@x", "p@x.org"), inbound(2, "b@x", "p@x.org")], &[])
        .await
        .expect("record");
    assert_eq!(out, BatchOutcome { recorded: 2, duplicates: 0, rejected: 0 });
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), Some(c1));

    // The same mail again (a resync after UIDVALIDITY changed) is recognised.
    let c2 = ImapCursor { uid_validity: 8, last_uid: 1 };
    let out = s.record_inbound("INBOX", c2, &[inbound(1, "a@x", "p@x.org")], &[]).await.expect("record");
    assert_eq!(out, BatchOutcome { recorded: 0, duplicates: 1, rejected: 0 });
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), Some(c2));

    let m = s.message("a@x").await.expect("read").expect("present");
    assert_eq!(m.text, "text of a@x");
    assert_eq!(
        m.attachments,
        vec![StoredAttachment { name: "a.bin".into(), mime: "application/octet-stream".into(), data: vec![1, 2, 3] }]
    );
    let chats = s.chats().await.expect("chats");
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].members, vec!["p@x.org".to_string()]);
    assert_eq!(s.chat_of_any(&["nope".into(), "b@x".into()]).await.expect("lookup"), Some(chat("p@x.org")));
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_behind() {
    let (_d, s) = fresh().await;
    // Make the second insert of the batch fail inside the transaction.
    sqlx::raw_sql(
        "CREATE TRIGGER boom BEFORE INSERT ON message WHEN NEW.message_id = 'boom@x'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .execute(&s.pool)
    .await
    .expect("trigger");
    let err = s
        .record_inbound(
            "INBOX",
            ImapCursor { uid_validity: 1, last_uid: 2 },
            &[inbound(1, "a@x", "p@x.org"), inbound(2, "boom@x", "p@x.org")],
            &[],
        )
        .await
        .expect_err("batch fails");
    assert!(format!("{err}").contains("injected failure"), "{err}");
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), None, "cursor must not move");
    assert_eq!(s.message("a@x").await.expect("read"), None, "first message must be rolled back");
}

#[tokio::test]
async fn store_errors_on_a_closed_pool_are_retryable() {
    let (_d, s) = fresh().await;
    s.pool.close().await;
    let err = s.imap_cursor("INBOX").await.expect_err("closed pool fails");
    assert!(err.is_retry(), "{err}");
}

#[tokio::test]
async fn rejected_mail_is_kept_once() {
    let (_d, s) = fresh().await;
    let r = Rejected { uid: 3, reason: "not_mime".into(), raw: vec![0xff; 10] };
    let c = ImapCursor { uid_validity: 1, last_uid: 3 };
    assert_eq!(s.record_inbound("INBOX", c, &[], std::slice::from_ref(&r)).await.expect("record").rejected, 1);
    assert_eq!(s.record_inbound("INBOX", c, &[], &[r]).await.expect("record").rejected, 0);
    assert_eq!(s.rejected_count().await.expect("count"), 1);
}

#[tokio::test]
async fn outbox_keeps_order_per_chat_and_runs_chats_side_by_side() {
    let (_d, s) = fresh().await;
    for (id, chat) in [("a1", "a@x.org"), ("b1", "b@x.org"), ("a2", "a@x.org"), ("b2", "b@x.org")] {
        s.queue_outbound(&outbound(id, chat)).await.expect("queue");
    }
    let now = chrono::Utc::now().timestamp();
    let heads: Vec<String> =
        s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").into_iter().map(|i| i.message_id).collect();
    assert_eq!(heads, vec!["a1", "b1"], "only the head of each chat is due");

    // a1 must wait: a2 stays behind it even though a2 is due.
    let a1 = s.due_outbox(SMTP_TARGET, now, 10).await.expect("due")[0].clone();
    s.outbox_retry(a1.id, now + 100, "421 try later").await.expect("retry");
    let heads: Vec<String> =
        s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").into_iter().map(|i| i.message_id).collect();
    assert_eq!(heads, vec!["b1"]);
    assert_eq!(s.next_outbox_due(SMTP_TARGET).await.expect("next"), Some(now));
    assert_eq!(
        s.outbox_state(SMTP_TARGET, "a1").await.expect("state"),
        Some(OutboxState::Pending { attempts: 1, last_error: Some("421 try later".into()) })
    );

    // Once a1 is sent, a2 is the head.
    s.outbox_done(a1.id).await.expect("done");
    let heads: Vec<String> =
        s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").into_iter().map(|i| i.message_id).collect();
    assert_eq!(heads, vec!["b1", "a2"]);

    // A permanent failure moves the queue on and is recorded with its reason.
    let b1 = s.due_outbox(SMTP_TARGET, now, 10).await.expect("due")[0].clone();
    s.outbox_failed(b1.id, "550 no such user").await.expect("failed");
    assert_eq!(
        s.outbox_state(SMTP_TARGET, "b1").await.expect("state"),
        Some(OutboxState::Failed { reason: "550 no such user".into() })
    );
    let heads: Vec<String> =
        s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").into_iter().map(|i| i.message_id).collect();
    assert_eq!(heads, vec!["a2", "b2"]);
}

#[tokio::test]
async fn queueing_the_same_message_twice_sends_it_once() {
    let (_d, s) = fresh().await;
    s.queue_outbound(&outbound("x1", "a@x.org")).await.expect("queue");
    s.queue_outbound(&outbound("x1", "a@x.org")).await.expect("queue again");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").len(), 1);
    let out = s.messages(Direction::Out).await.expect("messages");
    assert_eq!(out.len(), 1);
}

#[tokio::test]
async fn group_chats_are_keyed_by_group_id_and_renamed() {
    let (_d, s) = fresh().await;
    let mut m = inbound(1, "g1@x", "p@x.org");
    m.chat = ChatRef { kind: ChatKind::Group, key: "abcdefghijkl".into(), name: "Old".into() };
    m.message.group = Some(Group { id: "abcdefghijkl".into(), name: "Old".into(), change: None });
    let mut m2 = inbound(2, "g2@x", "q@x.org");
    m2.chat = ChatRef { kind: ChatKind::Group, key: "abcdefghijkl".into(), name: "New".into() };
    m2.members_removed = vec!["p@x.org".into()];
    s.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 2 }, &[m, m2], &[]).await.expect("record");
    let chats = s.chats().await.expect("chats");
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].name, "New");
    assert_eq!(chats[0].members, vec!["q@x.org".to_string()]);
}

#[tokio::test]
async fn every_older_schema_migrates_with_its_data() {
    // For each older version N: build a database at N, write a message, open it with the
    // current code, and read the message back.
    for n in 1..MIGRATIONS.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let opts =
                SqliteConnectOptions::from_str("sqlite://").expect("opts").filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.expect("pool");
            for (v, sql) in &MIGRATIONS[..n] {
                sqlx::raw_sql(*sql).execute(&pool).await.expect("old migration");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {v}")))
                    .execute(&pool)
                    .await
                    .expect("version");
            }
            sqlx::raw_sql(
                "INSERT INTO chat (id, kind, key, name, created_at) VALUES (1, 'single', 'p@x.org', 'P', 0);
                 INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, recorded_at)
                 VALUES ('old@x', 1, 'in', 'text', 'p@x.org', 'P', 'from before', 0);",
            )
            .execute(&pool)
            .await
            .expect("old data");
            pool.close().await;
        }
        let s = SqliteStore::open(&path).await.expect("migrates");
        assert_eq!(s.schema_version().await.expect("version"), MIGRATIONS.last().map(|m| m.0).unwrap_or(0));
        assert_eq!(s.message("old@x").await.expect("read").map(|m| m.text), Some("from before".into()), "from v{n}");
    }
}

#[tokio::test]
async fn pre_and_post_messages_merge_in_either_order() {
    for post_first in [false, true] {
        let (_d, s) = fresh().await;
        let mut pre = inbound(1, "pre@x", "p@x.org");
        pre.message.attachments.clear();
        pre.message.text = "the text".into();
        pre.message.post_message_id = Some("post@x".into());
        let mut post = inbound(2, "post@x", "p@x.org");
        post.message.text = String::new();
        post.message.is_post_message = true;
        let order = if post_first { [post.clone(), pre.clone()] } else { [pre.clone(), post.clone()] };
        for (i, m) in order.iter().enumerate() {
            let c = ImapCursor { uid_validity: 1, last_uid: i as u32 + 1 };
            s.record_inbound("INBOX", c, std::slice::from_ref(m), &[]).await.expect("record");
        }
        let merged = s.message("pre@x").await.expect("read").expect("pre");
        assert_eq!(merged.text, "the text");
        assert_eq!(merged.attachments.len(), 1, "post first: {post_first}");
        let p = s.message("post@x").await.expect("read").expect("post");
        assert_eq!((p.kind.as_str(), p.attachments.len()), ("merged-post", 0), "post first: {post_first}");
    }
}

/// A database left at schema `version` by an older coi-bridge, with a chat, a message
/// and a pending outbox row written the way that version wrote them.
fn database_at(path: &std::path::Path, version: i64) {
    let c = rusqlite::Connection::open(path).expect("open");
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
        c.execute_batch(sql).unwrap_or_else(|e| panic!("migration {v}: {e}"));
    }
    c.execute_batch(&format!("PRAGMA user_version = {version}")).expect("version");
    c.execute_batch(
        "INSERT INTO chat (id, kind, key, name, created_at) VALUES (1, 'group', 'grp1', 'Garden', 1700000000);
         INSERT INTO chat_member (chat_id, addr) VALUES (1, 'alice@example.org');
         INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, recorded_at)
           VALUES ('old@example.org', 1, 'in', 'text', 'alice@example.org', 'Alice', 'from the old days', 1700000001);
         INSERT INTO outbox (target, chat_id, message_id, payload, next_attempt_at, created_at)
           VALUES ('matrix', 1, 'old@example.org', x'', 0, 1700000002);",
    )
    .expect("seed");
}

#[tokio::test]
async fn upgrades_from_every_earlier_schema_keeping_the_data() {
    let latest = MIGRATIONS.last().expect("migrations").0;
    for version in 1..latest {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        database_at(&path, version);
        let store = SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("upgrade from {version}: {e:#}"));
        assert_eq!(store.schema_version().await.expect("version"), latest, "from {version}");
        let m = store.message("old@example.org").await.expect("read").expect("the old message survives");
        assert_eq!(m.text, "from the old days", "from {version}");
        let chat = store.chat(m.chat_id).await.expect("chat").expect("the chat survives");
        assert_eq!((chat.name.as_str(), chat.members.as_slice()), ("Garden", &["alice@example.org".to_owned()][..]));
        // The pending row is still delivered, and its latency starts at its created_at.
        let due = store.due_outbox("matrix", i64::MAX, 10).await.expect("due");
        assert_eq!(due.len(), 1, "from {version}");
        assert_eq!(due[0].queued_at_ms, 1_700_000_002_000, "from {version}");
        // New features work on the upgraded database.
        crate::store::keys::KeyStore::set_contact_avatar(&store, "alice@example.org", &[1, 2, 3])
            .await
            .expect("0004 table");
        let stats = store.outbox_stats().await.expect("stats");
        assert_eq!((stats[0].target.as_str(), stats[0].depth), ("matrix", 1));
        drop(store);
        // Opening again applies nothing twice.
        let again = SqliteStore::open(&path).await.expect("reopen");
        assert_eq!(again.schema_version().await.expect("version"), latest);
    }
}

/// A shipped migration never changes: databases out there ran the old text, and the
/// upgrade test above builds old schemas from these same files. Add a new file instead.
#[test]
fn shipped_migrations_are_frozen() {
    use sha2::{Digest as _, Sha256};
    const SHIPPED: &[(i64, &str)] = &[
        (1, "bc541b27ef4ab054ae008773a49c270127c2f28d0b1d2f49506c366a59b44753"),
        (2, "a302c9d7eac8d1dd2e2d404116cbac9d0f6d5252e15b9a2395da5287ab70605d"),
        (3, "e5330dc11a2f690a13ba71b17e3b05ab564ad1a6e20ded57b4edbbc6eb998e17"),
        (4, "718580991b1707b53f923de204a8e4936ca99b8dad18c3c583374d81b03c14d3"),
        (5, "3f96cd197923fbe9e1e8cd9d5bc0a6ef6c38ad69e103c8bafdd7cab25f7cc5fa"),
        (6, "8265fef40015061b79e270803827494c130526c374e2877e1862d6c4ac048055"),
        (7, "c61cde0096f41dcd600abfaa472fcae13c4189cdcf8ed5962fa71ac74e15dea9"),
    ];
    assert_eq!(MIGRATIONS.len(), SHIPPED.len(), "a new migration: add its hash here once it ships");
    for ((version, sql), (v, hash)) in MIGRATIONS.iter().zip(SHIPPED) {
        assert_eq!(version, v);
        let got: String = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&got, hash, "migration {version:04} was edited after it shipped");
    }
}
