//! Bot mode: one ordinary Matrix account (through matrix-sdk) relays COI people with name prefixes; its session, device and crypto store persist under the state directory, so encrypted rooms work.
//!
//! For homeservers where registering an appservice is not possible. There are no ghosts:
//! the bot writes "Alice (COI): …", and reactions, receipts and member changes that need
//! a person of their own are carried as the bot or degraded by the core. What the bot
//! hears goes through the same translation as appservice mode's ([`crate::sync`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coi_bridge_api::{
    Bridge, BridgeContext, BridgeError, BridgeState, Capabilities, DeliverError, DeliveryKey, Outgoing, Person,
    RemoteChatId, RemoteMsgId,
};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::event_handler::RawEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::{AnySyncEphemeralRoomEvent, AnySyncTimelineEvent};
use matrix_sdk::ruma::{EventId, OwnedTransactionId, RoomId, UserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room, RoomState};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::config::MatrixConfig;

/// How long one `/sync` long-polls.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The bot account's side of the `Bridge` contract.
pub struct BotBridge {
    cfg: MatrixConfig,
    /// The bridge's own COI address: its messages carry no name prefix.
    coi_address: String,
    /// The bridge's own display name (see `Person::speaker`).
    coi_name: String,
    /// The matrix-sdk state and crypto store, and the saved session.
    store_dir: PathBuf,
    password: String,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for BotBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotBridge")
            .field("id", &self.cfg.id)
            .field("user", &self.cfg.user)
            .field("store_dir", &self.store_dir)
            .field("password", &"[redacted]")
            .finish()
    }
}

fn lowered(e: matrix_sdk::Error) -> DeliverError {
    match e.as_client_api_error().map(|c| c.status_code.as_u16()) {
        Some(429) | Some(500..) | None => DeliverError::Retry { reason: e.to_string(), after: None },
        Some(_) => DeliverError::Permanent(e.to_string()),
    }
}

fn lowered_http(e: matrix_sdk::HttpError) -> DeliverError {
    match e.as_client_api_error().map(|c| c.status_code.as_u16()) {
        Some(429) | Some(500..) | None => DeliverError::Retry { reason: e.to_string(), after: None },
        Some(_) => DeliverError::Permanent(e.to_string()),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn txn(s: &str) -> OwnedTransactionId {
    OwnedTransactionId::from(s)
}

impl BotBridge {
    /// No network I/O; `run` logs in (or restores the saved session) and syncs.
    pub fn new(cfg: MatrixConfig, coi_address: &str, coi_name: &str, store_dir: PathBuf, password: String) -> Self {
        Self {
            cfg,
            coi_address: coi_address.to_lowercase(),
            coi_name: coi_name.to_owned(),
            store_dir,
            password,
            client: OnceCell::new(),
        }
    }

    fn client(&self) -> Result<&Client, DeliverError> {
        self.client.get().ok_or_else(|| DeliverError::Retry { reason: "not logged in yet".into(), after: None })
    }

    fn room(&self, to: &RemoteChatId) -> Result<Room, DeliverError> {
        let id = RoomId::parse(to.as_str()).map_err(|e| DeliverError::Permanent(format!("{to}: {e}")))?;
        self.client()?.get_room(&id).ok_or_else(|| DeliverError::Retry {
            reason: format!("room {to} is not known to the bot yet"),
            after: None,
        })
    }

    /// "Alice (COI)" for people, nothing for the bridge's own messages.
    fn prefix(&self, sender: &Person) -> Option<String> {
        match sender.speaker(&self.coi_address, &self.coi_name) {
            coi_bridge_api::Speaker::Person => Some(format!("{} (COI)", sender.display_name)),
            coi_bridge_api::Speaker::Relayed => Some(sender.display_name.clone()),
            coi_bridge_api::Speaker::Bridge => None,
        }
    }

    fn prefixed(&self, sender: &Person, text: &str) -> Value {
        match self.prefix(sender) {
            Some(p) => json!({
                "msgtype": "m.text",
                "body": format!("{p}: {text}"),
                "format": "org.matrix.custom.html",
                "formatted_body": format!("<b>{}</b>: {}", escape(&p), escape(text).replace('\n', "<br>")),
            }),
            None => json!({ "msgtype": "m.text", "body": text }),
        }
    }

    async fn send(
        &self,
        room: &Room,
        event_type: &str,
        key: &str,
        content: Value,
    ) -> Result<RemoteMsgId, DeliverError> {
        let res = room.send_raw(event_type, content).with_transaction_id(&txn(key)).await.map_err(lowered)?;
        Ok(RemoteMsgId(res.response.event_id.to_string()))
    }

    /// Logs in with the password once; later starts restore the saved session and device,
    /// so the crypto store's keys stay valid.
    async fn login(&self) -> Result<Client, BridgeError> {
        let user = self.cfg.user.clone().ok_or_else(|| BridgeError::Fatal("mode = \"bot\" needs `user`".into()))?;
        std::fs::create_dir_all(&self.store_dir)
            .map_err(|e| BridgeError::Fatal(format!("cannot create {}: {e}", self.store_dir.display())))?;
        let client = Client::builder()
            .homeserver_url(&self.cfg.homeserver)
            .sqlite_store(self.store_dir.join("store"), None)
            .build()
            .await
            .map_err(|e| BridgeError::Retry(format!("matrix client: {e}")))?;
        // The crypto store holds the device's secret keys: owner only, whatever the umask
        // (SQLite gives its -wal and -shm the database file's mode).
        make_private(&self.store_dir)
            .map_err(|e| BridgeError::Fatal(format!("cannot restrict {}: {e}", self.store_dir.display())))?;
        let session_file = self.store_dir.join("session.json");
        if let Ok(text) = std::fs::read_to_string(&session_file) {
            let session: MatrixSession = serde_json::from_str(&text).map_err(|e| {
                BridgeError::Fatal(format!("{} is damaged ({e}); remove it to log in again", session_file.display()))
            })?;
            client
                .matrix_auth()
                .restore_session(session, RoomLoadSettings::default())
                .await
                .map_err(|e| BridgeError::Retry(format!("restoring the Matrix session: {e}")))?;
            return Ok(client);
        }
        client
            .matrix_auth()
            .login_username(&user, &self.password)
            .initial_device_display_name("coi-bridge")
            .await
            .map_err(|e| match e.as_client_api_error().map(|c| c.status_code.as_u16()) {
                Some(401 | 403) => BridgeError::Fatal(format!("Matrix login as {user} refused: check password_file")),
                _ => BridgeError::Retry(format!("Matrix login as {user}: {e}")),
            })?;
        let session =
            client.matrix_auth().session().ok_or_else(|| BridgeError::Retry("no session after login".into()))?;
        let text = serde_json::to_string(&session).map_err(|e| BridgeError::Fatal(e.to_string()))?;
        write_private(&session_file, &text)
            .map_err(|e| BridgeError::Fatal(format!("{}: {e}", session_file.display())))?;
        tracing::info!(user, device = %session.meta.device_id, "logged in to Matrix as a bot; session saved");
        Ok(client)
    }
}

/// The bot follows admins' invitations into rooms, and a direct chat's from someone in one
/// of the bridge's portals (it becomes the direct room the bridge keeps with them); anyone
/// else's direct chat it declines, other rooms it ignores. What was said in the direct chat
/// before the join comes with the room's first sync.
async fn invitation(
    client: &Client,
    cfg: &MatrixConfig,
    state: &dyn BridgeState,
    ev: &StrippedRoomMemberEvent,
    room: &Room,
) {
    let (id, sender) = (room.room_id(), &ev.sender);
    if cfg.is_admin(sender.as_str()) {
        if let Err(e) = room.join().await {
            tracing::warn!(room = %id, error = %e, "could not accept the invitation");
        }
        return;
    }
    if ev.content.is_direct != Some(true) {
        tracing::warn!(room = %id, %sender, "invitation from a non-admin ignored");
        return;
    }
    let portals = match state.remote_chats().await {
        Ok(portals) => portals,
        Err(e) => {
            tracing::warn!(room = %id, %sender, error = %e, "the portals are not readable; the direct chat is left unanswered");
            return;
        }
    };
    if !in_a_portal(client, &portals, sender).await {
        tracing::info!(room = %id, %sender, "direct chat from someone in no bridged room declined");
        if let Err(e) = room.leave().await {
            tracing::info!(room = %id, error = %e, "could not decline the invitation");
        }
        return;
    }
    if let Err(e) = room.join().await {
        tracing::warn!(room = %id, %sender, error = %e, "could not accept the direct chat");
        return;
    }
    let slot = crate::handle::direct_key(sender.as_str());
    let adopt = match state.get(&slot).await {
        Ok(Some(kept)) => kept != id.as_str() && !joined_with(client, &kept, sender).await,
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(room = %id, %sender, error = %e, "the direct room kept with them is not readable");
            false
        }
    };
    if adopt {
        match state.set(&slot, id.as_str()).await {
            Ok(()) => {
                tracing::info!(room = %id, %sender, "a member's direct chat is the direct room with them from now on")
            }
            Err(e) => tracing::warn!(room = %id, %sender, error = %e, "could not keep the direct chat"),
        }
    }
}

/// The most portals the bot looks at for one direct-chat invitation: anyone may send one.
const PORTALS_LOOKED_AT: usize = 50;

/// Whether `user` is in one of the bridge's `portals` (the first [`PORTALS_LOOKED_AT`]), as
/// the bot's store has their members.
async fn in_a_portal(client: &Client, portals: &[RemoteChatId], user: &UserId) -> bool {
    for portal in portals.iter().take(PORTALS_LOOKED_AT) {
        if joined_with(client, portal.as_str(), user).await {
            return true;
        }
    }
    false
}

/// Whether the bot and `user` are both in `room`.
async fn joined_with(client: &Client, room: &str, user: &UserId) -> bool {
    let Some(room) = RoomId::parse(room).ok().and_then(|id| client.get_room(&id)) else { return false };
    room.state() == RoomState::Joined
        && matches!(room.get_member_no_sync(user).await, Ok(Some(m)) if *m.membership() == MembershipState::Join)
}

/// Writes a file only its owner may read (the session holds an access token); an older
/// file's wider mode is tightened too.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

/// Folders under `dir` (and `dir`) 0700, files 0600.
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[async_trait]
impl Bridge for BotBridge {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: true,
            deletes: true,
            reactions: true,
            replies: true,
            media: true,
            ghosts: false,
            max_file_size: Some(self.cfg.max_file_bytes),
            // Under the 64 KiB event limit: the text goes as `body` and HTML
            // `formatted_body`, twice more in an edit's `m.new_content`, and in an encrypted
            // room as base64 of the whole (4/3), next to the event's own fields.
            max_text: Some(coi_bridge_api::TextLimit { max: 10_000, unit: coi_bridge_api::TextUnit::Escaped }),
            allowed_reactions: None,
        }
    }

    async fn run(&self, cx: BridgeContext) -> Result<(), BridgeError> {
        let client = match self.client.get() {
            Some(c) => c.clone(),
            None => {
                let c = tokio::select! {
                    () = cx.shutdown.cancelled() => return Ok(()),
                    c = self.login() => c?,
                };
                let _ = self.client.set(c.clone());
                c
            }
        };
        let listener = Arc::new(crate::sync::Listener {
            id: cx.id.clone(),
            hub: cx.hub.clone(),
            cfg: self.cfg.clone(),
            state: cx.state.clone(),
            shutdown: cx.shutdown.clone(),
        });
        let l = listener.clone();
        let timeline =
            client.add_event_handler(move |_ev: AnySyncTimelineEvent, room: Room, raw: RawEvent, client: Client| {
                let l = l.clone();
                async move {
                    let Ok(mut ev) = serde_json::from_str::<Value>(raw.get()) else { return };
                    ev["room_id"] = json!(room.room_id().as_str());
                    l.on_event(&client, &room, ev).await;
                }
            });
        // The owners' read receipts, as appservice mode gets them in its transactions.
        let l = listener.clone();
        let receipts = client.add_event_handler(
            move |_ev: AnySyncEphemeralRoomEvent, room: Room, raw: RawEvent, client: Client| {
                let l = l.clone();
                async move {
                    let Ok(mut ev) = serde_json::from_str::<Value>(raw.get()) else { return };
                    if ev["type"] == "m.receipt" {
                        ev["room_id"] = json!(room.room_id().as_str());
                        l.on_event(&client, &room, ev).await;
                    }
                }
            },
        );
        let (cfg, state) = (self.cfg.clone(), cx.state.clone());
        let invites = client.add_event_handler(move |ev: StrippedRoomMemberEvent, room: Room, client: Client| {
            let (cfg, state) = (cfg.clone(), state.clone());
            async move {
                if client.user_id().is_some_and(|me| me == ev.state_key) {
                    invitation(&client, &cfg, &*state, &ev, &room).await;
                }
            }
        });

        let mut token = cx.state.get("sync_token").await.ok().flatten();
        let mut backoff = Duration::from_secs(1);
        let result = loop {
            let mut settings = SyncSettings::default().timeout(SYNC_TIMEOUT);
            if let Some(t) = &token {
                settings = settings.token(t.clone());
            }
            let synced = tokio::select! {
                () = cx.shutdown.cancelled() => break Ok(()),
                r = client.sync_once(settings) => r,
            };
            match synced {
                Ok(response) => {
                    backoff = Duration::from_secs(1);
                    cx.status.connected();
                    // The handlers have run (and submitted) by now: move the cursor.
                    if let Err(e) = cx.state.set("sync_token", &response.next_batch).await {
                        tracing::warn!(bridge = %cx.id, error = %e, "could not save the sync token");
                    }
                    token = Some(response.next_batch);
                }
                Err(e) if matches!(e.as_client_api_error().map(|c| c.status_code.as_u16()), Some(401)) => {
                    break Err(BridgeError::Fatal(format!(
                        "the Matrix session was logged out ({e}); remove {} to log in again",
                        self.store_dir.join("session.json").display()
                    )));
                }
                Err(e) => {
                    tracing::warn!(bridge = %cx.id, error = %e, retry_in = ?backoff, "Matrix sync failed");
                    cx.status.reconnecting(format!("Matrix sync: {e}"));
                    tokio::select! {
                        () = cx.shutdown.cancelled() => break Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        };
        client.remove_event_handler(timeline);
        client.remove_event_handler(receipts);
        client.remove_event_handler(invites);
        result
    }

    async fn deliver(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        msg: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let room = self.room(to)?;
        let key = key.as_str();
        match msg {
            Outgoing::Message { sender, text, attachments, reply_to, .. } => {
                let shown = if text.is_empty() { "sent a file".to_owned() } else { text.clone() };
                let mut content = self.prefixed(sender, &shown);
                if let Some(r) = reply_to {
                    content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": r.as_str() } });
                }
                let mut parts = vec![self.send(&room, "m.room.message", key, content).await?];
                for (i, a) in attachments.iter().enumerate() {
                    if a.data.len() as u64 > self.cfg.max_file_bytes {
                        return Err(DeliverError::Permanent(format!(
                            "{} is {} bytes, over this bridge's max_file_bytes",
                            a.name,
                            a.data.len()
                        )));
                    }
                    let mime: mime::Mime = a.mime.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
                    let config = matrix_sdk::attachment::AttachmentConfig::new().txn_id(txn(&format!("{key}-file{i}")));
                    let res =
                        room.send_attachment(a.name.clone(), &mime, a.data.clone(), config).await.map_err(lowered)?;
                    parts.push(RemoteMsgId(res.event_id.to_string()));
                }
                Ok(parts)
            }
            Outgoing::Edit { sender, target, new_text } => {
                let new = self.prefixed(sender, new_text);
                let mut content = new.clone();
                content["body"] = json!(format!("* {}", new["body"].as_str().unwrap_or_default()));
                content["m.new_content"] = new;
                content["m.relates_to"] = json!({ "rel_type": "m.replace", "event_id": target.as_str() });
                Ok(vec![self.send(&room, "m.room.message", key, content).await?])
            }
            Outgoing::Delete { target, .. } => {
                let event = EventId::parse(target.as_str()).map_err(|e| DeliverError::Permanent(e.to_string()))?;
                let res = room.redact(&event, None, Some(txn(key))).await.map_err(lowered_http)?;
                Ok(vec![RemoteMsgId(res.event_id.to_string())])
            }
            Outgoing::Reaction { target, emoji, .. } => {
                let content = json!({
                    "m.relates_to": { "rel_type": "m.annotation", "event_id": target.as_str(), "key": emoji },
                });
                Ok(vec![self.send(&room, "m.reaction", key, content).await?])
            }
            Outgoing::Rename { name } => {
                room.set_name(name.clone()).await.map_err(lowered)?;
                Ok(Vec::new())
            }
            Outgoing::Describe { text } => {
                room.set_room_topic(text).await.map_err(lowered)?;
                Ok(Vec::new())
            }
            Outgoing::Notice { text } => {
                let content = json!({ "msgtype": "m.notice", "body": text });
                Ok(vec![self.send(&room, "m.room.message", key, content).await?])
            }
            // Nobody of their own to show them with.
            Outgoing::ReadReceipt { .. }
            | Outgoing::MemberJoined { .. }
            | Outgoing::MemberLeft { .. }
            | Outgoing::GroupAvatar { .. } => Err(DeliverError::Unsupported),
        }
    }

    async fn open_dm(&self, peer: &Person) -> Result<RemoteChatId, DeliverError> {
        use matrix_sdk::ruma::api::client::room::create_room::v3::{Request, RoomPreset};
        let owners: Vec<_> = self.cfg.owner_list().iter().filter_map(|o| UserId::parse(o).ok()).collect();
        if owners.is_empty() {
            return Err(DeliverError::Unsupported);
        }
        let mut request = Request::new();
        request.name = Some(format!("{} (COI)", peer.display_name));
        request.is_direct = true;
        request.invite = owners;
        request.preset = Some(RoomPreset::TrustedPrivateChat);
        let room = self.client()?.create_room(request).await.map_err(lowered)?;
        Ok(RemoteChatId(room.room_id().to_string()))
    }
}
