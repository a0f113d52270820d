//! The Matrix side of the `Bridge` contract in appservice mode: COI people post through ghosts in portal rooms; replies, edits, reactions, redactions and files map to their Matrix forms.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use coi_bridge_api::{
    Attachment, Bridge, BridgeContext, BridgeError, Capabilities, DeliverError, DeliveryKey, Outgoing, Person,
    RemoteChatId, RemoteMsgId,
};
use serde_json::{Value, json};

use crate::appservice::{Membership, Refusals};
use crate::client::{AsClient, MatrixError, seg};
use crate::config::MatrixConfig;
use crate::registration::Registration;

/// How often a connected appservice checks that the homeserver still answers. Only
/// `/ready` learns from it (deliveries notice an outage by themselves, and a failed
/// check is retried after [`HEALTH_RETRY`]): one `whoami` a minute per account.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// How soon it checks again after a failure.
const HEALTH_RETRY: std::time::Duration = std::time::Duration::from_secs(3);
/// How often it asks the homeserver to retry refused transactions at once, until one
/// goes through (each ask makes the homeserver send the held transaction again).
const RECOVER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct MatrixBridge {
    cfg: MatrixConfig,
    reg: Registration,
    client: AsClient,
    /// The bridge's own COI address: messages "from" it go out as the bot.
    coi_address: String,
    /// The bridge's own display name (see `Person::speaker`).
    coi_name: String,
    registered: Mutex<HashSet<String>>,
    names: Mutex<HashMap<String, String>>,
    joined: Mutex<HashSet<(String, String)>>,
    /// Ghost → digest of the avatar it was given.
    avatars: Mutex<HashMap<String, u64>>,
    /// Shared with the appservice endpoint: transactions it refused.
    refusals: Refusals,
    /// Its place on the registration's shared endpoint (`None` for `check`).
    membership: Option<Membership>,
    /// The registration's own user, to register this bridge's bot when it is another
    /// (one bot per account on a shared registration); `None` when the bot is the sender.
    sender: Option<AsClient>,
    /// The bot is registered, and its rooms are on the shared endpoint.
    started: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MatrixBridge {
    /// No network I/O; `run` and `deliver` connect on demand.
    /// The bot is `bot_localpart`, by default the registration's sender; another bot must
    /// be in the registration's namespace (the error names the key and the fix).
    pub fn new(cfg: MatrixConfig, reg: Registration, coi_address: &str, coi_name: &str) -> Result<Self, String> {
        let localpart = cfg.bot_localpart.clone().unwrap_or_else(|| reg.sender_localpart.clone());
        let sender = if localpart == reg.sender_localpart {
            None
        } else if reg.covers_bot(&localpart) {
            Some(AsClient::new(
                &cfg.homeserver,
                &reg.as_token,
                &format!("@{}:{}", reg.sender_localpart, reg.server_name),
            )?)
        } else {
            return Err(format!(
                "bot_localpart {localpart:?} is outside the registration's user namespace: start it with the \
                 registration's sender_localpart {:?} (or ghost_prefix {:?}), and regenerate a registration written \
                 before bots of their own (its users regex must cover @{}.*)",
                reg.sender_localpart, reg.ghost_prefix, reg.sender_localpart
            ));
        };
        let bot = format!("@{localpart}:{}", reg.server_name);
        let client = AsClient::new(&cfg.homeserver, &reg.as_token, &bot)?;
        Ok(Self {
            cfg,
            reg,
            client,
            coi_address: coi_address.to_lowercase(),
            coi_name: coi_name.to_owned(),
            registered: Mutex::default(),
            names: Mutex::default(),
            joined: Mutex::default(),
            avatars: Mutex::default(),
            refusals: Refusals::default(),
            membership: None,
            sender,
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Puts the bridge on its registration's shared endpoint (see [`Membership`]).
    pub fn with_membership(mut self, membership: Membership) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Once per run, after the homeserver answered: registers the bot if it is not the
    /// registration's sender, and tells the shared endpoint the bridge's rooms (its
    /// portals in the store, the rooms its bot is in).
    async fn start(&self, cx: &BridgeContext) -> Result<(), String> {
        if self.started.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(sender) = &self.sender {
            let localpart = self.client.bot.trim_start_matches('@').split(':').next().unwrap_or_default();
            sender.register(localpart).await.map_err(|e| format!("registering the bot {}: {e}", self.client.bot))?;
        }
        if let Some(m) = &self.membership {
            let portals = cx.state.remote_chats().await.map_err(|e| format!("reading the portals: {e}"))?;
            let rooms = self.client.joined_rooms().await.map_err(|e| format!("the bot's rooms: {e}"))?;
            tracing::info!(bridge = %cx.id, bot = %self.client.bot, portals = portals.len(), rooms = rooms.len(), "on the shared appservice endpoint");
            m.fill(portals.into_iter().map(|p| p.0).collect(), rooms);
        }
        self.started.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn client(&self) -> &AsClient {
        &self.client
    }

    /// The refusal flag to hand to this bridge's [`crate::appservice::Appservice`].
    pub fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Asks the homeserver to send what it holds for us now (Matrix v1.7 appservice ping;
    /// Synapse then retries a backed-off transaction at once). A homeserver without the
    /// endpoint only keeps its own schedule.
    async fn ask_retry(&self, cx: &BridgeContext) {
        let path = format!("/_matrix/client/v1/appservice/{}/ping", seg(&self.reg.id));
        match self.client.call(reqwest::Method::POST, &path, None, Some(&json!({}))).await {
            Ok(_) => tracing::debug!(bridge = %cx.id, "asked the homeserver to retry held transactions"),
            Err(e) => {
                tracing::info!(bridge = %cx.id, error = %e, "the homeserver did not take the retry request; it keeps its own schedule")
            }
        }
    }

    /// The MXID that speaks for `person` in `room`: registered, named and joined.
    pub async fn ghost(&self, person: &Person, room: &str) -> Result<String, MatrixError> {
        self.puppet(person, room, true).await
    }

    /// Gives a ghost its COI avatar, once per image.
    async fn set_avatar(&self, mxid: &str, avatar: &Attachment) -> Result<(), MatrixError> {
        if mxid == self.client.bot || avatar.data.len() as u64 > self.cfg.max_file_bytes {
            return Ok(());
        }
        let digest = avatar
            .data
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        if lock(&self.avatars).get(mxid) == Some(&digest) {
            return Ok(());
        }
        let uri = self.client.upload(mxid, &avatar.name, &avatar.mime, avatar.data.clone()).await?;
        self.client.set_avatar_url(mxid, &uri).await?;
        lock(&self.avatars).insert(mxid.to_owned(), digest);
        Ok(())
    }

    /// Like [`MatrixBridge::ghost`]; `rename` false keeps the name of a ghost that has
    /// one (a member-added only knows the address, a message knows the display name).
    async fn puppet(&self, person: &Person, room: &str, rename: bool) -> Result<String, MatrixError> {
        if person.id.as_str().eq_ignore_ascii_case(&self.coi_address) {
            return Ok(self.client.bot.clone());
        }
        let mxid = self.reg.ghost_for(person.id.as_str());
        let localpart = mxid.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
        let mut fresh = false;
        if !lock(&self.registered).contains(&mxid) {
            fresh = self.client.register(&localpart).await?;
            lock(&self.registered).insert(mxid.clone());
        }
        let name = format!("{} (COI)", person.display_name);
        if (rename || fresh) && lock(&self.names).get(&mxid) != Some(&name) {
            self.client.set_displayname(&mxid, &name).await?;
            lock(&self.names).insert(mxid.clone(), name);
        }
        let member = (mxid.clone(), room.to_owned());
        if !lock(&self.joined).contains(&member) {
            self.client.invite(room, &mxid).await?;
            self.client.join(room, &mxid).await?;
            lock(&self.joined).insert(member);
        }
        Ok(mxid)
    }
}

fn msgtype_for(mime: &str) -> &'static str {
    match mime.split('/').next() {
        Some("image") => "m.image",
        Some("video") => "m.video",
        Some("audio") => "m.audio",
        _ => "m.file",
    }
}

impl MatrixBridge {
    /// For `coi-bridge check`: the homeserver answers, and knows this appservice. On
    /// failure, what went wrong and the fix.
    pub async fn check(&self) -> Result<String, (String, String)> {
        let hs = &self.cfg.homeserver;
        let version = self.client.versions().await.map_err(|e| {
            (format!("{hs}: {e}"), "is the homeserver running, and is this bridge's homeserver URL right?".to_owned())
        })?;
        match self.client.whoami().await {
            Ok(me) => Ok(format!("{hs} answers (Matrix {version}); the appservice is registered as {me}")),
            Err(MatrixError::Refused { errcode, .. }) if errcode == "M_UNKNOWN_TOKEN" => Err((
                format!("{hs} does not know this appservice's token"),
                "add the registration file to the homeserver's app_service_config_files and restart it".to_owned(),
            )),
            Err(e) => Err((format!("{hs}: {e}"), "check the homeserver's log for the appservice".to_owned())),
        }
    }
}

#[async_trait]
impl Bridge for MatrixBridge {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: true,
            deletes: true,
            reactions: true,
            replies: true,
            media: true,
            ghosts: true,
            max_file_size: Some(self.cfg.max_file_bytes),
            // An event must stay under 64 KiB (65,536 bytes of PDU JSON). An edit carries its
            // text twice (`body` with "* ", `m.new_content`), next to ~2 KiB of PDU fields.
            max_text: Some(coi_bridge_api::TextLimit { max: 28_000, unit: coi_bridge_api::TextUnit::Escaped }),
            // Matrix takes any key as an annotation.
            allowed_reactions: None,
        }
    }

    async fn open_dm(&self, peer: &Person) -> Result<RemoteChatId, DeliverError> {
        let owners = self.cfg.owner_list();
        if owners.is_empty() {
            return Err(DeliverError::Unsupported);
        }
        let room = self.client.create_dm(&format!("{} (COI)", peer.display_name), &owners).await?;
        if let Some(m) = &self.membership {
            m.portal(&room);
        }
        self.ghost(peer, &room).await?;
        Ok(RemoteChatId(room))
    }

    async fn run(&self, cx: BridgeContext) -> Result<(), BridgeError> {
        // Appservice mode: the homeserver pushes transactions to the HTTP endpoint. This
        // loop watches that the homeserver answers and knows our registration, and asks it
        // to retry at once what it holds back: at start (a daemon restarted after a crash
        // or outage finds its transactions in the homeserver's backoff) and after the
        // endpoint refused one (store down), until one goes through.
        let mut first = true;
        loop {
            let checked = match self.start(&cx).await {
                Ok(()) => self.client.whoami().await.map_err(|e| (e.to_string(), Some(e))),
                Err(e) => Err((e, None)),
            };
            let pause = match checked {
                Ok(_) => {
                    cx.status.connected();
                    if std::mem::take(&mut first) || self.refusals.pending() {
                        self.ask_retry(&cx).await;
                    }
                    if self.refusals.pending() { RECOVER_INTERVAL } else { HEALTH_INTERVAL }
                }
                Err((e, err)) => {
                    let reason = match &err {
                        Some(MatrixError::Refused { errcode, .. }) if errcode == "M_UNKNOWN_TOKEN" => format!(
                            "the homeserver does not know this appservice ({e}); add the registration to its \
                             app_service_config_files and restart it"
                        ),
                        _ => format!("homeserver {}: {e}", self.cfg.homeserver),
                    };
                    tracing::warn!(bridge = %cx.id, %reason, "Matrix homeserver check failed");
                    cx.status.reconnecting(reason);
                    HEALTH_RETRY
                }
            };
            tokio::select! {
                () = cx.shutdown.cancelled() => {
                    // The account stops: its rooms' events are nobody's from now on.
                    if let Some(m) = &self.membership {
                        m.leave();
                    }
                    return Ok(());
                }
                () = tokio::time::sleep(pause) => {}
                // A refusal: wait a moment (the store may still be down), then ask.
                () = self.refusals.next() => tokio::select! {
                    () = cx.shutdown.cancelled() => {
                        if let Some(m) = &self.membership {
                            m.leave();
                        }
                        return Ok(());
                    }
                    () = tokio::time::sleep(RECOVER_INTERVAL) => {}
                },
            }
        }
    }

    async fn deliver(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        msg: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let room = to.as_str();
        let txn = key.as_str();
        // The core delivers to this bridge's portals only: the room's events are ours.
        if let Some(m) = &self.membership {
            m.portal(room);
        }
        let event_id = match msg {
            Outgoing::Message { sender, text, attachments, reply_to, avatar } => {
                let user = self.ghost(sender, room).await?;
                // Someone relayed from another network: the bot says it, with their name.
                let relayed = sender.speaker(&self.coi_address, &self.coi_name) == coi_bridge_api::Speaker::Relayed;
                let text = &if relayed && !text.is_empty() {
                    format!("{}: {text}", sender.display_name)
                } else {
                    text.clone()
                };
                if let Some(a) = avatar {
                    self.set_avatar(&user, a).await?;
                }
                let relates = reply_to.as_ref().map(|r| json!({ "m.in_reply_to": { "event_id": r.as_str() } }));
                let mut files = Vec::new();
                for (i, a) in attachments.iter().enumerate() {
                    if a.data.len() as u64 > self.cfg.max_file_bytes {
                        return Err(DeliverError::Permanent(format!(
                            "{} is {} bytes, over this bridge's max_file_bytes",
                            a.name,
                            a.data.len()
                        )));
                    }
                    let uri = self.client.upload(&user, &a.name, &a.mime, a.data.clone()).await?;
                    let mut content = json!({
                        "msgtype": msgtype_for(&a.mime),
                        "body": a.name,
                        "url": uri,
                        "info": { "mimetype": a.mime, "size": a.data.len() },
                    });
                    if let (Some(r), true) = (&relates, text.is_empty() && i == 0) {
                        content["m.relates_to"] = r.clone();
                    }
                    let id =
                        self.client.send(room, &user, "m.room.message", &format!("{txn}-file{i}"), &content).await?;
                    files.push(RemoteMsgId(id));
                }
                if text.is_empty() {
                    if files.is_empty() {
                        return Err(DeliverError::Permanent("an empty message".into()));
                    }
                    return Ok(files);
                }
                let mut content = json!({ "msgtype": "m.text", "body": text });
                if let Some(r) = relates {
                    content["m.relates_to"] = r;
                }
                let id = self.client.send(room, &user, "m.room.message", txn, &content).await?;
                // The text is the main part: edits and reactions from COI point at it.
                return Ok(std::iter::once(RemoteMsgId(id)).chain(files).collect());
            }
            Outgoing::Edit { sender, target, new_text } => {
                let user = self.ghost(sender, room).await?;
                let content = json!({
                    "msgtype": "m.text",
                    "body": format!("* {new_text}"),
                    "m.new_content": { "msgtype": "m.text", "body": new_text },
                    "m.relates_to": { "rel_type": "m.replace", "event_id": target.as_str() },
                });
                self.client.send(room, &user, "m.room.message", txn, &content).await?
            }
            Outgoing::Delete { sender, target } => {
                let user = self.ghost(sender, room).await?;
                self.client.redact(room, &user, target.as_str(), txn).await?
            }
            Outgoing::Reaction { sender, target, emoji } => {
                let user = self.ghost(sender, room).await?;
                let content = json!({
                    "m.relates_to": { "rel_type": "m.annotation", "event_id": target.as_str(), "key": emoji },
                });
                self.client.send(room, &user, "m.reaction", txn, &content).await?
            }
            Outgoing::ReadReceipt { reader, up_to } => {
                let user = self.ghost(reader, room).await?;
                self.client.receipt(room, &user, up_to.as_str()).await?;
                return Ok(Vec::new());
            }
            Outgoing::MemberJoined { member } => {
                self.puppet(member, room, false).await?;
                return Ok(Vec::new());
            }
            Outgoing::MemberLeft { member } => {
                let mxid = self.reg.ghost_for(member.id.as_str());
                match self.client.leave(room, &mxid).await {
                    // Never joined, or gone already: nothing to undo.
                    Ok(()) | Err(MatrixError::Refused { status: 403 | 404, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                lock(&self.joined).remove(&(mxid, room.to_owned()));
                return Ok(Vec::new());
            }
            Outgoing::Rename { name } => {
                match self.client.set_state(room, "m.room.name", &json!({ "name": name })).await {
                    Ok(_) => return Ok(Vec::new()),
                    // Without the power to rename the room, say it instead.
                    Err(MatrixError::Refused { status: 403, .. }) => {
                        let text = format!(
                            "The COI group is now called \"{name}\". Give {} the right to change the room name to keep \
                             the two in step.",
                            self.client.bot
                        );
                        let content = json!({ "msgtype": "m.notice", "body": text });
                        self.client.send(room, &self.client.bot, "m.room.message", txn, &content).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Outgoing::Describe { text } => {
                self.client.set_state(room, "m.room.topic", &json!({ "topic": text })).await?;
                return Ok(Vec::new());
            }
            Outgoing::GroupAvatar { image } => {
                let content = match image {
                    Some(a) => {
                        let bot = self.client.bot.clone();
                        let uri = self.client.upload(&bot, &a.name, &a.mime, a.data.clone()).await?;
                        json!({ "url": uri, "info": { "mimetype": a.mime, "size": a.data.len() } })
                    }
                    None => json!({}),
                };
                self.client.set_state(room, "m.room.avatar", &content).await?;
                return Ok(Vec::new());
            }
            Outgoing::Notice { text } => {
                let content: Value = json!({ "msgtype": "m.notice", "body": text });
                self.client.send(room, &self.client.bot, "m.room.message", txn, &content).await?
            }
        };
        Ok(vec![RemoteMsgId(event_id)])
    }
}
