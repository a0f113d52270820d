//! The appservice event relay on a real PostgreSQL: events put for another daemon come out by room (or by the bot a membership event is about) in the order they were put, stay until their bridge accepted them, and are pruned by age only.

use std::time::Duration;

use coi_bridge::store::relay::PgRelay;
use coi_bridge_api::EventRelay;
use coi_bridge_api::relay::RELAY_TTL;
use serde_json::{Value, json};

use crate::support::postgres::PgServer;

fn msg(id: &str, room: &str) -> Value {
    json!({"type": "m.room.message", "event_id": id, "room_id": room, "sender": "@mara:hs", "content": {"body": id}})
}

fn ids(rows: &[coi_bridge_api::Relayed]) -> Vec<&str> {
    rows.iter().filter_map(|r| r.event["event_id"].as_str()).collect()
}

#[tokio::test]
async fn relayed_events_come_out_by_room_in_order_until_accepted_and_old_ones_are_pruned() {
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let relay = PgRelay::open(&url).await.expect("the relay");
    // A second daemon opens it too: the table is made once, shared.
    let other = PgRelay::open(&url).await.expect("the relay, from another daemon");

    let invite = json!({"type": "m.room.member", "event_id": "$invite", "room_id": "!new", "sender": "@mara:hs",
                        "state_key": "@bot_b:hs", "content": {"membership": "invite"}});
    relay.put("reg1", &[msg("$1", "!a"), msg("$2", "!b"), msg("$3", "!a")]).await.expect("put");
    other.put("reg1", &[msg("$4", "!a"), invite]).await.expect("put");
    relay.put("reg2", &[msg("$other-reg", "!a")]).await.expect("put");
    // An event with a weird body round-trips as it was sent.
    let odd = json!({"type": "m.room.message", "event_id": "$odd", "room_id": "!odd",
                     "content": {"body": "quote ' \" backslash \\ nul-ish \u{1} ünï"}});
    relay.put("reg1", std::slice::from_ref(&odd)).await.expect("put");

    // Only the rooms (and bots) asked for, of that registration, oldest first.
    let a = other.take("reg1", &["!a".into()], &[], 10).await.expect("take");
    assert_eq!(ids(&a), ["$1", "$3", "$4"]);
    assert_eq!(a[0].event, msg("$1", "!a"), "the event as it was put");
    let b = relay.take("reg1", &["!b".into()], &["@bot_b:hs".into()], 10).await.expect("take");
    assert_eq!(ids(&b), ["$2", "$invite"], "the invitation of B's bot goes to B's daemon");
    assert_eq!(ids(&relay.take("reg1", &["!a".into()], &[], 2).await.expect("take")), ["$1", "$3"], "the limit");
    assert!(relay.take("reg1", &["!c".into()], &["@bot_c:hs".into()], 10).await.expect("take").is_empty());
    assert_eq!(ids(&relay.take("reg2", &["!a".into()], &[], 10).await.expect("take")), ["$other-reg"]);
    assert_eq!(relay.take("reg1", &["!odd".into()], &[], 10).await.expect("take")[0].event, odd);

    // Taken but not accepted: still there. Accepted: gone; the rest stays in order.
    assert_eq!(ids(&relay.take("reg1", &["!a".into()], &[], 10).await.expect("take")), ["$1", "$3", "$4"]);
    relay.done(&[a[0].id, a[1].id]).await.expect("done");
    assert_eq!(ids(&relay.take("reg1", &["!a".into()], &[], 10).await.expect("take")), ["$4"]);

    // Pruning removes only what is older than the TTL.
    assert_eq!(relay.prune(RELAY_TTL).await.expect("prune"), 0, "nothing is that old yet");
    let id4 = a[2].id;
    pg.psql(
        &url,
        &format!(
            "UPDATE public.coi_appservice_relay SET received_at = now() - interval '{} seconds' - interval '1 minute' WHERE id = {id4}",
            RELAY_TTL.as_secs()
        ),
    );
    assert_eq!(relay.prune(RELAY_TTL).await.expect("prune"), 1, "the one row past the TTL");
    assert!(relay.take("reg1", &["!a".into()], &[], 10).await.expect("take").is_empty());
    assert_eq!(ids(&relay.take("reg1", &["!b".into()], &[], 10).await.expect("take")), ["$2"], "younger rows stay");
    assert_eq!(relay.prune(Duration::ZERO).await.expect("prune"), 4, "with no TTL left, everything goes");
}
