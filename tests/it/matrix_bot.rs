//! Bot mode end to end: the daemon logs in as an ordinary Matrix account (matrix-sdk) and bridges an end-to-end encrypted room; Mara uses matrix-sdk too, so the room's traffic is encrypted both ways.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::events::{EmptyStateKey, InitialStateEvent};
use matrix_sdk::ruma::{OwnedUserId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::json;
use support::deltachat::DeltaChat;
use support::synapse::{Synapse, free_port};
use support::{Daemon, Link, eventually};

const WAIT: Duration = Duration::from_secs(90);
const RELAY: &str = "@relay:localhost";

/// What Mara's client decrypted: (sender, body, was it encrypted).
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

async fn mara_client(hs: &Synapse, dir: &std::path::Path) -> (Client, Seen) {
    let client =
        Client::builder().homeserver_url(hs.url()).sqlite_store(dir.join("mara"), None).build().await.expect("client");
    client.matrix_auth().login_username("mara", "mara-pw").await.expect("login");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, info: Option<EncryptionInfo>| {
        let s = s.clone();
        async move {
            s.lock().expect("lock").push((ev.sender.to_string(), ev.content.body().to_owned(), info.is_some()));
        }
    });
    (client, seen)
}

async fn seen(seen: &Seen, what: &str, pred: impl Fn(&(String, String, bool)) -> bool) -> (String, String, bool) {
    eventually(WAIT, what, || async { seen.lock().expect("lock").iter().find(|e| pred(e)).cloned() }).await
}

/// The daemon in bot mode as `RELAY` (admin: Mara), its state in `state`; ready.
async fn bot_daemon(mail: &support::MailServer, hs: &Synapse, state: &std::path::Path) -> Daemon {
    let http_port = free_port();
    let config = support::write_config_with(mail, state, Link::Plain, "", http_port, "required");
    std::fs::write(state.join("relay-password"), "relay-pw\n").expect("password file");
    let section = format!(
        "\n[[bridge]]\nid = \"matrix\"\nkind = \"matrix\"\nmode = \"bot\"\nhomeserver = \"{}\"\nserver_name = \"localhost\"\n\
         user = \"{RELAY}\"\npassword_file = \"relay-password\"\nadmins = [\"@mara:localhost\"]\n",
        hs.url()
    );
    let text = std::fs::read_to_string(&config).expect("config") + section.as_str();
    std::fs::write(&config, text).expect("config");
    let mut daemon = Daemon::with_config(state, config, http_port);
    daemon.wait_ready().await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_account_bridges_an_encrypted_room_and_keeps_its_device() {
    coi_bridge::init_crypto();
    let mail = mail_server!();
    let Some(hs) = Synapse::start() else { return };
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&mail, "alice", "Alice").await;
    hs.user("relay").await;
    hs.user("mara").await;

    let state = tempfile::tempdir().expect("tempdir");
    let mut daemon = bot_daemon(&mail, &hs, state.path()).await;

    let (mara, seen_by_mara) = mara_client(&hs, state.path()).await;
    let sync = mara.clone();
    let syncing = async move {
        loop {
            let _ = sync.sync_once(SyncSettings::default().timeout(Duration::from_millis(500))).await;
        }
    };
    let body = async {
        let mut request = CreateRoom::new();
        request.name = Some("Secret Garden".into());
        request.invite = vec![OwnedUserId::try_from(RELAY).expect("mxid")];
        request.initial_state = vec![
            InitialStateEvent::<RoomEncryptionEventContent>::new(
                EmptyStateKey,
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
        let room: Room = mara.create_room(request).await.expect("room");
        let relay_id = UserId::parse(RELAY).expect("mxid");
        eventually(WAIT, "the bot joins", || async {
            let m = room.get_member_no_sync(&relay_id).await.ok().flatten()?;
            (m.membership() == &matrix_sdk::ruma::events::room::member::MembershipState::Join).then_some(())
        })
        .await;
        room.send(RoomMessageEventContent::text_plain("!coi bridge")).await.expect("send");
        let (_, answer, encrypted) =
            seen(&seen_by_mara, "the invite link", |(s, b, _)| s == RELAY && b.contains("https://i.delta.chat/#"))
                .await;
        assert!(encrypted, "the bot answers encrypted");
        let link = answer.lines().find(|l| l.starts_with("https://i.delta.chat/#")).expect("link").to_owned();

        // Alice joins on Delta Chat and writes; Mara decrypts it, prefixed with her name.
        let mark = dc.mark();
        let group = dc.call("secure_join", json!([alice, link])).await;
        dc.wait_event_since(mark, alice, "joined", WAIT, |e| {
            e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
        })
        .await;
        dc.wait_until_member(alice, &group).await;
        dc.call("misc_send_text_message", json!([alice, group, "hello, encrypted world"])).await;
        let (_, _, encrypted) = seen(&seen_by_mara, "Alice's message", |(s, b, _)| {
            s == RELAY && b == "Alice (COI): hello, encrypted world"
        })
        .await;
        assert!(encrypted, "relayed into the room encrypted");

        // Mara answers in the encrypted room; Alice gets it from "mara (Matrix)".
        room.send(RoomMessageEventContent::text_plain("hi Alice, from a secret room")).await.expect("send");
        let m = dc.message_with_text(alice, "hi Alice, from a secret room").await;
        assert_eq!(m["overrideSenderName"], json!("mara (Matrix)"));
        assert_eq!(m["chatId"], group);

        // The device's keys and the session are the owner's only (the test runs under umask 022).
        let private = state.path().join("matrix-matrix");
        let mut files = vec![private.clone()];
        let mut i = 0;
        while i < files.len() {
            if files[i].is_dir() {
                files.extend(std::fs::read_dir(&files[i]).expect("read dir").map(|e| e.expect("entry").path()));
            }
            i += 1;
        }
        assert!(files.len() > 2, "the store is there: {files:?}");
        for f in &files {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
            let want = if f.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} is {mode:o}", f.display());
        }

        // A restart keeps the session and the device: no new login, still decrypting.
        assert_eq!(daemon.stop(), Some(0), "clean stop");
        let logins = daemon.log_text().matches("logged in to Matrix as a bot").count();
        assert_eq!(logins, 1);
        daemon.restart();
        daemon.wait_ready().await;
        dc.call("misc_send_text_message", json!([alice, group, "after a restart"])).await;
        seen(&seen_by_mara, "the message after the restart", |(s, b, e)| {
            s == RELAY && b == "Alice (COI): after a restart" && *e
        })
        .await;
        room.send(RoomMessageEventContent::text_plain("still here")).await.expect("send");
        dc.message_with_text(alice, "still here").await;
        assert_eq!(daemon.log_text().matches("logged in to Matrix as a bot").count(), 1, "the saved session was used");
    };
    tokio::select! {
        () = syncing => unreachable!("the sync loop does not end"),
        () = body => {}
    }
}

/// Bot mode goes through the same translation as appservice mode: a room image and an
/// admin's kick of a COI person's ghost reach Delta Chat (before, bot mode dropped both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_image_and_a_kick_in_a_bot_mode_room_reach_delta_chat() {
    use support::bridged::{ALICE_GHOST, bridge_room_as, create_room};
    use support::synapse::{invite_as, seg, timeline, upload_as};

    coi_bridge::init_crypto();
    let mail = mail_server!();
    let Some(hs) = Synapse::start() else { return };
    let Some(dc) = DeltaChat::start().await else { return };
    let alice = dc.account(&mail, "alice", "Alice").await;
    hs.user("relay").await;
    let mara = hs.user("mara").await;
    let state = tempfile::tempdir().expect("tempdir");
    let _daemon = bot_daemon(&mail, &hs, state.path()).await;

    // Mara's room with the bot account in it, bridged; Alice joins the COI group.
    let room = create_room(&hs, &mara, json!({"name": "Garden Club", "invite": [RELAY]})).await;
    eventually(WAIT, "the bot joins", || async {
        timeline(&hs, &mara, &room)
            .await
            .into_iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == RELAY && e["content"]["membership"] == "join")
    })
    .await;
    let link = bridge_room_as(&hs, &mara, &room).await;
    let group = dc.join(alice, &link, WAIT).await;
    // A puppet of Alice in the room (made through the homeserver's appservice namespace).
    let puppets =
        coi_bridge_matrix::client::AsClient::new(&hs.url(), "coi-as-token", "@coibot:localhost").expect("client");
    puppets.register("coi_alice=example.org").await.expect("the puppet");
    invite_as(&hs, &mara, &room, ALICE_GHOST).await;
    puppets.join(&room, ALICE_GHOST).await.expect("the puppet joins");

    // The room image becomes the group's image.
    let mxc = upload_as(&hs, &mara, "oak.png", "image/png", support::PNG).await;
    let r = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{}/state/m.room.avatar/", hs.url(), seg(&room)))
        .bearer_auth(&mara)
        .json(&json!({"url": mxc, "info": {"mimetype": "image/png", "size": support::PNG.len()}}))
        .send()
        .await
        .expect("avatar");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    eventually(WAIT, "the group image at Alice", || async {
        let c = dc.call("get_full_chat_by_id", json!([alice, group])).await;
        c["profileImage"].as_str().map(|_| ())
    })
    .await;

    // Mara (an admin) removes Alice's puppet: Alice is removed from the COI group.
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/rooms/{}/kick", hs.url(), seg(&room)))
        .bearer_auth(&mara)
        .json(&json!({"user_id": ALICE_GHOST, "reason": "moved away"}))
        .send()
        .await
        .expect("kick");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    eventually(WAIT, "Alice removed from the COI group", || async {
        let c = dc.call("get_full_chat_by_id", json!([alice, group])).await;
        (c["selfInGroup"] == json!(false)).then_some(())
    })
    .await;
}
