//! Replies are replies (#11), through the daemon with a real Delta Chat 2.65, Synapse and the Bot API double: a Delta Chat message answers another only when it quotes it, toward Matrix and Telegram alike, and a Matrix or Telegram reply reaches Delta Chat as a quote.

use crate::support;

use std::path::Path;

use coi_bridge::coi::crypto::{self, Unlock};
use coi_bridge::coi::{ChatMessage, Limits, parse, pgpmime};
use coi_bridge::store::keys::KeyStore as _;
use coi_bridge::store::portals::PortalStore as _;
use serde_json::{Value, json};
use support::bridged::{ALICE_GHOST, Stack, WAIT};
use support::eventually;
use support::telegram::{Call, FakeTelegram, TOKEN};

const GROUP: i64 = -1_001_234_567_811;
const TOM: (i64, &str) = (4242, "Tom");

/// One COI group with three sides: Mara's Matrix room (bridged with `!coi bridge`), Alice
/// in Delta Chat (joined through the link), and Tom's Telegram group (`/coi_link`).
async fn three_way() -> Option<(Stack, FakeTelegram)> {
    coi_bridge::init_crypto();
    let tg = FakeTelegram::start().await;
    tg.set_chat(GROUP, "Garden Club", &[TOM.0]);
    let section = format!(
        "\n[[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"tg-token\"\n\
         allowed_chats = [{GROUP}]\n",
        tg.url()
    );
    let s = Stack::new_with_files(&section, &[("tg-token", TOKEN)]).await?;
    tg.user_says(GROUP, TOM, &format!("/coi_link {}", s.link), None);
    tg.wait_call("confirm the link", |c| {
        c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("Linked to the COI group"))
    })
    .await;
    Some((s, tg))
}

/// The Telegram send that relays Alice's `text`.
async fn on_telegram(tg: &FakeTelegram, text: &str) -> Call {
    let want = format!("<b>Alice</b>: {text}");
    tg.wait_call(&format!("{text:?} on Telegram"), |c| c.method == "sendMessage" && c.params["text"] == want.as_str())
        .await
}

/// The Telegram message a send answers, if any (`reply_parameters`, or the older field).
fn tg_reply_of(call: &Call) -> Option<i64> {
    call.params["reply_parameters"]["message_id"].as_i64().or_else(|| call.params["reply_to_message_id"].as_i64())
}

/// The event a Matrix event answers, if any.
fn mx_reply_of(ev: &Value) -> Option<&str> {
    ev["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
}

/// The bridge's secret key, from its store.
async fn bridge_key(s: &Stack) -> pgp::composed::SignedSecretKey {
    let row = s.daemon.store().await.account_key().await.expect("read").expect("the bridge key");
    assert!(!row.protected, "the test bridge's key has no passphrase");
    crypto::secret_from_bytes(&row.secret_key).expect("key")
}

/// A mail sealed to the bridge's key, opened: the protected inner message as Delta Chat
/// wrote it, and how the codec parses it. `None` for anything else (SecureJoin steps are
/// sealed with a password).
fn open(key: &pgp::composed::SignedSecretKey, raw: &[u8]) -> Option<(Vec<u8>, ChatMessage)> {
    let payload = pgpmime::encrypted_payload(raw)?;
    let opened = crypto::decrypt(&payload, Unlock::Key(key, None), &[]).ok()?;
    let msg = parse(&opened.plain, &Limits::default()).expect("Delta Chat's inner message parses").message;
    Some((opened.plain, msg))
}

/// The mails Delta Chat sent the bridge, opened.
async fn mails_at_the_bridge(s: &Stack) -> Vec<(Vec<u8>, ChatMessage)> {
    let key = bridge_key(s).await;
    s.mail.fetch_all("bridge").await.iter().filter_map(|raw| open(&key, raw)).collect()
}

/// Deletes the bridge's mail whose text is `text` (once it arrived), as if it never had.
async fn lose_mail(s: &Stack, text: &str) {
    use futures::TryStreamExt as _;
    let key = bridge_key(s).await;
    let uid = eventually(WAIT, &format!("{text:?} in the bridge's mailbox"), || async {
        let mut imap = s.mail.imap("bridge").await;
        imap.select("INBOX").await.expect("select");
        let fetched: Vec<_> =
            imap.uid_fetch("1:*", "(UID BODY.PEEK[])").await.expect("fetch").try_collect().await.expect("fetch");
        let mails: Vec<(u32, Vec<u8>)> = fetched.iter().filter_map(|f| Some((f.uid?, f.body()?.to_vec()))).collect();
        drop(fetched);
        imap.logout().await.ok();
        mails.into_iter().find(|(_, raw)| open(&key, raw).is_some_and(|(_, m)| m.text == text)).map(|(uid, _)| uid)
    })
    .await;
    let mut imap = s.mail.imap("bridge").await;
    imap.select("INBOX").await.expect("select");
    let stored: Vec<_> = imap
        .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")
        .await
        .expect("store")
        .try_collect()
        .await
        .expect("store");
    drop(stored);
    let gone: Vec<_> = imap.expunge().await.expect("expunge").try_collect().await.expect("expunge");
    assert_eq!(gone.len(), 1, "one mail expunged");
    imap.logout().await.ok();
}

/// Alice's message that shows `text`: Delta Chat 2.65 keeps the zero-width space that
/// escapes a leading `>` in the text (it is invisible).
async fn shown_at_alice(s: &Stack, text: &str) -> Value {
    eventually(WAIT, &format!("Delta Chat shows {text:?}"), || async {
        let ids = s.dc.call("get_message_ids", json!([s.alice, s.group, false, false])).await;
        for id in ids.as_array().cloned().unwrap_or_default() {
            let m = s.dc.call("get_message", json!([s.alice, id])).await;
            if m["text"].as_str().is_some_and(|t| t.replace('\u{200B}', "") == text) {
                return Some(m);
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_chat_follow_up_is_no_reply_and_a_quote_is_one_on_matrix_and_telegram() {
    let Some((mut s, tg)) = three_way().await else { return };
    let alice = s.alice;

    s.alice_says("first words").await;
    let first_mx = s.body("first words").await;
    let first_tg = on_telegram(&tg, "first words").await.message_id.expect("a message id");
    let first_dc = s.at_alice("first words").await;

    // Delta Chat names "first words" in In-Reply-To (threading for mail clients): no reply.
    s.alice_says("a plain follow-up").await;
    let follow_mx = s.body("a plain follow-up").await;
    assert_eq!(follow_mx["content"].get("m.relates_to"), None, "no reply in Matrix: {follow_mx}");
    let follow_tg = on_telegram(&tg, "a plain follow-up").await;
    assert_eq!(tg_reply_of(&follow_tg), None, "no reply on Telegram: {}", follow_tg.params);

    // Alice quotes "first words" (not the last message): a reply to it on both sides.
    s.dc.call("send_msg", json!([alice, s.group, {"text": "a quoted reply", "quotedMessageId": first_dc["id"]}])).await;
    let reply_mx = s.body("a quoted reply").await;
    assert_eq!(mx_reply_of(&reply_mx), first_mx["event_id"].as_str(), "a reply in Matrix: {reply_mx}");
    let reply_tg = on_telegram(&tg, "a quoted reply").await;
    assert_eq!(tg_reply_of(&reply_tg), Some(first_tg), "a reply on Telegram: {}", reply_tg.params);

    // A quote of a message the bridge never saw (its mail was lost while the bridge was
    // down): Delta Chat shows the quoted text alone; so does every side, as text.
    s.daemon.stop();
    s.alice_says("a note the bridge lost").await;
    lose_mail(&s, "a note the bridge lost").await;
    s.daemon.restart();
    s.daemon.wait_ready().await;
    let note = s.at_alice("a note the bridge lost").await;
    s.dc.call("send_msg", json!([alice, s.group, {"text": "what I noted", "quotedMessageId": note["id"]}])).await;
    let noted = "> a note the bridge lost\n\nwhat I noted";
    let noted_mx = s
        .event("Alice's quote in the room", |e| {
            e["content"]["body"].as_str().is_some_and(|b| b.ends_with("what I noted"))
        })
        .await;
    assert_eq!(noted_mx["content"]["body"], noted, "the quote is shown as text");
    assert_eq!(noted_mx["content"].get("m.relates_to"), None, "nothing to answer in Matrix: {noted_mx}");
    let noted_tg = on_telegram(&tg, "&gt; a note the bridge lost\n\nwhat I noted").await;
    assert_eq!(tg_reply_of(&noted_tg), None, "nothing to answer on Telegram: {}", noted_tg.params);

    // The mail as Delta Chat 2.65 wrote it: every message has In-Reply-To; only the quote
    // makes a reply. With CAPTURE_DC_FIXTURES=1 these become the golden fixtures.
    let mails = mails_at_the_bridge(&s).await;
    let find = |text: &str| {
        mails.iter().find(|(_, m)| m.text == text).unwrap_or_else(|| panic!("{text:?} among the bridge's mail"))
    };
    let (first_raw, first) = find("first words");
    let (follow_raw, follow) = find("a plain follow-up");
    let (reply_raw, reply) = find("a quoted reply");
    assert_eq!(follow.target(), None, "a follow-up answers nothing");
    assert_eq!(follow.references.last(), Some(&first.message_id), "but still threads under its parent");
    assert_eq!(reply.target(), Some(first.message_id.as_str()), "the quoted reply answers what it quotes");
    assert_eq!(reply.quote.as_deref(), Some("first words"));
    assert!(reply.references.contains(&follow.message_id), "Delta Chat threads the reply under the last message");
    if std::env::var_os("CAPTURE_DC_FIXTURES").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml");
        for (name, raw) in [("first", first_raw), ("follow-up", follow_raw), ("quoted-reply", reply_raw)] {
            std::fs::write(dir.join(format!("dc265-{name}.eml")), raw).expect("write the fixture");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_and_telegram_replies_reach_delta_chat_as_quotes_and_plain_messages_do_not() {
    let Some((s, tg)) = three_way().await else { return };
    let (dc, alice) = (&s.dc, s.alice);

    s.alice_says("what shall we plant?").await;
    let asked_mx = s.body("what shall we plant?").await;
    let asked_tg = on_telegram(&tg, "what shall we plant?").await.message_id.expect("a message id");
    let asked_dc = s.at_alice("what shall we plant?").await;
    let quotes_alice = |m: &Value| {
        m["quote"]["kind"] == "WithMessage"
            && m["quote"]["messageId"] == asked_dc["id"]
            && m["quote"]["text"] == "what shall we plant?"
    };

    // Mara answers in Matrix with a reply: Alice sees a quote of her message.
    s.send(
        "r1",
        json!({"msgtype": "m.text", "body": "tulips, from Matrix",
               "m.relates_to": {"m.in_reply_to": {"event_id": asked_mx["event_id"]}}}),
    )
    .await;
    let m = s.at_alice("tulips, from Matrix").await;
    assert!(quotes_alice(&m), "a quote of Alice's message: {}", m["quote"]);

    // Tom answers on Telegram with a reply: the same.
    tg.user_says(GROUP, TOM, "roses, from Telegram", Some(asked_tg));
    let m = s.at_alice("roses, from Telegram").await;
    assert!(quotes_alice(&m), "a quote of Alice's message: {}", m["quote"]);

    // A reply to a picture without text quotes what Delta Chat quotes then ("Image"):
    // without a quote Delta Chat shows no reply at all.
    let png = s.state.path().join("bed.png");
    std::fs::write(&png, support::PNG).expect("png");
    dc.call("send_msg", json!([alice, s.group, {"file": png, "filename": "bed.png", "viewtype": "Image"}])).await;
    let picture_mx = s
        .event("Alice's picture in the room", |e| e["content"]["msgtype"] == "m.image" && e["sender"] == ALICE_GHOST)
        .await;
    let picture_dc = eventually(WAIT, "Alice's picture", || async {
        let ids = dc.call("get_message_ids", json!([alice, s.group, false, false])).await;
        let msgs = dc.call("get_messages", json!([alice, ids])).await;
        msgs.as_object().and_then(|m| m.values().find(|v| v["viewType"] == "Image").cloned())
    })
    .await;
    // Mara answers once the bridge has noted which event the picture became.
    let store = s.daemon.store().await;
    let picture_id = picture_mx["event_id"].as_str().expect("an event id");
    eventually(WAIT, "the picture's event mapped", || async {
        store.coi_id_of_remote("matrix", &s.room, picture_id).await.expect("read")
    })
    .await;
    s.send(
        "r2",
        json!({"msgtype": "m.text", "body": "nice bed",
               "m.relates_to": {"m.in_reply_to": {"event_id": picture_mx["event_id"]}}}),
    )
    .await;
    let m = s.at_alice("nice bed").await;
    assert_eq!(
        (&m["quote"]["kind"], &m["quote"]["messageId"], &m["quote"]["text"]),
        (&json!("WithMessage"), &picture_dc["id"], &json!("Image")),
        "a quote of the picture: {}",
        m["quote"]
    );

    // Plain messages are no replies, even when they start with ">" (a typed quote, a
    // ">_<"), which Delta Chat would otherwise take for a quote.
    s.send("p1", json!({"msgtype": "m.text", "body": "plain from Matrix"})).await;
    assert_eq!(s.at_alice("plain from Matrix").await["quote"], Value::Null);
    tg.user_says(GROUP, TOM, "plain from Telegram", None);
    assert_eq!(s.at_alice("plain from Telegram").await["quote"], Value::Null);
    s.send("p2", json!({"msgtype": "m.text", "body": "> as they say\nslow and steady"})).await;
    let m = shown_at_alice(&s, "> as they say\nslow and steady").await;
    assert_eq!(m["quote"], Value::Null, "no quote in Delta Chat: {m}");
    tg.user_says(GROUP, TOM, ">_< I forgot the seeds", None);
    let m = shown_at_alice(&s, ">_< I forgot the seeds").await;
    assert_eq!(m["quote"], Value::Null, "no quote in Delta Chat: {m}");

    // Nothing of this came back to Delta Chat's own messages as a reply either.
    let alice_own = dc.call("get_message", json!([alice, asked_dc["id"]])).await;
    assert_eq!(alice_own["quote"], Value::Null);
    eventually(WAIT, "every message once at Alice", || async {
        let texts = s.alice_texts().await;
        (texts.iter().filter(|t| t.contains("from Matrix") || t.contains("from Telegram")).count() == 4).then_some(())
    })
    .await;
}
