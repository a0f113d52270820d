//! Telegram private chats reach their people, through the daemon with the Bot API double and real Delta Chat: a private message to the bot reaches the owners as a chat named after the Telegram user and their answer returns; `/coi_pair @username` pairs by handle and `/coi_to @handle` reaches that person's own COI address; without owners, or without their keys, the person is told.

use serde_json::{Value, json};

use super::{GROUP, TOM, TgStack, WAIT};
use crate::support::eventually;

const PAT: (i64, &str) = (5201, "Pat");
const ANN: (i64, &str) = (5101, "Ann");
const OWNERS: &str = "owners = [\"alice@example.org\"]\n";

/// The text of the bot's latest message in `chat` that contains `what`, once there is one.
async fn bot_says(s: &TgStack, chat: i64, what: &str) -> String {
    eventually(WAIT, &format!("the bot says {what:?} in {chat}"), || async {
        s.tg.sent_texts(chat).into_iter().rev().map(|(_, t)| t).find(|t| t.contains(what))
    })
    .await
}

/// Every message text of every chat of account `acc`, now.
async fn all_texts(s: &TgStack, acc: u64) -> Vec<String> {
    let chats = s.dc.call("get_chatlist_entries", json!([acc, null, null, null])).await;
    let mut out = Vec::new();
    for chat in chats.as_array().cloned().unwrap_or_default() {
        out.extend(s.dc.chat_texts(acc, &chat).await);
    }
    out
}

/// Account `acc` answers in the chat that shows `text` (named `name`); returns that chat.
async fn answer(s: &TgStack, acc: u64, text: &str, name: &str, reply: &str) -> Value {
    let m = s.dc.message_with_text(acc, text).await;
    let chat = m["chatId"].clone();
    let info = s.dc.call("get_full_chat_by_id", json!([acc, chat])).await;
    assert_eq!(info["name"], json!(name), "{info}");
    if info["isContactRequest"] == json!(true) {
        s.dc.call("accept_chat", json!([acc, chat])).await;
    }
    s.dc.call("misc_send_text_message", json!([acc, chat, reply])).await;
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_reaches_the_owners_and_their_answer_returns() {
    let Some(s) = TgStack::new_with(OWNERS).await else { return };
    s.tg.user_says(PAT.0, PAT, "/start", None);
    bot_says(&s, PAT.0, "reaches the people behind this bridge").await;

    s.tg.user_says(PAT.0, PAT, "hello from Pat", None);
    let chat = answer(&s, s.alice, "hello from Pat", "Pat (Telegram)", "hi Pat, Alice here").await;
    assert_ne!(chat, s.group, "a chat of its own, not the bridged group");
    let back = bot_says(&s, PAT.0, "hi Pat, Alice here").await;
    assert!(back.contains("Alice"), "with the owner's name: {back}");
    bot_says(&s, PAT.0, "Your message went to the people behind this bridge").await;

    // The next message goes to the same chat: one COI group per private chat.
    s.tg.user_says(PAT.0, PAT, "still Pat", None);
    let again = s.dc.message_with_text(s.alice, "still Pat").await;
    assert_eq!(again["chatId"], chat);
    let told = s.tg.sent_texts(PAT.0).into_iter().filter(|(_, t)| t.contains("Your message went")).count();
    assert_eq!(told, 1, "told once, when the chat was opened");
    assert!(!s.tg.sent_texts(PAT.0).iter().any(|(_, t)| t.contains("alice@example.org")), "no owner's address");

    // A private chat is no group that moves: `coi-bridge migration` lists the group only.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coi-bridge"))
        .args(["migration", "--config"])
        .arg(&s.daemon.config)
        .output()
        .expect("run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Book Club") && !report.contains("Pat (Telegram)"), "{report}");

    // Alice leaves the chat: Pat is told nobody reads it, and no new chat is made for her.
    s.dc.call("leave_group", json!([s.alice, chat])).await;
    eventually(WAIT, "the bridge sees Alice leave", || async {
        use coi_bridge::store::Store as _;
        use coi_bridge::store::portals::PortalStore as _;
        let store = s.daemon.store().await;
        let portal = store.portal_by_remote("telegram", &PAT.0.to_string()).await.expect("read")?;
        let members = store.chat(portal.chat_id).await.expect("read")?.members;
        members.is_empty().then_some(())
    })
    .await;
    s.tg.user_says(PAT.0, PAT, "anyone?", None);
    bot_says(&s, PAT.0, "Nobody on COI reads this conversation now").await;
    let chats = s.dc.call("get_chatlist_entries", json!([s.alice, null, null, null])).await;
    for c in chats.as_array().cloned().unwrap_or_default() {
        let info = s.dc.call("get_full_chat_by_id", json!([s.alice, c])).await;
        assert!(c == chat || info["name"] != json!("Pat (Telegram)"), "a second chat for Pat: {info}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coi_to_a_handle_reaches_the_paired_persons_own_address() {
    let Some(s) = TgStack::new_with(OWNERS).await else { return };
    // Ann is on COI (the bridge has her key) and posts on Telegram as @Ann_TG.
    let ann_dc = s.dc.account(&s._mail, "bob", "Ann").await;
    s.dc.join(ann_dc, &s.link, WAIT).await;
    s.tg.set_username(ANN.0, "Ann_TG");
    s.tg.set_member(GROUP, ANN);
    s.tg.user_says(GROUP, ANN, "hi from Ann on Telegram", None);
    s.dc.message_with_text(s.alice, "hi from Ann on Telegram").await;

    // Not paired yet, and a handle nobody used: clear answers, nothing opened.
    s.tg.user_says(PAT.0, PAT, "/coi_to @ann_tg", None);
    bot_says(&s, PAT.0, "Ann has not moved to COI through this bridge").await;
    s.tg.user_says(PAT.0, PAT, "/coi_to @nobody_here", None);
    bot_says(&s, PAT.0, "I do not know @nobody_here").await;

    // Tom, the group's admin, pairs her by her handle (one the bot never saw, or an address
    // without a key: a clear answer); the status names her as moved.
    s.tg.user_says(GROUP, TOM, "/coi_pair @ghost_user bob@example.org", None);
    bot_says(&s, GROUP, "I do not know @ghost_user yet").await;
    // An address whose key the bridge does not have is refused: nobody could read her chats.
    s.tg.user_says(GROUP, TOM, "/coi_pair @ann_tg stranger@example.org", None);
    let refused = bot_says(&s, GROUP, "the bridge has no key for stranger@example.org").await;
    assert!(refused.starts_with("That did not work:"), "{refused}");
    s.tg.user_says(GROUP, TOM, "/coi_pair @ann_tg bob@example.org", None);
    bot_says(&s, GROUP, "Ann is bob@example.org on COI from now on").await;
    s.tg.user_says(GROUP, TOM, "/coi_status", None);
    let st = bot_says(&s, GROUP, "Moved to COI").await;
    assert!(st.contains("Moved to COI: 1 of the") && st.contains("Ann (bob@example.org)"), "{st}");

    // Pat writes to @Ann_TG through the bot: it reaches Ann's own address, her answer returns.
    s.tg.user_says(PAT.0, PAT, "/coi_to @Ann_TG", None);
    bot_says(&s, PAT.0, "Your messages here now go to Ann on COI").await;
    s.tg.user_says(PAT.0, PAT, "hello Ann, Pat here", None);
    let ann_chat = answer(&s, ann_dc, "hello Ann, Pat here", "Pat (Telegram)", "hi Pat, from Ann's own COI").await;
    let back = bot_says(&s, PAT.0, "hi Pat, from Ann's own COI").await;
    assert!(back.contains("Ann"), "{back}");
    assert!(!all_texts(&s, s.alice).await.iter().any(|t| t == "hello Ann, Pat here"), "not to the owners");
    assert!(!s.tg.sent_texts(PAT.0).iter().any(|(_, t)| t.contains("bob@example.org")), "her address stays hers");

    // /coi_to alone: the owners again; Ann's chat still answers into Pat's.
    s.tg.user_says(PAT.0, PAT, "/coi_to", None);
    bot_says(&s, PAT.0, "go to the people behind this bridge again").await;
    s.tg.user_says(PAT.0, PAT, "back to the owners", None);
    answer(&s, s.alice, "back to the owners", "Pat (Telegram)", "welcome back, Pat").await;
    bot_says(&s, PAT.0, "welcome back, Pat").await;
    assert!(!all_texts(&s, ann_dc).await.iter().any(|t| t == "back to the owners"), "not to Ann");
    s.dc.call("misc_send_text_message", json!([ann_dc, ann_chat, "Ann again"])).await;
    bot_says(&s, PAT.0, "Ann again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_owners_a_private_message_gets_a_clear_answer() {
    let Some(s) = TgStack::new().await else { return };
    s.tg.user_says(PAT.0, PAT, "anyone there?", None);
    let said = bot_says(&s, PAT.0, "does not take private messages").await;
    assert!(said.contains("/coi_invite") && said.contains("/coi_to"), "{said}");
    // Nothing reached COI, and nothing was set aside: the bot said why.
    assert!(!all_texts(&s, s.alice).await.iter().any(|t| t == "anyone there?"));
    assert_eq!(s.daemon.metric("coi_bridge_dead_letters_total{bridge=\"telegram\",reason=\"failed\"}").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_owners_key_the_person_is_told_and_the_message_set_aside() {
    // Dave owns the bridge but never gave it his key.
    let Some(s) = TgStack::new_with("owners = [\"dave@example.org\"]\n").await else { return };
    s.tg.user_says(PAT.0, PAT, "is anyone reading this?", None);
    bot_says(&s, PAT.0, "no encryption key").await;
    let set_aside = eventually(WAIT, "the message set aside", || async {
        s.daemon.metric("coi_bridge_dead_letters_total{bridge=\"telegram\",reason=\"failed\"}").await
    })
    .await;
    assert_eq!(set_aside, 1.0);
    // The updates behind it flow: the group still bridges.
    s.tg.user_says(GROUP, TOM, "the group still works", None);
    s.dc.message_with_text(s.alice, "the group still works").await;
}
