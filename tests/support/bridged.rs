//! A bridged room for end-to-end tests and benchmarks: mail, Synapse, Delta Chat and the daemon, with a Matrix room linked to a COI group that a Delta Chat account joined.

use std::time::Duration;

use serde_json::{Value, json};

use super::deltachat::DeltaChat;
use super::synapse::{Synapse, free_port, send_as, timeline};
use super::{Daemon, Link, MailServer, eventually};

pub const WAIT: Duration = Duration::from_secs(90);
pub const BOT: &str = "@coibot:localhost";
pub const ALICE_GHOST: &str = "@coi_alice=example.org:localhost";

/// A bridged room: Mara (a Matrix admin and owner of the bridge) made it and said
/// `!coi bridge`; Alice (Delta Chat) joined the COI group through the link.
pub struct Stack {
    pub daemon: Daemon,
    pub dc: DeltaChat,
    pub hs: Synapse,
    pub mail: MailServer,
    pub state: tempfile::TempDir,
    pub as_port: u16,
    pub alice: u64,
    /// Alice's chat id of the bridged group.
    pub group: Value,
    pub mara: String,
    pub room: String,
    /// The group's invite link the bot posted.
    pub link: String,
}

impl Stack {
    pub async fn new() -> Option<Self> {
        Self::new_with("").await
    }

    /// [`Stack::new`] with more config appended (another `[[bridge]]`, say).
    pub async fn new_with(extra: &str) -> Option<Self> {
        Self::new_with_files(extra, &[]).await
    }

    /// [`Stack::new_with`], and files written next to the config first (name, text).
    pub async fn new_with_files(extra: &str, files: &[(&str, &str)]) -> Option<Self> {
        let mail = MailServer::start()?;
        let as_port = free_port();
        let hs = Synapse::start_with_as_port(as_port)?;
        let dc = DeltaChat::start().await?;
        let alice = dc.account(&mail, "alice", "Alice").await;
        let mara = hs.user("mara").await;

        // The daemon's HTTP listener is where Synapse pushes transactions.
        let state = tempfile::tempdir().expect("tempdir");
        let config = super::write_config_with(&mail, state.path(), Link::Plain, "", as_port, "required");
        for (name, text) in files {
            std::fs::write(state.path().join(name), text).expect("file next to the config");
        }
        add_matrix_bridge(&config, &hs, as_port, "@mara:localhost", extra);
        let mut daemon = Daemon::with_config(state.path(), config, as_port);
        daemon.wait_ready().await;

        let mut s = Self {
            daemon,
            dc,
            hs,
            mail,
            state,
            as_port,
            alice,
            group: Value::Null,
            mara,
            room: String::new(),
            link: String::new(),
        };
        s.room = s.new_room("Garden Club").await;
        let link = bridge_room_as(&s.hs, &s.mara, &s.room).await;

        s.group = s.join(alice, &link).await;
        s.link = link;
        Some(s)
    }

    /// Mara makes a room, invites the bot as a moderator (so it can mirror names and
    /// members), and waits until it joined.
    pub async fn new_room(&self, name: &str) -> String {
        new_room_as(&self.hs, &self.mara, name).await
    }

    /// Waits for the first event in `room` that `pred` accepts.
    pub async fn event_in(&self, room: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, what, || async { timeline(&self.hs, &self.mara, room).await.into_iter().find(|e| pred(e)) })
            .await
    }

    /// Account `acc` joins the group through `link`; returns its chat id once it may write.
    pub async fn join(&self, acc: u64, link: &str) -> Value {
        self.dc.join(acc, link, WAIT).await
    }

    /// Mara sends an event of type `m.room.message`.
    pub async fn send(&self, txn: &str, content: Value) -> String {
        send_as(&self.hs, &self.mara, &self.room, "m.room.message", txn, content).await
    }

    /// Waits for the first timeline event that `pred` accepts.
    pub async fn event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.event_in(&self.room, what, pred).await
    }

    /// The room event whose plain body is `body`.
    pub async fn body(&self, body: &str) -> Value {
        self.event(&format!("{body:?} in the room"), |e| e["content"]["body"] == body).await
    }

    /// Alice writes into the bridged group.
    pub async fn alice_says(&self, text: &str) {
        self.dc.call("misc_send_text_message", json!([self.alice, self.group, text])).await;
    }

    /// What Alice's Delta Chat shows for `text`.
    pub async fn at_alice(&self, text: &str) -> Value {
        self.dc.message_with_text(self.alice, text).await
    }

    /// The texts of the group's messages at Alice, oldest first.
    pub async fn alice_texts(&self) -> Vec<String> {
        self.dc.chat_texts(self.alice, &self.group).await
    }
}

impl Drop for Stack {
    /// A failing test shows the end of the daemon's log: the first thing one needs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.daemon.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("packet header mismatch")).collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("--- the daemon's log (last 80 lines) ---\n{tail}\n---");
        }
    }
}

/// The user of `token` creates a room as `body` says (the createRoom API); its id.
pub async fn create_room(hs: &Synapse, token: &str, body: Value) -> String {
    let room: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/createRoom", hs.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("createRoom")
        .json()
        .await
        .expect("json");
    room["room_id"].as_str().unwrap_or_else(|| panic!("createRoom: {room}")).to_owned()
}

/// The user of `token` makes a room, invites the bot as a moderator (so it can mirror
/// names and members), and waits until it joined.
pub async fn new_room_as(hs: &Synapse, token: &str, name: &str) -> String {
    let room = create_room(
        hs,
        token,
        json!({"name": name, "invite": [BOT], "power_level_content_override": {"users": {BOT: 50}}}),
    )
    .await;
    eventually(WAIT, "the bot joins", || async {
        timeline(hs, token, &room)
            .await
            .into_iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == BOT && e["content"]["membership"] == "join")
    })
    .await;
    room
}

/// The user of `token` (an admin) says `!coi bridge` in `room`; returns the invite link
/// the bot answers with.
pub async fn bridge_room_as(hs: &Synapse, token: &str, room: &str) -> String {
    send_as(hs, token, room, "m.room.message", "coi-bridge-1", json!({"msgtype": "m.text", "body": "!coi bridge"}))
        .await;
    let notice = eventually(WAIT, "the invite link", || async {
        timeline(hs, token, room)
            .await
            .into_iter()
            .find(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains("https://i.delta.chat/#")))
    })
    .await;
    notice["content"]["body"]
        .as_str()
        .and_then(|b| b.lines().find(|l| l.starts_with("https://i.delta.chat/#")))
        .expect("a link line")
        .to_owned()
}

/// Gives the daemon's config at `config` a Matrix appservice bridge (id `matrix`) on `hs`,
/// commanded by `admin`, with its registration next to the config; `extra` is appended
/// (with `$HOMESERVER` in it replaced by `hs`'s URL, for another Matrix bridge).
pub fn add_matrix_bridge(config: &std::path::Path, hs: &Synapse, as_port: u16, admin: &str, extra: &str) {
    let reg = super::synapse::registration(as_port);
    let dir = config.parent().expect("the config's folder");
    std::fs::write(dir.join("registration.yaml"), reg.to_yaml()).expect("registration");
    let section = format!(
        "\n[[bridge]]\nid = \"matrix\"\nkind = \"matrix\"\nhomeserver = \"{}\"\nserver_name = \"localhost\"\n\
         registration = \"registration.yaml\"\nadmins = [\"{admin}\"]\n",
        hs.url()
    );
    let extra = extra.replace("$HOMESERVER", &hs.url());
    let text = std::fs::read_to_string(config).expect("config") + section.as_str() + extra.as_str();
    std::fs::write(config, text).expect("config");
}
