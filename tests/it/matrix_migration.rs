//! Migration you can see, through Matrix (appservice mode, real Synapse and Delta Chat): a member who is no admin says `!coi invite` in the portal room (or in the direct room, or in a direct chat they open with the bot), gets a personal invite in a direct room with the bot (the same room every time, and no more than 3 in 10 minutes), joins through it, and `!coi status` names them as moved; someone in no portal cannot open a direct chat with the bot; an admin of the room pairs a member by hand, and an unlinked portal's gauges leave `/metrics`.

use serde_json::json;

use crate::support;
use support::bridged::{BOT, Stack, WAIT, create_room};
use support::eventually;
use support::synapse::{Synapse, invite_as, invite_direct_as, invites, join_as, membership, seg, send_as, timeline};

/// The bodies of `room`'s messages as the user of `token` sees them, oldest first.
async fn bodies(hs: &Synapse, token: &str, room: &str) -> Vec<String> {
    timeline(hs, token, room)
        .await
        .into_iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The invite links posted in `room`, oldest first.
async fn links(hs: &Synapse, token: &str, room: &str) -> Vec<String> {
    bodies(hs, token, room)
        .await
        .iter()
        .flat_map(|b| b.split_whitespace().filter(|w| w.starts_with("https://i.delta.chat/#")).map(str::to_owned))
        .collect()
}

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

    // She asks again, in the direct room itself (no portal): the invite to the group she
    // is in comes there, with no pointer to where it is.
    send_as(&s.hs, &nina, &dm, "m.room.message", "n3", json!({"msgtype": "m.text", "body": "!coi invite"})).await;
    let two = eventually(WAIT, "the second invite in the same direct room", || async {
        Some(links(&s.hs, &nina, &dm).await).filter(|l| l.len() >= 2)
    })
    .await;
    assert_ne!(two[0], two[1], "a fresh invite each time");
    let said = bodies(&s.hs, &nina, &dm).await;
    assert!(!said.iter().any(|b| b.contains("is in a direct chat") || b.contains("did not work")), "{said:?}");
    // A third is fine; a fourth within ten minutes is refused, in the direct room, counted.
    for txn in ["n4", "n5"] {
        send_as(&s.hs, &nina, &s.room, "m.room.message", txn, json!({"msgtype": "m.text", "body": "!coi invite"}))
            .await;
    }
    eventually(WAIT, "the fourth request answered in the direct room", || async {
        bodies(&s.hs, &nina, &dm).await.into_iter().find(|b| b.starts_with("You asked for an invite a moment ago"))
    })
    .await;
    assert_eq!(links(&s.hs, &nina, &dm).await.len(), 3, "no fourth invite");
    let refused = s.daemon.metric("coi_bridge_personal_invites_refused_total{bridge=\"matrix\"}").await;
    assert_eq!(refused, Some(1.0));
    assert!(invites(&s.hs, &nina).await.iter().all(|r| *r == s.room), "no second direct room");
    let nina_dc = s.dc.account(&s.mail, "bob", "Nina").await;
    s.dc.join(nina_dc, &link, WAIT).await;

    let st = moved(&s).await;
    assert!(st.contains("(bob@example.org)"), "{st}");
    assert!(!st.contains("not moved yet"), "Nina was the one active person: {st}");
}

/// Mara asks `!coi status` until it names one person as moved; that status.
async fn moved(s: &Stack) -> String {
    eventually(WAIT, "someone named as moved", || async {
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
    .await
}

/// A direct chat the user of `token` opens with the bot, as clients make one ("start chat").
async fn direct_chat_with_the_bot(hs: &Synapse, token: &str) -> String {
    create_room(hs, token, json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [BOT]})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_opens_a_direct_chat_with_the_bot_and_gets_the_invite_there_but_a_stranger_cannot() {
    let Some(s) = Stack::new().await else { return };
    let nina = s.hs.user("nina").await;
    let olga = s.hs.user("olga").await;
    invite_as(&s.hs, &s.mara, &s.room, "@nina:localhost").await;
    join_as(&s.hs, &nina, &s.room).await;

    // Olga is in no bridged room; her direct chat comes to the bot before Nina's.
    let olgas = direct_chat_with_the_bot(&s.hs, &olga).await;
    // Nina (no admin, in the portal) opens a direct chat with the bot: it joins and greets.
    let dm = direct_chat_with_the_bot(&s.hs, &nina).await;
    eventually(WAIT, "the bot joins Nina's direct chat", || async {
        membership(&s.hs, &nina, &dm, BOT).await.filter(|m| m == "join")
    })
    .await;
    // The homeserver hands the bot its invitations in order: Olga's was answered already.
    assert_eq!(membership(&s.hs, &olga, &olgas, BOT).await.as_deref(), Some("leave"), "declined");
    eventually(WAIT, "the greeting", || async {
        bodies(&s.hs, &nina, &dm).await.into_iter().find(|b| b.starts_with("Hello! Say \"!coi invite\" here"))
    })
    .await;

    send_as(&s.hs, &nina, &dm, "m.room.message", "d1", json!({"msgtype": "m.text", "body": "!coi invite"})).await;
    let link = eventually(WAIT, "the personal invite in Nina's own direct chat", || async {
        links(&s.hs, &nina, &dm).await.into_iter().next()
    })
    .await;
    assert_ne!(link, s.link, "her own link, not the room's public one");
    eventually(WAIT, "its QR code there too", || async {
        timeline(&s.hs, &nina, &dm).await.into_iter().find(|e| {
            e["sender"] == BOT && e["content"]["msgtype"] == "m.image" && e["content"]["body"] == "invite-qr.png"
        })
    })
    .await;
    let said = bodies(&s.hs, &nina, &dm).await;
    assert!(!said.iter().any(|b| b.contains("is in a direct chat") || b.contains("did not work")), "{said:?}");
    assert_eq!(invites(&s.hs, &nina).await, Vec::<String>::new(), "no room of the bot's own for Nina");

    // A chat she made earlier and invites the bot to as a direct chat now: what she said
    // there before the bot came is answered (once); her invites stay in her first chat.
    let earlier = create_room(&s.hs, &nina, json!({"preset": "trusted_private_chat", "is_direct": true})).await;
    send_as(&s.hs, &nina, &earlier, "m.room.message", "e1", json!({"msgtype": "m.text", "body": "!coi invite"})).await;
    invite_direct_as(&s.hs, &nina, &earlier, BOT).await;
    eventually(WAIT, "the pointer to her first direct chat", || async {
        bodies(&s.hs, &nina, &earlier)
            .await
            .into_iter()
            .find(|b| b.contains("your personal invite is in a direct chat"))
    })
    .await;
    let two = links(&s.hs, &nina, &dm).await;
    assert_eq!(two.len(), 2, "{two:?}");
    let there = bodies(&s.hs, &nina, &earlier).await;
    assert!(!there.iter().any(|b| b.starts_with("Hello!")), "asked already: no greeting: {there:?}");

    let nina_dc = s.dc.account(&s.mail, "bob", "Nina").await;
    s.dc.join(nina_dc, &link, WAIT).await;
    let st = moved(&s).await;
    assert!(st.contains("(bob@example.org)"), "{st}");
}

/// The user of `token` (the room's creator) gives `mxid` the power `level` in `room`.
async fn set_power(hs: &Synapse, token: &str, room: &str, mxid: &str, level: i64) {
    let url = format!("{}/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", hs.url(), seg(room));
    let http = reqwest::Client::new();
    let mut pl: serde_json::Value =
        http.get(&url).bearer_auth(token).send().await.expect("power levels").json().await.expect("json");
    pl["users"][mxid] = json!(level);
    let r = http.put(&url).bearer_auth(token).json(&pl).send().await.expect("set power levels");
    assert!(r.status().is_success(), "power levels: {:?}", r.text().await);
}

/// The `/metrics` lines of the migration gauges of the portal in `room`.
async fn gauges_of(s: &Stack, room: &str) -> Vec<String> {
    let (_, body) = s.daemon.http_get("/metrics").await.expect("/metrics");
    let label = format!("remote_chat=\"{room}\"");
    body.lines().filter(|l| l.starts_with("coi_bridge_migration_") && l.contains(&label)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_admin_pairs_a_matrix_member_and_an_unlinked_portal_leaves_the_metrics() {
    let Some(s) = Stack::new().await else { return };
    let nina = s.hs.user("nina").await;
    let olga = s.hs.user("olga").await;
    for (token, mxid) in [(&nina, "@nina:localhost"), (&olga, "@olga:localhost")] {
        invite_as(&s.hs, &s.mara, &s.room, mxid).await;
        join_as(&s.hs, token, &s.room).await;
    }
    // Olga is an admin of the room (power 100), not one of the bridge's admins.
    set_power(&s.hs, &s.mara, &s.room, "@olga:localhost", 100).await;
    // Bob joins the COI group with the room's link: the bridge has his key.
    let bob = s.dc.account(&s.mail, "bob", "Bob").await;
    s.join(bob, &s.link).await;
    let pair = |who: &str| json!({"msgtype": "m.text", "body": format!("!coi pair @nina:localhost {who}@example.org")});

    send_as(&s.hs, &nina, &s.room, "m.room.message", "p1", pair("bob")).await;
    s.event("Nina may not pair", |e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("only the bridge's admins and this room's admins can pair"))
    })
    .await;
    send_as(&s.hs, &s.mara, &s.room, "m.room.message", "p2", pair("carol")).await;
    s.event("no key for Carol", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("the bridge has no key for carol@example.org"))
    })
    .await;
    send_as(&s.hs, &olga, &s.room, "m.room.message", "p3", pair("bob")).await;
    s.event("Olga paired Nina", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.ends_with("is bob@example.org on COI from now on."))
    })
    .await;

    send_as(&s.hs, &s.mara, &s.room, "m.room.message", "st", json!({"msgtype": "m.text", "body": "!coi status"})).await;
    let st = s.event("the status", |e| e["content"]["body"].as_str().is_some_and(|b| b.contains("Moved to COI"))).await;
    let st = st["content"]["body"].as_str().unwrap_or_default().to_owned();
    assert!(st.contains("Moved to COI: 1 of") && st.contains("(bob@example.org)"), "{st}");
    let gauges = gauges_of(&s, &s.room).await;
    assert!(gauges.iter().any(|l| l.starts_with("coi_bridge_migration_moved{") && l.ends_with(" 1")), "{gauges:?}");

    // Unlinked: the portal's gauges go, not stay at their last numbers.
    send_as(&s.hs, &s.mara, &s.room, "m.room.message", "ul", json!({"msgtype": "m.text", "body": "!coi unlink"})).await;
    s.event("unlinked", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.starts_with("Unlinked from the COI group"))
    })
    .await;
    assert_eq!(gauges_of(&s, &s.room).await, Vec::<String>::new());
}
