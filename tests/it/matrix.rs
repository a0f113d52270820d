//! The Matrix bridge end to end, through the daemon: `coi-bridge run` as its own process, a real Synapse, a real Delta Chat core, real Dovecot + Postfix.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::bridged::{ALICE_GHOST, BOT, Stack, WAIT};
use support::synapse::{download_as, invite_as, join_as, read_receipt_as, receipts, send_as, timeline, upload_as};
use support::{PNG, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_room_carries_messages_and_replies_both_ways() {
    let Some(s) = Stack::new().await else { return };

    // The invite also came as a QR image from the bot.
    let qr = s.event("the QR image", |e| e["sender"] == BOT && e["content"]["msgtype"] == "m.image").await;
    let png = download_as(&s.hs, &s.mara, qr["content"]["url"].as_str().expect("url")).await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    // Alice writes; her ghost posts it under her Delta Chat name.
    s.alice_says("hello from Delta Chat").await;
    let from_dc = s.body("hello from Delta Chat").await;
    assert_eq!(from_dc["sender"], json!(ALICE_GHOST), "sent by Alice's ghost");
    assert_eq!(support::synapse::displayname(&s.hs, &s.mara, ALICE_GHOST).await, json!("Alice (COI)"));

    // Mara replies on Matrix; Alice sees a reply from "mara (Matrix)".
    let event = from_dc["event_id"].as_str().expect("event id");
    s.send(
        "r1",
        json!({
            "msgtype": "m.text",
            "body": format!("> <{ALICE_GHOST}> hello from Delta Chat\n\nhi from Matrix"),
            "format": "org.matrix.custom.html",
            "formatted_body": format!("<mx-reply><blockquote>hello from Delta Chat</blockquote></mx-reply>hi from <b>Matrix</b>"),
            "m.relates_to": {"m.in_reply_to": {"event_id": event}}
        }),
    )
    .await;
    let m = s.at_alice("hi from *Matrix*").await;
    assert_eq!(m["overrideSenderName"], json!("mara (Matrix)"), "{m}");
    assert_eq!(m["quote"]["text"], json!("hello from Delta Chat"), "a reply to Alice's message: {m}");
    assert_eq!(m["showPadlock"], json!(true));
    // Each hop of Mara's message was timed, the homeserver's push to the bridge included.
    for hop in ["homeserver_push", "submit", "smtp_send"] {
        let n = s.daemon.metric(&format!("coi_bridge_hop_seconds_count{{hop=\"{hop}\"}}")).await;
        assert!(n.is_some_and(|n| n >= 1.0), "hop {hop} timed: {n:?}");
    }

    // Security: a transaction with a wrong hs_token is refused and not processed.
    let forged = json!({"events": [{
        "type": "m.room.message", "room_id": s.room, "sender": "@mara:localhost", "event_id": "$forged",
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "forged with a bad token"}
    }]});
    let url = format!("http://127.0.0.1:{}/_matrix/app/v1/transactions/forged-1", s.as_port);
    for auth in [Some("not-the-hs-token"), None] {
        let mut req = reqwest::Client::new().put(&url).json(&forged);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("put");
        assert_eq!(r.status().as_u16(), 403, "refused with {auth:?}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["errcode"], json!("M_FORBIDDEN"));
    }

    // A non-admin may talk in the room, but not command the bridge.
    let nick = s.hs.user("nick").await;
    invite_as(&s.hs, &s.mara, &s.room, "@nick:localhost").await;
    join_as(&s.hs, &nick, &s.room).await;
    send_as(&s.hs, &nick, &s.room, "m.room.message", "n1", json!({"msgtype": "m.text", "body": "!coi unlink"})).await;
    let refusal = s
        .event("the refusal", |e| {
            e["sender"] == BOT && e["content"]["body"].as_str().is_some_and(|b| b.contains("only the bridge's admins"))
        })
        .await;
    assert!(refusal["content"]["body"].as_str().expect("body").contains("@nick:localhost"), "{refusal}");
    send_as(&s.hs, &nick, &s.room, "m.room.message", "n2", json!({"msgtype": "m.text", "body": "nick says hi"})).await;
    let m = s.at_alice("nick says hi").await;
    assert_eq!(m["overrideSenderName"], json!("nick (Matrix)"), "still bridged after the refused unlink");
    assert!(
        !s.alice_texts().await.iter().any(|t| t.contains("forged with a bad token")),
        "the forged event never reached COI"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapping_crosses_in_both_directions() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);

    // Images. Delta Chat → Matrix: the text and the picture are two events, one per part.
    let png_path = s.state.path().join("dot.png");
    std::fs::write(&png_path, PNG).expect("png");
    dc.call(
        "send_msg",
        json!([alice, s.group, {"text": "a picture from Delta Chat", "file": png_path, "filename": "dot.png", "viewtype": "Image"}]),
    )
    .await;
    let caption = s.body("a picture from Delta Chat").await;
    assert_eq!(caption["sender"], json!(ALICE_GHOST));
    let image = s.event("Alice's image", |e| e["sender"] == ALICE_GHOST && e["content"]["msgtype"] == "m.image").await;
    assert_eq!(download_as(&s.hs, &s.mara, image["content"]["url"].as_str().expect("url")).await, PNG);
    // Matrix → Delta Chat.
    let mxc = upload_as(&s.hs, &s.mara, "garden.png", "image/png", PNG).await;
    s.send(
        "img",
        json!({"msgtype": "m.image", "body": "garden.png", "url": mxc, "info": {"mimetype": "image/png", "size": PNG.len()}}),
    )
    .await;
    let got = eventually(WAIT, "Mara's image at Alice", || async {
        let ids = dc.call("get_message_ids", json!([alice, s.group, false, false])).await;
        let msgs = dc.call("get_messages", json!([alice, ids])).await;
        msgs.as_object()?.values().find(|m| m["fileName"] == "garden.png").cloned()
    })
    .await;
    assert_eq!((got["viewType"].clone(), got["fileBytes"].clone()), (json!("Image"), json!(PNG.len())), "{got}");
    assert_eq!(std::fs::read(got["file"].as_str().expect("file")).expect("file on disk"), PNG);
    assert_eq!(got["overrideSenderName"], json!("mara (Matrix)"));

    // Replies, Delta Chat → Matrix (Matrix → Delta Chat is in the first test).
    let question = s.send("q", json!({"msgtype": "m.text", "body": "question from Matrix"})).await;
    let at_alice = s.at_alice("question from Matrix").await;
    dc.call("send_msg", json!([alice, s.group, {"text": "answer from Delta Chat", "quotedMessageId": at_alice["id"]}]))
        .await;
    let answer = s.body("answer from Delta Chat").await;
    assert_eq!(answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"], json!(question));

    // Edits both ways.
    s.alice_says("typo from Delta Chat").await;
    let typo = s.body("typo from Delta Chat").await;
    let dc_typo = s.at_alice("typo from Delta Chat").await;
    dc.call("send_edit_request", json!([alice, dc_typo["id"], "fixed from Delta Chat"])).await;
    let edit = s.event("Alice's edit", |e| e["content"]["m.relates_to"]["rel_type"] == "m.replace").await;
    assert_eq!(edit["content"]["m.relates_to"]["event_id"], typo["event_id"]);
    assert_eq!(edit["content"]["m.new_content"]["body"], json!("fixed from Delta Chat"));
    let matrix_typo = s.send("t", json!({"msgtype": "m.text", "body": "matrix typo"})).await;
    let dc_matrix_typo = s.at_alice("matrix typo").await;
    s.send(
        "t-edit",
        json!({
            "msgtype": "m.text", "body": "* matrix fixed",
            "m.new_content": {"msgtype": "m.text", "body": "matrix fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": matrix_typo}
        }),
    )
    .await;
    let edited = eventually(WAIT, "Mara's edit at Alice", || async {
        let m = dc.call("get_message", json!([alice, dc_matrix_typo["id"]])).await;
        (m["text"] == "matrix fixed").then_some(m)
    })
    .await;
    assert_eq!(edited["isEdited"], json!(true));

    // Reactions both ways.
    dc.call("send_reaction", json!([alice, dc_matrix_typo["id"], ["👍"]])).await;
    let reaction = s.event("Alice's reaction", |e| e["type"] == "m.reaction" && e["sender"] == ALICE_GHOST).await;
    assert_eq!(reaction["content"]["m.relates_to"]["event_id"], json!(matrix_typo));
    assert_eq!(reaction["content"]["m.relates_to"]["key"], json!("👍"));
    send_as(
        &s.hs,
        &s.mara,
        &s.room,
        "m.reaction",
        "react",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": typo["event_id"], "key": "🎉"}}),
    )
    .await;
    eventually(WAIT, "Mara's reaction at Alice", || async {
        let r = dc.call("get_message_reactions", json!([alice, dc_typo["id"]])).await;
        r.to_string().contains("🎉").then_some(())
    })
    .await;

    // Deletes both ways.
    s.alice_says("delete me from Delta Chat").await;
    let doomed = s.body("delete me from Delta Chat").await;
    let dc_doomed = s.at_alice("delete me from Delta Chat").await;
    dc.call("delete_messages_for_all", json!([alice, [dc_doomed["id"]]])).await;
    s.event("the redaction", |e| {
        e["event_id"] == doomed["event_id"] && e["content"].as_object().is_some_and(|c| c.is_empty())
    })
    .await;
    reqwest::Client::new()
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/redact/{}/del1",
            s.hs.url(),
            support::synapse::seg(&s.room),
            support::synapse::seg(&question)
        ))
        .bearer_auth(&s.mara)
        .json(&json!({}))
        .send()
        .await
        .expect("redact");
    eventually(WAIT, "Mara's question gone at Alice", || async {
        dc.try_call("get_message", json!([alice, at_alice["id"]])).await.is_err().then_some(())
    })
    .await;

    // Read receipts both ways. Mara (the owner) reads Alice's message: Delta Chat shows
    // it read. Alice reads Mara's: her ghost's receipt is on the event.
    s.alice_says("please read me").await;
    let read_me = s.body("please read me").await;
    let dc_read_me = s.at_alice("please read me").await;
    read_receipt_as(&s.hs, &s.mara, &s.room, read_me["event_id"].as_str().expect("id")).await;
    eventually(WAIT, "Alice sees her message read", || async {
        let m = dc.call("get_message", json!([alice, dc_read_me["id"]])).await;
        // 28 = OutMdnRcvd: read by the recipient.
        (m["state"] == json!(28)).then_some(())
    })
    .await;
    dc.call("markseen_msgs", json!([alice, [dc_matrix_typo["id"]]])).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = receipts(&s.hs, &s.mara, &s.room).await;
        if r[&matrix_typo]["m.read"].get(ALICE_GHOST).is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let log = s.daemon.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("receipt") || l.contains("ERROR")).collect();
            panic!("no read receipt by Alice's ghost on {matrix_typo}: receipts {r}; daemon:\n{}", lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_outage_queues_messages_and_delivers_them_in_order() {
    let Some(s) = Stack::new().await else { return };
    s.alice_says("before the outage").await;
    s.body("before the outage").await;

    // 20 s without Synapse, with Alice writing all along.
    s.hs.stop();
    let expected: Vec<String> = (0..10).map(|i| format!("during the outage {i}")).collect();
    for text in &expected {
        s.alice_says(text).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    s.hs.restart();

    let got = eventually(Duration::from_secs(240), "every outage message in the room", || async {
        let bodies: Vec<String> = timeline(&s.hs, &s.mara, &s.room)
            .await
            .iter()
            .filter_map(|e| {
                e["content"]["body"].as_str().filter(|b| b.starts_with("during the outage")).map(str::to_owned)
            })
            .collect();
        (bodies.len() >= expected.len()).then_some(bodies)
    })
    .await;
    assert_eq!(got, expected, "all of them, once each, in order");
    // And Matrix reaches COI again.
    s.send("after", json!({"msgtype": "m.text", "body": "after the outage"})).await;
    s.at_alice("after the outage").await;
    let log = s.daemon.log_text();
    assert!(log.contains("will retry"), "the outage was retried, not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_loses_and_duplicates_nothing_either_way() {
    let Some(mut s) = Stack::new().await else { return };
    const N: usize = 100;
    let to_coi: Vec<String> = (0..N).map(|i| format!("m2c {i:03}")).collect();
    let to_matrix: Vec<String> = (0..N).map(|i| format!("c2m {i:03}")).collect();
    let Stack { daemon, dc, hs, alice, group, mara, room, .. } = &mut s;
    let (dc, hs, alice, group, mara, room) = (&*dc, &*hs, *alice, &*group, &*mara, &*room);
    let from_matrix = async {
        for (i, text) in to_coi.iter().enumerate() {
            send_as(
                hs,
                mara,
                room,
                "m.room.message",
                &format!("crash-{i}"),
                json!({"msgtype": "m.text", "body": text}),
            )
            .await;
        }
    };
    let from_coi = async {
        for text in &to_matrix {
            dc.call("misc_send_text_message", json!([alice, group, text])).await;
        }
    };
    let crash = async {
        // Kill it once some messages are through each way, while both streams still run.
        let (in_room, at_alice) = eventually(WAIT, "the first messages through both ways", || async {
            let n = timeline(hs, mara, room)
                .await
                .iter()
                .filter(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("c2m ")))
                .count();
            let m = dc.chat_texts(alice, group).await.iter().filter(|t| t.starts_with("m2c ")).count();
            (n >= 10 && m >= 10).then_some((n, m))
        })
        .await;
        assert!(in_room < N && at_alice < N, "killed mid-stream: {in_room} and {at_alice} of {N} were through");
        daemon.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        daemon.restart();
    };
    tokio::join!(from_matrix, from_coi, crash);

    let in_room = eventually(Duration::from_secs(300), "all Delta Chat messages in the room", || async {
        let bodies: Vec<String> = timeline(hs, mara, room)
            .await
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().filter(|b| b.starts_with("c2m ")).map(str::to_owned))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = bodies.iter().collect();
        (distinct.len() == N).then_some(bodies)
    })
    .await;
    let at_alice = eventually(Duration::from_secs(300), "all Matrix messages at Alice", || async {
        let texts: Vec<String> =
            dc.chat_texts(alice, group).await.into_iter().filter(|t| t.starts_with("m2c ")).collect();
        let distinct: std::collections::BTreeSet<&String> = texts.iter().collect();
        (distinct.len() == N).then_some(texts)
    })
    .await;
    // Let stragglers (a duplicate in flight) arrive before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut in_room = in_room;
    in_room.sort();
    assert_eq!(in_room, to_matrix, "each Delta Chat message once in the room");
    let mut at_alice = at_alice;
    at_alice.sort();
    assert_eq!(at_alice, to_coi, "each Matrix message once at Alice");
    let room_now: Vec<String> = timeline(hs, mara, room)
        .await
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().filter(|b| b.starts_with("c2m ")).map(str::to_owned))
        .collect();
    assert_eq!(room_now.len(), N, "no late duplicate in the room");
    let alice_now = dc.chat_texts(alice, group).await.into_iter().filter(|t| t.starts_with("m2c ")).count();
    assert_eq!(alice_now, N, "no late duplicate at Alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_writing_one_to_one_gets_a_dm_room_with_the_owner() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);
    let bridge = dc.call("lookup_contact_id_by_addr", json!([alice, support::BRIDGE])).await;
    let chat = dc.call("create_chat_by_contact_id", json!([alice, bridge])).await;
    dc.call("misc_send_text_message", json!([alice, chat, "hello bridge, just us"])).await;

    // The bot opens a DM room for Mara (the owner), and Alice's ghost speaks there.
    let dm = eventually(WAIT, "Mara's invite to the DM room", || async {
        support::synapse::invites(&s.hs, &s.mara).await.into_iter().next()
    })
    .await;
    join_as(&s.hs, &s.mara, &dm).await;
    let first = eventually(WAIT, "Alice's message in the DM room", || async {
        timeline(&s.hs, &s.mara, &dm).await.into_iter().find(|e| e["content"]["body"] == "hello bridge, just us")
    })
    .await;
    assert_eq!(first["sender"], json!(ALICE_GHOST));
    let name = eventually(WAIT, "the room name", || async {
        timeline(&s.hs, &s.mara, &dm)
            .await
            .into_iter()
            .find(|e| e["type"] == "m.room.name")
            .map(|e| e["content"]["name"].clone())
    })
    .await;
    assert_eq!(name, json!("Alice (COI)"));

    // A second message goes to the same room; Mara's answer reaches Alice's 1:1 chat.
    dc.call("misc_send_text_message", json!([alice, chat, "second, same room"])).await;
    eventually(WAIT, "the second message in the DM room", || async {
        timeline(&s.hs, &s.mara, &dm).await.into_iter().find(|e| e["content"]["body"] == "second, same room")
    })
    .await;
    send_as(&s.hs, &s.mara, &dm, "m.room.message", "dm1", json!({"msgtype": "m.text", "body": "hi Alice, Mara here"}))
        .await;
    let m = s.at_alice("hi Alice, Mara here").await;
    assert_eq!(m["chatId"], chat, "in Alice's 1:1 chat with the bridge");
    assert_eq!(m["overrideSenderName"], json!("mara (Matrix)"));
    assert!(support::synapse::invites(&s.hs, &s.mara).await.is_empty(), "one DM room, not one per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_members_and_avatars_follow_each_other() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);
    let member = |who: &'static str, membership: &'static str| {
        move |e: &Value| {
            e["type"] == "m.room.member" && e["state_key"] == who && e["content"]["membership"] == membership
        }
    };
    // Alice's ghost joined when she joined the COI group, before she wrote anything.
    s.event("Alice's ghost joins", member(ALICE_GHOST, "join")).await;

    // Alice's Delta Chat avatar becomes her ghost's.
    let face = s.state.path().join("face.png");
    std::fs::write(&face, PNG).expect("png");
    dc.call("set_config", json!([alice, "selfavatar", face])).await;
    s.alice_says("this is my face").await;
    s.body("this is my face").await;
    let avatar = eventually(WAIT, "the ghost's avatar", || async {
        let p: Value = reqwest::Client::new()
            .get(format!("{}/_matrix/client/v3/profile/{}", s.hs.url(), support::synapse::seg(ALICE_GHOST)))
            .bearer_auth(&s.mara)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        p["avatar_url"].as_str().map(str::to_owned)
    })
    .await;
    let image = download_as(&s.hs, &s.mara, &avatar).await;
    assert!(image.len() > 50, "an image, as Delta Chat recoded it ({} bytes)", image.len());

    // Status says who is on COI and who only on Matrix.
    s.send("st", json!({"msgtype": "m.text", "body": "!coi status"})).await;
    let status = s
        .event("the status", |e| {
            e["sender"] == BOT && e["content"]["body"].as_str().is_some_and(|b| b.contains("Only on Matrix"))
        })
        .await;
    let text = status["content"]["body"].as_str().expect("body");
    assert!(text.contains("alice@example.org") && text.contains("@mara:localhost"), "{text}");
    assert!(!text.contains(ALICE_GHOST), "ghosts are not Matrix people: {text}");

    // Matrix renames the room: the COI group follows.
    let r = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{}/state/m.room.name/", s.hs.url(), support::synapse::seg(&s.room)))
        .bearer_auth(&s.mara)
        .json(&json!({"name": "Rose Garden"}))
        .send()
        .await
        .expect("rename");
    assert!(r.status().is_success());
    eventually(WAIT, "the COI group renamed", || async {
        let c = dc.call("get_basic_chat_info", json!([alice, s.group])).await;
        (c["name"] == "Rose Garden").then_some(())
    })
    .await;
    // Delta Chat renames the group: the room follows, named by the bot.
    dc.call("set_chat_name", json!([alice, s.group, "Herb Garden"])).await;
    let renamed =
        s.event("the room renamed", |e| e["type"] == "m.room.name" && e["content"]["name"] == "Herb Garden").await;
    assert_eq!(renamed["sender"], json!(BOT));

    // Bob joins on COI and leaves again: his ghost joins and leaves the room.
    const BOB_GHOST: &str = "@coi_bob=example.org:localhost";
    let bob = dc.account(&s.mail, "bob", "Bob").await;
    let bob_group = s.join(bob, &s.link).await;
    s.event("Bob's ghost joins", member(BOB_GHOST, "join")).await;
    dc.call("leave_group", json!([bob, bob_group])).await;
    s.event("Bob's ghost leaves", member(BOB_GHOST, "leave")).await;

    // A Matrix admin removes Alice's ghost: Alice is removed from the COI group.
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/rooms/{}/kick", s.hs.url(), support::synapse::seg(&s.room)))
        .bearer_auth(&s.mara)
        .json(&json!({"user_id": ALICE_GHOST, "reason": "moved away"}))
        .send()
        .await
        .expect("kick");
    assert!(r.status().is_success());
    eventually(WAIT, "Alice removed from the COI group", || async {
        let c = dc.call("get_full_chat_by_id", json!([alice, s.group])).await;
        (c["selfInGroup"] == json!(false)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_and_start_bring_existing_coi_chats_into_rooms() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);

    // Alice has a Delta Chat group of her own; Mara links it to a new room.
    let book = dc.call("create_group_chat", json!([alice, "Book Club", false])).await;
    let glink = dc.call("get_chat_securejoin_qr_code", json!([alice, book])).await;
    let books = s.new_room("Books").await;
    let mark = dc.mark();
    let command = format!("!coi link {}", glink.as_str().expect("link"));
    send_as(&s.hs, &s.mara, &books, "m.room.message", "l1", json!({"msgtype": "m.text", "body": command})).await;
    let joining = s
        .event_in(&books, "the bot's answer", |e| {
            e["sender"] == BOT && e["content"]["body"].as_str().is_some_and(|b| b.contains("Book Club"))
        })
        .await;
    assert!(joining["content"]["body"].as_str().expect("body").starts_with("Joining"), "{joining}");
    dc.wait_event_since(mark, alice, "the bridge joined Alice's group", WAIT, |e| {
        e["kind"] == "SecurejoinInviterProgress" && e["progress"].as_u64() == Some(1000)
    })
    .await;
    dc.call("misc_send_text_message", json!([alice, book, "hello, book lovers"])).await;
    let first = s.event_in(&books, "Alice's message in Books", |e| e["content"]["body"] == "hello, book lovers").await;
    assert_eq!(first["sender"], json!(ALICE_GHOST));
    send_as(&s.hs, &s.mara, &books, "m.room.message", "l2", json!({"msgtype": "m.text", "body": "reading now"})).await;
    let m = s.at_alice("reading now").await;
    assert_eq!(m["chatId"], book, "in Alice's own group");

    // start: a 1:1 portal with Alice, whose key the bridge has from her join.
    let direct = s.new_room("Alice, directly").await;
    let start = json!({"msgtype": "m.text", "body": "!coi start alice@example.org"});
    send_as(&s.hs, &s.mara, &direct, "m.room.message", "s1", start).await;
    s.event_in(&direct, "the bot's answer", |e| {
        e["sender"] == BOT
            && e["content"]["body"].as_str().is_some_and(|b| b.contains("1:1 chat with alice@example.org"))
    })
    .await;
    send_as(&s.hs, &s.mara, &direct, "m.room.message", "s2", json!({"msgtype": "m.text", "body": "just between us"}))
        .await;
    let m = s.at_alice("just between us").await;
    let bridge = dc.call("lookup_contact_id_by_addr", json!([alice, support::BRIDGE])).await;
    let one_to_one = dc.call("create_chat_by_contact_id", json!([alice, bridge])).await;
    assert_eq!(m["chatId"], one_to_one, "in Alice's 1:1 chat with the bridge");
    dc.call("misc_send_text_message", json!([alice, one_to_one, "sure, just us"])).await;
    let answer = s.event_in(&direct, "Alice's answer in the room", |e| e["content"]["body"] == "sure, just us").await;
    assert_eq!(answer["sender"], json!(ALICE_GHOST));
    assert!(support::synapse::invites(&s.hs, &s.mara).await.is_empty(), "no DM room besides the linked one");

    // Refusals: a bad link, an address without a key.
    let other = s.new_room("Nope").await;
    for (txn, body, says) in [
        ("n1", "!coi link https://i.delta.chat/#garbage", "That did not work"),
        ("n2", "!coi start nobody@example.org", "no key for nobody@example.org"),
    ] {
        send_as(&s.hs, &s.mara, &other, "m.room.message", txn, json!({"msgtype": "m.text", "body": body})).await;
        s.event_in(&other, says, |e| {
            e["sender"] == BOT && e["content"]["body"].as_str().is_some_and(|b| b.contains(says))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_image_follow_the_group_description_and_avatar() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);
    let state = |event_type: &'static str, content: Value| {
        let url =
            format!("{}/_matrix/client/v3/rooms/{}/state/{event_type}/", s.hs.url(), support::synapse::seg(&s.room));
        let token = s.mara.clone();
        async move {
            let r = reqwest::Client::new().put(url).bearer_auth(token).json(&content).send().await.expect("state");
            assert!(r.status().is_success(), "{event_type}: {:?}", r.text().await);
        }
    };

    // Matrix → COI: the topic becomes the group's description, the room image its avatar.
    state("m.room.topic", json!({"topic": "Sundays at 10, by the old oak"})).await;
    eventually(WAIT, "the group description at Alice", || async {
        let d = dc.call("get_chat_description", json!([alice, s.group])).await;
        (d == "Sundays at 10, by the old oak").then_some(())
    })
    .await;
    let mxc = upload_as(&s.hs, &s.mara, "oak.png", "image/png", PNG).await;
    state("m.room.avatar", json!({"url": mxc, "info": {"mimetype": "image/png", "size": PNG.len()}})).await;
    eventually(WAIT, "the group image at Alice", || async {
        let c = dc.call("get_full_chat_by_id", json!([alice, s.group])).await;
        c["profileImage"].as_str().map(|_| ())
    })
    .await;

    // COI → Matrix: Alice changes both; the bot updates the room.
    dc.call("set_chat_description", json!([alice, s.group, "Sundays at 11 now"])).await;
    let topic = s
        .event("the room topic", |e| e["type"] == "m.room.topic" && e["content"]["topic"] == "Sundays at 11 now")
        .await;
    assert_eq!(topic["sender"], json!(BOT));
    let face = s.state.path().join("group.png");
    std::fs::write(&face, PNG).expect("png");
    dc.call("set_chat_profile_image", json!([alice, s.group, face])).await;
    let avatar = s.event("the room image", |e| e["type"] == "m.room.avatar" && e["sender"] == BOT).await;
    let image = download_as(&s.hs, &s.mara, avatar["content"]["url"].as_str().expect("url")).await;
    assert!(image.len() > 50, "an image ({} bytes)", image.len());
}

/// PUTs a transaction to the daemon's appservice endpoint as the homeserver would.
async fn put_transaction(s: &Stack, txn: &str, body: Vec<u8>) -> u16 {
    let url = format!("http://127.0.0.1:{}/_matrix/app/v1/transactions/{txn}", s.as_port);
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(support::synapse::registration(s.as_port).hs_token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("PUT transaction");
    r.status().as_u16()
}

fn message(room: &str, sender: &str, event_id: &str, body: &str) -> Value {
    json!({
        "type": "m.room.message", "room_id": room, "sender": sender, "event_id": event_id,
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_or_one_failing_event_never_wedges_the_room() {
    let Some(s) = Stack::new().await else { return };

    // The largest transaction Synapse sends: 100 events of up to 64 KiB (6.5 MB here).
    let filler = "x".repeat(66_000);
    let mut events: Vec<Value> = (0..99)
        .map(|i| {
            json!({"type": "org.example.filler", "room_id": s.room, "sender": "@mara:localhost",
                   "event_id": format!("$filler-{i}"), "origin_server_ts": 1, "content": {"filler": filler}})
        })
        .collect();
    events.push(message(&s.room, "@mara:localhost", "$after-big", "after the 6.5 MB transaction"));
    let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
    assert!(body.len() > 6_500_000, "{} bytes", body.len());
    assert_eq!(put_transaction(&s, "hostile-big", body).await, 200, "a 6.5 MB transaction is taken");
    s.at_alice("after the 6.5 MB transaction").await;

    // One event that cannot be handled: a non-admin's command in a room the bot is not in,
    // so its refusal notice is forbidden. The others of the transaction are bridged anyway.
    let nick = s.hs.user("nick").await;
    let private = support::bridged::create_room(&s.hs, &nick, json!({"name": "Nick's own"})).await;
    let events = vec![
        message(&s.room, "@mara:localhost", "$before-poison", "before the poison"),
        message(&private, "@nick:localhost", "$poison", "!coi bridge"),
        message(&s.room, "@mara:localhost", "$after-poison", "after the poison"),
    ];
    let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
    assert_eq!(put_transaction(&s, "hostile-poison", body).await, 200, "answered 200, not retried forever");
    s.at_alice("before the poison").await;
    s.at_alice("after the poison").await;
    let dead = s.daemon.store().await;
    let letters = coi_bridge::store::deadletter::DeadLetterStore::dead_letters(&dead, "matrix").await.expect("read");
    let poison = letters.iter().find(|l| l.event == "$poison").unwrap_or_else(|| panic!("set aside: {letters:?}"));
    assert_eq!((poison.kind.as_str(), poison.remote_chat.as_deref()), ("failed", Some(private.as_str())));
    assert!(poison.reason.contains("M_FORBIDDEN"), "{poison:?}");
    assert_eq!(s.daemon.metric("coi_bridge_dead_letters_total{bridge=\"matrix\",reason=\"failed\"}").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_edits_and_only_the_sender_or_a_moderator_redacts() {
    let Some(s) = Stack::new().await else { return };
    let (dc, alice) = (&s.dc, s.alice);
    let nick = s.hs.user("nick").await;
    invite_as(&s.hs, &s.mara, &s.room, "@nick:localhost").await;
    join_as(&s.hs, &nick, &s.room).await;

    let words = s.send("w1", json!({"msgtype": "m.text", "body": "mara's words"})).await;
    let at_alice = s.at_alice("mara's words").await;
    // Nick (no power) edits Mara's message: Synapse takes it, the bridge must not.
    let edit = |body: &str| {
        json!({
            "msgtype": "m.text", "body": format!("* {body}"),
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": words}
        })
    };
    let nick_edit = send_as(&s.hs, &nick, &s.room, "m.room.message", "e1", edit("nick's rewrite")).await;
    // Nick redacts it: Synapse refuses that from a client, but a homeserver may still pass
    // such a redaction on (it is only checked when applied), so it comes as the homeserver would.
    let forged = json!({"events": [{
        "type": "m.room.redaction", "room_id": s.room, "sender": "@nick:localhost", "event_id": "$nick-redaction",
        "origin_server_ts": 1, "redacts": words, "content": {"redacts": words}
    }]});
    assert_eq!(put_transaction(&s, "hostile-redaction", serde_json::to_vec(&forged).expect("json")).await, 200);
    s.send("m1", json!({"msgtype": "m.text", "body": "marker after nick"})).await;
    s.at_alice("marker after nick").await;
    let now = dc.call("get_message", json!([alice, at_alice["id"]])).await;
    assert_eq!(now["text"], json!("mara's words"), "neither nick's edit nor his redaction reached COI: {now}");

    // Mara's own edit is bridged.
    send_as(&s.hs, &s.mara, &s.room, "m.room.message", "e2", edit("mara's better words")).await;
    eventually(WAIT, "Mara's own edit at Alice", || async {
        let m = dc.call("get_message", json!([alice, at_alice["id"]])).await;
        (m["text"] == "mara's better words").then_some(())
    })
    .await;
    // Mara created the room (version 12: unlimited power), so she may redact Nick's message.
    let nicks =
        send_as(&s.hs, &nick, &s.room, "m.room.message", "n1", json!({"msgtype": "m.text", "body": "nick's own"}))
            .await;
    let nicks_at_alice = s.at_alice("nick's own").await;
    let r = reqwest::Client::new()
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/redact/{}/mod1",
            s.hs.url(),
            support::synapse::seg(&s.room),
            support::synapse::seg(&nicks)
        ))
        .bearer_auth(&s.mara)
        .json(&json!({}))
        .send()
        .await
        .expect("redact");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    eventually(WAIT, "nick's message gone at Alice", || async {
        dc.try_call("get_message", json!([alice, nicks_at_alice["id"]])).await.is_err().then_some(())
    })
    .await;

    let store = s.daemon.store().await;
    let letters = coi_bridge::store::deadletter::DeadLetterStore::dead_letters(&store, "matrix").await.expect("read");
    // Both set aside, in whichever order they arrived: the forged redaction comes straight
    // from the test, the edit through Synapse's next transaction.
    let mut forbidden: Vec<&str> = letters.iter().filter(|l| l.kind == "forbidden").map(|l| l.event.as_str()).collect();
    forbidden.sort_unstable();
    let mut expected = vec![nick_edit.as_str(), "$nick-redaction"];
    expected.sort_unstable();
    assert_eq!(forbidden, expected, "{letters:?}");
    assert_eq!(
        s.daemon.metric("coi_bridge_dead_letters_total{bridge=\"matrix\",reason=\"forbidden\"}").await,
        Some(2.0)
    );
}
