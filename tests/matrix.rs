//! The Matrix bridge end to end: a real Synapse, a real Delta Chat core, real Dovecot + Postfix, and the daemon's own parts in-process.

mod support;

use std::sync::Arc;
use std::time::Duration;

use coi_bridge::app::Core;
use coi_bridge::transport::smtp::FailedDelivery;
use serde_json::{Value, json};
use support::deltachat::DeltaChat;
use support::synapse::{Synapse, free_port, send_as, timeline};
use support::{Link, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_room_carries_messages_and_replies_both_ways() {
    coi_bridge::init_crypto();
    let mail = mail_server!();
    let as_port = free_port();
    let Some(hs) = Synapse::start_with_as_port(as_port) else { return };
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&mail, "alice", "Alice").await;
    let mara = hs.user("mara").await;

    // The bridge: its HTTP listener is where Synapse pushes transactions.
    let state = tempfile::tempdir().expect("tempdir");
    let config = support::write_config_with(&mail, state.path(), Link::Plain, "", as_port, "required");
    let reg = support::synapse::registration(as_port);
    std::fs::write(state.path().join("registration.yaml"), reg.to_yaml()).expect("registration");
    let section = format!(
        "\n[[bridge]]\nid = \"matrix\"\nkind = \"matrix\"\nhomeserver = \"{}\"\nserver_name = \"localhost\"\n\
         registration = \"registration.yaml\"\nadmins = [\"@mara:localhost\"]\n",
        hs.url()
    );
    let text = std::fs::read_to_string(&config).expect("config") + &section;
    std::fs::write(&config, text).expect("config");
    let loaded = coi_bridge::config::load(&config).expect("config loads");
    let core =
        Core::build(&loaded, Arc::new(|f: FailedDelivery| panic!("delivery failed: {f:?}"))).await.expect("core");
    let bridges = coi_bridge::bridges::build(&loaded, &core).expect("bridges");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", as_port)).await.expect("bind");
    let token = CancellationToken::new();
    let deliveries = futures::future::join_all(bridges.running.iter().map(|r| r.delivery.run(token.clone())));
    let http = coi_bridge::http::serve(listener, core.metrics.clone(), bridges.routes, token.clone());

    let body = async {
        // Mara (an admin) makes a room, invites the bot and bridges it.
        let room: Value = reqwest::Client::new()
            .post(format!("{}/_matrix/client/v3/createRoom", hs.url()))
            .bearer_auth(&mara)
            .json(&json!({"name": "Garden Club", "invite": ["@coibot:localhost"]}))
            .send()
            .await
            .expect("createRoom")
            .json()
            .await
            .expect("json");
        let room = room["room_id"].as_str().expect("room id").to_owned();
        eventually(WAIT, "the bot joins", || async {
            let ev = timeline(&hs, &mara, &room).await;
            ev.iter()
                .any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == "@coibot:localhost"
                        && e["content"]["membership"] == "join"
                })
                .then_some(())
        })
        .await;
        send_as(&hs, &mara, &room, "m.room.message", "c1", json!({"msgtype": "m.text", "body": "!coi bridge"})).await;
        let link = eventually(WAIT, "the invite link in the room", || async {
            timeline(&hs, &mara, &room).await.iter().find_map(|e| {
                let body = e["content"]["body"].as_str()?;
                body.lines().find(|l| l.starts_with("https://i.delta.chat/#")).map(str::to_owned)
            })
        })
        .await;

        // Alice (Delta Chat) joins through it and writes.
        let mark = dc.mark();
        let group = dc.call("secure_join", json!([alice, link])).await;
        dc.wait_event_since(mark, alice, "joined", WAIT, |e| {
            e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
        })
        .await;
        dc.wait_until_member(alice, &group).await;
        dc.call("misc_send_text_message", json!([alice, group, "hello from Delta Chat"])).await;
        let from_dc = eventually(WAIT, "Alice's message in the room", || async {
            timeline(&hs, &mara, &room).await.into_iter().find(|e| e["content"]["body"] == "hello from Delta Chat")
        })
        .await;
        assert_eq!(from_dc["sender"], json!("@coi_alice=example.org:localhost"), "sent by Alice's ghost");
        let name = support::synapse::displayname(&hs, &mara, "@coi_alice=example.org:localhost").await;
        assert_eq!(name, json!("Alice (COI)"));

        // Mara replies on Matrix; Alice sees a reply from "mara (Matrix)".
        let event = from_dc["event_id"].as_str().expect("event id");
        send_as(
            &hs,
            &mara,
            &room,
            "m.room.message",
            "r1",
            json!({
                "msgtype": "m.text",
                "body": "> <@coi_alice=example.org:localhost> hello from Delta Chat\n\nhi from Matrix",
                "m.relates_to": {"m.in_reply_to": {"event_id": event}}
            }),
        )
        .await;
        let m = dc.message_with_text(alice, "hi from Matrix").await;
        assert_eq!(m["overrideSenderName"], json!("mara (Matrix)"), "{m}");
        assert_eq!(m["quote"]["text"], json!("hello from Delta Chat"), "a reply to Alice's message: {m}");
        assert_eq!(m["showPadlock"], json!(true));
        token.cancel();
    };
    let ((), (), _, http_result, ()) =
        tokio::join!(core.imap.run(token.clone()), core.smtp.run(token.clone()), deliveries, http, body);
    http_result.expect("http listener");
}
