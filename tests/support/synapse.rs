//! A Synapse of its own per test, on loopback (tests/servers/synapse.sh), and the user-side requests tests need.
//! Shared by the root integration tests and the matrix crate's (included with `#[path]`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

pub use coi_bridge_matrix::client::seg;

/// The repository root: the first folder upwards that holds tests/servers/synapse.sh (the
/// root crate's manifest dir, or two levels above a bridge crate's).
pub fn repo() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    start.ancestors().find(|d| d.join("tests/servers/synapse.sh").is_file()).unwrap_or(&start).to_path_buf()
}

/// Synapse caches a /sync answer for the same request for minutes, so every initial sync
/// here asks with a different `timeout` (milliseconds; it returns at once anyway).
pub fn fresh_sync_url(hs: &Synapse) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}/_matrix/client/v3/sync?timeout={n}", hs.url())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A Synapse of its own, stopped on drop.
pub struct Synapse {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Synapse {
    pub fn start() -> Option<Self> {
        Self::start_with_as_port(free_port())
    }

    /// Synapse pushes appservice transactions to 127.0.0.1:`as_port`.
    pub fn start_with_as_port(as_port: u16) -> Option<Self> {
        let venv = repo().join("target/synapse-venv/bin/python");
        if !venv.exists() {
            let msg = "Synapse not installed: run `bash tests/servers/install.sh`";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("coi-synapse-").tempdir_in("/tmp").expect("tempdir");
        let port = free_port();
        let out = Command::new("bash")
            .arg(repo().join("tests/servers/synapse.sh"))
            .args(["start"])
            .arg(dir.path())
            .arg(port.to_string())
            .env("COI_TEST_AS_PORT", as_port.to_string())
            .output()
            .expect("run synapse.sh");
        assert!(out.status.success(), "synapse.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        Some(Self { dir, port })
    }

    /// Stops it (an outage); [`Synapse::restart`] brings it back with its data.
    pub fn stop(&self) {
        let st = Command::new("bash")
            .arg(repo().join("tests/servers/synapse.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status()
            .expect("synapse.sh stop");
        assert!(st.success(), "synapse.sh stop failed");
    }

    pub fn restart(&self) {
        let out = Command::new("bash")
            .arg(repo().join("tests/servers/synapse.sh"))
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .output()
            .expect("run synapse.sh");
        assert!(out.status.success(), "synapse.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A normal user, through Synapse's own registration tool; returns an access token.
    pub async fn user(&self, name: &str) -> String {
        let tool = repo().join("target/synapse-venv/bin/register_new_matrix_user");
        let out = Command::new(tool)
            .args(["-u", name, "-p", &format!("{name}-pw"), "--no-admin", "-k", "coi-test-shared-secret"])
            .arg(self.url())
            .output()
            .expect("register_new_matrix_user");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        login_at(&self.url(), name, &format!("{name}-pw")).await
    }
}

/// Logs `user` (a localpart) in with a password on the homeserver at `base`; returns an
/// access token.
pub async fn login_at(base: &str, user: &str, password: &str) -> String {
    let body =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
    let v: Value = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&body)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    v["access_token"].as_str().unwrap_or_else(|| panic!("login as {user} at {base} failed: {v}")).to_owned()
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ =
            Command::new("bash").arg(repo().join("tests/servers/synapse.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

/// Sends an event as a normal user; returns its id.
pub async fn send_as(hs: &Synapse, token: &str, room: &str, event_type: &str, txn: &str, content: Value) -> String {
    let v: Value = reqwest::Client::new()
        .put(format!("{}/_matrix/client/v3/rooms/{}/send/{event_type}/{txn}", hs.url(), seg(room)))
        .bearer_auth(token)
        .json(&content)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    v["event_id"].as_str().unwrap_or_else(|| panic!("no event id: {v}")).to_owned()
}

/// Joins a room as a normal user.
pub async fn join_as(hs: &Synapse, token: &str, room: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/join/{}", hs.url(), seg(room)))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("join");
    assert!(r.status().is_success(), "join: {:?}", r.text().await);
}

/// The room's whole timeline as a normal user sees it, oldest first (paged through).
pub async fn timeline(hs: &Synapse, token: &str, room: &str) -> Vec<Value> {
    timeline_at(&hs.url(), token, room).await
}

/// GETs `url` as `token` and reads the JSON answer (`what` names the request in a panic).
pub async fn get_json(url: &str, token: &str, what: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}, its JSON: {e}"))
}

/// [`timeline`] on the homeserver at `base` (one this process did not start).
pub async fn timeline_at(base: &str, token: &str, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut url = format!("{base}/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500", seg(room));
        if let Some(f) = &from {
            url.push_str(&format!("&from={}", seg(f)));
        }
        let v = get_json(&url, token, "messages").await;
        let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk);
        match v["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return out,
        }
    }
}

/// Invites `mxid` into a room as a normal user.
pub async fn invite_as(hs: &Synapse, token: &str, room: &str, mxid: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/rooms/{}/invite", hs.url(), seg(room)))
        .bearer_auth(token)
        .json(&json!({ "user_id": mxid }))
        .send()
        .await
        .expect("invite");
    assert!(r.status().is_success(), "invite: {:?}", r.text().await);
}

/// The appservice registration synapse.sh gives the homeserver, for the bridge's side.
pub fn registration(as_port: u16) -> coi_bridge_matrix::registration::Registration {
    coi_bridge_matrix::registration::Registration {
        id: "coi-bridge".into(),
        url: format!("http://127.0.0.1:{as_port}"),
        as_token: "coi-as-token".into(),
        hs_token: "coi-hs-token".into(),
        sender_localpart: "coibot".into(),
        ghost_prefix: "coi_".into(),
        server_name: "localhost".into(),
    }
}

/// A user's display name, as another user reads it.
pub async fn displayname(hs: &Synapse, token: &str, mxid: &str) -> Value {
    let url = format!("{}/_matrix/client/v3/profile/{}/displayname", hs.url(), seg(mxid));
    let v = get_json(&url, token, "profile").await;
    v["displayname"].clone()
}

/// Uploads a file as a normal user; returns its `mxc://` URI.
pub async fn upload_as(hs: &Synapse, token: &str, name: &str, mime: &str, data: &[u8]) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload?filename={}", hs.url(), seg(name)))
        .bearer_auth(token)
        .header("Content-Type", mime)
        .body(data.to_vec())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    v["content_uri"].as_str().unwrap_or_else(|| panic!("no content_uri: {v}")).to_owned()
}

/// Downloads an `mxc://` file through the authenticated media API as a normal user.
pub async fn download_as(hs: &Synapse, token: &str, mxc: &str) -> Vec<u8> {
    let rest = mxc.strip_prefix("mxc://").expect("an mxc URI");
    let r = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v1/media/download/{rest}", hs.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("download");
    assert!(r.status().is_success(), "download {mxc}: {}", r.status());
    r.bytes().await.expect("bytes").to_vec()
}

/// Marks `event` read as a normal user.
pub async fn read_receipt_as(hs: &Synapse, token: &str, room: &str, event: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/rooms/{}/receipt/m.read/{}", hs.url(), seg(room), seg(event)))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("receipt");
    assert!(r.status().is_success(), "receipt: {:?}", r.text().await);
}

/// The room's `m.receipt` content as a user's /sync shows it: event id → receipt type → user → data.
pub async fn receipts(hs: &Synapse, token: &str, room: &str) -> Value {
    let v = get_json(&fresh_sync_url(hs), token, "sync").await;
    let mut out = serde_json::Map::new();
    for ev in v["rooms"]["join"][room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default() {
        if ev["type"] == "m.receipt"
            && let Some(c) = ev["content"].as_object()
        {
            out.extend(c.clone());
        }
    }
    Value::Object(out)
}

/// The rooms a user is invited to and has not joined yet.
pub async fn invites(hs: &Synapse, token: &str) -> Vec<String> {
    let v = get_json(&fresh_sync_url(hs), token, "sync").await;
    v["rooms"]["invite"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// `mxid`'s membership of `room` ("join", "invite", "leave", …) as the user of `token` sees it.
pub async fn membership(hs: &Synapse, token: &str, room: &str, mxid: &str) -> Option<String> {
    let url = format!("{}/_matrix/client/v3/rooms/{}/state/m.room.member/{}", hs.url(), seg(room), seg(mxid));
    get_json(&url, token, "membership").await["membership"].as_str().map(str::to_owned)
}

/// Invites `mxid` into `room` as a normal user, marked as a direct chat (`is_direct`), as a
/// client does when a room made earlier becomes a DM.
pub async fn invite_direct_as(hs: &Synapse, token: &str, room: &str, mxid: &str) {
    let url = format!("{}/_matrix/client/v3/rooms/{}/state/m.room.member/{}", hs.url(), seg(room), seg(mxid));
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(token)
        .json(&json!({ "membership": "invite", "is_direct": true }))
        .send()
        .await
        .expect("invite");
    assert!(r.status().is_success(), "direct invite: {:?}", r.text().await);
}
