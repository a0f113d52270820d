//! The one-command demo (`bash deploy/demo.sh`), run as a newcomer would: a Delta Chat account set up from what it prints joins with the printed link, and its message reaches the demo room as the printed Matrix user sees it.

use crate::support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::deltachat::DeltaChat;
use support::eventually;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_bridges_a_delta_chat_message_into_its_room() {
    if !support::servers_available() {
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = support::Daemon::bin().parent().expect("target dir").join("examples/demo");
    assert!(demo.exists(), "{} is not built: run `cargo build --example demo` (bash tests/run does)", demo.display());
    let mut child = tokio::process::Command::new("bash")
        .arg(repo.join("deploy/demo.sh"))
        .env("COI_DEMO_PREBUILT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run deploy/demo.sh");

    // What it prints: "  key  value" lines; the invite line comes last.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed: HashMap<String, String> = HashMap::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read the demo's output") {
            println!("demo| {line}");
            if let Some((key, value)) = line.trim_start().split_once(char::is_whitespace) {
                printed.insert(key.to_owned(), value.trim().to_owned());
            }
            if line.trim_start().starts_with("invite ") {
                return;
            }
        }
        panic!("the demo ended before printing its invite link");
    };
    tokio::time::timeout(Duration::from_secs(300), read).await.expect("the demo prints its links within 5 minutes");
    let get = |k: &str| printed.get(k).cloned().unwrap_or_else(|| panic!("the demo printed no {k:?}: {printed:?}"));
    let (homeserver, user, password, link) = (get("homeserver"), get("user"), get("password"), get("invite"));
    let port = |k: &str| -> u16 {
        get(k).rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{k}: {printed:?}"))
    };
    assert!(link.starts_with("https://i.delta.chat/#"), "{link}");

    // A Delta Chat user with the printed settings joins with the printed link.
    let dc = DeltaChat::start().await.expect("deltachat-rpc-server");
    let alice = dc.account_at(port("imap"), port("smtp"), "alice", "Alice").await;
    let chat = dc.join(alice, &link, WAIT).await;
    dc.call("misc_send_text_message", json!([alice, chat, "hello from Delta Chat"])).await;

    // The printed Matrix user logs in and sees it in the demo room.
    let localpart = user.trim_start_matches('@').split(':').next().expect("localpart").to_owned();
    let token = support::synapse::login_at(&homeserver, &localpart, &password).await;
    let room = get("room").split(['(', ')']).nth(1).expect("the room id in parentheses").to_owned();
    let event = eventually(WAIT, "the message in the demo room", || async {
        support::synapse::timeline_at(&homeserver, &token, &room)
            .await
            .into_iter()
            .find(|e| e["content"]["body"] == "hello from Delta Chat")
    })
    .await;
    assert_eq!(event["sender"], "@coi_alice=example.org:localhost", "{event}");

    // SIGTERM (as Ctrl-C would): it stops every server it started.
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { support::libc_kill(pid, 15) };
    let status =
        tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("the demo stops").expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        reqwest::get(format!("{homeserver}/_matrix/client/versions")).await.is_err(),
        "Synapse still answers after the demo stopped"
    );
}
