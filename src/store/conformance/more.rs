//! The store conformance suite, continued: portals and the id map, the send journal, bridge state, keys, dead letters and retention.

use super::{Backend, inbound, one_to_one, record};
use crate::store::deadletter::DeadLetterRow;
use crate::store::keys::{AccountKeyRow, InviteRow, JoinRow, KeyLearned, KeySource};
use crate::store::portals::{RemoteCopy, SendRecord};
use crate::store::retention::{Caps, Release};
use crate::store::{ChatKind, ImapCursor, Rejected};

pub async fn portals_are_linked_moved_and_removed(b: &dyn Backend) {
    let s = b.store();
    let a = s.ensure_chat(&one_to_one("a@x.org")).await.expect("chat");
    let c = s.ensure_chat(&one_to_one("c@x.org")).await.expect("chat");
    let p = s.create_portal(a, "matrix", "!a:hs").await.expect("portal");
    assert_eq!(s.create_portal(a, "matrix", "!a:hs").await.expect("again"), p, "linking again is a no-op");
    assert_eq!((p.chat_id, p.bridge.as_str(), p.remote_chat.as_str()), (a, "matrix", "!a:hs"));
    s.create_portal(a, "telegram", "-100").await.expect("portal");
    s.create_portal(c, "matrix", "!c:hs").await.expect("portal");
    let of_a: Vec<&str> = Vec::from_iter(["matrix", "telegram"]);
    let got = s.portals_of_chat(a).await.expect("portals");
    assert_eq!(got.iter().map(|p| p.bridge.as_str()).collect::<Vec<_>>(), of_a, "in order of linking");
    assert_eq!(s.portals().await.expect("all").len(), 3);
    assert_eq!(s.portal_by_remote("matrix", "!c:hs").await.expect("read").map(|p| p.chat_id), Some(c));
    assert_eq!(s.portal_by_remote("telegram", "!c:hs").await.expect("read"), None, "by bridge and room");
    // A Telegram group upgraded to a supergroup: the portal follows.
    assert!(s.move_portal("telegram", "-100", "-1001").await.expect("move"));
    assert!(!s.move_portal("telegram", "-100", "-1002").await.expect("move"), "nothing left to move");
    assert_eq!(s.portal_by_remote("telegram", "-1001").await.expect("read").map(|p| p.chat_id), Some(a));
    assert!(s.delete_portal("matrix", "!a:hs").await.expect("delete"));
    assert!(!s.delete_portal("matrix", "!a:hs").await.expect("delete"));
    let left: Vec<String> = s.portals_of_chat(a).await.expect("portals").into_iter().map(|p| p.bridge).collect();
    assert_eq!(left, ["telegram"]);
}

pub async fn message_map_by_part(b: &dyn Backend) {
    let s = b.store();
    let copy = |id: &str, part: i64| RemoteCopy { remote_chat: "!r:hs".into(), remote_id: id.into(), part };
    for (id, part) in [("$f1", 2), ("$text", 0), ("$f0", 1)] {
        s.map_remote("m1@x", "matrix", &copy(id, part)).await.expect("map");
    }
    s.map_remote("m1@x", "matrix", &copy("$text", 0)).await.expect("mapping again is a no-op");
    s.map_remote("m1@x", "telegram", &RemoteCopy { remote_chat: "-100".into(), remote_id: "7".into(), part: 0 })
        .await
        .expect("map");
    let parts: Vec<(String, i64)> =
        s.remote_copies("m1@x", "matrix").await.expect("copies").into_iter().map(|c| (c.remote_id, c.part)).collect();
    assert_eq!(parts, [("$text".to_owned(), 0), ("$f0".to_owned(), 1), ("$f1".to_owned(), 2)], "by part");
    assert_eq!(s.remote_copies("m1@x", "telegram").await.expect("copies").len(), 1, "per bridge");
    assert!(s.remote_copies("m2@x", "matrix").await.expect("copies").is_empty());
    assert_eq!(s.coi_id_of_remote("matrix", "!r:hs", "$f0").await.expect("lookup"), Some("m1@x".into()));
    assert_eq!(s.coi_id_of_remote("matrix", "!other:hs", "$f0").await.expect("lookup"), None, "by room too");
    assert_eq!(s.coi_id_of_remote("telegram", "-100", "7").await.expect("lookup"), Some("m1@x".into()));
    // An edit needed fewer parts: the last one is forgotten; forgetting again is no error.
    s.unmap_remote("m1@x", "matrix", "$f1").await.expect("unmap");
    s.unmap_remote("m1@x", "matrix", "$f1").await.expect("unmap again");
    assert_eq!(s.remote_copies("m1@x", "matrix").await.expect("copies").len(), 2);
    assert_eq!(s.coi_id_of_remote("matrix", "!r:hs", "$f1").await.expect("lookup"), None);
}

pub async fn send_journal_begin_finish_abandon_prune(b: &dyn Backend) {
    let s = b.store();
    assert_eq!(s.begin_send("matrix", "coi-a").await.expect("begin"), SendRecord::New);
    // Begun and never finished: the process died during the post.
    assert!(matches!(s.begin_send("matrix", "coi-a").await.expect("begin"), SendRecord::Unfinished(t) if t > 0));
    assert_eq!(s.begin_send("telegram", "coi-a").await.expect("begin"), SendRecord::New, "per bridge");
    s.finish_send("matrix", "coi-a", &["$1".into(), "$2".into()]).await.expect("finish");
    assert_eq!(s.begin_send("matrix", "coi-a").await.expect("begin"), SendRecord::Done(vec!["$1".into(), "$2".into()]));
    // A finished post is never forgotten by an abandon (only by age).
    s.abandon_send("matrix", "coi-a").await.expect("abandon");
    assert!(matches!(s.begin_send("matrix", "coi-a").await.expect("begin"), SendRecord::Done(_)));
    // A post the side refused is forgotten: the next try is a fresh one.
    s.abandon_send("telegram", "coi-a").await.expect("abandon");
    assert_eq!(s.begin_send("telegram", "coi-a").await.expect("begin"), SendRecord::New);
    // A post that produced no id (a read receipt) is done all the same.
    s.finish_send("matrix", "coi-r", &[]).await.expect("finish without begin");
    assert_eq!(s.begin_send("matrix", "coi-r").await.expect("begin"), SendRecord::Done(vec![]));
    let now = chrono::Utc::now().timestamp();
    assert_eq!(s.prune_send_journal(now - 3600).await.expect("prune"), 0, "nothing that old");
    assert_eq!(s.prune_send_journal(now + 3600).await.expect("prune"), 3);
    assert_eq!(s.begin_send("matrix", "coi-a").await.expect("begin"), SendRecord::New);
}

pub async fn bridge_state_is_kept_per_bridge(b: &dyn Backend) {
    let s = b.store();
    assert_eq!(s.bridge_state("telegram", "offset").await.expect("read"), None);
    s.set_bridge_state("telegram", "offset", "41").await.expect("set");
    s.set_bridge_state("telegram", "offset", "42").await.expect("overwrite");
    s.set_bridge_state("matrix", "offset", "s1").await.expect("set");
    assert_eq!(s.bridge_state("telegram", "offset").await.expect("read"), Some("42".into()));
    assert_eq!(s.bridge_state("matrix", "offset").await.expect("read"), Some("s1".into()));
    assert_eq!(s.bridge_state("matrix", "other").await.expect("read"), None);
}

pub async fn verified_keys_are_never_replaced_silently(b: &dyn Backend) {
    let s = b.store();
    let a = "Alice@Example.org";
    let learn = |fpr: &'static str, key: &'static [u8], source, verified| {
        let s = s.clone();
        async move { s.learn_contact_key(a, fpr, key, source, verified).await.expect("learn") }
    };
    assert_eq!(learn("AAAA", b"k1", KeySource::Autocrypt, false).await, KeyLearned::New);
    assert_eq!(learn("AAAA", b"k1", KeySource::Autocrypt, false).await, KeyLearned::Same);
    // Key continuity: a key in use is not replaced by another Autocrypt key.
    let flagged = KeyLearned::Flagged { old_fingerprint: "AAAA".into() };
    assert_eq!(learn("BBBB", b"k2", KeySource::Autocrypt, false).await, flagged);
    // Nor by a SecureJoin that claims the address with another key.
    assert_eq!(learn("BBBB", b"k2", KeySource::SecureJoin, true).await, flagged);
    assert_eq!(s.contact_key(a).await.expect("read").expect("present").fingerprint, "AAAA");
    // The operator accepts the change: it becomes the verified key, the flag goes.
    assert!(s.accept_key_change(a, "bbbb").await.expect("accept"));
    assert!(!s.accept_key_change(a, "BBBB").await.expect("accepted once"));
    assert!(s.all_key_changes().await.expect("changes").is_empty());
    // SecureJoin confirms it.
    assert_eq!(learn("BBBB", b"k2", KeySource::SecureJoin, true).await, KeyLearned::Same);
    assert!(s.contact_key("alice@example.org").await.expect("read").expect("present").verified);
    // Now an Autocrypt header with another key is flagged, not applied.
    assert_eq!(
        learn("CCCC", b"k3", KeySource::Autocrypt, false).await,
        KeyLearned::Flagged { old_fingerprint: "BBBB".into() }
    );
    let k = s.contact_key(a).await.expect("read").expect("present");
    assert_eq!((k.fingerprint.as_str(), k.public_key.as_slice()), ("BBBB", b"k2".as_slice()));
    assert_eq!(s.key_changes(a).await.expect("changes"), vec![("BBBB".to_string(), "CCCC".to_string())]);
}

pub async fn gossip_neither_replaces_nor_is_replaced_silently(b: &dyn Backend) {
    let s = b.store();
    let who = "bob@x.org";
    assert_eq!(s.learn_contact_key(who, "G1", b"g1", KeySource::Gossip, false).await.expect("learn"), KeyLearned::New);
    // Other gossip does not move it, and a SecureJoin or Autocrypt claiming the
    // address with another key does not either (the takeover of a member).
    for source in [KeySource::Gossip, KeySource::Autocrypt, KeySource::SecureJoin] {
        assert_eq!(
            s.learn_contact_key(who, "M1", b"m1", source, source == KeySource::SecureJoin).await.expect("learn"),
            KeyLearned::Flagged { old_fingerprint: "G1".into() },
            "{source:?}"
        );
    }
    let k = s.contact_key(who).await.expect("read").expect("present");
    assert_eq!((k.fingerprint.as_str(), k.verified), ("G1", false));
    assert_eq!(s.all_key_changes().await.expect("changes").len(), 1, "one flag per new key");
}

pub async fn account_key_avatars_invites_and_joins(b: &dyn Backend) {
    let s = b.store();
    assert!(s.account_key().await.expect("read").is_none());
    let key = |fpr: &str| AccountKeyRow {
        fingerprint: fpr.into(),
        public_key: vec![1, 2],
        secret_key: vec![3, 4],
        protected: true,
        created_at: 1_700_000_000,
    };
    assert_eq!(s.init_account_key(&key("F1")).await.expect("init"), key("F1"));
    // A second process starting at once ends up with the first key.
    assert_eq!(s.init_account_key(&key("F2")).await.expect("init"), key("F1"));
    assert_eq!(s.account_key().await.expect("read"), Some(key("F1")));

    s.set_contact_avatar("Alice@x.org", b"\x89PNG").await.expect("avatar");
    assert_eq!(s.contact_avatar("alice@x.org").await.expect("read"), Some(b"\x89PNG".to_vec()));
    s.set_contact_avatar("alice@x.org", b"").await.expect("remove");
    assert_eq!(s.contact_avatar("alice@x.org").await.expect("read"), None);

    let one = InviteRow { invite_number: "n1".into(), auth: "a1".into(), group_id: None };
    let grp = InviteRow { invite_number: "n2".into(), auth: "a2".into(), group_id: Some("grp".into()) };
    s.add_invite(&one).await.expect("add");
    s.add_invite(&grp).await.expect("add");
    assert_eq!(s.invite("n2").await.expect("read"), Some(grp.clone()));
    assert_eq!(s.invite_by_auth("a1").await.expect("read"), Some(one.clone()));
    assert_eq!(s.invite("zz").await.expect("read"), None);
    assert_eq!(s.invites().await.expect("all").len(), 2);
    let now = chrono::Utc::now().timestamp();
    assert_eq!(s.live_invites(now - 60).await.expect("live").len(), 2);
    assert!(s.live_invites(now + 60).await.expect("live").is_empty(), "an expired invite is not tried");

    let join = JoinRow {
        id: 0,
        inviter_addr: "carol@x.org".into(),
        inviter_fpr: "CF".into(),
        invite_number: "in".into(),
        auth: "au".into(),
        group_id: Some("grp".into()),
        group_name: Some("Garden".into()),
        state: "requested".into(),
    };
    let row = s.add_join(&join).await.expect("join");
    assert_eq!(JoinRow { id: 0, ..row.clone() }, join);
    assert_eq!(s.add_join(&join).await.expect("again"), row, "a join is recorded once");
    assert_eq!(s.open_joins().await.expect("open"), vec![row.clone()]);
    s.set_join_state(row.id, "done").await.expect("state");
    assert!(s.open_joins().await.expect("open").is_empty());
    let of_group = s.joins_of_group("grp").await.expect("joins");
    assert_eq!(of_group.iter().map(|j| j.state.as_str()).collect::<Vec<_>>(), ["done"]);
    assert!(s.joins_of_group("other").await.expect("joins").is_empty());
}

pub async fn dead_letters_are_kept_once_per_event_with_the_latest_reason(b: &dyn Backend) {
    let s = b.store();
    let mut row = DeadLetterRow {
        bridge: "matrix".into(),
        remote_chat: Some("!room".into()),
        event: "$e".into(),
        kind: "gave_up".into(),
        reason: "store busy".into(),
        payload: "{}".into(),
        created_at: 1,
    };
    s.record_dead_letter(&row).await.expect("record");
    row.kind = "failed".into();
    row.reason = "403".into();
    s.record_dead_letter(&row).await.expect("again");
    let other = DeadLetterRow { bridge: "telegram".into(), remote_chat: None, ..row.clone() };
    s.record_dead_letter(&other).await.expect("other bridge");
    assert_eq!(s.dead_letters("matrix").await.expect("read"), vec![row]);
    assert_eq!(s.dead_letters("telegram").await.expect("read"), vec![other]);
    assert_eq!(s.dead_letter_count().await.expect("count"), 2);
}

pub async fn release_marks_drop_deletes_and_a_released_mail_set_apart_again_is_kept(b: &dyn Backend) {
    let s = b.store();
    let rejected =
        |n: u8, bytes: usize| Rejected { uid: u32::from(n), reason: format!("test {n}"), raw: vec![n; bytes] };
    let set_apart = |r: Vec<Rejected>| {
        let s = s.clone();
        async move {
            s.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 1 }, &[], &r).await.expect("record");
        }
    };
    set_apart(vec![rejected(1, 100), Rejected { uid: 2, reason: "too_large".into(), raw: vec![] }]).await;
    let rows = s.set_apart().await.expect("list");
    assert_eq!(rows.iter().map(|r| r.bytes).collect::<Vec<_>>(), [100, 0]);
    assert_eq!(rows[0].head, vec![1; 100]);
    let (a, b2) = (rows[0].id, rows[1].id);
    assert_eq!(s.release_rejected(b2).await.expect("release"), Release::NoCopy);
    assert_eq!(s.release_rejected(a).await.expect("release"), Release::Released);
    assert_eq!(s.release_rejected(a).await.expect("release"), Release::AlreadyReleased);
    assert_eq!(s.release_rejected(a + b2 + 999).await.expect("release"), Release::NotFound);
    assert!(s.set_apart().await.expect("list")[0].released);
    let waiting = s.released(10).await.expect("released");
    assert_eq!((waiting.len(), waiting[0].raw.len(), waiting[0].uid), (1, 100, 1));
    // Ingest sets the same bytes apart again: a new row, beside the released one.
    set_apart(vec![rejected(1, 100)]).await;
    assert_eq!(s.set_apart().await.expect("list").len(), 3);
    // Released rows are not pruned while they wait.
    let pruned = s.prune(Caps { older_than: -1, max_bytes: 0 }).await.expect("prune");
    assert_eq!(pruned.rejected, 2);
    s.forget_released(a).await.expect("forget");
    assert!(s.set_apart().await.expect("list").is_empty());
    set_apart(vec![rejected(3, 10)]).await;
    let id = s.set_apart().await.expect("list")[0].id;
    assert!(s.drop_rejected(id).await.expect("drop"));
    assert!(!s.drop_rejected(id).await.expect("drop"));
}

pub async fn pruning_takes_unverified_chats_and_set_apart_mail_only(b: &dyn Backend) {
    let s = b.store();
    let mut unverified = inbound(1, "<u@x>", "unverified:mallory@example.org");
    unverified.members_added.clear();
    let mut linked = inbound(2, "<l@x>", "unverified:linked@example.org");
    linked.members_added.clear();
    record(s.as_ref(), 2, &[unverified, linked, inbound(3, "<v@x>", "alice@x.org")]).await;
    let rejected = Rejected { uid: 4, reason: "not_mime".into(), raw: vec![9; 500] };
    s.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 4 }, &[], &[rejected]).await.expect("record");
    // An unverified chat a portal shows (an operator linked it) is left alone.
    let l = s.find_chat(ChatKind::Single, "unverified:linked@example.org").await.expect("find").expect("chat");
    s.create_portal(l.id, "matrix", "!room").await.expect("portal");
    let listed: Vec<(String, u64)> =
        s.unverified_chats().await.expect("list").into_iter().map(|c| (c.addr, c.messages)).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&("mallory@example.org".to_owned(), 1)), "{listed:?}");
    // Nothing is old, and everything fits: nothing goes.
    let roomy = Caps { older_than: 0, max_bytes: u64::MAX };
    assert!(s.prune(roomy).await.expect("prune").is_empty());
    // Everything is old (a cap in the future): only what may be pruned goes.
    let future = Caps { older_than: chrono::Utc::now().timestamp() + 3600, max_bytes: u64::MAX };
    let pruned = s.prune(future).await.expect("prune");
    assert_eq!((pruned.rejected, pruned.messages, pruned.chats), (1, 1, 1), "{pruned:?}");
    assert!(pruned.bytes >= 500, "{pruned:?}");
    assert!(s.message("<u@x>").await.expect("read").is_none());
    assert!(s.find_chat(ChatKind::Single, "unverified:mallory@example.org").await.expect("find").is_none());
    assert!(s.message("<v@x>").await.expect("read").is_some(), "an attributed chat is never pruned");
    assert!(s.message("<l@x>").await.expect("read").is_some(), "nor one a portal shows");
    assert_eq!(s.rejected_count().await.expect("count"), 0);
    assert!(s.prune(future).await.expect("prune").is_empty(), "a second pass finds nothing");
}
