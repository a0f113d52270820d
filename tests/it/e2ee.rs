//! End-to-end encryption against a real Delta Chat core (deltachat-rpc-server) on a real Dovecot + Postfix: keys, encrypted chat both ways, forged mail.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use coi_bridge::app::Core;
use coi_bridge::coi::{ChatMessage, Kind, Mailbox, crypto, pgpmime};
use coi_bridge::store::{ChatKind, ChatRef, Direction, StoredMessage};
use coi_bridge::transport::smtp::FailedDelivery;
use serde_json::{Value, json};
use support::deltachat::DeltaChat;
use support::{BRIDGE, Daemon, Link, PNG, chat_mail, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// The daemon's parts, in-process, for the config; a failed delivery fails the test.
async fn core_for(config: &std::path::Path) -> Core {
    let loaded = coi_bridge::config::load(config).expect("config");
    Core::build(&loaded, Arc::new(|f: FailedDelivery| panic!("delivery failed: {f:?}"))).await.expect("core")
}

/// Queues `msg` from the bridge to Alice's 1:1 chat; returns its Message-ID.
async fn to_alice(core: &Core, msg: ChatMessage) -> String {
    let chat = ChatRef { kind: ChatKind::Single, key: "alice@example.org".into(), name: "Alice".into() };
    core.outbound.queue(chat, &["alice@example.org".into()], msg).await.expect("queued to Alice")
}

/// Runs `coi-bridge` with a config and returns stdout, asserting success.
fn cli(config: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(Daemon::bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run coi-bridge");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dc_message(dc: &DeltaChat, acc: u64, text: &str) -> Value {
    dc.message_with_text(acc, text).await
}

async fn recorded_with_text(core: &Core, text: &str) -> StoredMessage {
    eventually(WAIT, &format!("bridge records {text:?}"), || async {
        core.store.messages(Direction::In).await.expect("read").into_iter().find(|m| m.text == text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_with_delta_chat_is_encrypted_both_ways_and_forgeries_are_kept_apart() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&server, "alice", "Alice").await;
    assert_eq!(dc.call("get_config", json!([alice, "force_encryption"])).await, json!("1"), "Delta Chat's default");

    let state = tempfile::tempdir().expect("tempdir");
    let config = support::write_config_with(&server, state.path(), Link::Plain, "", support::free_port(), "required");

    // The daemon's first start makes the store and the key; the CLI works on them.
    let core = core_for(&config).await;
    // Keys are exchanged by vCard, through the CLI on the bridge's side.
    let alice_vcf = dc.call("make_vcard", json!([alice, [1]])).await;
    std::fs::write(state.path().join("alice.vcf"), alice_vcf.as_str().expect("vcard")).expect("write vcf");
    let imported = cli(&config, &["contact", "import", state.path().join("alice.vcf").to_str().expect("path")]);
    assert!(imported.starts_with("imported  alice@example.org"), "{imported}");
    let shown = cli(&config, &["key", "show"]);
    let exported = cli(&config, &["key", "export-public"]);
    assert!(exported.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"), "{exported}");
    let exported_key = crypto::public_from_bytes(exported.as_bytes()).expect("a usable public key");
    let bridge_vcard = cli(&config, &["key", "vcard"]);
    let ids = dc.call("import_vcard_contents", json!([alice, bridge_vcard])).await;
    let bridge_contact = ids[0].as_u64().expect("contact id");
    let chat = dc.call("create_chat_by_contact_id", json!([alice, bridge_contact])).await;

    assert!(shown.contains(&core.identity.fingerprint), "key show prints the fingerprint: {shown}");
    assert_eq!(crypto::fingerprint(&exported_key), core.identity.fingerprint);
    let token = CancellationToken::new();

    let body = async {
        // Bridge -> Delta Chat.
        let sent_id =
            to_alice(&core, ChatMessage { text: "Hello Alice, the bridge here".into(), ..ChatMessage::default() })
                .await;
        let m = dc_message(&dc, alice, "Hello Alice, the bridge here").await;
        assert_eq!(m["showPadlock"], json!(true), "shown as encrypted: {m}");
        assert_eq!(m["sender"]["address"], json!(BRIDGE));
        assert_eq!(m["sender"]["isKeyContact"], json!(true));

        // Delta Chat -> bridge, quoting the bridge's message.
        let dc_msg_id = m["id"].clone();
        dc.call("send_msg", json!([alice, chat, {"text": "Hi bridge, got it", "quotedMessageId": dc_msg_id}])).await;
        let got = recorded_with_text(&core, "Hi bridge, got it").await;
        assert_eq!(got.security, "verified");
        assert_eq!(got.from_addr, "alice@example.org");
        assert_eq!(got.in_reply_to.as_deref(), Some(sent_id.as_str()), "reply target kept");
        let got_chat = core.store.chat(got.chat_id).await.expect("chat").expect("exists");
        assert_eq!((got_chat.kind, got_chat.key.as_str()), (ChatKind::Single, "alice@example.org"));

        // A forged plaintext mail with Alice's From.
        server
            .deliver(
                "alice@example.org",
                &[BRIDGE],
                &chat_mail("alice@example.org", BRIDGE, "forged-plain@localhost", "forged: unsigned"),
            )
            .await;
        // A forged encrypted mail, signed with another key.
        let mallory = crypto::generate("alice@example.org", None).expect("key");
        let forged = ChatMessage {
            message_id: "forged-signed@localhost".into(),
            is_chat: true,
            from: Mailbox::new("alice@example.org", Some("Alice")),
            to: vec![Mailbox::new(BRIDGE, None)],
            date: Some(chrono::Utc::now().timestamp()),
            in_reply_to: Some(sent_id.clone()),
            text: "forged: bad signature".into(),
            ..ChatMessage::default()
        };
        let armored = crypto::encrypt(
            &pgpmime::inner_part(&forged, 0),
            std::slice::from_ref(&core.identity.public),
            &mallory,
            None,
        )
        .expect("encrypt");
        server.deliver("alice@example.org", &[BRIDGE], &pgpmime::outer_mail(&forged, 0, &armored)).await;
        for (text, security) in [("forged: unsigned", "plain"), ("forged: bad signature", "unverified")] {
            let m = recorded_with_text(&core, text).await;
            assert_eq!(m.security, security, "{text}");
            let c = core.store.chat(m.chat_id).await.expect("chat").expect("exists");
            assert_eq!(c.key, "unverified:alice@example.org", "{text} is not put in Alice's chat");
            assert_ne!(c.id, got.chat_id);
        }
        // Alice's key was not replaced by the forger's.
        let k = core.store.contact_key("alice@example.org").await.expect("read").expect("key");
        assert_ne!(k.fingerprint, crypto::fingerprint(&crypto::public(&mallory)));

        // Mail encrypted to somebody else's key is kept aside, logged and counted.
        let other = crypto::generate("carol@example.org", None).expect("key");
        let not_ours =
            ChatMessage { message_id: "not-ours@localhost".into(), text: "for carol".into(), ..forged.clone() };
        let armored = crypto::encrypt(&pgpmime::inner_part(&not_ours, 0), &[crypto::public(&other)], &mallory, None)
            .expect("encrypt");
        let before = core.store.rejected_count().await.expect("count");
        server.deliver("alice@example.org", &[BRIDGE], &pgpmime::outer_mail(&not_ours, 0, &armored)).await;
        eventually(WAIT, "mail for another key kept aside", || async {
            (core.store.rejected_count().await.expect("count") > before).then_some(())
        })
        .await;
        assert_eq!(core.metrics.inbound_rejected.with_label_values(&["not_for_us"]).get(), 1);
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
}

/// The addresses of a Delta Chat chat's members (key contacts have their own ids, so
/// look them up rather than comparing ids).
async fn member_addrs(dc: &DeltaChat, acc: u64, chat: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for id in chat["contactIds"].as_array().cloned().unwrap_or_default() {
        let c = dc.call("get_contact", json!([acc, id])).await;
        out.extend(c["address"].as_str().map(str::to_owned));
    }
    out
}

/// Waits for Delta Chat's joiner to report the end of a SecureJoin started after `since`.
async fn joined(dc: &DeltaChat, acc: u64, since: usize) {
    dc.wait_event_since(since, acc, "SecurejoinJoinerProgress 1000", WAIT, |e| {
        e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_chat_joins_the_bridge_and_its_group_through_invite_links() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&server, "alice", "Alice").await;
    let bob = dc.account(&server, "bob", "Bob").await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = support::write_config_with(&server, state.path(), Link::Plain, "", support::free_port(), "required");
    let core = core_for(&config).await;
    let qr = state.path().join("invite.png");
    let link = cli(&config, &["invite", "--qr", qr.to_str().expect("path")]).trim().to_owned();
    assert!(link.starts_with("https://i.delta.chat/#") && link.contains("&v=3&"), "{link}");
    assert!(std::fs::metadata(&qr).expect("QR written").len() > 100);

    let token = CancellationToken::new();
    let body = async {
        // 1:1: Alice opens the bridge's link.
        let checked = dc.call("check_qr", json!([alice, link])).await;
        assert_eq!(checked["kind"], json!("askVerifyContact"), "{checked}");
        let mark = dc.mark();
        dc.call("secure_join", json!([alice, link])).await;
        joined(&dc, alice, mark).await;
        let k = core.store.contact_key("alice@example.org").await.expect("read").expect("key learned");
        assert!(k.verified, "the bridge verified Alice through SecureJoin");

        // A verified contact's key change is flagged, not accepted: a mail from "Alice"
        // with a new key in its Autocrypt header, signed with that key.
        let new_key = crypto::generate("alice@example.org", None).expect("key");
        let changed = ChatMessage {
            message_id: "key-change@localhost".into(),
            is_chat: true,
            from: Mailbox::new("alice@example.org", Some("Alice")),
            to: vec![Mailbox::new(BRIDGE, None)],
            date: Some(chrono::Utc::now().timestamp()),
            text: "new phone, new key".into(),
            autocrypt: Some(coi_bridge::coi::autocrypt::AutocryptHeader {
                addr: "alice@example.org".into(),
                prefer_mutual: true,
                keydata: crypto::public_to_bytes(&crypto::public(&new_key)),
            }),
            ..ChatMessage::default()
        };
        let armored = crypto::encrypt(
            &pgpmime::inner_part(&changed, 0),
            std::slice::from_ref(&core.identity.public),
            &new_key,
            None,
        )
        .expect("encrypt");
        server.deliver("alice@example.org", &[BRIDGE], &pgpmime::outer_mail(&changed, 0, &armored)).await;
        let m = recorded_with_text(&core, "new phone, new key").await;
        assert_eq!(m.security, "unverified", "not attributed while the change is unconfirmed");
        let kept = core.store.contact_key("alice@example.org").await.expect("read").expect("key");
        assert_eq!(kept.fingerprint, k.fingerprint, "the verified key stays");
        let changes = core.store.key_changes("alice@example.org").await.expect("changes");
        assert_eq!(changes, vec![(k.fingerprint.clone(), crypto::fingerprint(&crypto::public(&new_key)))]);
        assert_eq!(core.metrics.key_changes_flagged.get(), 1);
        let bridge_contact = dc.call("lookup_contact_id_by_addr", json!([alice, BRIDGE])).await;
        let c = dc.call("get_contact", json!([alice, bridge_contact])).await;
        assert_eq!(c["isKeyContact"], json!(true), "{c}");

        // The verified 1:1 chat carries messages both ways.
        let hello = to_alice(&core, ChatMessage { text: "welcome, Alice".into(), ..ChatMessage::default() }).await;
        let m = dc_message(&dc, alice, "welcome, Alice").await;
        assert_eq!((m["showPadlock"].clone(), m["sender"]["address"].clone()), (json!(true), json!(BRIDGE)));
        dc.call("send_msg", json!([alice, m["chatId"], {"text": "thanks, bridge", "quotedMessageId": m["id"]}])).await;
        let reply = recorded_with_text(&core, "thanks, bridge").await;
        assert_eq!((reply.security.as_str(), reply.in_reply_to.as_deref()), ("verified", Some(hello.as_str())));

        // Bob's client speaks the legacy (pre-v3) protocol when the link has no v=3.
        let legacy = cli(&config, &["invite"]).trim().replace("&v=3", "");
        let mark = dc.mark();
        dc.call("secure_join", json!([bob, legacy])).await;
        joined(&dc, bob, mark).await;
        let k = core.store.contact_key("bob@example.org").await.expect("read").expect("key learned");
        assert!(k.verified, "the bridge verified Bob through legacy SecureJoin");

        // A group: both join through one link made while the daemon runs.
        let glink = cli(&config, &["invite", "--group", "Bridge Room"]).trim().to_owned();
        let checked = dc.call("check_qr", json!([bob, glink])).await;
        assert_eq!(checked["kind"], json!("askVerifyGroup"), "{checked}");
        let mark = dc.mark();
        let alice_group = dc.call("secure_join", json!([alice, glink])).await;
        joined(&dc, alice, mark).await;
        let mark = dc.mark();
        let bob_group = dc.call("secure_join", json!([bob, glink])).await;
        joined(&dc, bob, mark).await;
        let group = eventually(WAIT, "both in the bridge's group", || async {
            let chats = core.store.chats().await.expect("chats");
            chats.into_iter().find(|c| c.name == "Bridge Room" && c.members.len() == 2)
        })
        .await;
        assert_eq!(group.members, vec!["alice@example.org".to_string(), "bob@example.org".to_string()]);

        // Alice's Delta Chat learns Bob as a member from the bridge's vg-member-added.
        let alice_sees = eventually(Duration::from_secs(20), "Alice's group lists Bob", || async {
            let c = dc.call("get_full_chat_by_id", json!([alice, alice_group])).await;
            member_addrs(&dc, alice, &c).await.contains(&"bob@example.org".to_string()).then_some(c)
        })
        .await;
        assert_eq!(alice_sees["name"], json!("Bridge Room"));

        // Alice writes: the bridge records it in the group, Bob gets it too.
        dc.call("misc_send_text_message", json!([alice, alice_group, "hello room, Alice here"])).await;
        let got = recorded_with_text(&core, "hello room, Alice here").await;
        assert_eq!(got.security, "verified");
        assert_eq!(got.chat_id, group.id);
        let at_bob = dc_message(&dc, bob, "hello room, Alice here").await;
        assert_eq!(at_bob["chatId"], bob_group);
        // And Bob writes: the bridge and Alice get it.
        dc.call("misc_send_text_message", json!([bob, bob_group, "and Bob too"])).await;
        let got = recorded_with_text(&core, "and Bob too").await;
        assert_eq!((got.chat_id, got.security.as_str()), (group.id, "verified"));
        assert_eq!(dc_message(&dc, alice, "and Bob too").await["chatId"], alice_group);

        // The bridge relays a Matrix user into the group under their own name.
        core.outbound
            .queue_to_group(
                &group,
                ChatMessage {
                    from: Mailbox::new(BRIDGE, Some("Carl (Matrix)")),
                    text: "relayed from Matrix".into(),
                    ..ChatMessage::default()
                },
            )
            .await
            .expect("queued");
        for acc in [alice, bob] {
            let m = dc_message(&dc, acc, "relayed from Matrix").await;
            assert_eq!(m["overrideSenderName"], json!("Carl (Matrix)"), "{m}");
            assert_eq!(m["showPadlock"], json!(true));
        }

        // The bridge renames the group and removes Bob.
        coi_bridge::hub::groups::rename(core.store.as_ref(), &core.outbound, &group, "Renamed Room")
            .await
            .expect("rename");
        eventually(WAIT, "Alice sees the new name", || async {
            let c = dc.call("get_full_chat_by_id", json!([alice, alice_group])).await;
            (c["name"] == "Renamed Room").then_some(())
        })
        .await;
        let group = core.store.chat(group.id).await.expect("chat").expect("exists");
        coi_bridge::hub::groups::remove_member(core.store.as_ref(), &core.outbound, &group, "bob@example.org")
            .await
            .expect("remove");
        eventually(WAIT, "Bob is out of the group on both sides", || async {
            let at_bob = dc.call("get_full_chat_by_id", json!([bob, bob_group])).await;
            let at_alice = dc.call("get_full_chat_by_id", json!([alice, alice_group])).await;
            let alice_lists_bob = member_addrs(&dc, alice, &at_alice).await.contains(&"bob@example.org".to_string());
            (at_bob["selfInGroup"] == json!(false) && !alice_lists_bob).then_some(())
        })
        .await;
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
}

/// Alice on Delta Chat and the bridge know each other's keys from vCards. Returns the
/// bridge's config and Alice's chat with the bridge.
async fn vcard_pair(
    server: &support::MailServer,
    dc: &DeltaChat,
    alice: u64,
    state: &std::path::Path,
) -> (std::path::PathBuf, Value) {
    let config = support::write_config_with(server, state, Link::Plain, "", support::free_port(), "required");
    // The daemon's first start makes the store and the key the CLI works on.
    drop(core_for(&config).await);
    let alice_vcf = dc.call("make_vcard", json!([alice, [1]])).await;
    std::fs::write(state.join("alice.vcf"), alice_vcf.as_str().expect("vcard")).expect("write vcf");
    cli(&config, &["contact", "import", state.join("alice.vcf").to_str().expect("path")]);
    let bridge_vcard = cli(&config, &["key", "vcard"]);
    let ids = dc.call("import_vcard_contents", json!([alice, bridge_vcard])).await;
    let chat = dc.call("create_chat_by_contact_id", json!([alice, ids[0]])).await;
    (config, chat)
}

async fn recorded(core: &Core, kind: &str, target: &str) -> StoredMessage {
    eventually(WAIT, &format!("bridge records a {kind} for {target}"), || async {
        core.store
            .messages(Direction::In)
            .await
            .expect("read")
            .into_iter()
            .find(|m| m.kind == kind && m.target.as_deref() == Some(target))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_edits_deletes_and_read_receipts_work_both_ways() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&server, "alice", "Alice").await;
    let state = tempfile::tempdir().expect("tempdir");
    let (config, chat) = vcard_pair(&server, &dc, alice, state.path()).await;
    let core = core_for(&config).await;
    let token = CancellationToken::new();
    let body = async {
        // Two bridge messages: one to react to and edit, one to delete.
        let first = to_alice(&core, ChatMessage { text: "first from bridge".into(), ..ChatMessage::default() }).await;
        let second = to_alice(&core, ChatMessage { text: "second from bridge".into(), ..ChatMessage::default() }).await;
        let dc_first = dc_message(&dc, alice, "first from bridge").await;
        let dc_second = dc_message(&dc, alice, "second from bridge").await;

        // Delta Chat -> bridge: reaction, read receipt.
        dc.call("send_reaction", json!([alice, dc_first["id"], ["❤️"]])).await;
        let r = recorded(&core, "reaction", &first).await;
        assert_eq!((r.text.as_str(), r.security.as_str()), ("❤️", "verified"));
        dc.call("markseen_msgs", json!([alice, [dc_first["id"]]])).await;
        let receipt = recorded(&core, "receipt", &first).await;
        assert_eq!(receipt.security, "verified", "Delta Chat encrypts receipts");

        // Delta Chat's own message, then edit and delete it.
        dc.call("misc_send_text_message", json!([alice, chat, "typo in this"])).await;
        let original = recorded_with_text(&core, "typo in this").await;
        let dc_own = dc_message(&dc, alice, "typo in this").await;
        dc.call("send_edit_request", json!([alice, dc_own["id"], "no typo in this"])).await;
        let edit = recorded(&core, "edit", &original.message_id).await;
        assert_eq!(edit.text, "no typo in this");
        dc.call("delete_messages_for_all", json!([alice, [dc_own["id"]]])).await;
        recorded(&core, "delete", &original.message_id).await;

        // Bridge -> Delta Chat: reaction to Alice's message, edit and delete of our own,
        // and a read receipt for Alice's message.
        to_alice(
            &core,
            ChatMessage {
                kind: Kind::Reaction { emoji: "👍".into() },
                in_reply_to: Some(original.message_id.clone()),
                ..ChatMessage::default()
            },
        )
        .await;
        to_alice(
            &core,
            ChatMessage {
                kind: Kind::Edit { target: first.clone() },
                text: "first, edited".into(),
                ..ChatMessage::default()
            },
        )
        .await;
        to_alice(&core, ChatMessage { kind: Kind::Delete { targets: vec![second.clone()] }, ..ChatMessage::default() })
            .await;
        let edited = eventually(WAIT, "Alice sees the edit", || async {
            let m = dc.call("get_message", json!([alice, dc_first["id"]])).await;
            (m["text"] == "first, edited").then_some(m)
        })
        .await;
        assert_eq!(edited["isEdited"], json!(true));
        eventually(WAIT, "Alice's second message is gone", || async {
            dc.try_call("get_message", json!([alice, dc_second["id"]])).await.is_err().then_some(())
        })
        .await;
        dc.call("misc_send_text_message", json!([alice, chat, "react to me"])).await;
        let to_react = recorded_with_text(&core, "react to me").await;
        let dc_react = dc_message(&dc, alice, "react to me").await;
        to_alice(
            &core,
            ChatMessage {
                kind: Kind::Reaction { emoji: "🎉".into() },
                in_reply_to: Some(to_react.message_id.clone()),
                ..ChatMessage::default()
            },
        )
        .await;
        eventually(WAIT, "Alice sees the bridge's reaction", || async {
            let r = dc.call("get_message_reactions", json!([alice, dc_react["id"]])).await;
            r.to_string().contains("🎉").then_some(())
        })
        .await;
        to_alice(
            &core,
            ChatMessage {
                kind: Kind::ReadReceipt { original: to_react.message_id.clone(), additional: vec![] },
                text: "This is a receipt notification.".into(),
                ..ChatMessage::default()
            },
        )
        .await;
        eventually(WAIT, "Alice sees her message read", || async {
            let m = dc.call("get_message", json!([alice, dc_react["id"]])).await;
            // 28 = OutMdnRcvd: read by the recipient.
            (m["state"] == json!(28)).then_some(())
        })
        .await;
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
}

fn file(name: &str, mime: &str, data: Vec<u8>) -> coi_bridge_api::Attachment {
    coi_bridge_api::Attachment { name: name.into(), mime: mime.into(), data }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_large_files_go_both_ways() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&server, "alice", "Alice").await;
    let state = tempfile::tempdir().expect("tempdir");
    let (config, chat) = vcard_pair(&server, &dc, alice, state.path()).await;
    let core = core_for(&config).await;
    let token = CancellationToken::new();
    // Over 140 000 bytes: Delta Chat splits it into a pre- and a post-message.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let body = async {
        // Bridge -> Delta Chat: an image and a large file.
        to_alice(
            &core,
            ChatMessage {
                text: "picture and file".into(),
                attachments: vec![file("dot.png", "image/png", PNG.to_vec())],
                ..ChatMessage::default()
            },
        )
        .await;
        let m = dc_message(&dc, alice, "picture and file").await;
        assert_eq!(m["viewType"], json!("Image"), "{m}");
        assert_eq!(m["fileName"], json!("dot.png"));
        assert_eq!(m["fileBytes"], json!(PNG.len()));

        to_alice(
            &core,
            ChatMessage {
                text: "a large file".into(),
                attachments: vec![file("big.bin", "application/octet-stream", big.clone())],
                ..ChatMessage::default()
            },
        )
        .await;
        let m = dc_message(&dc, alice, "a large file").await;
        assert_eq!(m["fileBytes"], json!(big.len()), "{m}");
        let path = m["file"].as_str().expect("file path");
        assert_eq!(std::fs::read(path).expect("file on disk"), big);

        // Delta Chat -> bridge: the same, the large one as pre- and post-message.
        let png_path = state.path().join("from-dc.png");
        std::fs::write(&png_path, PNG).expect("png");
        dc.call("send_msg", json!([alice, chat, {"text": "image from dc", "file": png_path, "filename": "from-dc.png", "viewtype": "Image"}]))
            .await;
        let got = recorded_with_text(&core, "image from dc").await;
        assert_eq!(got.attachments.len(), 1, "{got:?}");
        assert_eq!(got.attachments[0].data, PNG);
        // Delta Chat names it image_<date>.png and sends application/octet-stream; the
        // bridge goes by the name.
        assert_eq!(got.attachments[0].mime, "image/png");
        assert!(got.attachments[0].name.ends_with(".png"), "{}", got.attachments[0].name);

        let big_path = state.path().join("from-dc.bin");
        std::fs::write(&big_path, &big).expect("big");
        dc.call(
            "send_msg",
            json!([alice, chat, {"text": "large from dc", "file": big_path, "filename": "from-dc.bin"}]),
        )
        .await;
        let merged = eventually(WAIT, "the large file merged into its message", || async {
            let all = core.store.messages(Direction::In).await.expect("read");
            all.into_iter().find(|m| m.text == "large from dc" && !m.attachments.is_empty())
        })
        .await;
        assert_eq!(merged.attachments.len(), 1);
        assert_eq!(merged.attachments[0].name, "from-dc.bin");
        assert_eq!(merged.attachments[0].data, big);
        let all = core.store.messages(Direction::In).await.expect("read");
        assert!(
            all.iter().any(|m| m.kind == "merged-post" && m.attachments.is_empty()),
            "Delta Chat split the file into a pre- and a post-message, and they were merged"
        );
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_joins_delta_chat_invite_links_and_takes_part_in_their_group() {
    coi_bridge::init_crypto();
    let server = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&server, "alice", "Alice").await;
    let bob = dc.account(&server, "bob", "Bob").await;
    // Alice and Bob know each other; Alice makes a group with Bob.
    let bob_vcf = dc.call("make_vcard", json!([bob, [1]])).await;
    let bob_at_alice = dc.call("import_vcard_contents", json!([alice, bob_vcf])).await[0].clone();
    let alice_vcf = dc.call("make_vcard", json!([alice, [1]])).await;
    dc.call("import_vcard_contents", json!([bob, alice_vcf])).await;
    let group = dc.call("create_group_chat", json!([alice, "Alice's Group", false])).await;
    dc.call("add_contact_to_chat", json!([alice, group, bob_at_alice])).await;
    dc.call("misc_send_text_message", json!([alice, group, "the group is live"])).await;
    let bob_group = dc_message(&dc, bob, "the group is live").await["chatId"].clone();
    dc.call("accept_chat", json!([bob, bob_group])).await;

    let state = tempfile::tempdir().expect("tempdir");
    let http_port = support::free_port();
    let config = support::write_config_with(&server, state.path(), Link::Plain, "", http_port, "required");
    let core = core_for(&config).await;
    let token = CancellationToken::new();
    // The daemon's HTTP listener in front of this core: `join` (another process) queues its
    // request in the store and wakes the SMTP worker through POST /wake, as it does a
    // running daemon's (the worker's own look at the store comes only every 60 s).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await.expect("bind the HTTP port");
    let view = coi_bridge::accounts::AccountView {
        key: "bridge@example.org".into(),
        main: true,
        health: core.health.clone(),
        store: core.store.clone(),
        targets: vec!["smtp".into()],
        epoch: None,
        outbox: core.outbound.notifier().clone(),
        released: core.released.clone(),
    };
    let http = coi_bridge::http::Http::new(core.metrics.clone(), coi_bridge::accounts::Running::single(view));
    let timeouts = coi_bridge::http::Timeouts { header: Duration::from_secs(10), body: Duration::from_secs(10) };
    // Its own task: the body below blocks its thread while the CLI runs, and the CLI waits
    // for the listener's answer.
    let serve = tokio::spawn(coi_bridge::http::serve(listener, http, axum::Router::new(), token.clone(), timeouts));
    let body = async {
        // 1:1: the bridge joins Alice's own link.
        let link = dc.call("get_chat_securejoin_qr_code", json!([alice, null])).await;
        let out = cli(&config, &["join", link.as_str().expect("link")]);
        assert!(out.contains("joining alice@example.org") && out.contains("told the running daemon"), "{out}");
        dc.wait_event(alice, "SecurejoinInviterProgress 1000", WAIT, |e| {
            e["kind"] == "SecurejoinInviterProgress" && e["progress"].as_u64() == Some(1000)
        })
        .await;
        eventually(WAIT, "the bridge has Alice's key verified", || async {
            core.store.contact_key("alice@example.org").await.expect("read").filter(|k| k.verified).map(|_| ())
        })
        .await;

        // The group: the bridge joins through Alice's group link.
        let glink = dc.call("get_chat_securejoin_qr_code", json!([alice, group])).await;
        let out = cli(&config, &["join", glink.as_str().expect("link")]);
        assert!(out.contains("Alice's Group") && out.contains("told the running daemon"), "{out}");
        let chat = eventually(WAIT, "the bridge is in Alice's group", || async {
            core.store
                .chats()
                .await
                .expect("chats")
                .into_iter()
                .find(|c| c.kind == ChatKind::Group && c.name == "Alice's Group" && c.members.len() == 2)
        })
        .await;
        assert_eq!(chat.members, vec!["alice@example.org".to_string(), "bob@example.org".to_string()]);

        // It takes part: Alice writes, the bridge records; the bridge writes, both see it.
        dc.call("misc_send_text_message", json!([alice, group, "welcome, bridge"])).await;
        let got = recorded_with_text(&core, "welcome, bridge").await;
        assert_eq!((got.chat_id, got.security.as_str()), (chat.id, "verified"));
        core.outbound
            .queue_to_group(&chat, ChatMessage { text: "thanks, the bridge is here".into(), ..ChatMessage::default() })
            .await
            .expect("queued (Bob's key came by gossip)");
        for (acc, chat_id) in [(alice, &group), (bob, &bob_group)] {
            let m = dc_message(&dc, acc, "thanks, the bridge is here").await;
            assert_eq!(&m["chatId"], chat_id, "in the group, not a new chat");
            assert_eq!(m["showPadlock"], json!(true));
        }
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
    serve.await.expect("the HTTP listener's task").expect("the HTTP listener");
}
