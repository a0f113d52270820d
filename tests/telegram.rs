//! The Telegram bridge end to end, through the daemon: the fake Bot API (tests/support/telegram.rs), real Dovecot + Postfix and a real Delta Chat core.

mod support;

use std::time::Duration;

use serde_json::json;
use support::deltachat::DeltaChat;
use support::telegram::{FakeTelegram, TOKEN};
use support::{Daemon, Link, eventually, free_port};

const WAIT: Duration = Duration::from_secs(90);
const GROUP: i64 = -1_001_234_567_890;
const TOM: (i64, &str) = (4242, "Tom");
const ANNA: (i64, &str) = (4343, "Anna");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_group_is_bridged_to_coi_both_ways() {
    coi_bridge::init_crypto();
    let mail = mail_server!();
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&mail, "alice", "Alice").await;
    let tg = FakeTelegram::start().await;
    tg.set_chat(GROUP, "Book Club", &[TOM.0]);

    let state = tempfile::tempdir().expect("tempdir");
    let http_port = free_port();
    let config = support::write_config_with(&mail, state.path(), Link::Plain, "", http_port, "required");
    std::fs::write(state.path().join("tg-token"), format!("{TOKEN}\n")).expect("token");
    let section = format!(
        "\n[[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"tg-token\"\n\
         allowed_chats = [{GROUP}]\n",
        tg.url()
    );
    let text = std::fs::read_to_string(&config).expect("config") + section.as_str();
    std::fs::write(&config, text).expect("config");
    let mut daemon = Daemon::with_config(state.path(), config, http_port);
    daemon.wait_ready().await;

    // Only the chat's admins may command the bridge.
    tg.user_says(GROUP, ANNA, "/coi_bridge", None);
    tg.wait_call("refuse Anna", |c| {
        c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("only this chat's admins"))
    })
    .await;
    tg.user_says(GROUP, TOM, "/coi_bridge@coi_bridge_bot", None);
    let answer = tg
        .wait_call("post the invite", |c| {
            c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("https://i.delta.chat/#"))
        })
        .await;
    tg.wait_call("post the QR code", |c| c.method == "sendPhoto").await;
    let link = answer.params["text"]
        .as_str()
        .and_then(|t| t.lines().find(|l| l.starts_with("https://i.delta.chat/#")))
        .expect("link")
        .to_owned();

    // Alice joins on Delta Chat and writes; the bot posts it with her name in bold.
    let mark = dc.mark();
    let group = dc.call("secure_join", json!([alice, link])).await;
    dc.wait_event_since(mark, alice, "joined", WAIT, |e| {
        e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
    })
    .await;
    dc.wait_until_member(alice, &group).await;
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
    assert_eq!(m["chatId"], group);

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
    assert_eq!(got, burst, "all of them, once each, in order");
    assert_eq!(tg.calls().iter().filter(|c| c.method == "sendMessage!failed").count(), 3, "the 429s happened");

    // A chat that is not on the allowlist: the bot says so and leaves.
    tg.set_chat(-555, "Elsewhere", &[TOM.0]);
    tg.user_says(-555, TOM, "hello bot", None);
    tg.wait_call("leave the other chat", |c| c.method == "leaveChat" && c.params["chat_id"] == json!(-555)).await;
    let said = tg.sent_texts(-555);
    assert!(said.iter().any(|(_, t)| t.contains("allowlist")), "{said:?}");
    drop(daemon);
}
