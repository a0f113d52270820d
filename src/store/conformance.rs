//! The store conformance suite: the [`Store`] contract as test cases, run against every backend (SQLite in the lib's unit tests, PostgreSQL from the integration tests, which can start a server).
//!
//! A backend instantiates it with [`store_conformance_tests!`](crate::store_conformance_tests),
//! given an async fn that returns a fresh, empty [`Backend`]:
//!
//! ```ignore
//! mod sqlite_conformance {
//!     async fn make() -> Box<dyn coi_bridge::store::conformance::Backend> { … }
//!     coi_bridge::store_conformance_tests!(make);
//! }
//! ```
//!
//! Each case is a public `async fn(&dyn Backend)` here; the macro makes one
//! `#[tokio::test]` per case. Cases only use the trait, so they hold for any backend.

use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::Attachment;

use super::{
    BatchOutcome, ChatKind, ChatRef, Direction, Envelope, ImapCursor, InboundMessage, MessageKind, Origin,
    OutboundMail, OutboxState, Rejected, SMTP_TARGET, Store, StoredAttachment,
};
use crate::coi::{ChatMessage, Group, GroupChange, Kind, Mailbox};

mod migration;
mod more;
pub use migration::*;
pub use more::*;

/// The Message-ID [`Backend::poison`] makes unwritable.
pub const POISON: &str = "poison@conformance.invalid";

/// What a backend gives the suite: a fresh store, and a way to make one write fail.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The store under test (fresh and empty when the backend was made).
    fn store(&self) -> Arc<dyn Store>;
    /// From now on, inserting a message with Message-ID [`POISON`] fails inside its
    /// transaction (a trigger, say), so the suite can see a whole batch roll back.
    async fn poison(&self);
}

/// One `#[tokio::test]` per case of the suite, each on a fresh backend from `$make`
/// (an async fn or closure returning `Box<dyn Backend>`). Use it inside a module of
/// its own; the test names are the case names.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            chats_and_members,
            inbound_batch_and_cursor_commit_together_and_dedupe,
            a_failed_batch_leaves_nothing_behind,
            rejected_mail_is_kept_once,
            inbound_targets_are_queued_once_for_a_new_message_only,
            outbox_keeps_order_per_chat_and_runs_chats_side_by_side,
            outbox_rows_report_state_stats_and_recipients,
            outbound_mail_is_queued_once_with_its_copies,
            group_chats_are_keyed_by_group_id_and_renamed,
            pre_and_post_messages_merge_in_either_order,
            every_message_kind_is_stored_and_read_back,
            portal_notices_are_queued_once,
            portals_are_linked_moved_and_removed,
            message_map_by_part,
            send_journal_begin_finish_abandon_prune,
            bridge_state_is_kept_per_bridge,
            verified_keys_are_never_replaced_silently,
            gossip_neither_replaces_nor_is_replaced_silently,
            account_key_avatars_invites_and_joins,
            dead_letters_are_kept_once_per_event_with_the_latest_reason,
            release_marks_drop_deletes_and_a_released_mail_set_apart_again_is_kept,
            pruning_takes_unverified_chats_and_set_apart_mail_only,
            remote_people_are_noted_joined_posted_and_left,
            remote_people_noted_at_once_are_all_kept,
            a_moved_chat_takes_its_people_invites_samples_and_announcements_along,
            pairings_are_kept_per_bridge_replaced_and_removed,
            personal_invites_are_bound_to_one_remote_user,
            migration_samples_are_kept_per_portal_oldest_first,
            announcements_are_made_once_even_by_callers_at_once,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = ($make)().await;
                $crate::store::conformance::$case(&*backend).await;
            }
        )*
    };
}

pub(crate) fn one_to_one(key: &str) -> ChatRef {
    ChatRef { kind: ChatKind::Single, key: key.into(), name: key.into() }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A COI message from `chat_key` with one file, recorded as from 1:1 `chat_key`.
pub(crate) fn inbound(uid: u32, id: &str, chat_key: &str) -> InboundMessage {
    InboundMessage {
        uid,
        chat: one_to_one(chat_key),
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

pub(crate) fn outbound(id: &str, chat_key: &str) -> OutboundMail {
    OutboundMail {
        chat: one_to_one(chat_key),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("me@x.org", None),
            text: id.into(),
            ..ChatMessage::default()
        },
        raw: format!("raw {id}").into_bytes(),
        envelope: Envelope { from: "me@x.org".into(), to: vec![chat_key.into()] },
        also: None,
        origin: Origin::Local,
        targets: vec![],
    }
}

pub(crate) async fn record(s: &dyn Store, last_uid: u32, messages: &[InboundMessage]) -> BatchOutcome {
    let cursor = ImapCursor { uid_validity: 1, last_uid };
    s.record_inbound("INBOX", cursor, messages, &[]).await.expect("record")
}

async fn heads(s: &dyn Store, target: &str) -> Vec<String> {
    s.due_outbox(target, now(), 10).await.expect("due").into_iter().map(|i| i.message_id).collect()
}

pub async fn chats_and_members(b: &dyn Backend) {
    let s = b.store();
    let grp = ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Garden".into() };
    let id = s.ensure_chat(&grp).await.expect("ensure");
    assert_eq!(s.ensure_chat(&grp).await.expect("again"), id, "one chat per kind and key");
    // An empty name keeps the one on record; another renames.
    s.ensure_chat(&ChatRef { name: String::new(), ..grp.clone() }).await.expect("ensure");
    assert_eq!(s.chat(id).await.expect("read").expect("chat").name, "Garden");
    s.ensure_chat(&ChatRef { name: "Allotment".into(), ..grp.clone() }).await.expect("rename");
    // The same key as a 1:1 chat is another chat.
    let single = s.ensure_chat(&one_to_one("grp_abcdefghij")).await.expect("single");
    assert_ne!(single, id);
    s.update_members(id, &["bob@x.org".into(), "alice@x.org".into()], &[]).await.expect("add");
    s.update_members(id, &["alice@x.org".into(), "carol@x.org".into()], &["bob@x.org".into()]).await.expect("change");
    let chat = s.find_chat(ChatKind::Group, "grp_abcdefghij").await.expect("find").expect("chat");
    assert_eq!((chat.id, chat.kind, chat.name.as_str()), (id, ChatKind::Group, "Allotment"));
    assert_eq!(chat.members, ["alice@x.org", "carol@x.org"], "sorted, without the removed");
    assert_eq!(chat.member_since.len(), 2);
    assert!(chat.member_since.iter().all(|t| *t > 0), "{:?}", chat.member_since);
    assert!(s.find_chat(ChatKind::Single, "nobody@x.org").await.expect("find").is_none());
    assert!(s.chat(id + single + 100).await.expect("read").is_none());
    let all: Vec<i64> = s.chats().await.expect("chats").iter().map(|c| c.id).collect();
    assert_eq!(all, [id, single], "in order of creation");
}

pub async fn inbound_batch_and_cursor_commit_together_and_dedupe(b: &dyn Backend) {
    let s = b.store();
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), None);
    let c1 = ImapCursor { uid_validity: 7, last_uid: 2 };
    let out = s
        .record_inbound("INBOX", c1, &[inbound(1, "a@x", "p@x.org"), inbound(2, "b@x", "p@x.org")], &[])
        .await
        .expect("record");
    assert_eq!(out, BatchOutcome { recorded: 2, duplicates: 0, rejected: 0 });
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), Some(c1));
    assert_eq!(s.imap_cursor("Other").await.expect("cursor"), None, "a cursor per folder");

    // The same mail again (a resync after UIDVALIDITY changed) is recognised.
    let c2 = ImapCursor { uid_validity: 8, last_uid: 1 };
    let out = s.record_inbound("INBOX", c2, &[inbound(1, "a@x", "p@x.org")], &[]).await.expect("record");
    assert_eq!(out, BatchOutcome { recorded: 0, duplicates: 1, rejected: 0 });
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), Some(c2));
    // The cursor moves with nothing to record (a recreated mailbox starts at 0).
    let c3 = ImapCursor { uid_validity: 9, last_uid: 0 };
    s.record_inbound("INBOX", c3, &[], &[]).await.expect("advance");
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), Some(c3));

    let m = s.message("a@x").await.expect("read").expect("present");
    assert_eq!(
        (m.text.as_str(), m.direction, m.kind, m.security.as_str()),
        ("text of a@x", Direction::In, MessageKind::Text, "verified")
    );
    assert_eq!((m.from_addr.as_str(), m.from_name.as_str()), ("p@x.org", "Peer"));
    assert_eq!(
        m.attachments,
        vec![StoredAttachment { name: "a.bin".into(), mime: "application/octet-stream".into(), data: vec![1, 2, 3] }]
    );
    assert!(s.message("nope@x").await.expect("read").is_none());
    let chats = s.chats().await.expect("chats");
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].members, vec!["p@x.org".to_string()]);
    assert_eq!(m.chat_id, chats[0].id);
    assert_eq!(s.chat_of_any(&["nope".into(), "b@x".into()]).await.expect("lookup"), Some(one_to_one("p@x.org")));
    assert_eq!(s.chat_of_any(&["nope".into()]).await.expect("lookup"), None);
    let ids: Vec<String> = s.messages(Direction::In).await.expect("list").into_iter().map(|m| m.message_id).collect();
    assert_eq!(ids, ["a@x", "b@x"], "oldest first");
    assert!(s.messages(Direction::Out).await.expect("list").is_empty());
}

pub async fn a_failed_batch_leaves_nothing_behind(b: &dyn Backend) {
    let s = b.store();
    b.poison().await;
    let mut first = inbound(1, "a@x", "p@x.org");
    first.targets = vec!["matrix".into()];
    let err = s
        .record_inbound(
            "INBOX",
            ImapCursor { uid_validity: 1, last_uid: 2 },
            &[first, inbound(2, POISON, "q@x.org")],
            &[Rejected { uid: 3, reason: "not_mime".into(), raw: vec![1] }],
        )
        .await
        .expect_err("the batch fails");
    assert!(!err.to_string().is_empty());
    assert_eq!(s.imap_cursor("INBOX").await.expect("cursor"), None, "the cursor must not move");
    assert_eq!(s.message("a@x").await.expect("read"), None, "the first message must be rolled back");
    assert!(s.chats().await.expect("chats").is_empty(), "and its chat");
    assert!(heads(s.as_ref(), "matrix").await.is_empty(), "and its outbox row");
    assert_eq!(s.rejected_count().await.expect("count"), 0, "and the mail set apart");
    // The same batch without the poisoned mail goes through.
    record(s.as_ref(), 1, &[inbound(1, "a@x", "p@x.org")]).await;
    assert!(s.message("a@x").await.expect("read").is_some());
}

pub async fn rejected_mail_is_kept_once(b: &dyn Backend) {
    let s = b.store();
    let r = Rejected { uid: 3, reason: "not_mime".into(), raw: vec![0xff; 10] };
    let c = ImapCursor { uid_validity: 1, last_uid: 3 };
    assert_eq!(s.record_inbound("INBOX", c, &[], std::slice::from_ref(&r)).await.expect("record").rejected, 1);
    assert_eq!(s.record_inbound("INBOX", c, &[], &[r]).await.expect("record").rejected, 0);
    // Mail too large to fetch is kept by its reason.
    let big = Rejected { uid: 4, reason: "too_large: 1 GB".into(), raw: vec![] };
    assert_eq!(s.record_inbound("INBOX", c, &[], &[big]).await.expect("record").rejected, 1);
    assert_eq!(s.rejected_count().await.expect("count"), 2);
}

pub async fn inbound_targets_are_queued_once_for_a_new_message_only(b: &dyn Backend) {
    let s = b.store();
    let mut a = inbound(1, "a@x", "p@x.org");
    a.targets = vec!["matrix".into(), "telegram".into()];
    let mut c = inbound(2, "c@x", "p@x.org");
    c.targets = vec!["matrix".into()];
    record(s.as_ref(), 2, &[a.clone(), c]).await;
    assert_eq!(heads(s.as_ref(), "matrix").await, ["a@x"], "the chat's head only");
    assert_eq!(heads(s.as_ref(), "telegram").await, ["a@x"]);
    let row = &s.due_outbox("matrix", now(), 10).await.expect("due")[0];
    assert_eq!((row.payload.is_empty(), row.envelope.as_ref(), row.attempts), (true, None, 0));
    assert!(row.queued_at_ms > 0);
    // A message recorded again queues nothing, even for a target it did not have.
    a.targets = vec!["matrix".into(), "signal".into()];
    assert_eq!(record(s.as_ref(), 3, &[a]).await.duplicates, 1);
    assert!(heads(s.as_ref(), "signal").await.is_empty());
    assert_eq!(s.outbox_depth("matrix").await.expect("depth"), 2);
    assert!(heads(s.as_ref(), SMTP_TARGET).await.is_empty(), "mail from COI never goes back to SMTP");
}

pub async fn outbox_keeps_order_per_chat_and_runs_chats_side_by_side(b: &dyn Backend) {
    let s = b.store();
    for (id, chat) in [("a1", "a@x.org"), ("b1", "b@x.org"), ("a2", "a@x.org"), ("b2", "b@x.org"), ("a3", "a@x.org")] {
        s.queue_outbound(&outbound(id, chat)).await.expect("queue");
    }
    let now = now();
    assert_eq!(heads(s.as_ref(), SMTP_TARGET).await, ["a1", "b1"], "only the head of each chat is due");
    // a1 must wait: a2 stays behind it even though a2 is due.
    let a1 = s.due_outbox(SMTP_TARGET, now, 10).await.expect("due")[0].clone();
    s.outbox_retry(a1.id, now + 100, "421 try later").await.expect("retry");
    assert_eq!(heads(s.as_ref(), SMTP_TARGET).await, ["b1"]);
    assert!(s.next_outbox_due(SMTP_TARGET).await.expect("next").is_some_and(|t| t <= now + 1));
    assert_eq!(
        s.outbox_state(SMTP_TARGET, "a1").await.expect("state"),
        Some(OutboxState::Pending { attempts: 1, last_error: Some("421 try later".into()) })
    );
    // Due later, it is due then (the retry-now path asks with a far `now`).
    let later: Vec<String> =
        s.due_outbox(SMTP_TARGET, i64::MAX, 10).await.expect("due").into_iter().map(|i| i.message_id).collect();
    assert_eq!(later, ["a1", "b1"]);
    assert_eq!(s.due_outbox(SMTP_TARGET, i64::MAX, 1).await.expect("due").len(), 1, "the limit holds");
    // Once a1 is sent, a2 is the head.
    s.outbox_done(a1.id).await.expect("done");
    assert_eq!(s.outbox_state(SMTP_TARGET, "a1").await.expect("state"), Some(OutboxState::Done));
    assert_eq!(heads(s.as_ref(), SMTP_TARGET).await, ["b1", "a2"]);
    // A permanent failure moves the queue on and is recorded with its reason.
    let b1 = s.due_outbox(SMTP_TARGET, now, 10).await.expect("due")[0].clone();
    s.outbox_failed(b1.id, "550 no such user").await.expect("failed");
    assert_eq!(
        s.outbox_state(SMTP_TARGET, "b1").await.expect("state"),
        Some(OutboxState::Failed { reason: "550 no such user".into() })
    );
    assert_eq!(heads(s.as_ref(), SMTP_TARGET).await, ["a2", "b2"]);
    assert_eq!(s.outbox_state(SMTP_TARGET, "zz").await.expect("state"), None);
    // Both heads wait: the next due time is the earlier head's, not that of a3 (due by its
    // own time, but behind a2), or an idle worker would wake for nothing until a2 is done.
    for (item, at) in s.due_outbox(SMTP_TARGET, now, 10).await.expect("due").into_iter().zip([now + 100, now + 200]) {
        s.outbox_retry(item.id, at, "421 try later").await.expect("retry");
    }
    assert_eq!(s.next_outbox_due(SMTP_TARGET).await.expect("next"), Some(now + 100));
}

pub async fn outbox_rows_report_state_stats_and_recipients(b: &dyn Backend) {
    let s = b.store();
    assert!(s.outbox_stats().await.expect("stats").is_empty());
    assert_eq!(s.next_outbox_due(SMTP_TARGET).await.expect("next"), None);
    s.ping().await.expect("ping");
    let mut mail = outbound("m1", "a@x.org");
    mail.envelope.to = vec!["a@x.org".into(), "b@x.org".into()];
    s.queue_outbound(&mail).await.expect("queue");
    let mut inb = inbound(1, "i1@x", "p@x.org");
    inb.targets = vec!["matrix".into()];
    record(s.as_ref(), 1, &[inb]).await;
    let stats = s.outbox_stats().await.expect("stats");
    let by_target: Vec<(&str, u64)> = stats.iter().map(|t| (t.target.as_str(), t.depth)).collect();
    assert_eq!(by_target, [("matrix", 1), (SMTP_TARGET, 1)], "by target, in name order");
    assert!(stats.iter().all(|t| t.oldest_queued_ms > 0));
    let row = s.due_outbox(SMTP_TARGET, now(), 10).await.expect("due").remove(0);
    assert_eq!((row.target.as_str(), row.payload.as_slice()), (SMTP_TARGET, b"raw m1".as_slice()));
    assert_eq!(row.envelope.as_ref(), Some(&mail.envelope));
    let narrowed = Envelope { from: "me@x.org".into(), to: vec!["b@x.org".into()] };
    s.outbox_set_recipients(row.id, &narrowed).await.expect("narrow");
    assert_eq!(s.due_outbox(SMTP_TARGET, now(), 10).await.expect("due")[0].envelope, Some(narrowed));
    s.outbox_done(row.id).await.expect("done");
    assert_eq!(s.outbox_depth(SMTP_TARGET).await.expect("depth"), 0);
    assert_eq!(s.outbox_stats().await.expect("stats").len(), 1, "done rows are not pending");
}

pub async fn outbound_mail_is_queued_once_with_its_copies(b: &dyn Backend) {
    let s = b.store();
    let mut mail = outbound("x1", "a@x.org");
    mail.origin = Origin::Bridge {
        bridge: "matrix".into(),
        copy: Some(super::portals::RemoteCopy { remote_chat: "!r:hs".into(), remote_id: "$e1".into(), part: 0 }),
    };
    mail.targets = vec!["telegram".into()];
    mail.also = Some((Envelope { from: "me@x.org".into(), to: vec!["nokey@x.org".into()] }, b"plain".to_vec()));
    s.queue_outbound(&mail).await.expect("queue");
    s.queue_outbound(&mail).await.expect("queue again");
    let smtp: Vec<(String, Vec<u8>)> = s
        .due_outbox(SMTP_TARGET, now(), 10)
        .await
        .expect("due")
        .into_iter()
        .map(|i| (i.message_id, i.payload))
        .collect();
    assert_eq!(smtp, [("x1".to_owned(), b"raw x1".to_vec())], "once; the plaintext copy waits behind it");
    assert_eq!(s.outbox_depth(SMTP_TARGET).await.expect("depth"), 2);
    assert!(matches!(s.outbox_state(SMTP_TARGET, "x1#plain").await.expect("state"), Some(OutboxState::Pending { .. })));
    assert_eq!(heads(s.as_ref(), "telegram").await, ["x1"]);
    assert!(heads(s.as_ref(), "matrix").await.is_empty(), "only the targets it was given");
    assert_eq!(s.coi_id_of_remote("matrix", "!r:hs", "$e1").await.expect("map"), Some("x1".into()));
    let out = s.messages(Direction::Out).await.expect("messages");
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].direction, out[0].security.as_str(), out[0].kind), (Direction::Out, "sent", MessageKind::Text));
}

pub async fn group_chats_are_keyed_by_group_id_and_renamed(b: &dyn Backend) {
    let s = b.store();
    let mut m = inbound(1, "g1@x", "p@x.org");
    m.chat = ChatRef { kind: ChatKind::Group, key: "abcdefghijkl".into(), name: "Old".into() };
    m.message.group = Some(Group { id: "abcdefghijkl".into(), name: "Old".into(), change: None });
    let mut m2 = inbound(2, "g2@x", "q@x.org");
    m2.chat = ChatRef { kind: ChatKind::Group, key: "abcdefghijkl".into(), name: "New".into() };
    m2.members_removed = vec!["p@x.org".into()];
    record(s.as_ref(), 2, &[m, m2]).await;
    let chats = s.chats().await.expect("chats");
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].name, "New");
    assert_eq!(chats[0].members, vec!["q@x.org".to_string()]);
}

pub async fn pre_and_post_messages_merge_in_either_order(b: &dyn Backend) {
    let s = b.store();
    for post_first in [false, true] {
        let (pre_id, post_id) = if post_first { ("pre2@x", "post2@x") } else { ("pre1@x", "post1@x") };
        let mut pre = inbound(1, pre_id, "p@x.org");
        pre.message.attachments.clear();
        pre.message.text = "the text".into();
        pre.message.post_message_id = Some(post_id.into());
        let mut post = inbound(2, post_id, "p@x.org");
        post.message.text = String::new();
        post.message.is_post_message = true;
        if !post_first {
            record(s.as_ref(), 1, &[pre.clone()]).await;
            let waiting = s.message(pre_id).await.expect("read").expect("pre");
            assert!(waiting.awaits_file, "a pre-message waits for its file");
        }
        let order = if post_first { vec![post.clone(), pre.clone()] } else { vec![post.clone()] };
        for m in order.iter() {
            record(s.as_ref(), 2, std::slice::from_ref(m)).await;
        }
        let merged = s.message(pre_id).await.expect("read").expect("pre");
        assert_eq!(merged.text, "the text");
        assert_eq!(merged.attachments.len(), 1, "post first: {post_first}");
        assert!(!merged.awaits_file);
        let p = s.message(post_id).await.expect("read").expect("post");
        assert_eq!((p.kind, p.attachments.len()), (MessageKind::MergedPost, 0), "post first: {post_first}");
    }
}

pub async fn every_message_kind_is_stored_and_read_back(b: &dyn Backend) {
    let s = b.store();
    let grp = |change| Some(Group { id: "abcdefghijkl".into(), name: "Garden".into(), change: Some(change) });
    let cases: Vec<(&str, ChatMessage, MessageKind, Option<&str>, &str)> = vec![
        ("t@x", ChatMessage { text: "hi".into(), ..ChatMessage::default() }, MessageKind::Text, None, "hi"),
        (
            "r@x",
            ChatMessage {
                kind: Kind::Reaction { emoji: "🎉".into() },
                in_reply_to: Some("t@x".into()),
                ..ChatMessage::default()
            },
            MessageKind::Reaction,
            Some("t@x"),
            "🎉",
        ),
        (
            "e@x",
            ChatMessage { kind: Kind::Edit { target: "t@x".into() }, text: "hello".into(), ..ChatMessage::default() },
            MessageKind::Edit,
            Some("t@x"),
            "hello",
        ),
        (
            "d@x",
            ChatMessage { kind: Kind::Delete { targets: vec!["t@x".into()] }, ..ChatMessage::default() },
            MessageKind::Delete,
            Some("t@x"),
            "",
        ),
        (
            "rr@x",
            ChatMessage {
                kind: Kind::ReadReceipt { original: "t@x".into(), additional: vec![] },
                ..ChatMessage::default()
            },
            MessageKind::Receipt,
            Some("t@x"),
            "",
        ),
        (
            "ma@x",
            ChatMessage { group: grp(GroupChange::MemberAdded("bob@x.org".into())), ..ChatMessage::default() },
            MessageKind::MemberAdded,
            Some("bob@x.org"),
            "",
        ),
        (
            "mr@x",
            ChatMessage { group: grp(GroupChange::MemberRemoved("bob@x.org".into())), ..ChatMessage::default() },
            MessageKind::MemberRemoved,
            Some("bob@x.org"),
            "",
        ),
        (
            "rn@x",
            ChatMessage { group: grp(GroupChange::NameChanged { old: "Old".into() }), ..ChatMessage::default() },
            MessageKind::Renamed,
            Some("Garden"),
            "",
        ),
        (
            "ds@x",
            ChatMessage {
                group: grp(GroupChange::DescriptionChanged { text: "About".into() }),
                ..ChatMessage::default()
            },
            MessageKind::Described,
            Some("About"),
            "",
        ),
        (
            "av@x",
            ChatMessage { group: grp(GroupChange::AvatarChanged(Some(b"GIF89a".to_vec()))), ..ChatMessage::default() },
            MessageKind::Avatar,
            None,
            "",
        ),
    ];
    let chat = ChatRef { kind: ChatKind::Group, key: "abcdefghijkl".into(), name: "Garden".into() };
    let batch: Vec<InboundMessage> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, m, ..))| {
            let mut one = inbound(i as u32 + 1, id, "p@x.org");
            one.chat = chat.clone();
            one.message = ChatMessage { message_id: (*id).into(), from: Mailbox::new("p@x.org", None), ..m.clone() };
            one
        })
        .collect();
    record(s.as_ref(), 20, &batch).await;
    for (id, _, kind, target, text) in &cases {
        let m = s.message(id).await.expect("read").expect("recorded");
        assert_eq!((m.kind, m.target.as_deref(), m.text.as_str()), (*kind, *target, *text), "{id}");
    }
    let avatar = s.message("av@x").await.expect("read").expect("recorded");
    assert_eq!(avatar.attachments.iter().map(|a| a.mime.as_str()).collect::<Vec<_>>(), ["image/gif"]);
    let mut report = outbound("rep@x", "p@x.org");
    report.message.kind = Kind::Report;
    s.queue_outbound(&report).await.expect("queue");
    assert_eq!(s.message("rep@x").await.expect("read").expect("recorded").kind, MessageKind::Report);
    let chat_id = s.find_chat(ChatKind::Group, "abcdefghijkl").await.expect("find").expect("chat").id;
    s.queue_portal_notice(chat_id, "n@x", "me@x.org", "not delivered", &[]).await.expect("notice");
    assert_eq!(s.message("n@x").await.expect("read").expect("recorded").kind, MessageKind::Notice);
}

pub async fn portal_notices_are_queued_once(b: &dyn Backend) {
    let s = b.store();
    let chat_id = s.ensure_chat(&one_to_one("p@x.org")).await.expect("chat");
    let targets = ["matrix".to_owned(), "telegram".to_owned()];
    s.queue_portal_notice(chat_id, "n1#failed", "me@x.org", "⚠️ not delivered", &targets).await.expect("notice");
    s.queue_portal_notice(chat_id, "n1#failed", "me@x.org", "⚠️ not delivered", &targets).await.expect("again");
    for t in &targets {
        assert_eq!(heads(s.as_ref(), t).await, ["n1#failed"], "{t}");
        assert_eq!(s.outbox_depth(t).await.expect("depth"), 1, "{t}");
    }
    let n = s.message("n1#failed").await.expect("read").expect("notice");
    assert_eq!(
        (n.direction, n.kind, n.text.as_str(), n.chat_id),
        (Direction::Out, MessageKind::Notice, "⚠️ not delivered", chat_id)
    );
    assert!(heads(s.as_ref(), SMTP_TARGET).await.is_empty(), "a notice for the bridged sides only");
}
