//! Many accounts in one daemon through real Dovecot + Postfix and the Bot API double: an accounts dir, each account with its own store, IDLE connection and portal; SIGHUP adds, restarts (changed), removes and reports broken files.

use std::path::Path;
use std::time::Duration;

use coi_bridge::store::{ChatKind, ChatRef};
use serde_json::Value;

use crate::support::telegram::FakeTelegram;
use crate::support::{Daemon, MailServer, chat_mail, eventually, free_port};

const WAIT: Duration = Duration::from_secs(60);
const CAROL: &str = "carol@example.org";

/// Account `user`'s Telegram group and bot token.
fn group(user: &str) -> i64 {
    match user {
        "alice" => -1_003_000_000_001,
        _ => -1_003_000_000_002,
    }
}

/// Writes `accounts.d/USER.toml` (the mail user `user` as a bridge account with a Telegram
/// bot of its own) and its store, with the 1:1 chat with Carol linked to its group.
async fn add_account(state: &Path, mail: &MailServer, tg: &FakeTelegram, user: &str, bot: u32) {
    let secrets = state.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets");
    let (pw, token) = (secrets.join(format!("{user}.password")), secrets.join(format!("{user}.token")));
    std::fs::write(&pw, format!("{user}-secret")).expect("password");
    std::fs::write(&token, format!("{bot}:fake-token")).expect("token");
    let text = format!(
        "[account]\naddress = \"{user}@example.org\"\npassword_file = \"{}\"\nencryption = \"opportunistic\"\n\n\
         [imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nidle_timeout_secs = 60\n\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nauth = false\n\n\
         [[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"{}\"\nallowed_chats = [{}]\n",
        pw.display(),
        mail.imap_port(),
        mail.smtp_port(),
        tg.url(),
        token.display(),
        group(user)
    );
    let file = state.join("accounts").join(format!("{user}@example.org")).join("store.sqlite");
    let store = coi_bridge::store::open(&format!("sqlite://{}", file.display()), state).await.expect("the store");
    let carol = ChatRef { kind: ChatKind::Single, key: CAROL.into(), name: "Carol".into() };
    let chat = store.ensure_chat(&carol).await.expect("the chat with Carol");
    store.create_portal(chat, "telegram", &group(user).to_string()).await.expect("the portal");
    std::fs::create_dir_all(state.join("accounts.d")).expect("accounts.d");
    std::fs::write(state.join("accounts.d").join(format!("{user}.toml")), text).expect("account file");
}

/// Carol writes to `user`'s bridge address; returns the text.
async fn carol_writes(mail: &MailServer, user: &str, text: &str) -> String {
    let to = format!("{user}@example.org");
    let raw = chat_mail(CAROL, &to, &format!("{}@carol.example.org", uuid::Uuid::new_v4()), text);
    mail.deliver(CAROL, &[&to], &raw).await;
    text.to_owned()
}

async fn wait_in_group(tg: &FakeTelegram, user: &str, text: &str) {
    eventually(WAIT, &format!("{text:?} in {user}'s Telegram group"), || async {
        tg.sent_texts(group(user)).into_iter().find(|(_, t)| t.contains(text))
    })
    .await;
}

async fn ready(d: &Daemon) -> (u16, Value) {
    let (code, body) = d.http_get("/ready").await.expect("/ready answers");
    (code, serde_json::from_str(&body).expect("JSON"))
}

fn hup(d: &Daemon) {
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { crate::support::libc_kill(d.pid() as i32, 1) }, 0, "SIGHUP sent");
}

/// Two accounts of a directory run side by side, each with its own store, IDLE connection
/// and portal; SIGHUP starts a new file's account, stops a removed one's, and a broken
/// file is named in `/ready` while the others go on.
#[tokio::test]
async fn accounts_in_a_directory_run_side_by_side_and_sighup_adds_and_removes_them() {
    let mail = mail_server!();
    let tg = FakeTelegram::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let http_port = free_port();
    let main = format!(
        "[store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [accounts]\ndir = \"accounts.d\"\n",
        state.path().display()
    );
    let config = state.path().join("coi-bridge.toml");
    std::fs::write(&config, main).expect("main file");
    add_account(state.path(), &mail, &tg, "alice", 7_200_001).await;
    let mut d = Daemon::with_config(state.path(), config, http_port);
    d.wait_ready().await;
    let (_, r) = ready(&d).await;
    assert!(r["accounts"]["alice@example.org"].is_object(), "{r}");
    assert_eq!(r["parts"]["alice@example.org imap"]["state"], "connected", "{r}");
    assert_eq!(d.metric("coi_bridge_account_held{account=\"alice@example.org\"}").await, Some(1.0));

    let hello = carol_writes(&mail, "alice", "hello alice's bridge").await;
    wait_in_group(&tg, "alice", &hello).await;

    // A second account, added while the daemon runs.
    add_account(state.path(), &mail, &tg, "bob", 7_200_002).await;
    hup(&d);
    eventually(WAIT, "bob's account running and connected", || async {
        let (code, r) = ready(&d).await;
        (code == 200 && r["parts"]["bob@example.org imap"]["state"] == "connected").then_some(())
    })
    .await;
    assert_eq!(d.metric("coi_bridge_imap_connected").await, Some(2.0), "one IDLE connection per account");
    assert_eq!(d.metric("coi_bridge_accounts_held").await, Some(2.0));
    let to_bob = carol_writes(&mail, "bob", "hello bob's bridge").await;
    wait_in_group(&tg, "bob", &to_bob).await;
    assert!(!tg.sent_texts(group("alice")).iter().any(|(_, t)| t.contains(&to_bob)), "each account its own portal");

    // Bob's file changes (a longer IDLE timeout): SIGHUP restarts his account with it, once,
    // and his mail still flows, over one connection.
    let bob_file = state.path().join("accounts.d").join("bob.toml");
    let text = std::fs::read_to_string(&bob_file).expect("bob's file");
    std::fs::write(&bob_file, text.replace("idle_timeout_secs = 60", "idle_timeout_secs = 90")).expect("bob's file");
    hup(&d);
    eventually(WAIT, "bob's account restarted for its changed file", || async {
        let log = d.log_text();
        (log.contains("its file changed") && log.matches("account running").count() >= 3).then_some(())
    })
    .await;
    eventually(WAIT, "bob's restarted account connected", || async {
        let (code, r) = ready(&d).await;
        (code == 200 && r["parts"]["bob@example.org imap"]["state"] == "connected").then_some(())
    })
    .await;
    let after = carol_writes(&mail, "bob", "bob's bridge after its file changed").await;
    wait_in_group(&tg, "bob", &after).await;
    assert_eq!(d.metric("coi_bridge_imap_connected").await, Some(2.0), "the old connection closed");
    assert_eq!(d.metric("coi_bridge_accounts_held").await, Some(2.0));
    assert_eq!(d.log_text().matches("its file changed").count(), 1, "restarted once");

    // Alice's file goes, and a broken one comes: alice stops, the broken file is named,
    // bob goes on.
    std::fs::remove_file(state.path().join("accounts.d").join("alice.toml")).expect("remove");
    std::fs::write(state.path().join("accounts.d").join("broken.toml"), "[account]\naddress = 7\n").expect("broken");
    hup(&d);
    let r = eventually(WAIT, "alice stopped and the broken file named", || async {
        let (code, r) = ready(&d).await;
        (code == 503 && r["accounts"].get("alice@example.org").is_none() && !r["broken"].as_object()?.is_empty())
            .then_some(r)
    })
    .await;
    let broken = r["broken"].to_string();
    assert!(broken.contains("broken.toml"), "{r}");
    assert_eq!(d.metric("coi_bridge_imap_connected").await, Some(1.0), "alice's connection closed");
    assert_eq!(d.metric("coi_bridge_account_held{account=\"alice@example.org\"}").await, None);
    let late = carol_writes(&mail, "alice", "alice's bridge is gone").await;
    let still = carol_writes(&mail, "bob", "bob's bridge still runs").await;
    wait_in_group(&tg, "bob", &still).await;
    assert!(
        !tg.sent_texts(group("alice")).iter().any(|(_, t)| t.contains(&late)),
        "a removed account's mail is not bridged"
    );

    // The broken file fixed (removed): ready again.
    std::fs::remove_file(state.path().join("accounts.d").join("broken.toml")).expect("remove");
    hup(&d);
    eventually(WAIT, "ready again", || async { (ready(&d).await.0 == 200).then_some(()) }).await;
    assert!(d.is_running(), "the daemon never stopped");
}
