//! End-to-end encryption against a real Delta Chat core (deltachat-rpc-server) on a real Dovecot + Postfix: keys, encrypted chat both ways, forged mail.

mod support;

use std::sync::Arc;
use std::time::Duration;

use coi_bridge::app::Core;
use coi_bridge::coi::{ChatMessage, Mailbox, crypto, pgpmime};
use coi_bridge::store::{ChatKind, ChatRef, Direction, StoredMessage};
use coi_bridge::transport::smtp::FailedDelivery;
use serde_json::{Value, json};
use support::deltachat::DeltaChat;
use support::{BRIDGE, Daemon, Link, chat_mail, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

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

/// Waits until Delta Chat account `acc` shows a message with `text` in any chat; returns it.
async fn dc_message(dc: &DeltaChat, acc: u64, text: &str) -> Value {
    // Events only say "something changed"; look the text up among the new messages.
    eventually(WAIT, &format!("Delta Chat shows {text:?}"), || async {
        let chats = dc.call("get_chatlist_entries", json!([acc, null, null, null])).await;
        for chat in chats.as_array().cloned().unwrap_or_default() {
            let ids = dc.call("get_message_ids", json!([acc, chat, false, false])).await;
            for id in ids.as_array().cloned().unwrap_or_default() {
                let m = dc.call("get_message", json!([acc, id])).await;
                if m["text"].as_str() == Some(text) {
                    return Some(m);
                }
            }
        }
        None
    })
    .await
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

    // Keys are exchanged by vCard, through the CLI on the bridge's side.
    let alice_vcf = dc.call("make_vcard", json!([alice, [1]])).await;
    std::fs::write(state.path().join("alice.vcf"), alice_vcf.as_str().expect("vcard")).expect("write vcf");
    let imported = cli(&config, &["contact", "import", state.path().join("alice.vcf").to_str().expect("path")]);
    assert!(imported.starts_with("imported  alice@example.org"), "{imported}");
    let shown = cli(&config, &["key", "show"]);
    let bridge_vcard = cli(&config, &["key", "vcard"]);
    let ids = dc.call("import_vcard_contents", json!([alice, bridge_vcard])).await;
    let bridge_contact = ids[0].as_u64().expect("contact id");
    let chat = dc.call("create_chat_by_contact_id", json!([alice, bridge_contact])).await;

    let loaded = coi_bridge::config::load(&config).expect("config");
    let core =
        Core::build(&loaded, Arc::new(|f: FailedDelivery| panic!("delivery failed: {f:?}"))).await.expect("core");
    assert!(shown.contains(&core.identity.fingerprint), "key show prints the fingerprint: {shown}");
    let token = CancellationToken::new();

    let body = async {
        // Bridge -> Delta Chat.
        let alice_chat = ChatRef { kind: ChatKind::Single, key: "alice@example.org".into(), name: "Alice".into() };
        let sent_id = core
            .outbound
            .queue(
                alice_chat,
                &["alice@example.org".into()],
                ChatMessage { text: "Hello Alice, the bridge here".into(), ..ChatMessage::default() },
            )
            .await
            .expect("queued");
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
        token.cancel();
    };
    tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), body);
}
