//! `coi-bridge migrate-store` against Debian's PostgreSQL (tests/support/postgres.rs): a SQLite store with every kind of row, copied by the real binary, reads back the same through the Store trait; every account of an accounts dir lands in its own schema; a store in use, a target with rows and a non-SQLite source are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use coi_bridge::coi::{ChatMessage, Group, GroupChange, Kind, Mailbox};
use coi_bridge::store::deadletter::DeadLetterRow;
use coi_bridge::store::keys::{AccountKeyRow, InviteRow, JoinRow, KeySource};
use coi_bridge::store::migrate::TABLES;
use coi_bridge::store::migration::{MigrationSample, PairedVia, PairingRow, PersonalInviteRow, Seen};
use coi_bridge::store::portals::RemoteCopy;
use coi_bridge::store::postgres::PgStore;
use coi_bridge::store::sqlite::SqliteStore;
use coi_bridge::store::{
    ChatKind, ChatRef, Direction, Envelope, ImapCursor, InboundMessage, Origin, OutboundMail, Rejected, SMTP_TARGET,
    Store,
};
use coi_bridge_api::Attachment;

use crate::support::postgres::PgServer;

const PEER: &str = "peer@x.org";
const GROUP: &str = "abcdefghijkl";
/// Enough 1:1 messages that `message` and `attachment` take several batches of 500.
const BULK: u32 = 1200;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coi-bridge"));
    c.env_remove("COI_BRIDGE__ACCOUNT__PASSWORD");
    c
}

/// A config whose store is `url` under `dir`; the mail servers are never asked.
fn config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[account]\naddress = \"bridge@example.org\"\npassword_file = \"{pw}\"\n\n\
             [imap]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n\n\
             [store]\nurl = \"{url}\"\nstate_dir = \"{state}\"\n",
            pw = dir.join("pw").display(),
            state = dir.display()
        ),
    )
    .expect("config");
    path
}

fn migrate(config: &Path, to: &str) -> Output {
    bin().args(["migrate-store", "--config"]).arg(config).args(["--to", to]).output().expect("run coi-bridge")
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn chat(kind: ChatKind, key: &str, name: &str) -> ChatRef {
    ChatRef { kind, key: key.into(), name: name.into() }
}

fn inbound(uid: u32, chat: ChatRef, message: ChatMessage, targets: &[&str]) -> InboundMessage {
    InboundMessage {
        uid,
        chat,
        message,
        members_added: vec![PEER.into()],
        members_removed: vec![],
        security: "verified",
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn message(id: &str, text: &str) -> ChatMessage {
    ChatMessage {
        message_id: id.into(),
        from: Mailbox::new(PEER, Some("Peer")),
        text: text.into(),
        ..ChatMessage::default()
    }
}

fn file(name: &str, data: Vec<u8>) -> Attachment {
    Attachment { name: name.into(), mime: "application/octet-stream".into(), data }
}

fn outbound(id: &str, origin: Origin, targets: &[&str]) -> OutboundMail {
    OutboundMail {
        chat: chat(ChatKind::Single, PEER, "Peer"),
        message: ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("bridge@example.org", None),
            text: format!("out {id}"),
            ..ChatMessage::default()
        },
        raw: format!("raw {id}").into_bytes(),
        envelope: Envelope { from: "bridge@example.org".into(), to: vec![PEER.into(), "other@x.org".into()] },
        also: None,
        origin,
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// Every kind of row the store has, through the Store trait only.
async fn fill(s: &dyn Store) {
    let one = chat(ChatKind::Single, PEER, "Peer");
    let grp_chat = chat(ChatKind::Group, GROUP, "Garden");
    // Bulk text with files (BLOBs of several sizes), queued for a bridge.
    for chunk in 0..BULK / 100 {
        let batch: Vec<InboundMessage> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let mut m = message(&format!("bulk{n}@x"), &format!("bulk {n} ✓"));
                m.attachments = vec![file("a.bin", vec![(n % 251) as u8; (n as usize % 7) * 1000 + 1])];
                inbound(n + 1, one.clone(), m, if n % 3 == 0 { &["matrix"] } else { &[] })
            })
            .collect();
        s.record_inbound("INBOX", ImapCursor { uid_validity: 7, last_uid: (chunk + 1) * 100 }, &batch, &[])
            .await
            .expect("bulk");
    }
    // Every kind of message, in the group.
    let g = |change| Some(Group { id: GROUP.into(), name: "Garden".into(), change: Some(change) });
    let kinds = vec![
        ChatMessage {
            attachments: vec![file("b.bin", vec![0, 255, 1]), file("c.txt", b"c".to_vec())],
            ..message("t@x", "hi")
        },
        ChatMessage {
            kind: Kind::Reaction { emoji: "🎉".into() },
            in_reply_to: Some("t@x".into()),
            ..message("r@x", "")
        },
        ChatMessage { kind: Kind::Edit { target: "t@x".into() }, ..message("e@x", "hello") },
        ChatMessage { kind: Kind::Delete { targets: vec!["t@x".into()] }, ..message("d@x", "") },
        ChatMessage { kind: Kind::ReadReceipt { original: "t@x".into(), additional: vec![] }, ..message("rr@x", "") },
        ChatMessage { group: g(GroupChange::MemberAdded("bob@x.org".into())), ..message("ma@x", "") },
        ChatMessage { group: g(GroupChange::MemberRemoved("bob@x.org".into())), ..message("mr@x", "") },
        ChatMessage { group: g(GroupChange::NameChanged { old: "Old".into() }), ..message("rn@x", "") },
        ChatMessage { group: g(GroupChange::DescriptionChanged { text: "About".into() }), ..message("ds@x", "") },
        ChatMessage { group: g(GroupChange::AvatarChanged(Some(b"GIF89a".to_vec()))), ..message("av@x", "") },
        // A pre-message still waiting for its file, and a pre/post pair merged.
        ChatMessage { post_message_id: Some("never@x".into()), ..message("wait@x", "big file follows") },
        ChatMessage { post_message_id: Some("post@x".into()), ..message("pre@x", "with file") },
        ChatMessage {
            is_post_message: true,
            attachments: vec![file("big.bin", vec![7; 70_000])],
            ..message("post@x", "")
        },
    ];
    let batch: Vec<InboundMessage> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, m)| inbound(BULK + 1 + i as u32, grp_chat.clone(), m, &["matrix", "telegram"]))
        .collect();
    let rejected = [
        Rejected { uid: BULK + 50, reason: "not_mime".into(), raw: vec![0xff; 2000] },
        Rejected { uid: BULK + 51, reason: "too_large: 1 GB".into(), raw: vec![] },
        Rejected { uid: BULK + 52, reason: "bad signature".into(), raw: b"Message-ID: <q@x>\r\n\r\nhi".to_vec() },
    ];
    s.record_inbound("INBOX", ImapCursor { uid_validity: 7, last_uid: BULK + 60 }, &batch, &rejected)
        .await
        .expect("kinds");
    s.record_inbound("DeltaChat", ImapCursor { uid_validity: 9, last_uid: 3 }, &[], &[]).await.expect("folder");
    let set_apart = s.set_apart().await.expect("set apart");
    let signed = set_apart.iter().find(|r| r.reason == "bad signature").expect("set apart");
    s.release_rejected(signed.id).await.expect("release");
    let group_id = s.find_chat(ChatKind::Group, GROUP).await.expect("find").expect("group").id;
    s.update_members(group_id, &["carol@x.org".into(), "dave@x.org".into()], &["dave@x.org".into()])
        .await
        .expect("members");

    // Outbound: SMTP and bridges, pending, done and failed; a report; notices; the id map.
    s.queue_outbound(&outbound("o1@x", Origin::Local, &["matrix"])).await.expect("o1");
    let copy = RemoteCopy { remote_chat: "-100".into(), remote_id: "42".into(), part: 0 };
    let bridged = Origin::Bridge { bridge: "telegram".into(), copy: Some(copy) };
    s.queue_outbound(&outbound("o2@x", bridged, &["matrix"])).await.expect("o2");
    let mut plain = outbound("o3@x", Origin::Notice, &[]);
    plain.also =
        Some((Envelope { from: "bridge@example.org".into(), to: vec!["plain@x.org".into()] }, b"plain".to_vec()));
    s.queue_outbound(&plain).await.expect("o3");
    let mut report = outbound("rep@x", Origin::Local, &[]);
    report.message.kind = Kind::Report;
    s.queue_outbound(&report).await.expect("report");
    s.queue_portal_notice(group_id, "n1#failed", "bridge@example.org", "⚠️ not delivered", &["matrix".into()])
        .await
        .expect("notice");
    // One chat's head at a time (per-chat order): done, failed, then waiting for a retry.
    for target in [SMTP_TARGET, "matrix"] {
        for step in 0..3 {
            let due = s.due_outbox(target, i64::MAX / 2, 100).await.expect("due");
            let head = due.first().unwrap_or_else(|| panic!("{target}: nothing due at step {step}"));
            match step {
                0 => s.outbox_done(head.id).await.expect("done"),
                1 => s.outbox_failed(head.id, "550 no such user").await.expect("failed"),
                _ => {
                    s.outbox_retry(head.id, 4_000_000_000, "421 try later").await.expect("retry");
                    let env = Envelope { from: "bridge@example.org".into(), to: vec![PEER.into()] };
                    if target == SMTP_TARGET {
                        s.outbox_set_recipients(head.id, &env).await.expect("recipients");
                    }
                }
            }
        }
    }
    for part in 0..2 {
        s.map_remote("t@x", "matrix", &RemoteCopy { remote_chat: "!room:hs".into(), remote_id: "$t".into(), part })
            .await
            .expect("map");
    }

    // Portals, bridge state, the send journal, dead letters.
    s.create_portal(group_id, "matrix", "!room:hs").await.expect("portal");
    let one_id = s.find_chat(ChatKind::Single, PEER).await.expect("find").expect("1:1").id;
    s.create_portal(one_id, "telegram", "-100").await.expect("portal");
    s.set_bridge_state("telegram", "offset", "12345").await.expect("state");
    s.set_bridge_state("matrix", "since", "s72_1").await.expect("state");
    s.begin_send("matrix", "done-key").await.expect("begin");
    s.finish_send("matrix", "done-key", &["$1".into(), "$2".into()]).await.expect("finish");
    s.begin_send("telegram", "open-key").await.expect("begin");
    for (bridge, event) in [("matrix", "$bad"), ("telegram", "update 9")] {
        let row = DeadLetterRow {
            bridge: bridge.into(),
            remote_chat: Some("!room:hs".into()),
            event: event.into(),
            kind: "failed".into(),
            reason: "403".into(),
            payload: "{\"x\":1}".into(),
            created_at: 1_700_000_000,
        };
        s.record_dead_letter(&row).await.expect("dead letter");
    }

    // Keys: the bridge's, contacts' (verified and not), a kept-aside change, avatars,
    // invites and joins.
    let key = AccountKeyRow {
        fingerprint: "F1".into(),
        public_key: vec![1; 300],
        secret_key: vec![2; 600],
        protected: true,
        created_at: 1_700_000_000,
    };
    s.init_account_key(&key).await.expect("account key");
    s.learn_contact_key(PEER, "PF", &[3; 200], KeySource::Autocrypt, false).await.expect("key");
    s.learn_contact_key("carol@x.org", "CF", &[4; 200], KeySource::SecureJoin, true).await.expect("key");
    s.learn_contact_key("carol@x.org", "CF2", &[5; 200], KeySource::Gossip, false).await.expect("change");
    s.set_contact_avatar(PEER, b"\x89PNG avatar").await.expect("avatar");
    for (n, group) in [("n1", None), ("n2", Some(GROUP.to_owned()))] {
        let invite = InviteRow { invite_number: n.into(), auth: format!("auth-{n}"), group_id: group };
        s.add_invite(&invite).await.expect("invite");
    }
    for (i, state) in ["requested", "done"].into_iter().enumerate() {
        let join = JoinRow {
            id: 0,
            inviter_addr: format!("inviter{i}@x.org"),
            inviter_fpr: format!("IF{i}"),
            invite_number: format!("in{i}"),
            auth: format!("au{i}"),
            group_id: Some("grp".into()),
            group_name: Some("Garden".into()),
            state: "requested".into(),
        };
        let row = s.add_join(&join).await.expect("join");
        s.set_join_state(row.id, state).await.expect("state");
    }

    // Migration visibility: people seen, pairings, a personal invite, samples, an
    // announcement.
    for (user, seen, at) in [("42", Seen::Posted, 100), ("7", Seen::Joined, 110), ("9", Seen::Left, 120)] {
        s.note_remote_person("telegram", "-100", user, "Someone", seen, at).await.expect("person");
    }
    s.note_remote_person("matrix", "!room:hs", "@ann:hs", "Ann", Seen::Posted, 130).await.expect("person");
    for (bridge, user, via) in [("telegram", "42", PairedVia::Invite), ("matrix", "@ann:hs", PairedVia::Admin)] {
        let row =
            PairingRow { bridge: bridge.into(), remote_user: user.into(), address: PEER.into(), via, paired_at: 140 };
        s.pair(&row).await.expect("pairing");
    }
    let invite = PersonalInviteRow {
        auth: "auth-n1".into(),
        bridge: "telegram".into(),
        remote_user: "7".into(),
        remote_chat: Some("-100".into()),
        created_at: 150,
    };
    s.add_personal_invite(&invite).await.expect("personal invite");
    for at in [160, 170] {
        let sample = MigrationSample {
            bridge: "telegram".into(),
            remote_chat: "-100".into(),
            at,
            remote_members: 3,
            coi_members: 2,
            moved: at - 159,
        };
        s.record_migration_sample(&sample).await.expect("sample");
    }
    assert!(s.announce_once("telegram", "-100", "closable", 180).await.expect("announce"));
}

/// What the store answers to every read, as text (two stores with the same rows answer the same).
async fn answers(s: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |what: &str, v: String| out.push(format!("{what}: {v}"));
    push("chats", format!("{:?}", s.chats().await.expect("chats")));
    for dir in [Direction::In, Direction::Out] {
        let all = s.messages(dir).await.expect("messages");
        for m in &all {
            let one = s.message(&m.message_id).await.expect("message");
            assert_eq!(one.as_ref(), Some(m));
        }
        push("messages", format!("{dir:?} {all:?}"));
    }
    for folder in ["INBOX", "DeltaChat", "Nope"] {
        push("cursor", format!("{folder} {:?}", s.imap_cursor(folder).await.expect("cursor")));
    }
    push("rejected", format!("{}", s.rejected_count().await.expect("rejected")));
    push("set_apart", format!("{:?}", s.set_apart().await.expect("set apart")));
    push("released", format!("{:?}", s.released(10).await.expect("released")));
    push("unverified", format!("{:?}", s.unverified_chats().await.expect("unverified")));
    push("stats", format!("{:?}", s.outbox_stats().await.expect("stats")));
    for target in [SMTP_TARGET, "matrix", "telegram"] {
        push("due", format!("{target} {:?}", s.due_outbox(target, i64::MAX / 2, 1000).await.expect("due")));
        push("next", format!("{target} {:?}", s.next_outbox_due(target).await.expect("next")));
        push("depth", format!("{target} {}", s.outbox_depth(target).await.expect("depth")));
        for id in ["o1@x", "o2@x", "o3@x", "rep@x", "n1#failed", "t@x", "bulk0@x", "bulk3@x"] {
            push("state", format!("{target} {id} {:?}", s.outbox_state(target, id).await.expect("state")));
        }
    }
    push("portals", format!("{:?}", s.portals().await.expect("portals")));
    push("copies", format!("{:?}", s.remote_copies("t@x", "matrix").await.expect("copies")));
    push("copies", format!("{:?}", s.remote_copies("o2@x", "telegram").await.expect("copies")));
    push("coi id", format!("{:?}", s.coi_id_of_remote("telegram", "-100", "42").await.expect("coi id")));
    push("chat of", format!("{:?}", s.chat_of_any(&["zz@x".into(), "o2@x".into()]).await.expect("chat of")));
    for (bridge, key) in [("telegram", "offset"), ("matrix", "since"), ("matrix", "nope")] {
        push("state", format!("{:?}", s.bridge_state(bridge, key).await.expect("bridge state")));
    }
    push("journal", format!("{:?}", s.begin_send("matrix", "done-key").await.expect("journal")));
    let key = s.account_key().await.expect("account key").expect("a key");
    push("account", format!("{:?} {:?} {:?}", key, key.public_key, key.secret_key));
    for addr in [PEER, "carol@x.org"] {
        push("contact", format!("{:?}", s.contact_key(addr).await.expect("contact key")));
        push("avatar", format!("{:?}", s.contact_avatar(addr).await.expect("avatar")));
        push("changes", format!("{:?}", s.key_changes(addr).await.expect("changes")));
    }
    push("all changes", format!("{:?}", s.all_key_changes().await.expect("changes")));
    push("invites", format!("{:?}", s.invites().await.expect("invites")));
    push("invite", format!("{:?}", s.invite_by_auth("auth-n2").await.expect("invite")));
    push("joins", format!("{:?}", s.open_joins().await.expect("joins")));
    push("joins", format!("{:?}", s.joins_of_group("grp").await.expect("joins")));
    for bridge in ["matrix", "telegram"] {
        push("dead", format!("{:?}", s.dead_letters(bridge).await.expect("dead letters")));
        push("pairings", format!("{:?}", s.pairings(bridge).await.expect("pairings")));
        push("paired", format!("{:?}", s.pairings_of_address(bridge, PEER).await.expect("pairings")));
    }
    for (bridge, chat) in [("telegram", "-100"), ("matrix", "!room:hs")] {
        push("people", format!("{:?}", s.remote_people(bridge, chat).await.expect("people")));
        push("samples", format!("{:?}", s.migration_samples(bridge, chat).await.expect("samples")));
    }
    push("personal", format!("{:?}", s.personal_invite("auth-n1").await.expect("personal invite")));
    // The announcement came along: made once already.
    push("announced", format!("{:?}", s.announce_once("telegram", "-100", "closable", 190).await.expect("announce")));
    out
}

/// The tables of the SQLite schema, read from sqlite_master.
fn sqlite_tables(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut q = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("prepare");
    q.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("names")
}

/// Waits until nothing has the SQLite file open (a dropped pool closes its connections).
async fn closed(db: &Path) {
    crate::support::eventually(std::time::Duration::from_secs(30), "the store closed", || async {
        let c = rusqlite::Connection::open(db).ok()?;
        c.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; SELECT 1 FROM chat; ROLLBACK").ok()
    })
    .await;
}

#[tokio::test]
async fn a_sqlite_store_with_every_kind_of_row_is_copied_into_postgresql_and_reads_back_the_same() {
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "secret\n").expect("pw");
    let db = dir.path().join("store.db");
    let cfg = config(dir.path(), "sqlite://store.db");

    let lite: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.expect("sqlite"));
    fill(lite.as_ref()).await;
    let before = answers(lite.as_ref()).await;

    // No table of the SQLite schema can be left out of the copy (a future migration's).
    let tables = sqlite_tables(&db);
    for t in &tables {
        assert!(TABLES.contains(&t.as_str()), "table {t} of the SQLite schema is not in migrate::TABLES");
    }
    assert_eq!(tables.len(), TABLES.len(), "{tables:?}");

    // While the store is open (as the running daemon has it), the copy is refused.
    let out = migrate(&cfg, &url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in use"), "{}", text(&out));
    drop(lite);
    closed(&db).await;

    let out = migrate(&cfg, &url);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Progress per table, batches of 500 for the big ones.
    assert!(stderr.contains("copying message: 500/") && stderr.contains("copying send_journal: 2/2"), "{stderr}");
    // The verification: every table, the same count on both sides.
    for t in TABLES {
        let line =
            stdout.lines().find(|l| l.split_whitespace().next() == Some(*t)).unwrap_or_else(|| panic!("{t}: {stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cells.len(), cells[1], cells[3]), (4, cells[2], "ok"), "{line}");
        assert_ne!(cells[1], "0", "the store has a row of every kind: {line}");
    }
    let messages = stdout.lines().find(|l| l.starts_with("message ")).expect("message line");
    assert!(messages.split_whitespace().nth(1).expect("count").parse::<u32>().expect("number") > BULK, "{messages}");

    // The same reads give the same answers on PostgreSQL.
    let pgs: Arc<dyn Store> = Arc::new(PgStore::open_existing(&url).await.expect("postgres"));
    let after = answers(pgs.as_ref()).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
    // New rows get ids past the copied ones (the identity sequences moved).
    let max_chat = pgs.chats().await.expect("chats").iter().map(|c| c.id).max().expect("chats");
    let new_chat = pgs.ensure_chat(&chat(ChatKind::Single, "new@x.org", "New")).await.expect("new chat");
    assert!(new_chat > max_chat, "{new_chat} > {max_chat}");
    pgs.queue_outbound(&outbound("o9@x", Origin::Local, &["matrix"])).await.expect("a new outbox row");

    // Again: the target has rows now.
    let out = migrate(&cfg, &url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty: table chat has rows"), "{}", text(&out));
}

#[tokio::test]
async fn a_store_that_is_not_sqlite_is_not_a_source() {
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "secret\n").expect("pw");
    let out = migrate(&config(dir.path(), &url), &pg.database());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a SQLite store"), "{}", text(&out));
}

/// A row lost on the way (a trigger drops it) shows in the counts: exit 1, the table
/// named, and the copy rolled back so the target is empty for the next try.
#[tokio::test]
async fn counts_that_differ_fail_the_copy_and_leave_the_target_empty() {
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "secret\n").expect("pw");
    let db = dir.path().join("store.db");
    let cfg = config(dir.path(), "sqlite://store.db");
    {
        let s: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.expect("sqlite"));
        s.ensure_chat(&chat(ChatKind::Single, PEER, "Peer")).await.expect("chat");
        for event in ["kept", "lost"] {
            let row = DeadLetterRow {
                bridge: "matrix".into(),
                remote_chat: None,
                event: event.into(),
                kind: "failed".into(),
                reason: "403".into(),
                payload: "{}".into(),
                created_at: 1,
            };
            s.record_dead_letter(&row).await.expect("dead letter");
        }
    }
    closed(&db).await;
    drop(PgStore::open(&url).await.expect("the schema"));
    pg.psql(
        &url,
        "CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.event = 'lost' THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER lose BEFORE INSERT ON dead_letter FOR EACH ROW EXECUTE FUNCTION lose();",
    );

    let out = migrate(&cfg, &url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("dead_letter ")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["dead_letter", "2", "1", "MISMATCH"], "{stderr}");
    assert!(stderr.contains("differ in dead_letter") && stderr.contains("rolled back"), "{stderr}");
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM chat").trim(), "0", "the copy was rolled back");
}

/// The real daemon running on the store: refused (it holds the store's lock even while its
/// pool has no connection open), and once
/// it is stopped the same command copies what it recorded.
#[tokio::test]
async fn a_running_daemon_s_store_is_refused_and_copied_once_it_stops() {
    use crate::support::{Daemon, Link};
    let Some(pg) = PgServer::shared() else { return };
    let server = mail_server!();
    let state = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(&server, state.path(), Link::Plain, "");
    d.wait_ready().await;
    let url = pg.database();

    let out = migrate(&d.config, &url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in use: the daemon is running"), "{}", text(&out));
    assert_eq!(pg.psql(&url, "SELECT to_regclass('chat') IS NULL").trim(), "t", "the target was not touched");

    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    let out = migrate(&d.config, &url);
    assert!(out.status.success(), "{}", text(&out));
    let copied: Arc<dyn Store> = Arc::new(PgStore::open_existing(&url).await.expect("postgres"));
    assert!(copied.account_key().await.expect("key").is_some(), "the daemon's key came along");
}

/// A daemon's main file with store `url` under `dir`: the main `[account]` (bridge@) if
/// `main`, and `[accounts] dir` holding one file per name of `accounts` (NAME@example.org).
fn daemon_config(dir: &Path, file: &str, url: &str, main: bool, accounts: &[&str]) -> PathBuf {
    let pw = dir.join("pw");
    let servers = "[imap]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n\n\
                   [smtp]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n\n";
    let account =
        |name: &str| format!("[account]\naddress = \"{name}@example.org\"\npassword_file = \"{}\"\n\n", pw.display());
    let mut text = if main { format!("{}{servers}", account("bridge")) } else { String::new() };
    text.push_str(&format!(
        "[store]\nurl = \"{url}\"\nstate_dir = \"{state}\"\n\n[accounts]\ndir = \"accounts.d\"\n",
        state = dir.display()
    ));
    let path = dir.join(file);
    std::fs::write(&path, text).expect("main file");
    std::fs::create_dir_all(dir.join("accounts.d")).expect("accounts.d");
    for name in accounts {
        std::fs::write(dir.join("accounts.d").join(format!("{name}.toml")), format!("{}{servers}", account(name)))
            .expect("account file");
    }
    path
}

/// Where the daemon keeps a directory account's SQLite store.
fn account_store(state: &Path, name: &str) -> PathBuf {
    state.join("accounts").join(format!("{name}@example.org")).join("store.sqlite")
}

/// A store with a key of its own (`FP-NAME`) and `n` messages, closed again.
async fn small_store(db: &Path, name: &str, n: u32) {
    {
        let s: Arc<dyn Store> = Arc::new(SqliteStore::open(db).await.expect("sqlite"));
        let key = AccountKeyRow {
            fingerprint: format!("FP-{name}"),
            public_key: vec![1; 30],
            secret_key: vec![2; 60],
            protected: false,
            created_at: 1_700_000_000,
        };
        s.init_account_key(&key).await.expect("account key");
        let batch: Vec<InboundMessage> = (0..n)
            .map(|i| inbound(i + 1, chat(ChatKind::Single, PEER, "Peer"), message(&format!("{name}{i}@x"), "hi"), &[]))
            .collect();
        s.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: n }, &batch, &[]).await.expect("record");
    }
    closed(db).await;
}

/// Each account of the PostgreSQL config `cfg`, opened as the daemon opens it (in its
/// schema, made if missing): its key's fingerprint and how many messages it has.
async fn as_the_daemon_sees(cfg: &Path) -> Vec<(String, String, usize)> {
    let accounts = coi_bridge::config::load_daemon(cfg).and_then(|d| d.all_accounts()).expect("the config");
    let mut out = Vec::new();
    for l in accounts {
        let store = coi_bridge::store::open_with(&l.config.store.url, &l.config.store.state_dir(), &l.store_options())
            .await
            .expect("the account's store");
        let key = store.account_key().await.expect("key").map(|k| k.fingerprint).unwrap_or_default();
        let messages = store.messages(Direction::In).await.expect("messages").len();
        out.push((l.key(), key, messages));
    }
    out
}

/// A daemon with an accounts dir: without --account every account's SQLite store is
/// copied, each into the schema the daemon opens it in on PostgreSQL (the main account's
/// into the default one), and an account the daemon never ran is left to it.
#[tokio::test]
async fn every_account_of_an_accounts_dir_is_copied_into_its_own_schema() {
    use coi_bridge::store::account_schema;
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    std::fs::write(state.join("pw"), "secret\n").expect("pw");
    let cfg = daemon_config(state, "c.toml", "sqlite://bridge.db", true, &["alice", "bob", "carol"]);
    small_store(&state.join("bridge.db"), "bridge", 2).await;
    small_store(&account_store(state, "alice"), "alice", 3).await;
    small_store(&account_store(state, "bob"), "bob", 5).await;

    let out = migrate(&cfg, &url);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["alice", "bob"] {
        let schema = account_schema(&format!("{name}@example.org"));
        assert!(stdout.contains(&format!("account {name}@example.org (schema {schema}):")), "{stdout}");
        assert!(stderr.contains(&format!("account {name}@example.org: copying")), "{stderr}");
    }
    assert!(stdout.contains("account carol@example.org: no store yet"), "{stdout}");
    assert!(stdout.contains("account bridge@example.org (the default schema):"), "{stdout}");
    assert!(stdout.contains("3 accounts copied, every count matches"), "{stdout}");

    // The rows are in each account's schema on the server, the main account's in the default one.
    for (name, schema, messages) in [
        ("bridge", "public".to_owned(), 2),
        ("alice", account_schema("alice@example.org"), 3),
        ("bob", account_schema("bob@example.org"), 5),
    ] {
        let count = |table: &str| pg.psql(&url, &format!("SELECT count(*) FROM {schema}.{table}"));
        assert_eq!(count("message"), messages.to_string(), "{name} in {schema}");
        assert_eq!(
            pg.psql(&url, &format!("SELECT fingerprint FROM {schema}.account_key")),
            format!("FP-{name}"),
            "{name}'s key in {schema}"
        );
    }

    // The daemon on PostgreSQL finds each account's own store (carol's is new and empty).
    let pg_cfg = daemon_config(state, "pg.toml", &url, true, &["alice", "bob", "carol"]);
    let seen = as_the_daemon_sees(&pg_cfg).await;
    let want = |name: &str, key: &str, n| (format!("{name}@example.org"), key.to_owned(), n);
    assert_eq!(
        seen,
        vec![
            want("bridge", "FP-bridge", 2),
            want("alice", "FP-alice", 3),
            want("bob", "FP-bob", 5),
            want("carol", "", 0)
        ]
    );
}

/// `--account ADDRESS` copies that directory account's store into its schema only.
#[tokio::test]
async fn one_directory_account_is_copied_into_its_schema() {
    use coi_bridge::store::account_schema;
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    std::fs::write(state.join("pw"), "secret\n").expect("pw");
    let cfg = daemon_config(state, "c.toml", "sqlite://bridge.db", false, &["alice", "bob"]);
    small_store(&account_store(state, "alice"), "alice", 3).await;
    small_store(&account_store(state, "bob"), "bob", 5).await;

    let out = bin()
        .args(["migrate-store", "--config"])
        .arg(&cfg)
        .args(["--account", "Alice@example.org", "--to", &url])
        .output()
        .expect("run coi-bridge");
    assert!(out.status.success(), "{}", text(&out));
    let schema = account_schema("alice@example.org");
    assert_eq!(pg.psql(&url, &format!("SELECT count(*) FROM {schema}.message")), "3");
    assert_eq!(pg.psql(&url, "SELECT to_regclass('public.message') IS NULL"), "t", "nothing in the default schema");
    let bob = account_schema("bob@example.org");
    assert_eq!(pg.psql(&url, &format!("SELECT to_regclass('{bob}.message') IS NULL")), "t", "bob's was not asked for");

    // The daemon finds alice's store, and bob's still to be made.
    let pg_cfg = daemon_config(state, "pg.toml", &url, false, &["alice", "bob"]);
    let want = |name: &str, key: &str, n| (format!("{name}@example.org"), key.to_owned(), n);
    assert_eq!(as_the_daemon_sees(&pg_cfg).await, vec![want("alice", "FP-alice", 3), want("bob", "", 0)]);
}
