//! Bot mode's side of the one translation: what the bot account's `/sync` brings (timeline events, decrypted already, and receipts) goes through [`crate::handle`] with matrix-sdk's view of the room.
//!
//! The sync token only moves on once every event of a batch is durably queued, refused
//! for good, or set aside: a transient failure is tried again in place (1 s doubling
//! pauses, at most 10 s) [`MAX_ATTEMPTS`] times, then the event is set aside, so one event
//! never stalls the sync.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coi_bridge_api::deadletter::{MAX_ATTEMPTS, catch_panic};
use coi_bridge_api::{BridgeId, BridgeState, DeadLetterKind, Failure, Hub, Person};
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::{EventId, OwnedTransactionId, RoomId, UserId};
use matrix_sdk::{Client, Room, RoomMemberships, RoomState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::MatrixConfig;
use crate::handle::{Parts, handle, set_aside};
use crate::translate::Homeserver;

/// The longest pause between two attempts at one event.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// What the bot hears, handed to the hub.
pub struct Listener {
    pub id: BridgeId,
    pub hub: Arc<dyn Hub>,
    pub cfg: MatrixConfig,
    /// The bridge's state (the direct rooms it keeps with people).
    pub state: Arc<dyn BridgeState>,
    pub shutdown: CancellationToken,
}

/// The homeserver as the bot account sees one room.
struct BotRoom<'a> {
    client: &'a Client,
    room: &'a Room,
}

/// A matrix-sdk HTTP failure: 429, 5xx and no answer may pass, the rest will not.
fn http_failure(e: &matrix_sdk::HttpError) -> Failure {
    match e.as_client_api_error().map(|c| c.status_code.as_u16()) {
        Some(429) | Some(500..) | None => Failure::Transient(e.to_string()),
        Some(_) => Failure::Permanent(DeadLetterKind::Failed, e.to_string()),
    }
}

fn sdk_failure(e: matrix_sdk::Error) -> Failure {
    match &e {
        matrix_sdk::Error::Http(h) => http_failure(h),
        _ => Failure::Permanent(DeadLetterKind::Failed, e.to_string()),
    }
}

impl BotRoom<'_> {
    /// The room `room`: the one the event is in, or another the bot knows (a direct room).
    fn target(&self, room: &str) -> Result<Room, Failure> {
        if self.room.room_id().as_str() == room {
            return Ok(self.room.clone());
        }
        let id = RoomId::parse(room).map_err(|e| Failure::Permanent(DeadLetterKind::Failed, format!("{room}: {e}")))?;
        self.client.get_room(&id).ok_or_else(|| Failure::Transient(format!("room {room} is not known to the bot yet")))
    }
}

#[async_trait]
impl Homeserver for BotRoom<'_> {
    fn is_ours(&self, mxid: &str) -> bool {
        self.client.user_id().is_some_and(|me| me.as_str() == mxid)
    }

    /// The member's name in the room, else the MXID's localpart.
    async fn person(&self, _room: &str, mxid: &str) -> Person {
        let name = match UserId::parse(mxid) {
            Ok(uid) => self.room.get_member_no_sync(&uid).await.ok().flatten().map(|m| m.name().to_owned()),
            Err(_) => None,
        };
        let fallback = || mxid.trim_start_matches('@').split(':').next().unwrap_or(mxid).to_owned();
        Person { id: mxid.into(), display_name: name.unwrap_or_else(fallback) }
    }

    /// Through matrix-sdk's media API, decrypting an encrypted file.
    async fn fetch(&self, content: &Value, _max: u64) -> Result<Vec<u8>, Failure> {
        let source: MediaSource = serde_json::from_value(content.clone())
            .map_err(|e| Failure::Permanent(DeadLetterKind::Failed, format!("no file named: {e}")))?;
        let request = MediaRequestParameters { source, format: MediaFormat::File };
        self.client.media().get_media_content(&request, false).await.map_err(sdk_failure)
    }

    /// The event as the bot's store has it or the homeserver shows it; `None` otherwise.
    async fn sender_of(&self, _room: &str, event_id: &str) -> Result<Option<String>, Failure> {
        let Ok(id) = EventId::parse(event_id) else { return Ok(None) };
        match self.room.load_or_fetch_event(&id, None).await {
            Ok(ev) => Ok(ev.raw().get_field::<String>("sender").ok().flatten()),
            Err(e) => {
                tracing::info!(room = %self.room.room_id(), event_id, error = %e, "the changed event is not visible");
                Ok(None)
            }
        }
    }

    async fn may_redact_others(&self, _room: &str, user: &str) -> Result<bool, Failure> {
        let Ok(uid) = UserId::parse(user) else { return Ok(false) };
        Ok(self.room.power_levels_or_default().await.user_can_redact_event_of_other(&uid))
    }

    async fn notice(&self, room: &str, key: &str, text: &str) -> Result<(), Failure> {
        let content = json!({ "msgtype": "m.notice", "body": text });
        let txn = OwnedTransactionId::from(key);
        let room = self.target(room)?;
        room.send_raw("m.room.message", content).with_transaction_id(&txn).await.map(|_| ()).map_err(sdk_failure)
    }

    async fn image(&self, room: &str, key: &str, name: &str, png: Vec<u8>) -> Result<(), Failure> {
        let config = matrix_sdk::attachment::AttachmentConfig::new().txn_id(OwnedTransactionId::from(key));
        let room = self.target(room)?;
        room.send_attachment(name, &mime::IMAGE_PNG, png, config).await.map(|_| ()).map_err(sdk_failure)
    }

    async fn room_name(&self, _room: &str) -> Option<String> {
        self.room.name()
    }

    async fn room_admin(&self, room: &str, user: &str) -> Result<bool, Failure> {
        let Ok(uid) = UserId::parse(user) else { return Ok(false) };
        let levels = self.target(room)?.power_levels_or_default().await;
        Ok(levels.user_can_send_state(&uid, StateEventType::RoomPowerLevels))
    }

    async fn open_direct(&self, user: &str) -> Result<String, Failure> {
        use matrix_sdk::ruma::api::client::room::create_room::v3::{Request, RoomPreset};
        let uid = UserId::parse(user).map_err(|e| Failure::Permanent(DeadLetterKind::Failed, e.to_string()))?;
        let mut request = Request::new();
        request.name = Some("COI invite".into());
        request.is_direct = true;
        request.invite = vec![uid];
        request.preset = Some(RoomPreset::TrustedPrivateChat);
        let room = self.client.create_room(request).await.map_err(sdk_failure)?;
        Ok(room.room_id().to_string())
    }

    /// The bot is still in the room: `user` is invited again unless they are in it or
    /// invited already.
    async fn reopen_direct(&self, room: &str, user: &str) -> Result<bool, Failure> {
        let (Ok(id), Ok(uid)) = (RoomId::parse(room), UserId::parse(user)) else { return Ok(false) };
        let Some(room) = self.client.get_room(&id).filter(|r| r.state() == RoomState::Joined) else { return Ok(false) };
        if let Ok(Some(member)) = room.get_member_no_sync(&uid).await
            && matches!(member.membership(), MembershipState::Join | MembershipState::Invite)
        {
            return Ok(true);
        }
        match room.invite_user_by_id(&uid).await {
            Ok(()) => Ok(true),
            Err(e) if e.to_string().contains("already in the room") => Ok(true),
            Err(e) => match sdk_failure(e) {
                Failure::Transient(why) => Err(Failure::Transient(why)),
                refused => {
                    tracing::info!(room = %id, user, error = ?refused, "the direct room cannot be used any more");
                    Ok(false)
                }
            },
        }
    }

    async fn matrix_people(&self, _room: &str) -> Option<Vec<String>> {
        let members = self.room.members(RoomMemberships::JOIN).await.ok()?;
        let mut names: Vec<String> = members
            .iter()
            .filter(|m| !self.is_ours(m.user_id().as_str()))
            .map(|m| match m.display_name() {
                Some(n) if !n.is_empty() => format!("{n} ({})", m.user_id()),
                _ => m.user_id().to_string(),
            })
            .collect();
        names.sort();
        Some(names)
    }
}

impl Listener {
    /// One event of the sync (with its `room_id` set), handled before the sync moves on.
    pub async fn on_event(&self, client: &Client, room: &Room, ev: Value) {
        let hs = BotRoom { client, room };
        // Receipts have no id of their own.
        let key = ev["event_id"].as_str().map_or_else(|| format!("{}/{}", room.room_id(), ev["type"]), str::to_owned);
        let mut pause = Duration::from_secs(1);
        let mut attempts = 0;
        let (kind, reason) = loop {
            let parts = Parts { hub: &*self.hub, id: &self.id, cfg: &self.cfg, state: &*self.state };
            let outcome = catch_panic(handle(&hs, parts, &ev))
                .await
                .unwrap_or_else(|panic| Err(Failure::Permanent(DeadLetterKind::Panicked, panic)));
            match outcome {
                Ok(()) => return,
                Err(Failure::Permanent(kind, reason)) => break (kind, reason),
                Err(Failure::Unavailable(e)) => {
                    tracing::warn!(bridge = %self.id, event = %key, error = %e, retry_in = ?pause, "the core cannot queue Matrix events now");
                    if !self.pause(&mut pause).await {
                        return;
                    }
                }
                Err(Failure::Transient(e)) => {
                    attempts += 1;
                    if attempts >= MAX_ATTEMPTS {
                        break (DeadLetterKind::GaveUp, format!("failed {attempts} times, last: {e}"));
                    }
                    tracing::warn!(bridge = %self.id, event = %key, attempt = attempts, error = %e, retry_in = ?pause, "Matrix event not handled yet");
                    if !self.pause(&mut pause).await {
                        return;
                    }
                }
            }
        };
        while let Err(e) = set_aside(&hs, &*self.hub, &self.id, &ev, &key, kind, &reason).await {
            tracing::warn!(bridge = %self.id, event = %key, error = %e, retry_in = ?pause, "could not set a Matrix event aside");
            if !self.pause(&mut pause).await {
                return;
            }
        }
    }

    /// Waits `pause` and doubles it; `false` on shutdown.
    async fn pause(&self, pause: &mut Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => return false,
            () = tokio::time::sleep(*pause) => {}
        }
        *pause = (*pause * 2).min(MAX_PAUSE);
        true
    }
}
