//! Degrade, never drop (#11), Telegram side: the Bot API double refuses what Telegram refuses, and what Delta Chat sends still arrives in a form Telegram takes: big pictures as documents, a picture with a short text as one captioned photo (edited with editMessageCaption), voice notes only for Opus, a send racing an upgrade to a supergroup followed there once.

use std::time::Duration;

use coi_bridge_api::{Bridge as _, DeliverError, DeliveryKey, Outgoing, Person, RemoteChatId, RemoteMsgId};
use coi_bridge_telegram::bridge::TelegramBridge;
use coi_bridge_telegram::limits;
use serde_json::{Value, json};

use super::support;
use super::support::telegram::{FakeTelegram, TOKEN};
use super::{GROUP, NEW_GROUP, TOM, TgStack};

/// An OGG page whose first packet is `packet` (OpusHead for Opus, "\x01vorbis" for Vorbis).
pub fn ogg(packet: &[u8]) -> Vec<u8> {
    let mut page = b"OggS\0\x02".to_vec();
    page.extend([0u8; 20]);
    page.push(1);
    page.push(packet.len() as u8);
    page.extend(packet);
    page.extend([0u8; 64]);
    page
}

async fn post(tg: &FakeTelegram, method: &str, body: Value) -> Value {
    let url = format!("{}/bot{TOKEN}/{method}", tg.url());
    let r = reqwest::Client::new().post(url).json(&body).send().await.expect("post");
    r.json().await.expect("json")
}

async fn upload(tg: &FakeTelegram, method: &str, field: &str, data: Vec<u8>, caption: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("chat_id", GROUP.to_string())
        .text("caption", caption.to_owned())
        .part(field.to_owned(), reqwest::multipart::Part::bytes(data).file_name("f.bin"));
    let url = format!("{}/bot{TOKEN}/{method}", tg.url());
    let r = reqwest::Client::new().post(url).multipart(form).send().await.expect("post");
    (r.status().as_u16(), r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_refuses_what_telegram_refuses_in_its_words() {
    let tg = FakeTelegram::start().await;
    tg.set_chat(GROUP, "Book Club", &[TOM.0]);
    let refused = |v: &Value, what: &str| {
        assert_eq!((v["ok"].clone(), v["description"].as_str()), (json!(false), Some(what)), "{v}");
    };
    // Texts: 4,096 characters after entity parsing, counted in UTF-16.
    let fits = format!("<b>Alice</b>: {}", "x".repeat(4096 - 7));
    assert_eq!(
        post(&tg, "sendMessage", json!({"chat_id": GROUP, "text": fits, "parse_mode": "HTML"})).await["ok"],
        true
    );
    let over = format!("<b>Alice</b>: {}", "😂".repeat(2045));
    let v = post(&tg, "sendMessage", json!({"chat_id": GROUP, "text": over, "parse_mode": "HTML"})).await;
    refused(&v, "Bad Request: message is too long");
    // Reactions: only the documented list; 😂 is not on it, ❤ is (without U+FE0F).
    let sent = tg.sent("sendMessage", GROUP)[0].message_id.expect("id");
    let react = |e: &str| json!({"chat_id": GROUP, "message_id": sent, "reaction": [{"type": "emoji", "emoji": e}]});
    refused(&post(&tg, "setMessageReaction", react("😂")).await, "Bad Request: REACTION_INVALID");
    refused(&post(&tg, "setMessageReaction", react("❤\u{fe0f}")).await, "Bad Request: REACTION_INVALID");
    assert_eq!(post(&tg, "setMessageReaction", react("❤")).await["ok"], true);
    // Photos up to 10 MB; captions up to 1,024; any upload up to 50 MB.
    let big = vec![7u8; limits::MAX_PHOTO_BYTES as usize + 1];
    let (code, v) = upload(&tg, "sendPhoto", "photo", big.clone(), "").await;
    assert_eq!(code, 400);
    refused(&v, "Bad Request: PHOTO_SAVE_FILE_INVALID");
    let (code, v) = upload(&tg, "sendDocument", "document", big, "").await;
    assert_eq!((code, v["ok"].clone()), (200, json!(true)), "{v}");
    let (_, v) = upload(&tg, "sendPhoto", "photo", support::PNG.to_vec(), &"c".repeat(1025)).await;
    refused(&v, "Bad Request: message caption is too long");
    let (code, v) = upload(&tg, "sendDocument", "document", vec![0; limits::MAX_UPLOAD_BYTES as usize + 1], "").await;
    assert_eq!(code, 413);
    refused(&v, "Request Entity Too Large");
    // A media message's text is its caption: editMessageText is refused, editMessageCaption works.
    let (_, v) = upload(&tg, "sendPhoto", "photo", support::PNG.to_vec(), "a caption").await;
    let photo = v["result"]["message_id"].as_i64().expect("id");
    let v = post(&tg, "editMessageText", json!({"chat_id": GROUP, "message_id": photo, "text": "new"})).await;
    refused(&v, "Bad Request: there is no text in the message to edit");
    let v = post(&tg, "editMessageCaption", json!({"chat_id": GROUP, "message_id": photo, "caption": "new"})).await;
    assert_eq!(v["result"]["caption"], "new", "{v}");
    // After an upgrade to a supergroup, the old id is refused with where the chat went.
    tg.upgrade(GROUP, NEW_GROUP);
    let v = post(&tg, "sendMessage", json!({"chat_id": GROUP, "text": "late"})).await;
    assert_eq!(
        v,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat",
               "parameters": {"migrate_to_chat_id": NEW_GROUP}})
    );
    assert_eq!(post(&tg, "sendMessage", json!({"chat_id": NEW_GROUP, "text": "here"})).await["ok"], true);
}

/// The bridge's own delivery path against the double, as the daemon calls it.
async fn bridge(tg: &FakeTelegram) -> TelegramBridge {
    tg.set_chat(GROUP, "Book Club", &[TOM.0]);
    let cfg = serde_json::from_value(
        json!({"id": "telegram", "api_url": tg.url(), "allowed_chats": [GROUP], "chat_interval_ms": 0}),
    )
    .expect("config");
    TelegramBridge::new(cfg, TOKEN, "bridge@example.org", "COI Bridge").expect("bridge")
}

fn alice() -> Person {
    Person { id: "alice@example.org".into(), display_name: "Alice".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_text_goes_in_parts_once_each_even_across_a_retry() {
    let tg = FakeTelegram::start().await;
    let bridge = bridge(&tg).await;
    // 10,000 characters the core did not split (its own splitting is the first line).
    let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
    let msg = Outgoing::Message {
        sender: alice(),
        text: text.clone(),
        attachments: Vec::new(),
        reply_to: None,
        avatar: None,
    };
    let to = RemoteChatId(GROUP.to_string());
    let key = DeliveryKey("coi-long".into());
    let parts = bridge.deliver(&to, &key, &msg).await.expect("delivered");
    assert!(parts.len() >= 3, "{parts:?}");
    let sent = tg.sent_texts(GROUP);
    assert_eq!(sent.len(), parts.len());
    let mut joined = String::new();
    for (_, t) in &sent {
        let body = t.strip_prefix("<b>Alice</b>: ").expect("each part names Alice");
        assert!(limits::text_len(&format!("Alice: {body}")) <= limits::MAX_TEXT);
        joined.push_str(body);
        joined.push('\n');
    }
    assert!(joined.trim_end() == text.trim_end(), "every line, in order, once: {} parts", sent.len());

    // Across a retry: part two meets a 429, the core delivers again, part one is not repeated.
    let key = DeliveryKey("coi-long-2".into());
    let before = tg.sent_texts(GROUP).len();
    tg.fail_after("sendMessage", 1, 1, 429, "Too Many Requests: retry after 1", Some(1));
    let err = bridge.deliver(&to, &key, &msg).await.expect_err("the 429");
    assert!(matches!(err, DeliverError::Retry { .. }), "{err:?}");
    let again = bridge.deliver(&to, &key, &msg).await.expect("the retry");
    let now = tg.sent_texts(GROUP);
    assert_eq!(now.len() - before, again.len(), "no part twice: {again:?}");
    assert_eq!(again.len(), parts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_telegram_does_not_take_goes_back_to_the_core_and_a_heart_is_spelled_its_way() {
    let tg = FakeTelegram::start().await;
    let bridge = bridge(&tg).await;
    let to = RemoteChatId(GROUP.to_string());
    let target = tg.user_says(GROUP, TOM, "funny", None);
    let react = |emoji: &str| Outgoing::Reaction {
        sender: alice(),
        target: RemoteMsgId(target.to_string()),
        emoji: emoji.into(),
    };
    let r = bridge.deliver(&to, &DeliveryKey("coi-r1".into()), &react("😂")).await;
    assert!(matches!(r, Err(DeliverError::Unsupported)), "the core turns it into text: {r:?}");
    bridge.deliver(&to, &DeliveryKey("coi-r2".into()), &react("❤\u{fe0f}")).await.expect("a heart");
    let set = tg.wait_call("set the heart", |c| c.method == "setMessageReaction").await;
    assert_eq!(set.params["reaction"][0]["emoji"], json!("❤"));
    assert!(!tg.calls().iter().any(|c| c.method == "setMessageReaction!failed"), "never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_over_the_photo_limit_arrives_as_a_document() {
    let Some(s) = TgStack::new().await else { return };
    // 15 MB that no codec shrinks; as a file, so Delta Chat sends it as it is.
    let mut data = Vec::with_capacity(15 * 1024 * 1024);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 15 * 1024 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend(x.to_le_bytes());
    }
    let path = s.state.path().join("big.png");
    std::fs::write(&path, &data).expect("write");
    s.dc.call("send_msg", json!([s.alice, s.group, {"file": path, "filename": "big.png", "viewtype": "File"}])).await;
    let doc =
        s.tg.wait_call("send the picture as a document", |c| {
            c.method == "sendDocument" && c.params["chat_id"] == json!(GROUP)
        })
        .await;
    assert_eq!(doc.files[0].2.len(), data.len());
    assert!(doc.files[0].2 == data, "the same bytes");
    let as_photo =
        s.tg.calls().into_iter().filter(|c| c.method.starts_with("sendPhoto") && c.files[0].2.len() > 1 << 20);
    assert_eq!(as_photo.count(), 0, "never tried as a photo");
    no_failure_notice(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_with_a_short_text_is_one_captioned_photo_and_its_edit_edits_the_caption() {
    let Some(s) = TgStack::new().await else { return };
    let png = s.state.path().join("oak.png");
    std::fs::write(&png, support::PNG).expect("png");
    let id =
        s.dc.call(
            "send_msg",
            json!([s.alice, s.group, {"file": png, "filename": "oak.png", "viewtype": "Image", "text": "the old oak"}]),
        )
        .await;
    let photo =
        s.tg.wait_call("send the captioned photo", |c| {
            c.method == "sendPhoto" && c.params["caption"].as_str().is_some_and(|t| t.contains("oak"))
        })
        .await;
    assert_eq!(photo.params["caption"], json!("<b>Alice</b>: the old oak"));
    assert_eq!(photo.files[0].2, support::PNG);
    let photo_id = photo.message_id.expect("id");

    s.dc.call("send_edit_request", json!([s.alice, id, "the old oak, in spring"])).await;
    let edit = s.tg.wait_call("edit the caption", |c| c.method == "editMessageCaption").await;
    assert_eq!(
        (edit.params["message_id"].as_i64(), edit.params["caption"].clone()),
        (Some(photo_id), json!("<b>Alice</b>: the old oak, in spring"))
    );
    assert_eq!(s.tg.message_text(GROUP, photo_id).as_deref(), Some("<b>Alice</b>: the old oak, in spring"));
    let calls = s.tg.calls();
    assert!(!calls.iter().any(|c| c.method.starts_with("editMessageText")), "never as a text edit");
    let texts = s.tg.sent_texts(GROUP);
    assert!(!texts.iter().any(|(_, t)| t.contains("the old oak")), "one message, not two: {texts:?}");
    no_failure_notice(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_an_upgrade_to_a_supergroup_arrives_there_once() {
    let Some(s) = TgStack::new().await else { return };
    // Telegram has upgraded the group; its service messages have not reached the bot yet.
    s.tg.upgrade(GROUP, NEW_GROUP);
    s.alice_says("sent during the upgrade").await;
    let text = "<b>Alice</b>: sent during the upgrade";
    s.tg.wait_call("the send in the supergroup", |c| {
        c.method == "sendMessage" && c.params["chat_id"] == json!(NEW_GROUP) && c.params["text"] == text
    })
    .await;
    assert!(
        s.tg.calls().iter().any(|c| c.method == "sendMessage!failed" && c.params["chat_id"] == json!(GROUP)),
        "it was refused in the old group first"
    );
    // The portal followed without waiting for the service message: Tom's next message
    // in the supergroup reaches Alice.
    s.tg.user_says(NEW_GROUP, TOM, "hello from the supergroup", None);
    let m = s.dc.message_with_text(s.alice, "hello from the supergroup").await;
    assert_eq!(m["chatId"], s.group);
    // The service messages come late; they change nothing, and what follows goes straight there.
    s.tg.announce_migration(GROUP, NEW_GROUP, TOM);
    s.alice_says("after the upgrade").await;
    s.tg.wait_call("the next send", |c| {
        c.method == "sendMessage"
            && c.params["chat_id"] == json!(NEW_GROUP)
            && c.params["text"] == "<b>Alice</b>: after the upgrade"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let once = s.tg.sent_texts(NEW_GROUP).into_iter().filter(|(_, t)| t == text).count();
    assert_eq!(once, 1, "exactly once");
    assert!(!s.tg.calls().iter().any(|c| c.method == "leaveChat"), "the supergroup is allowed as the group was");
    no_failure_notice(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_opus_goes_as_a_voice_note() {
    let Some(s) = TgStack::new().await else { return };
    let vorbis = ogg(b"\x01vorbis\0\0\0\0\x01");
    let opus = ogg(b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0");
    for (name, data) in [("song.ogg", &vorbis), ("memo.ogg", &opus)] {
        let path = s.state.path().join(name);
        std::fs::write(&path, data).expect("write");
        s.dc.call("send_msg", json!([s.alice, s.group, {"file": path, "filename": name, "viewtype": "File"}])).await;
    }
    let voice = s.tg.wait_call("send the Opus memo as a voice note", |c| c.method == "sendVoice").await;
    assert_eq!(voice.files[0].2, opus);
    let doc = s.tg.wait_call("send the Vorbis song as a file", |c| c.method == "sendDocument").await;
    assert_eq!(doc.files[0].2, vorbis);
    assert_eq!(s.tg.calls().iter().filter(|c| c.method == "sendVoice").count(), 1, "only the Opus one");
}

/// Alice was not told that something did not reach Telegram.
async fn no_failure_notice(s: &TgStack) {
    let texts = s.dc.chat_texts(s.alice, &s.group).await;
    assert!(!texts.iter().any(|t| t.contains("Not delivered")), "{texts:?}");
}
