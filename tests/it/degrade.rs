//! Degrade, never drop, through the daemon: what Telegram (the Bot API double, which refuses what the real API refuses) and Matrix (a real Synapse, 64 KiB events) cannot carry arrives in a form they take, from a real Delta Chat 2.65.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::bridged::{ALICE_GHOST, Stack};
use support::deltachat::DeltaChat;
use support::synapse::timeline;
use support::telegram::{FakeTelegram, TOKEN};
use support::{Daemon, Link, eventually, free_port};

const WAIT: Duration = Duration::from_secs(120);
const GROUP: i64 = -1_001_234_567_890;
const TOM: (i64, &str) = (4242, "Tom");
/// How Telegram shows what Alice wrote: the bridge relays it with her name.
const ALICE: &str = "<b>Alice</b>: ";
const FAILED: &str = "coi_bridge_outbox_deliveries_total{target=\"telegram\",result=\"failed\"}";

/// A Telegram group bridged by Tom (its admin), and Alice (Delta Chat) in the COI group.
struct TgStack {
    daemon: Daemon,
    dc: DeltaChat,
    tg: FakeTelegram,
    _mail: support::MailServer,
    _state: tempfile::TempDir,
    alice: u64,
    group: Value,
}

impl TgStack {
    async fn new() -> Option<Self> {
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
             allowed_chats = [{GROUP}]\n",
            tg.url()
        );
        let text = std::fs::read_to_string(&config).expect("config") + section.as_str();
        std::fs::write(&config, text).expect("config");
        let mut daemon = Daemon::with_config(state.path(), config, http_port);
        daemon.wait_ready().await;
        tg.user_says(GROUP, TOM, "/coi_bridge", None);
        let answer = tg
            .wait_call("post the invite", |c| {
                c.method == "sendMessage"
                    && c.params["text"].as_str().is_some_and(|t| t.contains("https://i.delta.chat/#"))
            })
            .await;
        let link = answer.params["text"]
            .as_str()
            .and_then(|t| t.lines().find(|l| l.starts_with("https://i.delta.chat/#")))
            .expect("link")
            .to_owned();
        let group = dc.join(alice, &link, WAIT).await;
        Some(Self { daemon, dc, tg, _mail: mail, _state: state, alice, group })
    }

    /// Alice writes into the group; her Delta Chat message id.
    async fn alice_says(&self, text: &str) -> Value {
        self.dc.call("misc_send_text_message", json!([self.alice, self.group, text])).await
    }

    /// What Telegram shows now of Alice's messages: every message the bot sent with her
    /// name that still exists, with its text as it is now (prefix removed), in order.
    fn alice_on_telegram(&self) -> Vec<(i64, String)> {
        self.tg
            .sent_texts(GROUP)
            .into_iter()
            .filter_map(|(id, _)| Some((id, self.tg.message_text(GROUP, id)?.strip_prefix(ALICE)?.to_owned())))
            .collect()
    }

    /// Waits until Telegram shows Alice's messages as exactly the words of `text`, and
    /// returns them.
    async fn shows(&self, what: &str, text: &str) -> Vec<(i64, String)> {
        eventually(WAIT, what, || async {
            let now = self.alice_on_telegram();
            let got: Vec<String> = now.iter().flat_map(|(_, t)| words(t)).collect();
            (got == words(text)).then_some(now)
        })
        .await
    }

    /// Whether the bridge gave up on any delivery to Telegram (and so warned Alice).
    async fn gave_up(&self) -> f64 {
        self.daemon.metric(FAILED).await.unwrap_or(0.0)
    }
}

impl Drop for TgStack {
    /// A failing test shows the daemon's warnings and errors.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.daemon.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            eprintln!("--- the daemon's warnings ---\n{}\n---", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
    }
}

/// `n` paragraphs of numbered words (`{tag}{paragraph}w{word}`), about `chars` long in all.
fn long_text(tag: &str, chars: usize) -> String {
    let mut paragraphs = Vec::new();
    let mut len = 0;
    while len < chars {
        let p = paragraphs.len();
        let para = (0..40).map(|w| format!("{tag}{p}w{w}")).collect::<Vec<_>>().join(" ");
        len += para.len() + 2;
        paragraphs.push(para);
    }
    let mut text = paragraphs.join("\n\n");
    text.truncate(chars);
    // Exactly `chars` long, ending in a word.
    let trimmed = text.trim_end().len();
    let pad = text.len() - trimmed;
    text.truncate(trimmed);
    text + "x".repeat(pad).as_str()
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_telegram_does_not_take_arrives_as_the_nearest_one_it_does_with_no_warning() {
    let Some(s) = TgStack::new().await else { return };
    let toms = s.tg.user_says(GROUP, TOM, "the meeting moved to Tuesday", None);
    let at_alice = s.dc.message_with_text(s.alice, "the meeting moved to Tuesday").await;
    // 😂 is not among Telegram's reactions (the double answers REACTION_INVALID, as Telegram does).
    s.dc.call("send_reaction", json!([s.alice, at_alice["id"], ["😂"]])).await;
    let reaction =
        s.tg.wait_call("set a reaction Telegram takes", |c| {
            c.method == "setMessageReaction" || c.method == "setMessageReaction!failed"
        })
        .await;
    assert_eq!(reaction.method, "setMessageReaction", "accepted at once: {:?}", reaction.params);
    assert_eq!(reaction.params["message_id"].as_i64(), Some(toms));
    assert_eq!(reaction.params["reaction"], json!([{"type": "emoji", "emoji": "🤣"}]), "the nearest in meaning");

    // A message behind it in the chat's order arrives after it, and nothing was given up
    // on: no warning went to Alice.
    s.alice_says("see you then").await;
    s.tg.wait_call("relay the next message", |c| {
        c.method == "sendMessage" && c.params["text"] == "<b>Alice</b>: see you then"
    })
    .await;
    assert_eq!(s.gave_up().await, 0.0, "no delivery to Telegram failed");
    assert!(!s.tg.calls().iter().any(|c| c.method.ends_with("!failed")), "Telegram refused nothing");
    let texts = s.dc.chat_texts(s.alice, &s.group).await;
    assert!(!texts.iter().any(|t| t.contains("Not delivered")), "no warning at Alice: {texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_character_message_reaches_telegram_whole_in_parts_and_its_delete_removes_every_part() {
    let Some(s) = TgStack::new().await else { return };
    let text = long_text("p", 10_000);
    assert_eq!(text.chars().count(), 10_000);
    let own = s.alice_says(&text).await;
    let parts = s.shows("the whole text on Telegram", &text).await;
    assert_eq!(parts.len(), 3, "10,000 characters in three parts");
    for (_, t) in &parts {
        // What Telegram counts: the visible text, "Alice: " and the part.
        let visible = t.encode_utf16().count() + "Alice: ".len();
        assert!(visible <= 4096, "a part of {visible} UTF-16 units");
    }
    // A delete removes every part.
    s.dc.call("delete_messages_for_all", json!([s.alice, [own]])).await;
    s.shows("every part deleted", "").await;
    assert_eq!(s.tg.sent("deleteMessage", GROUP).len(), 3);
    assert!(!s.tg.calls().iter().any(|c| c.method.ends_with("!failed")), "Telegram refused nothing");
    assert_eq!(s.gave_up().await, 0.0, "no delivery to Telegram failed");
}

/// About `chars` characters of words that are mostly emoji (`🌼🌼🌼🌼12`), on one line:
/// under what Delta Chat sends whole and so lets edit (3,800 characters in 38 lines of
/// 100; a longer text is cut, the rest goes as HTML, and Delta Chat refuses to edit it),
/// over Telegram's 4,096 UTF-16 units (an emoji counts two).
fn emoji_text(flower: &str, chars: usize) -> String {
    let mut words = Vec::new();
    let mut len = 0;
    while len < chars {
        let w = format!("{flower}{flower}{flower}{flower}{}", words.len());
        len += w.chars().count() + 1;
        words.push(w);
    }
    words.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_text_in_parts_act_on_every_part_on_telegram() {
    let Some(s) = TgStack::new().await else { return };
    let first = emoji_text("🌼", 3_000);
    assert!(first.chars().count() < 3_100 && first.encode_utf16().count() > 4_400);
    let own = s.alice_says(&first).await;
    let parts = s.shows("the text in parts", &first).await;
    assert_eq!(parts.len(), 2);
    let ids: Vec<i64> = parts.iter().map(|(id, _)| *id).collect();

    // Another text as long: both parts are edited in place.
    let second = emoji_text("🌷", 3_000);
    s.dc.call("send_edit_request", json!([s.alice, own, second])).await;
    let now = s.shows("the edit on both parts", &second).await;
    assert_eq!(now.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids, "edited in place, nothing new sent");

    // A short text: the first part is edited, the second deleted.
    s.dc.call("send_edit_request", json!([s.alice, own, "never mind, see you Tuesday"])).await;
    let now = s.shows("the short edit", "never mind, see you Tuesday").await;
    assert_eq!(now, vec![(ids[0], "never mind, see you Tuesday".to_owned())]);

    // Long again: the part that is missing now is sent after the first.
    let third = emoji_text("🌸", 3_000);
    s.dc.call("send_edit_request", json!([s.alice, own, third])).await;
    let now = s.shows("the long edit", &third).await;
    assert_eq!((now.len(), now[0].0), (2, ids[0]));
    assert!(now[1].0 > ids[1], "a new second part");

    // And a delete removes both.
    s.dc.call("delete_messages_for_all", json!([s.alice, [own]])).await;
    s.shows("both parts deleted", "").await;
    assert!(!s.tg.calls().iter().any(|c| c.method.ends_with("!failed")), "Telegram refused nothing");
    assert_eq!(s.gave_up().await, 0.0, "no delivery to Telegram failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_over_the_matrix_event_limit_arrives_whole_in_parts() {
    let Some(s) = Stack::new().await else { return };
    // About 100 KB: Synapse refuses an event over 64 KiB.
    let text = long_text("m", 100_000);
    s.alice_says(&text).await;
    let bodies = eventually(WAIT, "the whole text in the room", || async {
        let bodies: Vec<String> = timeline(&s.hs, &s.mara, &s.room)
            .await
            .into_iter()
            .filter(|e| e["sender"] == ALICE_GHOST && e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .filter(|b| b.starts_with('m'))
            .collect();
        let got: Vec<String> = bodies.iter().flat_map(|b| words(b)).collect();
        (got == words(&text)).then_some(bodies)
    })
    .await;
    assert!(bodies.len() >= 4, "in {} parts", bodies.len());
    for b in &bodies {
        assert!(serde_json::to_string(b).expect("json").len() < 32 * 1024, "each part well under the event limit");
    }
    let failed = s.daemon.metric("coi_bridge_outbox_deliveries_total{target=\"matrix\",result=\"failed\"}").await;
    assert_eq!(failed.unwrap_or(0.0), 0.0, "no delivery to Matrix failed");
}
