//! Two daemons on one PostgreSQL with a real Synapse (appservice mode), Dovecot and Postfix, and a TCP forwarder in front of them as the registration's one URL (daemon A, and B when A refuses): accounts spread over the daemons get the events of their rooms whichever daemon took them (the relay), and when the holder of the busy account is SIGKILLed mid-burst, the other takes it over within 30 s and every message arrives exactly once on each side.
//!
//! Two accounts, each with a Matrix bridge on the one registration: `bridge@` (bot
//! `@coibot`, its portal room bridged to Alice's 1:1 chat) and `carol@` (bot `@coi_boty`),
//! so each daemon has the endpoint. Without the relay, the transactions Synapse sends to B
//! while it does not yet hold `bridge@` are answered 200 and their events dropped: Mara's
//! messages of the handover never reach Alice.

use std::path::Path;
use std::time::Duration;

use coi_bridge::store::{ChatKind, ChatRef};
use serde_json::{Value, json};

use crate::support::bridged::create_room;
use crate::support::forward::Forwarder;
use crate::support::postgres::PgServer;
use crate::support::synapse::{Synapse, join_as, registration, send_as, timeline};
use crate::support::{Daemon, MailServer, chat_mail, eventually, free_port};

const BRIDGE: &str = "bridge@example.org";
const CAROL: &str = "carol@example.org";
const ALICE: &str = "alice@example.org";
const ALICE_GHOST: &str = "@coi_alice=example.org:localhost";
const BOT_Y: &str = "@coi_boty:localhost";
/// Messages each way; the holder dies after `KILL_AFTER` of them.
const BURST: usize = 20;
const KILL_AFTER: usize = 6;
const WAIT: Duration = Duration::from_secs(120);

/// One Matrix bridge section on the shared registration.
fn matrix(hs: &Synapse, registration: &Path, bot: Option<&str>) -> String {
    let bot = bot.map(|b| format!("bot_localpart = \"{b}\"\n")).unwrap_or_default();
    format!(
        "\n[[bridge]]\nid = \"matrix\"\nkind = \"matrix\"\nhomeserver = \"{}\"\nserver_name = \"localhost\"\n\
         registration = \"{}\"\nadmins = [\"@mara:localhost\"]\n{bot}",
        hs.url(),
        registration.display()
    )
}

fn account(address: &str, password: &Path, mail: &MailServer) -> String {
    format!(
        "[account]\naddress = \"{address}\"\npassword_file = \"{}\"\nencryption = \"opportunistic\"\n\n\
         [imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nidle_timeout_secs = 60\n\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nauth = false\nretry_max_delay_secs = 2\n\n",
        password.display(),
        mail.imap_port(),
        mail.smtp_port(),
    )
}

/// One daemon's config: `bridge@` in the main file, `carol@` in its accounts dir, both with a
/// Matrix bridge on the registration whose URL is the forwarder; its own port and node name.
fn config(
    state: &Path,
    mail: &MailServer,
    hs: &Synapse,
    as_port: u16,
    url: &str,
    node: &str,
    port: u16,
) -> std::path::PathBuf {
    let accounts = state.join("accounts.d");
    std::fs::create_dir_all(&accounts).expect("state dir");
    let reg = state.join("registration.yaml");
    std::fs::write(&reg, registration(as_port).to_yaml()).expect("registration");
    let (pw, pw_carol) = (state.join("password"), state.join("carol.password"));
    std::fs::write(&pw, "bridge-secret").expect("password");
    std::fs::write(&pw_carol, "carol-secret").expect("password");
    let carol = format!("{}{}", account(CAROL, &pw_carol, mail), matrix(hs, &reg, Some("coi_boty")));
    std::fs::write(accounts.join("carol.toml"), carol).expect("account file");
    let main = format!(
        "[store]\nurl = \"{url}\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [cluster]\nnode = \"{node}\"\n\n[accounts]\ndir = \"accounts.d\"\n",
        state.display()
    );
    let text = format!("{}{main}{}", account(BRIDGE, &pw, mail), matrix(hs, &reg, None));
    let path = state.join("coi-bridge.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The accounts `/ready` says the daemon holds.
async fn held(d: &Daemon) -> Option<Vec<String>> {
    let (_, body) = d.http_get("/ready").await?;
    let r: Value = serde_json::from_str(&body).ok()?;
    let mut keys: Vec<String> = r["accounts"].as_object()?.keys().cloned().collect();
    keys.sort();
    Some(keys)
}

/// Whether the daemon's appservice endpoint takes a transaction (it has a bridge).
async fn endpoint_up(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/_matrix/app/v1/transactions/probe-{}", rand_id());
    let r = reqwest::Client::new().put(url).bearer_auth("coi-hs-token").json(&json!({"events": []})).send().await;
    r.is_ok_and(|r| r.status().as_u16() == 200)
}

fn rand_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

async fn alice_mails(mail: &MailServer) -> Vec<String> {
    mail.fetch_all("alice").await.into_iter().map(|m| String::from_utf8_lossy(&m).into_owned()).collect()
}

fn bodies(timeline: &[Value]) -> Vec<String> {
    timeline
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["sender"] == ALICE_GHOST)
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synapse_the_standby_takes_over_a_killed_holder_and_no_matrix_event_is_lost_or_doubled() {
    let mail = mail_server!();
    let Some(pg) = PgServer::shared() else { return };
    let url = pg.database();
    let (pa, pb, as_port) = (free_port(), free_port(), free_port());
    // The registration's one URL: daemon A, and B when A refuses.
    let forwarder = Forwarder::start(as_port, vec![pa, pb]);
    let Some(hs) = Synapse::start_with_as_port(as_port) else { return };
    let mara = hs.user("mara").await;
    let root = tempfile::tempdir().expect("tempdir");

    // The portal: a room with the bot of bridge@ in it, bridged to Alice's 1:1 chat.
    let room = create_room(&hs, &mara, json!({"name": "Failover Room", "invite": ["@coibot:localhost"]})).await;
    join_as(&hs, "coi-as-token", &room).await;
    {
        let store = coi_bridge::store::open(&url, root.path()).await.expect("the shared store");
        let alice = ChatRef { kind: ChatKind::Single, key: ALICE.into(), name: "Alice".into() };
        let chat = store.ensure_chat(&alice).await.expect("the chat with Alice");
        store.create_portal(chat, "matrix", &room).await.expect("the portal");
    }

    // A runs both accounts; B comes up and takes its share: carol@ (A keeps bridge@).
    let (sa, sb) = (root.path().join("a"), root.path().join("b"));
    let mut a = Daemon::with_config(&sa, config(&sa, &mail, &hs, as_port, &url, "node-a", pa), pa);
    eventually(WAIT, "daemon A runs both accounts", || async { held(&a).await.filter(|h| h.len() == 2) }).await;
    let mut b = Daemon::with_config(&sb, config(&sb, &mail, &hs, as_port, &url, "node-b", pb), pb);
    eventually(WAIT, "A holds bridge@ and B carol@", || async {
        let (ha, hb) = (held(&a).await?, held(&b).await?);
        (ha == [BRIDGE] && hb == [CAROL]).then_some(())
    })
    .await;
    eventually(WAIT, "both daemons' appservice endpoints up", || async {
        (endpoint_up(pa).await && endpoint_up(pb).await).then_some(())
    })
    .await;

    // Spread accounts, no failover: Mara invites carol@'s bot. Synapse sends the invitation
    // to A (the forwarder's first choice), which has no bridge with that bot: it relays it,
    // and B's bridge accepts it.
    let room_y = create_room(&hs, &mara, json!({"name": "Carol's Room", "invite": [BOT_Y]})).await;
    eventually(WAIT, "carol@'s bot (on B) joins the room it was invited to through A", || async {
        let t = timeline(&hs, &mara, &room_y).await;
        t.iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == BOT_Y && e["content"]["membership"] == "join")
            .then_some(())
    })
    .await;
    let relayed = a.metric("coi_bridge_appservice_relayed_events_total{step=\"written\"}").await;
    assert!(relayed.is_some_and(|n| n >= 1.0), "A relayed the invitation: {relayed:?}");

    let mut killed_at = None;
    // When B was first seen holding the account: looked at after each step following the
    // kill, so the bound below holds however long the rest of the burst takes.
    let mut taken_at = None;
    for i in 0..BURST {
        if i == KILL_AFTER {
            a.kill();
            killed_at = Some(tokio::time::Instant::now());
        }
        let content = json!({"msgtype": "m.text", "body": format!("mara to alice {i:02}")});
        send_as(&hs, &mara, &room, "m.room.message", &format!("burst-{i}"), content).await;
        let raw =
            chat_mail(ALICE, BRIDGE, &format!("failover-{i}@alice.example.org"), &format!("alice to mara {i:02}"));
        mail.deliver(ALICE, &[BRIDGE], &raw).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if killed_at.is_some() && taken_at.is_none() && held(&b).await.is_some_and(|h| h.iter().any(|k| k == BRIDGE)) {
            taken_at = Some(tokio::time::Instant::now());
        }
    }
    let killed_at = killed_at.expect("killed mid-burst");
    let taken_at = match taken_at {
        Some(at) => at,
        None => {
            let left = Duration::from_secs(30).saturating_sub(killed_at.elapsed());
            eventually(left, "daemon B took bridge@ over within 30 s of the kill", || async {
                held(&b).await.filter(|h| h.iter().any(|k| k == BRIDGE))
            })
            .await;
            tokio::time::Instant::now()
        }
    };
    let took = taken_at - killed_at;
    assert!(took <= Duration::from_secs(30), "daemon B took bridge@ over {took:?} after the kill (bound: 30 s)");

    // Every message once on each side.
    eventually(WAIT, "every Mara message in Alice's mailbox", || async {
        let mails = alice_mails(&mail).await;
        (0..BURST).all(|i| mails.iter().any(|m| m.contains(&format!("mara to alice {i:02}")))).then_some(())
    })
    .await;
    eventually(WAIT, "every Alice message in the Matrix room", || async {
        let posted = bodies(&timeline(&hs, &mara, &room).await);
        (0..BURST).all(|i| posted.iter().any(|t| t.contains(&format!("alice to mara {i:02}")))).then_some(())
    })
    .await;
    // Let a late duplicate show up if there is one: B's outboxes drained, and a moment more.
    eventually(WAIT, "B's outbox empty", || async {
        let smtp = b.metric("coi_bridge_outbox_depth{target=\"smtp\"}").await?;
        let matrix = b.metric("coi_bridge_outbox_depth{target=\"matrix\"}").await?;
        (smtp == 0.0 && matrix == 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (to_alice, posted) = (alice_mails(&mail).await, bodies(&timeline(&hs, &mara, &room).await));
    for i in 0..BURST {
        let (m, p) = (format!("mara to alice {i:02}"), format!("alice to mara {i:02}"));
        assert_eq!(to_alice.iter().filter(|s| s.contains(&m)).count(), 1, "{m:?} once at Alice");
        assert_eq!(posted.iter().filter(|s| s.contains(&p)).count(), 1, "{p:?} once in Matrix: {posted:?}");
    }
    // The handover's events went through the relay: B took them for bridge@ before it held
    // it, and handed them on once it did.
    let written = b.metric("coi_bridge_appservice_relayed_events_total{step=\"written\"}").await.unwrap_or(0.0);
    let drained = b.metric("coi_bridge_appservice_relayed_events_total{step=\"drained\"}").await.unwrap_or(0.0);
    assert!(written >= 1.0 && drained >= 1.0, "relayed on B: written {written}, drained {drained}");
    assert_eq!(held(&b).await.map(|h| h.len()), Some(2));
    assert!(b.is_running());
    assert!(forwarder.log.lock().expect("log").contains(&pb), "Synapse reached B through the forwarder");
}
