//! The appservice client against a real Synapse on loopback: ghosts, rooms, idempotent sends, redactions, error classes.

// It uses a part of the root tests' Synapse helpers; tests/it uses all of them, where the
// compiler finds what is dead.
#[allow(dead_code)]
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
    use coi_bridge_matrix::appservice::{Appservice, Refusals, router};
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
    let inbound = Arc::new(MatrixInbound::new(
        "matrix".into(),
        client.clone(),
        hub.clone(),
        Arc::new(MemoryState::default()),
        &cfg,
    ));
    let (app, _member) =
        Appservice::for_one("coi-hs-token", Arc::new(MemoryState::default()), inbound, Refusals::default());
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

/// Polls `hub` until one of its events passes `done`; the events so far.
async fn until(
    hub: &coi_bridge_api::testing::FakeHub,
    what: &str,
    done: impl Fn(&coi_bridge_api::RemoteEvent) -> bool,
) -> Vec<coi_bridge_api::RemoteEvent> {
    for _ in 0..600 {
        let events: Vec<_> = hub.events().into_iter().map(|(_, e)| e).collect();
        if events.iter().any(&done) {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what} never arrived; the hub has {:#?}, set aside {:#?}", hub.events(), hub.dead_letters());
}

/// The events from the message `first` to the message `last`, both included.
fn between(events: &[coi_bridge_api::RemoteEvent], first: &str, last: &str) -> Vec<coi_bridge_api::RemoteEvent> {
    use coi_bridge_api::RemoteEvent::Message;
    let at = |text: &str| {
        events
            .iter()
            .position(|e| matches!(e, Message { text: t, .. } if t == text))
            .unwrap_or_else(|| panic!("no {text:?} in {events:#?}"))
    };
    events[at(first)..=at(last)].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_mode_and_appservice_mode_make_the_same_hub_events() {
    use coi_bridge_api::testing::{FakeHub, MemoryState};
    use coi_bridge_api::{Bridge as _, BridgeContext, RemoteEvent, Status};
    use coi_bridge_matrix::appservice::{Appservice, Refusals, router};
    use coi_bridge_matrix::bot::BotBridge;
    use coi_bridge_matrix::inbound::MatrixInbound;
    use std::sync::Arc;

    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let as_port = free_port();
    let Some(hs) = Synapse::start_with_as_port(as_port) else { return };
    let mara = hs.user("mara").await;
    let eve = hs.user("eve").await;
    hs.user("relay").await;
    let base = json!({
        "id": "matrix", "homeserver": hs.url(), "server_name": "localhost", "admins": ["@mara:localhost"],
        "max_file_bytes": 1_000_000
    });

    // Appservice mode: Synapse pushes transactions to the endpoint, as in the daemon.
    let as_hub = Arc::new(FakeHub::new());
    let client = AsClient::new(&hs.url(), "coi-as-token", "@coibot:localhost").expect("client");
    let cfg = serde_json::from_value(base.clone()).expect("cfg");
    let inbound = Arc::new(MatrixInbound::new(
        "matrix".into(),
        client.clone(),
        as_hub.clone(),
        Arc::new(MemoryState::default()),
        &cfg,
    ));
    let (app, _member) =
        Appservice::for_one("coi-hs-token", Arc::new(MemoryState::default()), inbound, Refusals::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", as_port)).await.expect("bind the appservice port");
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });

    // Bot mode: an ordinary account syncing through matrix-sdk, as in the daemon.
    let bot_hub = Arc::new(FakeHub::new());
    let mut bot_cfg = base.clone();
    bot_cfg["mode"] = json!("bot");
    bot_cfg["user"] = json!("@relay:localhost");
    bot_cfg["password_file"] = json!("unused");
    let store = tempfile::tempdir().expect("tempdir");
    let bot = BotBridge::new(
        serde_json::from_value(bot_cfg).expect("bot cfg"),
        "bridge@example.org",
        "COI Bridge",
        store.path().join("bot"),
        "relay-pw".into(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cx = BridgeContext {
        id: "matrix".into(),
        hub: bot_hub.clone(),
        state: Arc::new(MemoryState::default()),
        shutdown: shutdown.clone(),
        status: Status::new(|_| {}),
    };
    let syncing = tokio::spawn(async move { bot.run(cx).await });

    // Mara's room with both bridges, Eve (no admin) and Alice's ghost in it.
    let created: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/createRoom", hs.url()))
        .bearer_auth(&mara)
        .json(&json!({"preset": "private_chat", "invite": ["@coibot:localhost", "@relay:localhost", "@eve:localhost"]}))
        .send()
        .await
        .expect("createRoom")
        .json()
        .await
        .expect("json");
    let room = created["room_id"].as_str().expect("room id").to_owned();
    synapse::join_as(&hs, &eve, &room).await;
    let ghost = "@coi_alice=example.org:localhost";
    client.register("coi_alice=example.org").await.expect("ghost");
    synapse::invite_as(&hs, &mara, &room, ghost).await;
    client.join(&room, ghost).await.expect("the ghost joins");
    for _ in 0..300 {
        let members: Value = reqwest::Client::new()
            .get(format!("{}/_matrix/client/v3/rooms/{}/joined_members", hs.url(), seg(&room)))
            .bearer_auth(&mara)
            .send()
            .await
            .expect("members")
            .json()
            .await
            .expect("json");
        if members["joined"].get("@coibot:localhost").is_some() && members["joined"].get("@relay:localhost").is_some() {
            break;
        }
        assert!(!syncing.is_finished(), "bot mode stopped: {:?}", syncing.await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // The same real actions, seen by both modes.
    let send = |txn: &'static str, event_type: &'static str, content: Value| {
        let (hs, mara, room) = (&hs, &mara, &room);
        async move { send_as(hs, mara, room, event_type, txn, content).await }
    };
    let state = |event_type: &'static str, content: Value| {
        let url = format!("{}/_matrix/client/v3/rooms/{}/state/{event_type}/", hs.url(), seg(&room));
        let token = mara.clone();
        async move {
            let r = reqwest::Client::new().put(url).bearer_auth(token).json(&content).send().await.expect("state");
            assert!(r.status().is_success(), "{event_type}: {:?}", r.text().await);
        }
    };
    send("s0", "m.room.message", json!({"msgtype": "m.text", "body": "first"})).await;
    let hello = send("s1", "m.room.message", json!({"msgtype": "m.text", "body": "hello"})).await;
    let reply = send(
        "s2",
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "> <@mara:localhost> hello\n\n**my** reply",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>hello</blockquote></mx-reply><b>my</b> reply",
            "m.relates_to": {"m.in_reply_to": {"event_id": hello}}
        }),
    )
    .await;
    let png = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 7, 7, 7];
    let pic = synapse::upload_as(&hs, &mara, "pic.png", "image/png", &png).await;
    send(
        "s3",
        "m.room.message",
        json!({"msgtype": "m.image", "body": "pic.png", "url": pic, "info": {"mimetype": "image/png", "size": png.len()}}),
    )
    .await;
    send(
        "s4",
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "* hello, all", "m.new_content": {"msgtype": "m.text", "body": "hello, all"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": hello}
        }),
    )
    .await;
    // Eve edits Mara's message: neither mode bridges it.
    let forged = send_as(
        &hs,
        &eve,
        &room,
        "m.room.message",
        "e1",
        json!({
            "msgtype": "m.text", "body": "* forged", "m.new_content": {"msgtype": "m.text", "body": "forged"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": hello}
        }),
    )
    .await;
    send("s5", "m.reaction", json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "🌹"}}))
        .await;
    let r = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{}/redact/{}/s6", hs.url(), seg(&room), seg(&reply)))
        .bearer_auth(&mara)
        .json(&json!({}))
        .send()
        .await
        .expect("redact");
    assert!(r.status().is_success());
    state("m.room.name", json!({"name": "Rose Garden"})).await;
    state("m.room.topic", json!({"topic": "Sundays at 10"})).await;
    let face = synapse::upload_as(&hs, &mara, "face.png", "image/png", &png).await;
    state("m.room.avatar", json!({"url": face, "info": {"mimetype": "image/png", "size": png.len()}})).await;
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/rooms/{}/kick", hs.url(), seg(&room)))
        .bearer_auth(&mara)
        .json(&json!({"user_id": ghost, "reason": "moved away"}))
        .send()
        .await
        .expect("kick");
    assert!(r.status().is_success());
    let last = send("s7", "m.room.message", json!({"msgtype": "m.text", "body": "last"})).await;
    synapse::read_receipt_as(&hs, &mara, &room, &last).await;

    let done = |e: &RemoteEvent| matches!(e, RemoteEvent::Message { id, .. } if id.as_str() == last);
    let by_appservice = until(&as_hub, "the appservice's last message", done).await;
    let by_bot = until(&bot_hub, "the bot's last message", done).await;

    // Receipts are not in the timeline: only their presence is compared (below), not their place.
    let timeline = |all: &[RemoteEvent]| -> Vec<RemoteEvent> {
        between(all, "first", "last").into_iter().filter(|e| !matches!(e, RemoteEvent::ReadReceipt { .. })).collect()
    };
    let (appservice, bot) = (timeline(&by_appservice), timeline(&by_bot));
    let kinds: Vec<String> =
        appservice.iter().map(|e| format!("{e:?}").split([' ', '{']).next().unwrap_or_default().to_owned()).collect();
    assert_eq!(
        kinds,
        [
            "Message",
            "Message",
            "Message",
            "Message",
            "Edit",
            "Reaction",
            "Delete",
            "Renamed",
            "Described",
            "AvatarChanged",
            "MemberRemoved",
            "Message"
        ],
        "{appservice:#?}"
    );
    assert!(
        matches!(&appservice[2], RemoteEvent::Message { text, reply_to: Some(to), .. } if text == "*my* reply" && to.as_str() == hello),
        "{:?}",
        appservice[2]
    );
    assert!(
        matches!(&appservice[9], RemoteEvent::AvatarChanged { image: Some(a), .. } if a.data == png),
        "{:?}",
        appservice[9]
    );
    assert!(
        matches!(&appservice[10], RemoteEvent::MemberRemoved { member, .. } if member == "alice@example.org"),
        "{:?}",
        appservice[10]
    );
    for (i, (a, b)) in appservice.iter().zip(&bot).enumerate() {
        assert_eq!(
            a,
            b,
            "event {i} differs between appservice mode and bot mode: {bot:#?}, set aside {:#?}",
            bot_hub.dead_letters()
        );
    }
    assert_eq!(appservice.len(), bot.len(), "bot mode: {bot:#?}");
    let read = |e: &RemoteEvent| matches!(e, RemoteEvent::ReadReceipt { up_to, .. } if up_to.as_str() == last);
    let receipt = |events: Vec<RemoteEvent>| events.into_iter().find(read);
    let by_appservice = receipt(until(&as_hub, "the appservice's read receipt", read).await);
    assert_eq!(by_appservice, receipt(until(&bot_hub, "the bot's read receipt", read).await));
    shutdown.cancel();
    syncing.await.expect("join").expect("the bot stops cleanly");
    server.abort();
    let refused = |hub: &FakeHub| -> Vec<(String, coi_bridge_api::DeadLetterKind)> {
        hub.dead_letters().into_iter().map(|d| (d.event, d.kind)).collect()
    };
    assert_eq!(refused(&as_hub), vec![(forged.clone(), coi_bridge_api::DeadLetterKind::Forbidden)]);
    assert_eq!(refused(&bot_hub), refused(&as_hub), "the same edit is refused in both modes");
}

#[tokio::test]
async fn transactions_refused_while_the_store_is_down_are_sent_again_as_soon_as_the_bridge_asks() {
    use coi_bridge_api::testing::{FakeHub, MemoryState};
    use coi_bridge_api::{Bridge as _, BridgeContext, RemoteEvent, Status};
    use coi_bridge_matrix::appservice::{Appservice, router};
    use coi_bridge_matrix::bridge::MatrixBridge;
    use coi_bridge_matrix::inbound::MatrixInbound;
    use std::sync::Arc;

    let as_port = free_port();
    let Some(hs) = Synapse::start_with_as_port(as_port) else { return };
    let alice = hs.user("alice").await;
    let hub = Arc::new(FakeHub::new());
    let cfg: coi_bridge_matrix::config::MatrixConfig =
        serde_json::from_value(json!({"id": "matrix", "homeserver": hs.url(), "server_name": "localhost"}))
            .expect("cfg");
    let bridge = Arc::new(
        MatrixBridge::new(cfg.clone(), synapse::registration(as_port), "bridge@example.org", "COI Bridge")
            .expect("bridge"),
    );
    let inbound = Arc::new(MatrixInbound::new(
        "matrix".into(),
        bridge.client().clone(),
        hub.clone(),
        Arc::new(MemoryState::default()),
        &cfg,
    ));
    let (app, _member) =
        Appservice::for_one("coi-hs-token", Arc::new(MemoryState::default()), inbound, bridge.refusals());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", as_port)).await.expect("bind the appservice port");
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cx = BridgeContext {
        id: "matrix".into(),
        hub: hub.clone(),
        state: Arc::new(MemoryState::default()),
        shutdown: shutdown.clone(),
        status: Status::ignored(),
    };
    let running = tokio::spawn({
        let bridge = bridge.clone();
        async move { bridge.run(cx).await }
    });

    let room = bridge.client().create_room("Portal", &["@alice:localhost".into()]).await.expect("room");
    synapse::join_as(&hs, &alice, &room).await;
    // The store refuses the next eight submits (a full disk): each refusal answers the
    // transaction 503, and Synapse backs off 2, 4, 8, 16, 32, 64, 128, 256 s, more than
    // eight minutes in all. The bridge asks it to retry (appservice ping) every 2 s instead.
    hub.fail_next(8);
    send_as(&hs, &alice, &room, "m.room.message", "r1", json!({"msgtype": "m.text", "body": "through the outage"}))
        .await;
    let events = tokio::time::timeout(std::time::Duration::from_secs(90), hub.wait_for(1))
        .await
        .expect("the refused transaction arrives once the store is back, long before Synapse's own backoff");
    assert!(matches!(&events[..], [(_, RemoteEvent::Message { text, .. })] if text == "through the outage"));
    assert_eq!(hub.refused(), 8, "every refusal was a real 503 to Synapse");
    assert!(hub.dead_letters().is_empty(), "a store outage sets nothing aside: {:?}", hub.dead_letters());
    shutdown.cancel();
    running.await.expect("join").expect("the bridge stops cleanly");
    server.abort();
}
