//! The hub with a recording bridge: fan-out from COI, delivery order, id map, retries, degradation, failure notices, and submit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::*;
use crate::coi::{Kind, Mailbox};
use crate::config::EncryptionPolicy;
use crate::hub::e2ee::Identity;
use crate::hub::submit::CoreHub;
use crate::store::sqlite::SqliteStore;
use crate::store::{ChatKind, ChatRef, Direction, ImapCursor, InboundMessage, OutboxState, SMTP_TARGET};
use async_trait::async_trait;
use coi_bridge_api::{
    BridgeContext, BridgeError, Capabilities, DeliveryKey, Hub as _, Person, RemoteEvent, SubmitError,
};

/// A remote network that records what it is given; results can be scripted.
#[derive(Default)]
pub(super) struct RecordingBridge {
    pub(super) got: Mutex<Vec<(RemoteChatId, Outgoing)>>,
    /// The peers it opened DM portals for.
    pub(super) dms: Mutex<Vec<Person>>,
    pub(super) script: Mutex<VecDeque<Result<(), DeliverError>>>,
    pub(super) reactions: bool,
    /// What it announces: the longest text and the reactions it takes.
    pub(super) max_text: Option<coi_bridge_api::TextLimit>,
    pub(super) allowed_reactions: Option<&'static [&'static str]>,
}

#[async_trait]
impl Bridge for RecordingBridge {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: true,
            deletes: true,
            media: true,
            reactions: self.reactions,
            max_text: self.max_text,
            allowed_reactions: self.allowed_reactions,
            ..Capabilities::default()
        }
    }
    async fn run(&self, _cx: BridgeContext) -> Result<(), BridgeError> {
        Ok(())
    }
    async fn open_dm(&self, peer: &Person) -> Result<RemoteChatId, DeliverError> {
        self.dms.lock().expect("lock").push(peer.clone());
        Ok(RemoteChatId(format!("!dm-{}", peer.id)))
    }
    async fn deliver(
        &self,
        to: &RemoteChatId,
        _key: &DeliveryKey,
        msg: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        if !self.reactions && matches!(msg, Outgoing::Reaction { .. }) {
            return Err(DeliverError::Unsupported);
        }
        if let Some(Err(e)) = self.script.lock().expect("lock").pop_front() {
            return Err(e);
        }
        let mut got = self.got.lock().expect("lock");
        got.push((to.clone(), msg.clone()));
        let id = format!("$ev{}", got.len());
        Ok(match msg {
            // Text first, then one part per file, as the Matrix bridge posts them.
            Outgoing::Message { attachments, .. } => std::iter::once(RemoteMsgId(id.clone()))
                .chain((0..attachments.len()).map(|i| RemoteMsgId(format!("{id}-f{i}"))))
                .collect(),
            Outgoing::ReadReceipt { .. } => Vec::new(),
            _ => vec![RemoteMsgId(id)],
        })
    }
}

pub(super) struct Rig {
    pub(super) _dir: tempfile::TempDir,
    identity: Arc<Identity>,
    pub(super) store: Arc<dyn Store>,
    pub(super) outbound: Arc<Outbound>,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.expect("store"));
    let identity = Arc::new(Identity::load_or_create(store.as_ref(), "bridge@x.org", None).await.expect("identity"));
    let outbound = Arc::new(Outbound::new(
        store.clone(),
        Mailbox::new("bridge@x.org", Some("Bridge")),
        identity.clone(),
        EncryptionPolicy::Opportunistic,
        crate::hub::wake::OutboxNotifier::new(),
    ));
    let chat = ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Room".into() };
    let chat_id = store.ensure_chat(&chat).await.expect("chat");
    store.update_members(chat_id, &["alice@x.org".into()], &[]).await.expect("members");
    store.create_portal(chat_id, "matrix", "!room:hs").await.expect("portal");
    store.create_portal(chat_id, "telegram", "-100").await.expect("portal");
    Rig { _dir: dir, identity, store, outbound, metrics: Arc::new(Metrics::new()) }
}

/// A COI message from Alice, recorded as IMAP ingest would.
pub(super) async fn from_coi(r: &Rig, uid: u32, id: &str, msg: ChatMessage) {
    let m = InboundMessage {
        uid,
        chat: ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Room".into() },
        message: ChatMessage { message_id: id.into(), from: Mailbox::new("alice@x.org", Some("Alice")), ..msg },
        members_added: vec![],
        members_removed: vec![],
        security: "verified",
        targets: vec![],
    };
    let mut batch = [m];
    crate::hub::route::route_inbound(r.store.as_ref(), &[], &mut batch).await.expect("route");
    r.store.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: uid }, &batch, &[]).await.expect("record");
}

pub(super) fn delivery(r: &Rig, bridge: Arc<RecordingBridge>) -> BridgeDelivery {
    let policy = RetryPolicy { base: Duration::from_millis(10), max_delay: Duration::from_millis(20), max_attempts: 3 };
    BridgeDelivery::new(
        BridgeId::from("matrix"),
        "Matrix",
        bridge,
        r.store.clone(),
        r.outbound.clone(),
        policy,
        r.metrics.clone(),
    )
}

/// Runs the worker until `done` holds (bounded by the test harness's own timeout).
pub(super) async fn drive(d: &BridgeDelivery, done: impl Fn() -> bool) {
    let token = CancellationToken::new();
    let stop = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
    };
    tokio::join!(d.run(token.clone()), stop);
}

#[tokio::test]
async fn coi_messages_fan_out_in_order_with_replies_translated_and_ids_mapped() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "first".into(), ..ChatMessage::default() }).await;
    from_coi(
        &r,
        2,
        "m2@x",
        ChatMessage { text: "second".into(), in_reply_to: Some("m1@x".into()), ..ChatMessage::default() },
    )
    .await;
    // One row per portal: both bridges got the messages queued.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(r.store.due_outbox("telegram", now, 10).await.expect("due").len(), 1, "head of the chat");
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    let got = bridge.got.lock().expect("lock").clone();
    match (&got[0].1, &got[1].1) {
        (Outgoing::Message { text: t1, sender, .. }, Outgoing::Message { text: t2, reply_to, .. }) => {
            assert_eq!((t1.as_str(), t2.as_str()), ("first", "second"), "in order");
            assert_eq!(sender.display_name, "Alice");
            assert_eq!(reply_to.as_ref().map(|r| r.0.as_str()), Some("$ev1"), "reply target translated");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(got[0].0, RemoteChatId::from("!room:hs"));
    let copies = r.store.remote_copies("m2@x", "matrix").await.expect("map");
    assert_eq!(copies[0].remote_id, "$ev2");
    assert_eq!(r.store.coi_id_of_remote("matrix", "!room:hs", "$ev1").await.expect("map").as_deref(), Some("m1@x"));
}

#[tokio::test]
async fn reactions_are_degraded_for_bridges_without_them() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "hello".into(), ..ChatMessage::default() }).await;
    from_coi(
        &r,
        2,
        "r1@x",
        ChatMessage {
            kind: Kind::Reaction { emoji: "👍".into() },
            in_reply_to: Some("m1@x".into()),
            ..ChatMessage::default()
        },
    )
    .await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    match &bridge.got.lock().expect("lock")[1].1 {
        Outgoing::Message { text, reply_to, .. } => {
            assert_eq!(text, "👍 to “hello”", "said as text, quoting the start of its target");
            assert_eq!(reply_to.as_ref().map(|r| r.0.as_str()), Some("$ev1"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn retries_then_gives_up_with_a_visible_notice_in_the_coi_chat() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "flaky".into(), ..ChatMessage::default() }).await;
    from_coi(&r, 2, "m2@x", ChatMessage { text: "doomed".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    bridge.script.lock().expect("lock").extend([
        Err(DeliverError::Retry { reason: "429".into(), after: Some(Duration::from_secs(1)) }),
        Ok(()),
        Err(DeliverError::Permanent("room is gone".into())),
    ]);
    let d = delivery(&r, bridge.clone());
    let store = r.store.clone();
    drive(&d, || bridge.got.lock().expect("lock").len() == 1 && bridge.script.lock().expect("lock").is_empty()).await;
    // Let the failed row settle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(store.outbox_state("matrix", "m1@x").await.expect("state"), Some(OutboxState::Done)));
    assert!(matches!(store.outbox_state("matrix", "m2@x").await.expect("state"), Some(OutboxState::Failed { .. })));
    let out = store.messages(Direction::Out).await.expect("read");
    let notice = out.iter().find(|m| m.text.contains("Not delivered to Matrix")).expect("a notice to the COI chat");
    assert!(notice.text.contains("doomed") && notice.text.contains("room is gone"), "{}", notice.text);
    assert_eq!(r.metrics.outbox.with_label_values(&["matrix", "failed"]).get(), 1);
    assert_eq!(r.metrics.outbox.with_label_values(&["matrix", "retry"]).get(), 1);
}

#[tokio::test]
async fn submitted_events_reach_coi_and_the_other_portals_once() {
    let r = rig().await;
    let hub = CoreHub::new(
        r.store.clone(),
        r.outbound.clone(),
        r.identity.clone(),
        "Bridge",
        HashMap::from([("matrix".into(), "Matrix".into())]),
    );
    let bob = coi_bridge_api::Person { id: "@bob:hs".into(), display_name: "Bob".into() };
    let msg = |id: &str, reply: Option<&str>| RemoteEvent::Message {
        chat: "!room:hs".into(),
        id: id.into(),
        sender: bob.clone(),
        text: format!("text {id}"),
        attachments: vec![],
        reply_to: reply.map(Into::into),
    };
    let from = BridgeId::from("matrix");
    hub.submit(&from, msg("$a", None)).await.expect("queued");
    hub.submit(&from, msg("$a", None)).await.expect("a resubmit is fine");
    hub.submit(&from, msg("$b", Some("$a"))).await.expect("queued");
    let out = r.store.messages(Direction::Out).await.expect("read");
    assert_eq!(out.len(), 2, "the resubmitted event was queued once");
    let a = r.store.coi_id_of_remote("matrix", "!room:hs", "$a").await.expect("map").expect("mapped");
    assert_eq!(out[0].message_id, a);
    assert_eq!(out[0].from_name, "Bob (Matrix)");
    assert_eq!(out[1].in_reply_to.as_deref(), Some(a.as_str()), "reply target translated to the Message-ID");
    // N-way: Telegram gets them, Matrix (the origin) does not; COI gets them by SMTP.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(r.store.due_outbox("telegram", now, 10).await.expect("due")[0].message_id, a);
    assert!(r.store.due_outbox("matrix", now, 10).await.expect("due").is_empty());
    assert_eq!(r.store.due_outbox(SMTP_TARGET, now, 10).await.expect("due").len(), 1, "head of the chat");

    // A reaction to a bridged message, and events for unknown rooms or messages.
    let react = RemoteEvent::Reaction {
        chat: "!room:hs".into(),
        id: "$r".into(),
        target: "$a".into(),
        sender: bob.clone(),
        emoji: "🎉".into(),
    };
    hub.submit(&from, react.clone()).await.expect("queued");
    hub.submit(&from, react).await.expect("a resubmitted reaction is fine");
    let out = r.store.messages(Direction::Out).await.expect("read");
    assert_eq!(
        out.iter()
            .filter(|m| m.kind == "reaction" && m.target.as_deref() == Some(a.as_str()) && m.text == "🎉")
            .count(),
        1,
        "queued once"
    );
    let edit = RemoteEvent::Edit {
        chat: "!room:hs".into(),
        id: "$e".into(),
        target: "$a".into(),
        sender: bob.clone(),
        new_text: "text $a, edited".into(),
    };
    hub.submit(&from, edit.clone()).await.expect("queued");
    hub.submit(&from, edit).await.expect("a resubmitted edit is fine");
    let out = r.store.messages(Direction::Out).await.expect("read");
    assert_eq!(out.iter().filter(|m| m.kind == "edit").count(), 1, "queued once");
    let lost = RemoteEvent::Edit {
        chat: "!room:hs".into(),
        id: "$e2".into(),
        target: "$zz".into(),
        sender: bob.clone(),
        new_text: "x".into(),
    };
    assert!(matches!(hub.submit(&from, lost).await, Err(SubmitError::Rejected(_))));
    let nowhere = RemoteEvent::Message {
        chat: "!other:hs".into(),
        id: "$c".into(),
        sender: bob,
        text: "x".into(),
        attachments: vec![],
        reply_to: None,
    };
    assert!(matches!(hub.submit(&from, nowhere).await, Err(SubmitError::Rejected(_))));
}

#[tokio::test]
async fn bridge_state_is_kept_per_bridge() {
    use coi_bridge_api::BridgeState as _;
    let r = rig().await;
    let matrix = crate::hub::submit::StoreState::new(r.store.clone(), &BridgeId::from("matrix"));
    let telegram = crate::hub::submit::StoreState::new(r.store.clone(), &BridgeId::from("telegram"));
    matrix.set("txn:1", "done").await.expect("set");
    telegram.set("offset", "41").await.expect("set");
    telegram.set("offset", "42").await.expect("overwrite");
    assert_eq!(matrix.get("txn:1").await.expect("get").as_deref(), Some("done"));
    assert_eq!(telegram.get("txn:1").await.expect("get"), None, "scoped by bridge id");
    assert_eq!(telegram.get("offset").await.expect("get").as_deref(), Some("42"));
}

#[tokio::test]
async fn commands_bridge_a_room_and_hand_out_its_invite() {
    use coi_bridge_api::Command;
    let r = rig().await;
    let hub = CoreHub::new(r.store.clone(), r.outbound.clone(), r.identity.clone(), "Bridge", HashMap::new());
    let from = BridgeId::from("matrix");
    let room = RemoteChatId::from("!fresh:hs");
    let not_yet = hub.command(&from, &room, "Fresh", Command::Invite).await.expect("answer");
    assert!(not_yet.text.contains("not bridged") && not_yet.link.is_none());

    let bridged = hub.command(&from, &room, "Fresh Room", Command::Bridge).await.expect("bridged");
    let link = bridged.link.clone().expect("an invite link");
    let invite = crate::coi::securejoin_link::Invite::parse(&link).expect("a valid link");
    let group = invite.group.expect("a group invite");
    assert_eq!(group.name, "Fresh Room");
    assert_eq!(invite.fingerprint, r.identity.fingerprint);
    let portal = r.store.portal_by_remote("matrix", "!fresh:hs").await.expect("read").expect("portal made");
    let chat = r.store.chat(portal.chat_id).await.expect("read").expect("chat");
    assert_eq!((chat.key.as_str(), chat.kind), (group.id.as_str(), ChatKind::Group));

    // Asking again gives a fresh invite to the same group, not a second group.
    let again = hub.command(&from, &room, "Fresh Room", Command::Bridge).await.expect("answer");
    let again = crate::coi::securejoin_link::Invite::parse(&again.link.expect("link")).expect("valid");
    assert_eq!(again.group.expect("group").id, group.id);
    assert!(hub.command(&from, &room, "", Command::Status).await.expect("status").text.contains("Fresh Room"));
    assert!(hub.command(&from, &room, "", Command::Help).await.expect("help").text.contains("bridge"));
    hub.command(&from, &room, "", Command::Unlink).await.expect("unlinked");
    assert!(r.store.portal_by_remote("matrix", "!fresh:hs").await.expect("read").is_none());
}

#[tokio::test]
async fn multi_part_copies_are_mapped_per_part_and_deleted_whole() {
    let r = rig().await;
    let file = coi_bridge_api::Attachment { name: "a.png".into(), mime: "image/png".into(), data: vec![1, 2, 3] };
    from_coi(&r, 1, "m1@x", ChatMessage { text: "look".into(), attachments: vec![file], ..ChatMessage::default() })
        .await;
    from_coi(
        &r,
        2,
        "d1@x",
        ChatMessage { kind: Kind::Delete { targets: vec!["m1@x".into()] }, ..ChatMessage::default() },
    )
    .await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 3).await;
    let copies = r.store.remote_copies("m1@x", "matrix").await.expect("map");
    let parts: Vec<(i64, &str)> = copies.iter().map(|c| (c.part, c.remote_id.as_str())).collect();
    assert_eq!(parts, vec![(0, "$ev1"), (1, "$ev1-f0")], "one row per part");
    let of_file = r.store.coi_id_of_remote("matrix", "!room:hs", "$ev1-f0").await.expect("map");
    assert_eq!(of_file.as_deref(), Some("m1@x"), "a reply to the image finds the message");
    let got = bridge.got.lock().expect("lock").clone();
    let deleted: Vec<&str> = got[1..]
        .iter()
        .map(|(_, o)| match o {
            Outgoing::Delete { target, .. } => target.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deleted, vec!["$ev1", "$ev1-f0"], "every part is removed");
}

#[tokio::test]
async fn read_receipts_cross_both_ways_to_the_right_people() {
    let r = rig().await;
    // COI → bridge: Alice read what a Matrix user wrote.
    from_coi(&r, 1, "m1@x", ChatMessage { text: "from Alice".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 1).await;
    let hub = CoreHub::new(r.store.clone(), r.outbound.clone(), r.identity.clone(), "Bridge", HashMap::new());
    let from = BridgeId::from("matrix");
    let bob = coi_bridge_api::Person { id: "@bob:hs".into(), display_name: "Bob".into() };
    let written = RemoteEvent::Message {
        chat: "!room:hs".into(),
        id: "$bob1".into(),
        sender: bob.clone(),
        text: "from Bob".into(),
        attachments: vec![],
        reply_to: None,
    };
    hub.submit(&from, written).await.expect("queued");
    let bobs = r.store.coi_id_of_remote("matrix", "!room:hs", "$bob1").await.expect("map").expect("mapped");
    from_coi(
        &r,
        2,
        "mdn1@x",
        ChatMessage { kind: Kind::ReadReceipt { original: bobs, additional: vec![] }, ..ChatMessage::default() },
    )
    .await;
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    match &bridge.got.lock().expect("lock")[1].1 {
        Outgoing::ReadReceipt { reader, up_to } => {
            assert_eq!((reader.id.as_str(), up_to.as_str()), ("alice@x.org", "$bob1"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(r.store.remote_copies("mdn1@x", "matrix").await.expect("map").is_empty(), "a receipt has no copy");

    // Bridge → COI: the owner read Alice's message: one MDN, to Alice only.
    // (SMTP sends in order per chat: clear what is ahead so the new row is due.)
    for item in r.store.due_outbox(SMTP_TARGET, i64::MAX, 100).await.expect("due") {
        r.store.outbox_done(item.id).await.expect("done");
    }
    let smtp_before = 0;
    let read = RemoteEvent::ReadReceipt { chat: "!room:hs".into(), up_to: "$ev1".into(), reader: bob.clone() };
    hub.submit(&from, read).await.expect("queued");
    let due = r.store.due_outbox(SMTP_TARGET, i64::MAX, 100).await.expect("due");
    assert_eq!(due.len(), smtp_before + 1);
    let mdn = due.last().expect("the receipt");
    assert_eq!(mdn.envelope.as_ref().expect("envelope").to, vec!["alice@x.org".to_string()]);
    let stored = r.store.message(&mdn.message_id).await.expect("read").expect("stored");
    assert_eq!((stored.kind.as_str(), stored.target.as_deref()), ("receipt", Some("m1@x")));
    // Reading a Matrix user's own message sends nothing to COI.
    let own = RemoteEvent::ReadReceipt { chat: "!room:hs".into(), up_to: "$bob1".into(), reader: bob };
    hub.submit(&from, own).await.expect("accepted");
    let receipts = r.store.messages(Direction::Out).await.expect("read");
    assert_eq!(receipts.iter().filter(|m| m.kind == "receipt").count(), 1, "no receipt for Bob's own message");
}

#[tokio::test]
async fn link_and_start_commands_make_portals_only_when_they_can_work() {
    use coi_bridge_api::Command;
    let r = rig().await;
    let hub = CoreHub::new(r.store.clone(), r.outbound.clone(), r.identity.clone(), "Bridge", HashMap::new());
    let from = BridgeId::from("matrix");
    // Another COI user's group invite, made by their own identity.
    let other = rig().await;
    let link = crate::hub::securejoin::create_invite(other.store.as_ref(), &other.identity, "Other", Some("Book Club"))
        .await
        .expect("invite")
        .render();
    let room = RemoteChatId::from("!books:hs");
    let bad = hub.command(&from, &room, "", Command::Link("https://i.delta.chat/#nonsense".into())).await;
    assert!(matches!(bad, Err(SubmitError::Rejected(_))), "{bad:?}");
    let reply = hub.command(&from, &room, "", Command::Link(link.clone())).await.expect("joining");
    assert!(reply.text.contains("Book Club"), "{}", reply.text);
    let portal = r.store.portal_by_remote("matrix", "!books:hs").await.expect("read").expect("portal");
    let chat = r.store.chat(portal.chat_id).await.expect("read").expect("chat");
    assert_eq!((chat.kind, chat.name.as_str()), (ChatKind::Group, "Book Club"));
    let request = r.store.messages(Direction::Out).await.expect("read");
    assert!(request.iter().any(|m| m.text == "Secure-Join"), "vc-request-pubkey queued");
    let twice = hub.command(&from, &room, "", Command::Link(link)).await.expect("answer");
    assert!(twice.text.contains("already linked"), "{}", twice.text);

    // start: only with the contact's key.
    let dm = RemoteChatId::from("!dm:hs");
    let no_key = hub.command(&from, &dm, "", Command::Start("carol@x.org".into())).await;
    assert!(matches!(&no_key, Err(SubmitError::Rejected(e)) if e.contains("no key for carol@x.org")), "{no_key:?}");
    let key = crate::coi::crypto::generate("carol@x.org", None).expect("key");
    let public = crate::coi::crypto::public(&key);
    r.store
        .learn_contact_key(
            "carol@x.org",
            &crate::coi::crypto::fingerprint(&public),
            &crate::coi::crypto::public_to_bytes(&public),
            crate::store::keys::KeySource::Vcard,
            false,
        )
        .await
        .expect("key");
    let started = hub.command(&from, &dm, "", Command::Start("Carol@x.org".into())).await.expect("started");
    assert!(started.text.contains("carol@x.org"), "{}", started.text);
    let portal = r.store.portal_by_remote("matrix", "!dm:hs").await.expect("read").expect("portal");
    let chat = r.store.chat(portal.chat_id).await.expect("read").expect("chat");
    assert_eq!((chat.kind, chat.key.as_str()), (ChatKind::Single, "carol@x.org"));
    let again = hub.command(&from, &RemoteChatId::from("!dm2:hs"), "", Command::Start("carol@x.org".into())).await;
    assert!(matches!(&again, Err(SubmitError::Rejected(e)) if e.contains("already has a portal")), "{again:?}");

    // bridge answers with the link drawn as a QR code too.
    let bridged = hub.command(&from, &RemoteChatId::from("!new:hs"), "New", Command::Bridge).await.expect("bridged");
    assert!(bridged.qr_png.expect("a QR image").starts_with(b"\x89PNG"));
}

#[tokio::test]
async fn a_contact_writing_one_to_one_gets_a_dm_portal_once() {
    let r = rig().await;
    let dm = ["matrix".to_owned()];
    let one = |uid: u32, id: &str, msg: ChatMessage| InboundMessage {
        uid,
        chat: ChatRef { kind: ChatKind::Single, key: "dave@x.org".into(), name: "Dave".into() },
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("dave@x.org", Some("Dave")),
            is_chat: true,
            ..msg
        },
        members_added: vec![],
        members_removed: vec![],
        security: "verified",
        targets: vec![],
    };
    let mut batch = [
        one(1, "d1@x", ChatMessage { text: "hi bridge".into(), ..ChatMessage::default() }),
        one(2, "d2@x", ChatMessage { text: "anyone there?".into(), ..ChatMessage::default() }),
    ];
    crate::hub::route::route_inbound(r.store.as_ref(), &dm, &mut batch).await.expect("route");
    r.store.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 2 }, &batch, &[]).await.expect("record");
    // A receipt and an unattributed mail do not open one.
    let receipt = one(
        3,
        "d3@x",
        ChatMessage {
            kind: Kind::ReadReceipt { original: "x@x".into(), additional: vec![] },
            ..ChatMessage::default()
        },
    );
    let mut stranger = one(4, "s1@x", ChatMessage { text: "unsigned".into(), ..ChatMessage::default() });
    stranger.chat.key = "unverified:eve@x.org".into();
    let mut more = [receipt, stranger];
    crate::hub::route::route_inbound(r.store.as_ref(), &dm, &mut more).await.expect("route");
    r.store.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 4 }, &more, &[]).await.expect("record");
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    let dms = bridge.dms.lock().expect("lock").clone();
    assert_eq!(dms.len(), 1, "one portal for the contact: {dms:?}");
    assert_eq!((dms[0].id.as_str(), dms[0].display_name.as_str()), ("dave@x.org", "Dave"));
    let got = bridge.got.lock().expect("lock").clone();
    assert!(got.iter().all(|(to, _)| to.as_str() == "!dm-dave@x.org"), "{got:?}");
    let portal = r.store.portal_by_remote("matrix", "!dm-dave@x.org").await.expect("read").expect("portal");
    assert_eq!(r.store.chat(portal.chat_id).await.expect("read").expect("chat").key, "dave@x.org");
    let now = chrono::Utc::now().timestamp();
    assert!(r.store.due_outbox("matrix", now, 10).await.expect("due").is_empty(), "nothing else was queued");
}

#[tokio::test]
async fn a_store_error_while_building_a_delivery_is_retried_not_read_as_nothing_to_deliver() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "original".into(), ..ChatMessage::default() }).await;
    let bridge = Arc::new(RecordingBridge::default());
    let d = delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 1).await;
    // The id map cannot be read for a moment (a broken disk, say).
    let db = rusqlite::Connection::open(r._dir.path().join("s.db")).expect("open");
    db.execute_batch("ALTER TABLE message_map RENAME TO message_map_away").expect("break");
    from_coi(
        &r,
        2,
        "e1@x",
        ChatMessage { kind: Kind::Edit { target: "m1@x".into() }, text: "edited".into(), ..ChatMessage::default() },
    )
    .await;
    let retries = r.metrics.outbox.with_label_values(&["matrix", "retry"]);
    drive(&d, || retries.get() >= 1).await;
    assert!(
        matches!(r.store.outbox_state("matrix", "e1@x").await.expect("state"), Some(OutboxState::Pending { .. })),
        "the edit waits: it was not dropped as 'its target never reached this bridge'"
    );
    db.execute_batch("ALTER TABLE message_map_away RENAME TO message_map").expect("mend");
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    match &bridge.got.lock().expect("lock")[1].1 {
        Outgoing::Edit { target, new_text, .. } => {
            assert_eq!((target.0.as_str(), new_text.as_str()), ("$ev1", "edited"))
        }
        other => panic!("unexpected {other:?}"),
    }
}
