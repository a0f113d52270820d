//! The Telegram bridge end to end, through the daemon: the fake Bot API (tests/support/telegram.rs), real Dovecot + Postfix and a real Delta Chat core.

mod degrade;
mod migration;
mod private;

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::deltachat::DeltaChat;
use support::telegram::{FakeTelegram, TOKEN};
use support::{Daemon, Link, eventually, free_port};

const WAIT: Duration = Duration::from_secs(90);
const GROUP: i64 = -1_001_234_567_890;
const TOM: (i64, &str) = (4242, "Tom");
const ANNA: (i64, &str) = (4343, "Anna");
/// Neither an admin of the group nor named in the config.
const MAX: (i64, &str) = (4444, "Max");
/// The supergroup GROUP becomes when Telegram upgrades it.
const NEW_GROUP: i64 = -1_009_999_999_999;

/// A Telegram group bridged by Tom (its admin) with `/coi_bridge`, and Alice (Delta Chat)
/// in the COI group through the link.
struct TgStack {
    daemon: Daemon,
    dc: DeltaChat,
    tg: FakeTelegram,
    _mail: support::MailServer,
    state: tempfile::TempDir,
    alice: u64,
    group: serde_json::Value,
    link: String,
}

impl TgStack {
    async fn new() -> Option<Self> {
        Self::new_with("").await
    }

    /// With more keys for the telegram `[[bridge]]` section.
    async fn new_with(extra: &str) -> Option<Self> {
        coi_bridge::init_crypto();
        let mail = support::MailServer::start()?;
        let dc = DeltaChat::start().await?;
        let alice = dc.account(&mail, "alice", "Alice").await;
        let tg = FakeTelegram::start().await;
        tg.set_chat(GROUP, "Book Club", &[TOM.0]);
        let state = tempfile::tempdir().expect("tempdir");
        let http_port = free_port();
        let config = support::write_config_with(&mail, state.path(), Link::Plain, "", http_port, "required");
        std::fs::write(state.path().join("tg-token"), format!("{TOKEN}\n")).expect("token");
        let section = format!(
            "\n[[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"tg-token\"\n\
             allowed_chats = [{GROUP}]\n{extra}",
            tg.url()
        );
        let text = std::fs::read_to_string(&config).expect("config") + section.as_str();
        std::fs::write(&config, text).expect("config");
        let mut daemon = Daemon::with_config(state.path(), config, http_port);
        daemon.wait_ready().await;
        let mut s =
            Self { daemon, dc, tg, _mail: mail, state, alice, group: serde_json::Value::Null, link: String::new() };

        // Only the chat's admins may command the bridge.
        s.tg.user_says(GROUP, MAX, "/coi_bridge", None);
        s.tg.wait_call("refuse Max", |c| {
            c.method == "sendMessage"
                && c.params["text"].as_str().is_some_and(|t| t.contains("only this chat's admins"))
        })
        .await;
        s.tg.user_says(GROUP, TOM, "/coi_bridge@coi_bridge_bot", None);
        let answer =
            s.tg.wait_call("post the invite", |c| {
                c.method == "sendMessage"
                    && c.params["text"].as_str().is_some_and(|t| t.contains("https://i.delta.chat/#"))
            })
            .await;
        s.tg.wait_call("post the QR code", |c| c.method == "sendPhoto").await;
        s.link = answer.params["text"]
            .as_str()
            .and_then(|t| t.lines().find(|l| l.starts_with("https://i.delta.chat/#")))
            .expect("link")
            .to_owned();
        let mark = s.dc.mark();
        s.group = s.dc.call("secure_join", json!([alice, s.link])).await;
        s.dc.wait_event_since(mark, alice, "joined", WAIT, |e| {
            e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
        })
        .await;
        s.dc.wait_until_member(alice, &s.group).await;
        Some(s)
    }

    async fn alice_says(&self, text: &str) {
        self.dc.call("misc_send_text_message", json!([self.alice, self.group, text])).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_group_is_bridged_to_coi_both_ways() {
    let Some(s) = TgStack::new().await else { return };
    let (dc, tg, alice, group) = (&s.dc, &s.tg, s.alice, &s.group);
    dc.call("misc_send_text_message", json!([alice, group, "hello <Telegram> & all"])).await;
    let relayed = tg
        .wait_call("relay Alice", |c| {
            c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: hello &lt;Telegram&gt; &amp; all"
        })
        .await;
    assert_eq!(relayed.params["parse_mode"], json!("HTML"));
    let alice_tg = relayed.message_id.expect("message id");

    // Tom answers with a reply; Alice sees it from "Tom (Telegram)", quoting her.
    let tom_msg = tg.user_says(GROUP, TOM, "hi Alice, welcome", Some(alice_tg));
    let m = dc.message_with_text(alice, "hi Alice, welcome").await;
    assert_eq!(m["overrideSenderName"], json!("Tom (Telegram)"));
    assert_eq!(m["quote"]["text"], json!("hello <Telegram> & all"));
    assert_eq!(&m["chatId"], group);

    // Edits both ways.
    tg.user_edits(GROUP, TOM, tom_msg, "hi Alice, welcome aboard");
    eventually(WAIT, "Tom's edit at Alice", || async {
        let e = dc.call("get_message", json!([alice, m["id"]])).await;
        (e["text"] == "hi Alice, welcome aboard").then_some(())
    })
    .await;
    let own = dc.message_with_text(alice, "hello <Telegram> & all").await;
    dc.call("send_edit_request", json!([alice, own["id"], "hello, Telegram"])).await;
    let edit = tg.wait_call("edit Alice's message", |c| c.method == "editMessageText").await;
    assert_eq!(
        (edit.params["message_id"].as_i64(), edit.params["text"].clone()),
        (Some(alice_tg), json!("<b>Alice</b>: hello, Telegram"))
    );

    // Deletes go from COI to Telegram.
    dc.call("delete_messages_for_all", json!([alice, [own["id"]]])).await;
    let del = tg.wait_call("delete Alice's message", |c| c.method == "deleteMessage").await;
    assert_eq!(del.params["message_id"].as_i64(), Some(alice_tg));

    // 429s are waited out: nothing is dropped, the order holds.
    tg.fail_next("sendMessage", 3, 429, "Too Many Requests: retry after 1", Some(1));
    let burst: Vec<String> = (0..5).map(|i| format!("burst {i}")).collect();
    for b in &burst {
        dc.call("misc_send_text_message", json!([alice, group, b])).await;
    }
    let got = eventually(WAIT, "the burst on Telegram", || async {
        let texts: Vec<String> = tg
            .sent_texts(GROUP)
            .into_iter()
            .filter_map(|(_, t)| t.strip_prefix("<b>Alice</b>: burst ").map(|n| format!("burst {n}")))
            .collect();
        (texts.len() >= burst.len()).then_some(texts)
    })
    .await;
    // In the order the bridge received them (Postfix may deliver mail out of send order).
    assert_eq!(got, recorded_texts(&s.daemon, "burst ").await, "all of them, once each, in order");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, burst, "each once");
    // Paced to Telegram's per-chat limit (chat_interval_ms, 1 s by default): a lower bound
    // the bridge guarantees, whatever the machine's speed.
    let times: Vec<std::time::Instant> = tg
        .calls()
        .iter()
        .filter(|c| c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains(": burst ")))
        .map(|c| c.at)
        .collect();
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(950), "paced: {:?}", w[1] - w[0]);
    }
    assert_eq!(tg.calls().iter().filter(|c| c.method == "sendMessage!failed").count(), 3, "the 429s happened");

    // A chat that is not on the allowlist: the bot says so and leaves.
    tg.set_chat(-555, "Elsewhere", &[TOM.0]);
    tg.user_says(-555, TOM, "hello bot", None);
    tg.wait_call("leave the other chat", |c| c.method == "leaveChat" && c.params["chat_id"] == json!(-555)).await;
    let said = tg.sent_texts(-555);
    assert!(said.iter().any(|(_, t)| t.contains("allowlist")), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_supergroup_keeps_the_portal() {
    let Some(s) = TgStack::new().await else { return };
    s.tg.migrate(GROUP, NEW_GROUP, TOM);
    // Tom writes in the supergroup: Alice gets it; Alice answers: it goes to the supergroup.
    s.tg.user_says(NEW_GROUP, TOM, "we are a supergroup now", None);
    let m = s.dc.message_with_text(s.alice, "we are a supergroup now").await;
    assert_eq!(m["chatId"], s.group);
    s.alice_says("nice upgrade").await;
    s.tg.wait_call("relay to the supergroup", |c| {
        c.method == "sendMessage"
            && c.params["chat_id"] == json!(NEW_GROUP)
            && c.params["text"] == "<b>Alice</b>: nice upgrade"
    })
    .await;
    assert!(!s.tg.calls().iter().any(|c| c.method == "leaveChat"), "the supergroup is allowed as the group was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_skips_and_repeats_no_update() {
    let Some(mut s) = TgStack::new().await else { return };
    const N: usize = 60;
    let expected: Vec<String> = (0..N).map(|i| format!("tg {i:03}")).collect();
    for text in &expected[..N / 2] {
        s.tg.user_says(GROUP, TOM, text, None);
    }
    // Kill the daemon once some are through, while the rest are still coming.
    eventually(WAIT, "the first messages at Alice", || async {
        let n = s.dc.chat_texts(s.alice, &s.group).await.iter().filter(|t| t.starts_with("tg ")).count();
        (n >= 5).then_some(())
    })
    .await;
    s.daemon.kill();
    for text in &expected[N / 2..] {
        s.tg.user_says(GROUP, TOM, text, None);
    }
    s.daemon.restart();
    let got = eventually(Duration::from_secs(180), "every Telegram message at Alice", || async {
        let texts: Vec<String> =
            s.dc.chat_texts(s.alice, &s.group).await.into_iter().filter(|t| t.starts_with("tg ")).collect();
        (texts.len() >= N).then_some(texts)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = got;
    got.sort();
    assert_eq!(got, expected, "each once");
    let now = s.dc.chat_texts(s.alice, &s.group).await.into_iter().filter(|t| t.starts_with("tg ")).count();
    assert_eq!(now, N, "no late duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_delivers_all_200_in_order() {
    let Some(s) = TgStack::new_with("chat_interval_ms = 0\n").await else { return };
    const N: usize = 200;
    s.tg.fail_next("sendMessage", 25, 429, "Too Many Requests: retry after 1", Some(1));
    let expected: Vec<String> = (0..N).map(|i| format!("storm {i:03}")).collect();
    for text in &expected {
        s.alice_says(text).await;
    }
    // While the 429s hold the queue back, its depth shows.
    let metric = "coi_bridge_outbox_depth{target=\"telegram\"}";
    eventually(WAIT, "a queue depth above 10", || async { (s.daemon.metric(metric).await? > 10.0).then_some(()) })
        .await;
    let got = eventually(Duration::from_secs(300), "the storm on Telegram", || async {
        let texts: Vec<String> =
            s.tg.sent_texts(GROUP)
                .into_iter()
                .filter_map(|(_, t)| {
                    t.strip_prefix("<b>Alice</b>: ").filter(|t| t.starts_with("storm ")).map(str::to_owned)
                })
                .collect();
        (texts.len() >= N).then_some(texts)
    })
    .await;
    // Mail may reach the bridge's mailbox in another order than Delta Chat sent it
    // (Postfix delivers in parallel); the bridge's promise is its own order: the order
    // it recorded them in, which no 429 may change.
    let recorded = recorded_texts(&s.daemon, "storm ").await;
    assert_eq!(got, recorded, "all of them, once each, in the order the bridge received them");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every one of the 200, once");
    assert_eq!(s.tg.calls().iter().filter(|c| c.method == "sendMessage!failed").count(), 25);
    eventually(WAIT, "the queue drained", || async { (s.daemon.metric(metric).await? == 0.0).then_some(()) }).await;
    let _ = &s.state;
}

impl Drop for TgStack {
    /// A failing test shows the daemon's warnings and errors.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.daemon.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- the daemon's warnings (last 60) ---\n{tail}\n---");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_coi_group_with_a_matrix_room_and_a_telegram_group_reaches_every_side_once() {
    use support::bridged::{ALICE_GHOST, BOT, Stack};
    let tg = FakeTelegram::start().await;
    tg.set_chat(GROUP, "Book Club", &[TOM.0]);
    let section = format!(
        "\n[[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"tg-token\"\n\
         allowed_chats = [{GROUP}]\n",
        tg.url()
    );
    // The token file sits next to the config Stack writes; write it first into a known dir.
    let Some(s) = Stack::new_with_files(&section, &[("tg-token", TOKEN)]).await else { return };

    // Tom links his Telegram group to the same COI group with the room's invite link.
    tg.user_says(GROUP, TOM, &format!("/coi_link {}", s.link), None);
    tg.wait_call("confirm the link", |c| {
        c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("Linked to the COI group"))
    })
    .await;

    // Alice (COI) → Matrix (her ghost) and Telegram (bold name).
    s.alice_says("hello, all three").await;
    assert_eq!(s.body("hello, all three").await["sender"], json!(ALICE_GHOST));
    tg.wait_call("Alice on Telegram", |c| {
        c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: hello, all three"
    })
    .await;
    // Mara (Matrix) → COI and Telegram, as "mara (Matrix)".
    s.send("n1", json!({"msgtype": "m.text", "body": "hi from Matrix"})).await;
    assert_eq!(s.at_alice("hi from Matrix").await["overrideSenderName"], json!("mara (Matrix)"));
    tg.wait_call("Mara on Telegram", |c| {
        c.method == "sendMessage" && c.params["text"] == "<b>mara (Matrix)</b>: hi from Matrix"
    })
    .await;
    // Tom (Telegram) → COI and Matrix, as "Tom (Telegram)".
    tg.user_says(GROUP, TOM, "hi from Telegram", None);
    assert_eq!(s.at_alice("hi from Telegram").await["overrideSenderName"], json!("Tom (Telegram)"));
    let in_room = s.body("Tom (Telegram): hi from Telegram").await;
    assert_eq!(in_room["sender"], json!(BOT));

    // Exactly once on every side, and nothing echoed back to where it came from.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let room = support::synapse::timeline(&s.hs, &s.mara, &s.room).await;
    let count = |body: &str| room.iter().filter(|e| e["content"]["body"] == body).count();
    assert_eq!(
        (count("hello, all three"), count("hi from Matrix"), count("Tom (Telegram): hi from Telegram")),
        (1, 1, 1)
    );
    let texts: Vec<String> = tg.sent_texts(GROUP).into_iter().map(|(_, t)| t).collect();
    let on_tg = |t: &str| texts.iter().filter(|x| x.as_str() == t).count();
    assert_eq!((on_tg("<b>Alice</b>: hello, all three"), on_tg("<b>mara (Matrix)</b>: hi from Matrix")), (1, 1));
    assert!(!texts.iter().any(|t| t.contains("hi from Telegram")), "not echoed to Telegram: {texts:?}");
    let at_alice = s.alice_texts().await;
    for t in ["hi from Matrix", "hi from Telegram"] {
        assert_eq!(at_alice.iter().filter(|x| x.as_str() == t).count(), 1, "{t} once at Alice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_files_reactions_forwards_and_status_cross() {
    let Some(s) = TgStack::new().await else { return };
    let (dc, tg, alice) = (&s.dc, &s.tg, s.alice);

    // Telegram → COI: a photo with a caption arrives as an image from "Tom (Telegram)".
    tg.user_sends_photo(GROUP, TOM, support::PNG, "our meeting spot");
    let photo = dc.message_with_text(alice, "our meeting spot").await;
    assert_eq!(photo["overrideSenderName"], json!("Tom (Telegram)"));
    assert_eq!(photo["fileBytes"], json!(support::PNG.len()), "{photo}");
    assert_eq!(std::fs::read(photo["file"].as_str().expect("file")).expect("on disk"), support::PNG);

    // COI → Telegram: an image goes as sendPhoto, a file as sendDocument, with Alice's name.
    let png = s.state.path().join("dot.png");
    std::fs::write(&png, support::PNG).expect("png");
    dc.call("send_msg", json!([alice, s.group, {"file": png, "filename": "dot.png", "viewtype": "Image"}])).await;
    let sent = tg
        .wait_call("send the photo", |c| {
            c.method == "sendPhoto"
                && c.params["chat_id"] == json!(GROUP)
                && c.params["caption"].as_str().is_some_and(|t| t.starts_with("<b>Alice</b>: "))
        })
        .await;
    assert_eq!(sent.files[0].2, support::PNG);
    let notes = s.state.path().join("notes.txt");
    std::fs::write(&notes, "bring tea").expect("notes");
    dc.call("send_msg", json!([alice, s.group, {"file": notes, "filename": "notes.txt"}])).await;
    let doc = tg.wait_call("send the document", |c| c.method == "sendDocument").await;
    assert!(doc.files[0].1.ends_with(".txt"), "{:?}", doc.files[0].1);
    assert_eq!(doc.files[0].2, b"bring tea");

    // Reactions both ways.
    s.alice_says("react to this").await;
    let target = tg
        .wait_call("relay the message", |c| {
            c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: react to this"
        })
        .await
        .message_id
        .expect("id");
    tg.user_reacts(GROUP, TOM, target, "🔥");
    let mine = dc.message_with_text(alice, "react to this").await;
    eventually(WAIT, "Tom's reaction at Alice", || async {
        let r = dc.call("get_message_reactions", json!([alice, mine["id"]])).await;
        r.to_string().contains("🔥").then_some(())
    })
    .await;
    let toms = tg.user_says(GROUP, TOM, "react to me too", None);
    let at_alice = dc.message_with_text(alice, "react to me too").await;
    dc.call("send_reaction", json!([alice, at_alice["id"], ["👍"]])).await;
    let reaction = tg.wait_call("set the reaction", |c| c.method == "setMessageReaction").await;
    assert_eq!(reaction.params["message_id"].as_i64(), Some(toms));
    assert_eq!(reaction.params["reaction"][0]["emoji"], json!("👍"));

    // Voice notes, videos and documents arrive as files of their kind.
    for (kind, mime, caption) in [
        ("voice", "audio/ogg", "a voice note"),
        ("video", "video/mp4", "a clip"),
        ("document", "application/pdf", "the notes"),
    ] {
        let data = format!("{kind} bytes").into_bytes();
        tg.user_sends_media(GROUP, TOM, kind, &data, mime, caption);
        let m = dc.message_with_text(alice, caption).await;
        assert_eq!(std::fs::read(m["file"].as_str().expect("file")).expect("on disk"), data, "{kind}: {m}");
    }

    // A forwarded message is marked as forwarded in Delta Chat.
    tg.user_forwards(GROUP, TOM, "Someone Else", "passed along");
    let fwd = dc.message_with_text(alice, "passed along").await;
    assert_eq!(fwd["isForwarded"], json!(true), "{fwd}");

    // /coi_status: the migration in numbers.
    tg.user_says(GROUP, TOM, "/coi_status", None);
    let status = tg
        .wait_call("answer the status", |c| {
            c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("members here"))
        })
        .await;
    let text = status.params["text"].as_str().expect("text");
    assert!(text.contains("alice@example.org"), "who is on COI: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_replies_albums_lost_edits_and_strange_chats() {
    let Some(s) = TgStack::new().await else { return };
    let (dc, tg, alice) = (&s.dc, &s.tg, s.alice);

    // /coi_invite: the link again.
    tg.user_says(GROUP, TOM, "/coi_invite", None);
    let again = tg
        .wait_call("post the link again", |c| {
            c.method == "sendMessage"
                && c.params["text"].as_str().is_some_and(|t| t.contains("already") || t.contains("join with"))
                && c.params["text"].as_str().is_some_and(|t| t.matches("https://i.delta.chat/#").count() == 1)
                && !c.params["text"].as_str().is_some_and(|t| t.starts_with("Bridged to the new"))
        })
        .await;
    assert!(again.params["text"].as_str().expect("text").contains("Book Club"));

    // COI → Telegram replies point at the Telegram message.
    let question = tg.user_says(GROUP, TOM, "who brings the tea?", None);
    let at_alice = dc.message_with_text(alice, "who brings the tea?").await;
    dc.call("send_msg", json!([alice, s.group, {"text": "I do", "quotedMessageId": at_alice["id"]}])).await;
    let answer = tg
        .wait_call("relay the reply", |c| c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: I do")
        .await;
    assert_eq!(answer.params["reply_parameters"]["message_id"].as_i64(), Some(question), "{:?}", answer.params);

    // An album arrives item by item.
    tg.user_sends_album_photo(GROUP, TOM, support::PNG, "album one", Some("alb-1"));
    tg.user_sends_album_photo(GROUP, TOM, support::PNG, "album two", Some("alb-1"));
    for caption in ["album one", "album two"] {
        let m = dc.message_with_text(alice, caption).await;
        assert_eq!(m["fileBytes"], json!(support::PNG.len()));
    }

    // An edit of a message that is gone on Telegram fails for good, and Alice is told.
    s.alice_says("soon gone").await;
    let gone = tg
        .wait_call("relay it", |c| c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: soon gone")
        .await
        .message_id
        .expect("id");
    tg.forget(GROUP, gone);
    let own = dc.message_with_text(alice, "soon gone").await;
    dc.call("send_edit_request", json!([alice, own["id"], "soon gone, edited"])).await;
    tg.wait_call("try the edit", |c| c.method == "editMessageText!failed").await;
    let notice = eventually(WAIT, "the failure notice at Alice", || async {
        dc.chat_texts(alice, &s.group).await.into_iter().find(|t| t.contains("Not delivered to Telegram"))
    })
    .await;
    assert!(notice.contains("message to edit not found"), "{notice}");

    // Added to a chat that is not on the allowlist: the bot leaves at once.
    tg.bot_added(-777, "Strangers", TOM);
    tg.wait_call("leave the strange chat", |c| c.method == "leaveChat" && c.params["chat_id"] == json!(-777)).await;

    // /coi_unlink: the portal is gone.
    tg.user_says(GROUP, TOM, "/coi_unlink", None);
    tg.wait_call("confirm the unlink", |c| {
        c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.starts_with("Unlinked"))
    })
    .await;
    use coi_bridge::store::portals::PortalStore as _;
    let portal = s.daemon.store().await.portal_by_remote("telegram", &GROUP.to_string()).await.expect("read");
    assert!(portal.is_none(), "no portal any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pictures_go_out_as_one_album() {
    use coi_bridge_api::{Attachment, Bridge as _, DeliveryKey, Outgoing, Person, RemoteChatId};
    use coi_bridge_telegram::bridge::TelegramBridge;
    // Delta Chat sends one file per message; other COI clients send several. The bridge's
    // own delivery path against the fake, as the daemon calls it.
    let tg = FakeTelegram::start().await;
    tg.set_chat(GROUP, "Book Club", &[TOM.0]);
    let cfg: coi_bridge_telegram::config::TelegramConfig = serde_json::from_value(
        json!({"id": "telegram", "api_url": tg.url(), "allowed_chats": [GROUP], "chat_interval_ms": 0}),
    )
    .expect("config");
    let bridge = TelegramBridge::new(cfg, TOKEN, "bridge@example.org", "COI Bridge").expect("bridge");
    let pic = |n: &str| Attachment { name: n.into(), mime: "image/png".into(), data: support::PNG.to_vec() };
    let msg = Outgoing::Message {
        sender: Person { id: "alice@example.org".into(), display_name: "Alice".into() },
        text: "two views of the oak".into(),
        attachments: vec![pic("north.png"), pic("south.png")],
        reply_to: None,
        avatar: None,
    };
    let parts =
        bridge.deliver(&RemoteChatId(GROUP.to_string()), &DeliveryKey("coi-a1".into()), &msg).await.expect("sent");
    assert_eq!(parts.len(), 3, "the text and two pictures: {parts:?}");
    let album = tg.wait_call("send the album", |c| c.method == "sendMediaGroup").await;
    assert_eq!(album.files.len(), 2);
    let media = album.params["media"].as_array().expect("media");
    assert_eq!(media[0]["caption"], json!("<b>Alice</b>: north.png"));
    assert_eq!(media[1]["type"], json!("photo"));

    // Voice notes (OGG/Opus), videos and other audio (MP3) go as what they are.
    let opus = degrade::ogg(b"OpusHead\x01\x01");
    for (mime, name, data, method) in [
        ("audio/ogg", "voice.ogg", opus, "sendVoice"),
        ("video/mp4", "clip.mp4", b"clip".to_vec(), "sendVideo"),
        ("audio/mpeg", "song.mp3", b"ID3\x04 song".to_vec(), "sendAudio"),
    ] {
        let msg = Outgoing::Message {
            sender: Person { id: "alice@example.org".into(), display_name: "Alice".into() },
            text: String::new(),
            attachments: vec![Attachment { name: name.into(), mime: mime.into(), data: data.clone() }],
            reply_to: None,
            avatar: None,
        };
        let key = DeliveryKey(format!("coi-{name}"));
        bridge.deliver(&RemoteChatId(GROUP.to_string()), &key, &msg).await.expect("sent");
        let call = tg.wait_call(method, |c| c.method == method).await;
        assert_eq!(call.files[0].2, data, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_admins_may_command_in_any_chat() {
    // Anna is no admin of the group, but the bridge's config names her.
    let Some(s) = TgStack::new_with(&format!("admins = [{}]\n", ANNA.0)).await else { return };
    s.tg.user_says(GROUP, ANNA, "/coi_status", None);
    let status =
        s.tg.wait_call("answer Anna's status", |c| {
            c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("members here"))
        })
        .await;
    assert!(status.params["text"].as_str().expect("text").contains("Book Club"));
    let refusals = s.tg.sent_texts(GROUP).into_iter().filter(|(_, t)| t.contains("only this chat's admins")).count();
    assert_eq!(refusals, 1, "only Max was refused (in the setup), not Anna");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_update_is_set_aside_and_the_updates_behind_it_flow() {
    let Some(s) = TgStack::new().await else { return };
    // Tom bridges his private chat with the bot as well: a second portal.
    s.tg.set_chat(TOM.0, "Tom", &[TOM.0]);
    s.tg.user_says(TOM.0, TOM, "/coi_bridge", None);
    s.tg.wait_call("bridge Tom's chat", |c| {
        c.method == "sendMessage"
            && c.params["chat_id"] == json!(TOM.0)
            && c.params["text"].as_str().is_some_and(|t| t.contains("https://i.delta.chat/#"))
    })
    .await;
    // Poison: Telegram says the group moved into a chat that has a portal of its own. Moving
    // the portal there can never work; today's bridge asked for it again forever.
    s.tg.announce_migration(GROUP, TOM.0, TOM);
    // And an update of a kind the bridge asked for that does not parse.
    let unreadable = s.tg.push_update(
        "message",
        json!({"message_id": "not a number", "chat": {"id": GROUP, "type": "group", "title": "Book Club"}}),
    );
    s.tg.user_says(GROUP, TOM, "after the poison", None);
    let m = s.dc.message_with_text(s.alice, "after the poison").await;
    assert_eq!(m["chatId"], s.group, "the group's portal stayed where it was");

    use coi_bridge::store::deadletter::DeadLetterStore as _;
    let letters = s.daemon.store().await.dead_letters("telegram").await.expect("read");
    let kinds: Vec<(&str, &str)> =
        letters.iter().map(|l| (l.kind.as_str(), l.remote_chat.as_deref().unwrap_or("-"))).collect();
    let group = GROUP.to_string();
    assert!(
        kinds.iter().any(|(k, c)| matches!(*k, "gave_up" | "failed") && *c == group),
        "the migration was set aside: {letters:?}"
    );
    assert!(letters.iter().any(|l| l.kind == "unparseable" && l.event == unreadable.to_string()), "{letters:?}");
    assert_eq!(
        s.daemon.metric("coi_bridge_dead_letters_total{bridge=\"telegram\",reason=\"unparseable\"}").await,
        Some(1.0)
    );
    // The offset moved past all of them, and the group was told.
    let offset = s.tg.confirmed_offset();
    assert!(offset > unreadable, "getUpdates offset {offset} is past update {unreadable}");
    let told = s.tg.sent_texts(GROUP);
    assert!(told.iter().any(|(_, t)| t.contains("set aside")), "{told:?}");
}

/// The texts of recorded COI messages starting with `prefix`, in the order the bridge
/// recorded them: the order it promises to keep.
async fn recorded_texts(daemon: &Daemon, prefix: &str) -> Vec<String> {
    use coi_bridge::store::Store as _;
    daemon
        .store()
        .await
        .messages(coi_bridge::store::Direction::In)
        .await
        .expect("read")
        .into_iter()
        .map(|m| m.text)
        .filter(|t| t.starts_with(prefix))
        .collect()
}
