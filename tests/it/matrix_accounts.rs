//! One appservice registration serving several Matrix bridges in one daemon (#12 point 4): each bridge has its own bot, the homeserver's transactions reach one shared endpoint, and each event reaches only the bridge whose room it is.
//!
//! Through the daemon process, a real Synapse, Dovecot/Postfix and Delta Chat. The two
//! bridges are two `[[bridge]] kind = "matrix"` sections of one daemon pointing at the same
//! registration file: the same path the multi-account runtime takes (every account's build
//! is handed the daemon's one `SharedRoutes`), with one `[account]`.

use crate::support;

use serde_json::{Value, json};
use support::bridged::{ALICE_GHOST, BOT, Stack, bridge_room_as, create_room};
use support::synapse::{send_as, timeline};

/// The second bridge's bot: inside the test homeserver's `@coi_.*` namespace.
const BOT_B: &str = "@coi_botb:localhost";

/// The second bridge, on the registration the first one uses.
const SECOND: &str = "\n[[bridge]]\nid = \"matrix-b\"\nkind = \"matrix\"\nhomeserver = \"$HOMESERVER\"\nserver_name = \"localhost\"\n\
                      registration = \"registration.yaml\"\nbot_localpart = \"coi_botb\"\nadmins = [\"@mara:localhost\"]\n";

fn is_join_of(e: &Value, who: &str) -> bool {
    e["type"] == "m.room.member" && e["state_key"] == who && e["content"]["membership"] == "join"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_one_registration_and_each_gets_only_its_rooms() {
    // `$HOMESERVER`: the stack fills in the URL of the Synapse it started.
    let Some(s) = Stack::new_with(SECOND).await else { return };

    // Room A was bridged by bridge "matrix" (bot @coibot) as the stack does it. Mara makes
    // room B and invites only bridge B's bot: B joins it, A's bot never does.
    let room_b = create_room(
        &s.hs,
        &s.mara,
        json!({"name": "Book Club", "invite": [BOT_B], "power_level_content_override": {"users": {BOT_B: 50}}}),
    )
    .await;
    s.event_in(&room_b, "bot B joins room B", |e| is_join_of(e, BOT_B)).await;
    let link_b = bridge_room_as(&s.hs, &s.mara, &room_b).await;
    let group_b = s.join(s.alice, &link_b).await;
    assert_ne!(group_b, s.group, "two COI groups");

    // Matrix → COI: each room's message reaches its own group, once.
    s.send("a1", json!({"msgtype": "m.text", "body": "for the garden club"})).await;
    send_as(&s.hs, &s.mara, &room_b, "m.room.message", "b1", json!({"msgtype": "m.text", "body": "for the book club"}))
        .await;
    let in_b = s.at_alice("for the book club").await;
    let in_a = s.at_alice("for the garden club").await;
    assert_eq!(in_a["chatId"], s.group, "{in_a}");
    assert_eq!(in_b["chatId"], group_b, "{in_b}");

    // COI → Matrix: Alice's message in group B appears in room B (through her ghost), not in A.
    s.dc.call("misc_send_text_message", json!([s.alice, group_b, "alice to the book club"])).await;
    let posted =
        s.event_in(&room_b, "Alice's message in room B", |e| e["content"]["body"] == "alice to the book club").await;
    assert_eq!(posted["sender"], json!(ALICE_GHOST));

    // Nothing crossed over: one portal per room, on its own bridge; A's bot never took part
    // in room B; the COI side got each message once; nothing was set aside (the old fan-out
    // would have made bridge A run B's `!coi bridge` and fail to answer in a room it is not in).
    let mut portals: Vec<(String, String)> = coi_bridge::store::portals::PortalStore::portals(&s.daemon.store().await)
        .await
        .expect("portals")
        .into_iter()
        .map(|p| (p.bridge, p.remote_chat))
        .collect();
    portals.sort();
    assert_eq!(portals, vec![("matrix".to_owned(), s.room.clone()), ("matrix-b".to_owned(), room_b.clone())]);
    let b_timeline = timeline(&s.hs, &s.mara, &room_b).await;
    assert!(!b_timeline.iter().any(|e| e["sender"] == BOT || e["state_key"] == BOT), "bot A in room B: {b_timeline:?}");
    let a_timeline = timeline(&s.hs, &s.mara, &s.room).await;
    assert!(!a_timeline.iter().any(|e| e["content"]["body"] == "alice to the book club"), "B's message in room A");
    let texts_a = s.alice_texts().await;
    let texts_b = s.dc.chat_texts(s.alice, &group_b).await;
    assert_eq!(texts_a.iter().filter(|t| *t == "for the garden club").count(), 1, "{texts_a:?}");
    assert!(!texts_a.iter().any(|t| t == "for the book club"), "{texts_a:?}");
    assert_eq!(texts_b.iter().filter(|t| *t == "for the book club").count(), 1, "{texts_b:?}");
    assert!(!texts_b.iter().any(|t| t == "for the garden club"), "{texts_b:?}");
    for bridge in ["matrix", "matrix-b"] {
        let dead =
            s.daemon.metric(&format!("coi_bridge_dead_letters_total{{bridge=\"{bridge}\",reason=\"failed\"}}")).await;
        assert_eq!(dead.unwrap_or(0.0), 0.0, "events set aside on {bridge}");
    }

    // The shared endpoint answers the homeserver: a transaction with an event in room B
    // (as Synapse sends them) is taken with 200, and an event in a room no bridge has is
    // dropped (counted), never handed to every bridge.
    // (Synapse's own transactions had some too: room B's first events before B's bot
    // joined it.)
    let metric = "coi_bridge_appservice_unrouted_events_total";
    let before = s.daemon.metric(metric).await.expect("the unrouted-events metric");
    let url = format!("http://127.0.0.1:{}/_matrix/app/v1/transactions/shared-1", s.as_port);
    let txn = json!({"events": [
        {"type": "m.room.message", "room_id": room_b, "sender": "@mara:localhost", "event_id": "$direct-b",
         "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "straight to the endpoint"}},
        {"type": "m.room.message", "room_id": "!nobodys:localhost", "sender": "@mara:localhost", "event_id": "$nobody",
         "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "!coi bridge"}},
    ]});
    let r = reqwest::Client::new().put(&url).bearer_auth("coi-hs-token").json(&txn).send().await.expect("put");
    assert_eq!(r.status().as_u16(), 200);
    let m = s.at_alice("straight to the endpoint").await;
    assert_eq!(m["chatId"], group_b, "{m}");
    let after = s.daemon.metric(metric).await.expect("the unrouted-events metric");
    assert!(after - before >= 1.0, "the event in nobody's room is counted ({before} → {after})");
    let portals = coi_bridge::store::portals::PortalStore::portals(&s.daemon.store().await).await.expect("portals");
    assert_eq!(portals.len(), 2, "no bridge ran the `!coi bridge` of nobody's room: {portals:?}");
}
