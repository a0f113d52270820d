//! The appservice client against a real Synapse on loopback: ghosts, rooms, idempotent sends, redactions, error classes.

#[path = "../../../tests/support/synapse.rs"]
mod synapse;

use coi_bridge_matrix::client::{AsClient, MatrixError, seg};
use serde_json::{Value, json};
use synapse::{Synapse, free_port, send_as};

#[tokio::test]
async fn ghosts_post_into_rooms_once_per_transaction_and_errors_are_classified() {
    let Some(hs) = Synapse::start() else { return };
    let alice_token = hs.user("alice").await;
    let client = AsClient::new(&hs.url(), "coi-as-token", "@coibot:localhost").expect("client");

    // A ghost for a COI person, with their display name.
    let ghost = "@coi_bob=example.org:localhost";
    client.register("coi_bob=example.org").await.expect("ghost registered");
    client.register("coi_bob=example.org").await.expect("registering again is fine");
    client.set_displayname(ghost, "Bob (COI)").await.expect("display name");

    // The bot makes a portal room with Alice; the ghost joins and speaks.
    let room = client.create_room("Portal", &["@alice:localhost".into()]).await.expect("room");
    client.invite(&room, ghost).await.expect("ghost invited");
    client.join(&room, ghost).await.expect("ghost joined");
    let content = json!({"msgtype": "m.text", "body": "hello from COI"});
    let first = client.send(&room, ghost, "m.room.message", "coi-msg-1", &content).await.expect("sent");
    let again = client.send(&room, ghost, "m.room.message", "coi-msg-1", &content).await.expect("sent again");
    assert_eq!(first, again, "the same transaction id is one event, so a retried delivery is not a duplicate");
    let doomed = client
        .send(&room, ghost, "m.room.message", "coi-msg-2", &json!({"msgtype": "m.text", "body": "oops"}))
        .await
        .expect("sent");
    client.redact(&room, ghost, &doomed, "coi-del-2").await.expect("redacted");

    // Alice accepts the invite and sees it from the ghost, once; the other is redacted.
    synapse::join_as(&hs, &alice_token, &room).await;
    let chunk = synapse::timeline(&hs, &alice_token, &room).await;
    let texts: Vec<&Value> = chunk.iter().filter(|e| e["type"] == "m.room.message").collect();
    let hello: Vec<_> = texts.iter().filter(|e| e["content"]["body"] == "hello from COI").collect();
    assert_eq!(hello.len(), 1, "{chunk:?}");
    assert_eq!(hello[0]["sender"], json!(ghost));
    let redacted = texts.iter().find(|e| e["event_id"] == json!(doomed)).expect("the redacted event is still listed");
    assert!(redacted["content"].as_object().is_some_and(|c| c.is_empty()), "content removed: {redacted}");
    assert_eq!(synapse::displayname(&hs, &alice_token, ghost).await, json!("Bob (COI)"));

    // A ghost that was never registered is refused for good, not retried.
    let err =
        client.send(&room, "@coi_nobody=x.org:localhost", "m.room.message", "t9", &content).await.expect_err("refused");
    assert!(matches!(err, MatrixError::Refused { status: 403, .. }), "{err:?}");
    // A stopped homeserver is a retry.
    drop(hs);
    let err = client.send(&room, ghost, "m.room.message", "t10", &content).await.expect_err("down");
    assert!(matches!(err, MatrixError::Retry { .. }), "{err:?}");
}

#[tokio::test]
async fn the_bridge_delivers_every_kind_through_ghosts() {
    use coi_bridge_api::{Attachment, Bridge as _, DeliveryKey, Outgoing, Person, RemoteChatId};
    use coi_bridge_matrix::bridge::MatrixBridge;
    use coi_bridge_matrix::config::MatrixConfig;

    let Some(hs) = Synapse::start() else { return };
    let alice_token = hs.user("alice").await;
    // The registration synapse.sh gave the homeserver.
    let reg = synapse::registration(29331);
    let cfg: MatrixConfig = serde_json::from_value(json!({
        "id": "matrix", "homeserver": hs.url(), "server_name": "localhost", "admins": ["@alice:localhost"]
    }))
    .expect("config");
    let bridge = MatrixBridge::new(cfg, reg, "bridge@example.org", "COI Bridge").expect("bridge");
    let room = bridge.client().create_room("Portal", &["@alice:localhost".into()]).await.expect("room");
    synapse::join_as(&hs, &alice_token, &room).await;

    let to = RemoteChatId(room.clone());
    let bob = Person { id: "bob@example.org".into(), display_name: "Bob".into() };
    let key = |k: &str| DeliveryKey(k.into());
    let png = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10];
    let hello = Outgoing::Message {
        sender: bob.clone(),
        text: "hello Matrix".into(),
        attachments: vec![Attachment { name: "dot.png".into(), mime: "image/png".into(), data: png.clone() }],
        reply_to: None,
        avatar: Some(Attachment { name: "avatar.png".into(), mime: "image/png".into(), data: png.clone() }),
    };
    let parts = bridge.deliver(&to, &key("coi-m1"), &hello).await.expect("delivered");
    assert_eq!(parts.len(), 2, "text and image are two parts: {parts:?}");
    assert_eq!(bridge.deliver(&to, &key("coi-m1"), &hello).await.expect("again"), parts, "a repeat is the same events");
    let e1 = parts[0].clone();
    let reply = Outgoing::Message {
        sender: bob.clone(),
        text: "a reply".into(),
        attachments: vec![],
        reply_to: Some(e1.clone()),
        avatar: None,
    };
    let e2 = bridge.deliver(&to, &key("coi-m2"), &reply).await.expect("reply").remove(0);
    bridge
        .deliver(
            &to,
            &key("coi-m3"),
            &Outgoing::Edit { sender: bob.clone(), target: e1.clone(), new_text: "hello, Matrix".into() },
        )
        .await
        .expect("edit");
    bridge
        .deliver(
            &to,
            &key("coi-m4"),
            &Outgoing::Reaction { sender: bob.clone(), target: e1.clone(), emoji: "👍".into() },
        )
        .await
        .expect("reaction");
    bridge
        .deliver(&to, &key("coi-m5"), &Outgoing::Delete { sender: bob.clone(), target: e2.clone() })
        .await
        .expect("delete");
    let relayed = Person { id: "bridge@example.org".into(), display_name: "Carol (Telegram)".into() };
    let from_bot = Outgoing::Message {
        sender: relayed,
        text: "via the bot".into(),
        attachments: vec![],
        reply_to: None,
        avatar: None,
    };
    bridge.deliver(&to, &key("coi-m6"), &from_bot).await.expect("bot message");

    let events = synapse::timeline(&hs, &alice_token, &room).await;
    let ghost = "@coi_bob=example.org:localhost";
    let find = |f: &dyn Fn(&Value) -> bool| events.iter().find(|e| f(e)).cloned();
    let text = find(&|e| e["event_id"] == json!(e1.as_str())).expect("the text event");
    assert_eq!((text["sender"].clone(), text["content"]["body"].clone()), (json!(ghost), json!("hello Matrix")));
    let image = find(&|e| e["content"]["msgtype"] == "m.image").expect("the image");
    assert_eq!(image["event_id"], json!(parts[1].as_str()), "part 1 is the image");
    assert!(image["content"]["url"].as_str().is_some_and(|u| u.starts_with("mxc://")), "{image}");
    assert_eq!(events.iter().filter(|e| e["content"]["body"] == "hello Matrix").count(), 1, "no duplicate");
    let edit = find(&|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace").expect("edit");
    assert_eq!(edit["content"]["m.new_content"]["body"], json!("hello, Matrix"));
    let reaction = find(&|e| e["type"] == "m.reaction").expect("reaction");
    assert_eq!(reaction["content"]["m.relates_to"]["key"], json!("👍"));
    let deleted = find(&|e| e["event_id"] == json!(e2.as_str())).expect("reply event");
    assert!(deleted["content"].as_object().is_some_and(|c| c.is_empty()), "redacted: {deleted}");
    let by_bot = find(&|e| e["content"]["body"] == "Carol (Telegram): via the bot").expect("relayed by the bot, named");
    assert_eq!(by_bot["sender"], json!("@coibot:localhost"));
    assert_eq!(synapse::displayname(&hs, &alice_token, ghost).await, json!("Bob (COI)"));
    let profile: Value = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v3/profile/{}", hs.url(), synapse::seg(ghost)))
        .bearer_auth(&alice_token)
        .send()
        .await
        .expect("profile")
        .json()
        .await
        .expect("json");
    let avatar = profile["avatar_url"].as_str().unwrap_or_else(|| panic!("the ghost has an avatar: {profile}"));
    assert_eq!(synapse::download_as(&hs, &alice_token, avatar).await, png, "Bob's COI avatar");
    let profile: Value = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v3/profile/{}", hs.url(), synapse::seg(ghost)))
        .bearer_auth(&alice_token)
        .send()
        .await
        .expect("profile")
        .json()
        .await
        .expect("json");
    let avatar = profile["avatar_url"].as_str().unwrap_or_else(|| panic!("the ghost has an avatar: {profile}"));
    assert_eq!(synapse::download_as(&hs, &alice_token, avatar).await, png, "Bob's COI avatar");
}

#[tokio::test]
async fn synapse_transactions_become_hub_events_without_echoes() {
    use coi_bridge_api::testing::{FakeHub, MemoryState};
    use coi_bridge_api::{Bridge as _, DeliveryKey, Outgoing, Person, RemoteChatId, RemoteEvent};
    use coi_bridge_matrix::appservice::{Appservice, router};
    use coi_bridge_matrix::bridge::MatrixBridge;
    use coi_bridge_matrix::inbound::MatrixInbound;
    use std::sync::Arc;

    let as_port = free_port();
    let Some(hs) = Synapse::start_with_as_port(as_port) else { return };
    let alice = hs.user("alice").await;
    let hub = Arc::new(FakeHub::new());
    let client = AsClient::new(&hs.url(), "coi-as-token", "@coibot:localhost").expect("client");
    let cfg = serde_json::from_value(json!({
        "id": "matrix", "homeserver": hs.url(), "server_name": "localhost", "admins": ["@alice:localhost"], "max_file_bytes": 1_000_000
    }))
    .expect("cfg");
    let inbound = Arc::new(MatrixInbound::new("matrix".into(), client.clone(), hub.clone(), &cfg));
    let app = Arc::new(Appservice::new("coi-hs-token", Arc::new(MemoryState::default()), inbound));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", as_port)).await.expect("bind the appservice port");
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });

    let room = client.create_room("Portal", &["@alice:localhost".into()]).await.expect("room");
    synapse::join_as(&hs, &alice, &room).await;
    // A ghost speaks first: its message must not come back as an event (echo).
    let reg = synapse::registration(as_port);
    let cfg = serde_json::from_value(json!({"id": "matrix", "homeserver": hs.url(), "server_name": "localhost"}))
        .expect("cfg");
    let bridge = MatrixBridge::new(cfg, reg, "bridge@example.org", "COI Bridge").expect("bridge");
    let bob = Person { id: "bob@example.org".into(), display_name: "Bob".into() };
    bridge
        .deliver(
            &RemoteChatId(room.clone()),
            &DeliveryKey("k1".into()),
            &Outgoing::Message {
                sender: bob,
                text: "from COI".into(),
                attachments: vec![],
                reply_to: None,
                avatar: None,
            },
        )
        .await
        .expect("ghost message");

    let a =
        send_as(&hs, &alice, &room, "m.room.message", "t1", json!({"msgtype": "m.text", "body": "hi bridge"})).await;
    let r = send_as(
        &hs,
        &alice,
        &room,
        "m.room.message",
        "t2",
        json!({
            "msgtype": "m.text", "body": "> <@alice:localhost> hi bridge\n\nmy reply",
            "m.relates_to": {"m.in_reply_to": {"event_id": a}}
        }),
    )
    .await;
    send_as(
        &hs,
        &alice,
        &room,
        "m.room.message",
        "t3",
        json!({
            "msgtype": "m.text", "body": "* hi, bridge", "m.new_content": {"msgtype": "m.text", "body": "hi, bridge"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": a}
        }),
    )
    .await;
    send_as(
        &hs,
        &alice,
        &room,
        "m.reaction",
        "t4",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": a, "key": "🎉"}}),
    )
    .await;
    reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{}/redact/{}/t5", hs.url(), seg(&room), seg(&r)))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .expect("redact");
    let png = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 1, 2, 3];
    let up: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload?filename=pic.png", hs.url()))
        .bearer_auth(&alice)
        .header("Content-Type", "image/png")
        .body(png.clone())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    send_as(
        &hs,
        &alice,
        &room,
        "m.room.message",
        "t6",
        json!({
            "msgtype": "m.image", "body": "pic.png", "url": up["content_uri"], "info": {"mimetype": "image/png"}
        }),
    )
    .await;

    let events =
        tokio::time::timeout(std::time::Duration::from_secs(60), hub.wait_for(6)).await.expect("six events arrive");
    let events: Vec<RemoteEvent> = events.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events.len(), 6, "{events:#?}");
    match &events[0] {
        RemoteEvent::Message { text, sender, id, .. } => {
            assert_eq!((text.as_str(), id.as_str()), ("hi bridge", a.as_str()));
            assert_eq!(sender.id.as_str(), "@alice:localhost");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&events[1], RemoteEvent::Message { text, reply_to: Some(t), .. } if text == "my reply" && t.as_str() == a)
    );
    assert!(
        matches!(&events[2], RemoteEvent::Edit { target, new_text, .. } if target.as_str() == a && new_text == "hi, bridge")
    );
    assert!(matches!(&events[3], RemoteEvent::Reaction { target, emoji, .. } if target.as_str() == a && emoji == "🎉"));
    assert!(matches!(&events[4], RemoteEvent::Delete { target, .. } if target.as_str() == r));
    assert!(
        matches!(&events[5], RemoteEvent::Message { attachments, .. } if attachments.len() == 1 && attachments[0].data == png)
    );
    server.abort();
}
