//! Migration you can see, through Matrix (appservice mode, real Synapse and Delta Chat): a member who is no admin says `!coi invite` in the portal room, gets a personal invite in a direct room with the bot, joins through it, and `!coi status` names them as moved.

use serde_json::json;

use crate::support;
use support::bridged::{Stack, WAIT};
use support::eventually;
use support::synapse::{invite_as, invites, join_as, send_as, timeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_member_moves_with_a_personal_invite_and_the_status_names_them() {
    let Some(s) = Stack::new().await else { return };
    let nina = s.hs.user("nina").await;
    invite_as(&s.hs, &s.mara, &s.room, "@nina:localhost").await;
    join_as(&s.hs, &nina, &s.room).await;
    send_as(&s.hs, &nina, &s.room, "m.room.message", "n1", json!({"msgtype": "m.text", "body": "hi from Nina"})).await;
    s.at_alice("hi from Nina").await;

    // Mara (an admin) asks: Nina is active and has not moved.
    send_as(&s.hs, &s.mara, &s.room, "m.room.message", "st1", json!({"msgtype": "m.text", "body": "!coi status"}))
        .await;
    let st = s.event("the status", |e| e["content"]["body"].as_str().is_some_and(|b| b.contains("Moved to COI"))).await;
    let st = st["content"]["body"].as_str().unwrap_or_default().to_owned();
    assert!(st.contains("Active in the last 30 days and not moved yet:") && st.contains("nina"), "{st}");

    // Nina (no admin) asks for her invite: it comes in a direct room with the bot.
    send_as(&s.hs, &nina, &s.room, "m.room.message", "n2", json!({"msgtype": "m.text", "body": "!coi invite"})).await;
    s.event("the hint in the room", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("your personal invite is in a direct chat"))
    })
    .await;
    let dm = eventually(WAIT, "the bot's direct room invites Nina", || async {
        invites(&s.hs, &nina).await.into_iter().find(|r| *r != s.room)
    })
    .await;
    join_as(&s.hs, &nina, &dm).await;
    let text = eventually(WAIT, "the personal invite in the direct room", || async {
        timeline(&s.hs, &nina, &dm)
            .await
            .into_iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .find(|b| b.contains("https://i.delta.chat/#"))
    })
    .await;
    let link = text.split_whitespace().find(|w| w.starts_with("https://i.delta.chat/#")).expect("link").to_owned();
    assert_ne!(link, s.link, "her own link, not the room's public one");
    let nina_dc = s.dc.account(&s.mail, "bob", "Nina").await;
    s.dc.join(nina_dc, &link, WAIT).await;

    let st = eventually(WAIT, "Nina named as moved", || async {
        let txn = format!("st-{}", uuid::Uuid::new_v4());
        let body = json!({"msgtype": "m.text", "body": "!coi status"});
        send_as(&s.hs, &s.mara, &s.room, "m.room.message", &txn, body).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        timeline(&s.hs, &s.mara, &s.room)
            .await
            .into_iter()
            .rev()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .find(|b| b.contains("Moved to COI: 1 of"))
    })
    .await;
    assert!(st.contains("(bob@example.org)"), "{st}");
    assert!(!st.contains("not moved yet"), "Nina was the one active person: {st}");
}
