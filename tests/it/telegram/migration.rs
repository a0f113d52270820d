//! Migration you can see, through the daemon with the Bot API double and real Delta Chat: personal invites pair a Telegram member with the COI address that joins through theirs, `/coi_status` names who moved and who is active but not moved, and "this group can be closed" is said once when the last active member moves.

use super::{GROUP, TOM, TgStack, WAIT};
use crate::support::eventually;

const ANN: (i64, &str) = (5101, "Ann");
const BEN: (i64, &str) = (5102, "Ben");
/// What only the announcement says (the status says "this … group can be closed" too).
const ANNOUNCED: &str = "in the last 30 days is also on COI";

/// The text of the bot's latest message in `chat` that contains `what`, once there is one.
async fn bot_says(s: &TgStack, chat: i64, what: &str) -> String {
    eventually(WAIT, &format!("the bot says {what:?} in {chat}"), || async {
        s.tg.sent_texts(chat).into_iter().rev().map(|(_, t)| t).find(|t| t.contains(what))
    })
    .await
}

/// The Delta Chat invite link in a text.
fn link_in(text: &str) -> String {
    text.split_whitespace().find(|w| w.starts_with("https://i.delta.chat/#")).expect("an invite link").to_owned()
}

/// Tom's `/coi_status`, answered.
async fn status(s: &TgStack) -> String {
    let before = s.tg.sent_texts(GROUP).len();
    s.tg.user_says(GROUP, TOM, "/coi_status", None);
    eventually(WAIT, "the status", || async {
        s.tg.sent_texts(GROUP).into_iter().skip(before).map(|(_, t)| t).find(|t| t.contains("Moved to COI"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_invites_show_who_moved_and_the_group_is_closable_once() {
    let Some(s) = TgStack::new().await else { return };
    let mail = &s._mail;
    let ann_dc = s.dc.account(mail, "bob", "Ann").await;
    let ben_dc = s.dc.account(mail, "carol", "Ben").await;

    // Ann and Ben are members who post: both active, neither moved.
    s.tg.user_joins(GROUP, ANN);
    s.tg.set_member(GROUP, BEN);
    for (who, text) in [(ANN, "hi from Ann"), (BEN, "hi from Ben")] {
        s.tg.user_says(GROUP, who, text, None);
        s.dc.message_with_text(s.alice, text).await;
    }
    // Telegram counts Tom (the admin), Ann, Ben and the bot; the bridge has seen two of them.
    let st = status(&s).await;
    assert_eq!(s.tg.member_count(GROUP), 4);
    assert!(st.contains("Moved to COI: 0 of the 3 members here."), "{st}");
    assert!(st.contains("Only on Telegram: Ann, Ben and 1 more person the bridge has not seen join or post."), "{st}");
    assert!(st.contains("Active in the last 30 days and not moved yet: Ann, Ben."), "{st}");

    // Ann asks in the group (she is no admin): the bot points her to a private chat…
    s.tg.user_says(GROUP, ANN, "/coi_invite", None);
    let hint = bot_says(&s, GROUP, "t.me/coi_bridge_bot?start=").await;
    let payload = hint.split("?start=").nth(1).and_then(|p| p.split_whitespace().next()).expect("payload").to_owned();
    assert_eq!(payload, format!("invite_{GROUP}"));
    // … where opening the link sends /start with it, and her personal invite comes back.
    s.tg.user_says(ANN.0, ANN, &format!("/start {payload}"), None);
    let personal = link_in(&bot_says(&s, ANN.0, "https://i.delta.chat/#").await);
    assert_ne!(personal, s.link, "a link of her own, not the group's public one");
    assert!(s.tg.sent("sendPhoto", ANN.0).len() == 1, "with its QR code");
    s.dc.join(ann_dc, &personal, WAIT).await;

    // Her move shows in /metrics at once, not at the next hourly sample: one moved, Ben
    // active and not moved, and the Telegram side as big as Telegram counts it (the bot not
    // counted), not only the two people the bridge has seen.
    let portal = format!("account=\"{}\",bridge=\"telegram\",remote_chat=\"{GROUP}\"", crate::support::BRIDGE);
    let gauge = |name: &str, side: &str| format!("coi_bridge_migration_{name}{{{portal}{side}}}");
    eventually(WAIT, "Ann counted as moved in /metrics", || async {
        (s.daemon.metric(&gauge("moved", "")).await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(s.daemon.metric(&gauge("active_not_moved", "")).await, Some(1.0), "Ben");
    let remote = s.daemon.metric(&gauge("members", ",side=\"remote\"")).await;
    assert_eq!(remote, Some(s.tg.member_count(GROUP) as f64 - 1.0), "Tom, Ann and Ben");

    let st = eventually(WAIT, "Ann named as moved", || async {
        let st = status(&s).await;
        st.contains("Moved to COI: 1 of the 3 members here: Ann (bob@example.org).").then_some(st)
    })
    .await;
    assert!(st.contains("Active in the last 30 days and not moved yet: Ben."), "{st}");
    assert!(!st.contains("can be closed"), "Ben is active and has not moved: {st}");
    assert!(!s.tg.sent_texts(GROUP).iter().any(|(_, t)| t.contains(ANNOUNCED)), "nothing announced yet");

    // A forged deep-link payload gets an answer, not a failed update.
    s.tg.user_says(9998, (9998, "Mal"), "/start invite_<script>", None);
    bot_says(&s, 9998, "not one of mine").await;

    // A stranger asking privately gets nothing: the bot only invites members.
    s.tg.user_says(9999, (9999, "Eve"), "/coi_invite", None);
    bot_says(&s, 9999, "no bridged group of yours").await;
    assert!(!s.tg.sent_texts(9999).iter().any(|(_, t)| t.contains("i.delta.chat")));

    // Ben, the last active member, moves with /coi_invite in a private chat.
    s.tg.user_says(BEN.0, BEN, "/coi_invite", None);
    let personal = link_in(&bot_says(&s, BEN.0, "https://i.delta.chat/#").await);
    s.dc.join(ben_dc, &personal, WAIT).await;

    // The group hears once that it can be closed, on Telegram and on COI.
    let said = bot_says(&s, GROUP, ANNOUNCED).await;
    assert!(said.contains("this Telegram group can be closed"), "{said}");
    eventually(WAIT, "the announcement in Alice's COI group", || async {
        s.dc.chat_texts(s.alice, &s.group).await.into_iter().find(|t| t.contains(ANNOUNCED))
    })
    .await;

    // Ben leaves Telegram: the status says so, and the announcement is not made again.
    s.tg.user_leaves(GROUP, BEN);
    let st = eventually(WAIT, "Ben named as gone since moving", || async {
        let st = status(&s).await;
        st.contains("Left Telegram since moving: Ben (carol@example.org).").then_some(st)
    })
    .await;
    assert!(st.contains("Ann (bob@example.org)"), "{st}");
    s.tg.user_says(GROUP, ANN, "still here", None);
    s.dc.message_with_text(s.alice, "still here").await;
    let announced = s.tg.sent_texts(GROUP).iter().filter(|(_, t)| t.contains(ANNOUNCED)).count();
    assert_eq!(announced, 1, "announced exactly once");
    let texts = s.dc.chat_texts(s.alice, &s.group).await;
    assert_eq!(texts.iter().filter(|t| t.contains(ANNOUNCED)).count(), 1, "once on COI: {texts:?}");
}
