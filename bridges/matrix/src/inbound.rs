//! Appservice mode's side of the one translation: the events of a transaction go through [`crate::handle`] with the appservice's view of the homeserver; the bridge's own ghosts and bot are ignored (no echo loops).
//!
//! One event never blocks the others: an event whose handling fails for good (a refused
//! notice, a panic, another user's edit) is set aside as a dead letter with its reason, and
//! one that fails transiently is tried again with the whole transaction, at most
//! [`MAX_ATTEMPTS`] times, then set aside too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use coi_bridge_api::deadletter::{Attempts, MAX_ATTEMPTS, catch_panic};
use coi_bridge_api::{BridgeId, BridgeState, DeadLetterKind, Failure, Hub, Person};
use serde_json::Value;

use crate::appservice::TransactionSink;
use crate::authority;
use crate::client::{AsClient, MatrixError, seg};
use crate::config::MatrixConfig;
use crate::handle::{Parts, handle, set_aside};
use crate::translate::Homeserver;
pub use crate::translate::{PREFIX, strip_reply_fallback, text_of};

/// Submits what people do in portal rooms.
pub struct MatrixInbound {
    id: BridgeId,
    client: AsClient,
    hub: Arc<dyn Hub>,
    cfg: MatrixConfig,
    /// The bridge's state (the direct rooms it keeps with people).
    state: Arc<dyn BridgeState>,
    names: Mutex<HashMap<String, String>>,
    attempts: Attempts,
}

/// A homeserver error while handling an event: 4xx is for good, the rest may pass.
fn failure(e: MatrixError) -> Failure {
    match e {
        MatrixError::Retry { reason, .. } => Failure::Transient(reason),
        refused @ MatrixError::Refused { .. } => Failure::Permanent(DeadLetterKind::Failed, refused.to_string()),
    }
}

impl MatrixInbound {
    pub fn new(
        id: BridgeId,
        client: AsClient,
        hub: Arc<dyn Hub>,
        state: Arc<dyn BridgeState>,
        cfg: &MatrixConfig,
    ) -> Self {
        Self { id, client, hub, cfg: cfg.clone(), state, names: Mutex::default(), attempts: Attempts::default() }
    }

    /// One event of a transaction, handled durably.
    async fn handle(&self, ev: &Value) -> Result<(), Failure> {
        // The bot follows admins' invitations into rooms.
        if ev["type"] == "m.room.member"
            && ev["state_key"].as_str() == Some(&self.client.bot)
            && ev["content"]["membership"] == "invite"
        {
            let sender = ev["sender"].as_str().unwrap_or_default();
            if let Some(room) = ev["room_id"].as_str().filter(|_| self.cfg.is_admin(sender))
                && let Err(e) = self.client.join(room, &self.client.bot).await
            {
                tracing::warn!(room, error = %e, "could not accept the invitation");
            }
            return Ok(());
        }
        let parts = Parts { hub: &*self.hub, id: &self.id, cfg: &self.cfg, state: &*self.state };
        handle(self, parts, ev).await
    }
}

#[async_trait]
impl Homeserver for MatrixInbound {
    fn is_ours(&self, mxid: &str) -> bool {
        mxid == self.client.bot || mxid.strip_prefix('@').is_some_and(|l| l.starts_with(&self.cfg.ghost_prefix))
    }

    /// The profile's display name (cached), else the MXID's localpart.
    async fn person(&self, _room: &str, mxid: &str) -> Person {
        if let Some(n) = self.names.lock().unwrap_or_else(|e| e.into_inner()).get(mxid) {
            return Person { id: mxid.into(), display_name: n.clone() };
        }
        let path = format!("/_matrix/client/v3/profile/{}/displayname", seg(mxid));
        let name = match self.client.call(reqwest::Method::GET, &path, None, None).await {
            Ok(v) => v["displayname"].as_str().map(str::to_owned),
            Err(_) => None,
        }
        .unwrap_or_else(|| mxid.trim_start_matches('@').split(':').next().unwrap_or(mxid).to_owned());
        self.names.lock().unwrap_or_else(|e| e.into_inner()).insert(mxid.to_owned(), name.clone());
        Person { id: mxid.into(), display_name: name }
    }

    /// Downloads an `mxc://server/id` file through the authenticated media API. Portal
    /// rooms are not encrypted, so an encrypted file is not fetched.
    async fn fetch(&self, content: &Value, max: u64) -> Result<Vec<u8>, Failure> {
        let permanent = |why: String| Failure::Permanent(DeadLetterKind::Failed, why);
        if content["file"].is_object() {
            return Err(permanent("an encrypted file (appservice mode bridges unencrypted rooms)".into()));
        }
        let mxc = content["url"].as_str().unwrap_or_default();
        let rest = mxc.strip_prefix("mxc://").ok_or_else(|| permanent(format!("{mxc:?} is not an mxc URI")))?;
        let (server, media) = rest.split_once('/').ok_or_else(|| permanent(format!("{mxc:?} has no media id")))?;
        self.client.download(server, media, max).await.map_err(|e| match e {
            MatrixError::Retry { reason, .. } => Failure::Transient(reason),
            refused @ MatrixError::Refused { .. } => permanent(refused.to_string()),
        })
    }

    async fn sender_of(&self, room: &str, event_id: &str) -> Result<Option<String>, Failure> {
        authority::sender_of(&self.client, room, event_id).await.map_err(failure)
    }

    async fn may_redact_others(&self, room: &str, user: &str) -> Result<bool, Failure> {
        authority::may_redact_others_in(&self.client, room, user).await.map_err(failure)
    }

    async fn notice(&self, room: &str, key: &str, text: &str) -> Result<(), Failure> {
        let content = serde_json::json!({ "msgtype": "m.notice", "body": text });
        self.client.send(room, &self.client.bot, "m.room.message", key, &content).await.map(|_| ()).map_err(failure)
    }

    async fn image(&self, room: &str, key: &str, name: &str, png: Vec<u8>) -> Result<(), Failure> {
        let size = png.len();
        let bot = self.client.bot.clone();
        let uri = self.client.upload(&bot, name, "image/png", png).await.map_err(failure)?;
        let content = serde_json::json!({
            "msgtype": "m.image",
            "body": name,
            "url": uri,
            "info": { "mimetype": "image/png", "size": size },
        });
        self.client.send(room, &bot, "m.room.message", key, &content).await.map(|_| ()).map_err(failure)
    }

    async fn room_name(&self, room: &str) -> Option<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", seg(room));
        let v = self.client.call(reqwest::Method::GET, &path, None, None).await.ok()?;
        v["name"].as_str().map(str::to_owned)
    }

    async fn room_admin(&self, room: &str, user: &str) -> Result<bool, Failure> {
        authority::may_change_power_levels_in(&self.client, room, user).await.map_err(failure)
    }

    async fn open_direct(&self, user: &str) -> Result<String, Failure> {
        self.client.create_dm("COI invite", &[user.to_owned()]).await.map_err(failure)
    }

    /// Invites `user` again (a no-op for someone in the room or invited already); refused
    /// means the bot is not in the room any more.
    async fn reopen_direct(&self, room: &str, user: &str) -> Result<bool, Failure> {
        match self.client.invite(room, user).await {
            Ok(()) => Ok(true),
            Err(MatrixError::Retry { reason, .. }) => Err(Failure::Transient(reason)),
            Err(refused @ MatrixError::Refused { .. }) => {
                tracing::info!(room, user, error = %refused, "the direct room cannot be used any more");
                Ok(false)
            }
        }
    }

    async fn matrix_people(&self, room: &str) -> Option<Vec<String>> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", seg(room));
        let v = self.client.call(reqwest::Method::GET, &path, None, None).await.ok()?;
        let mut names: Vec<String> = v["joined"]
            .as_object()?
            .iter()
            .filter(|(mxid, _)| !self.is_ours(mxid))
            .map(|(mxid, m)| match m["display_name"].as_str() {
                Some(n) if !n.is_empty() => format!("{n} ({mxid})"),
                _ => mxid.clone(),
            })
            .collect();
        names.sort();
        Some(names)
    }
}

/// How long a message event took from the homeserver's stamp (`origin_server_ts`) until
/// `now`; `None` for other events, a missing stamp or a stamp ahead of `now` (skew).
fn push_lag(ev: &Value, now: SystemTime) -> Option<Duration> {
    if ev["type"] != "m.room.message" {
        return None;
    }
    // The event's fields are the sender's homeserver's say: any value, never a panic.
    let stamp = UNIX_EPOCH.checked_add(Duration::from_millis(ev["origin_server_ts"].as_u64()?))?;
    now.duration_since(stamp).ok()
}

#[async_trait]
impl TransactionSink for MatrixInbound {
    async fn events(&self, txn_id: &str, events: Vec<Value>) -> Result<(), String> {
        for (i, ev) in events.iter().enumerate() {
            // Ephemeral events (receipts) have no id of their own.
            let key = ev["event_id"].as_str().map_or_else(|| format!("{txn_id}/{i}"), str::to_owned);
            if self.attempts.is_done(&key) {
                continue; // handled when the homeserver sent this transaction before
            }
            if let Some(lag) = push_lag(ev, SystemTime::now())
                && self.attempts.failures(&key) == 0
                && !ev["sender"].as_str().is_some_and(|s| self.is_ours(s))
            {
                self.hub.hop("homeserver_push", lag);
            }
            let outcome = catch_panic(self.handle(ev))
                .await
                .unwrap_or_else(|panic| Err(Failure::Permanent(DeadLetterKind::Panicked, panic)));
            let (kind, reason) = match outcome {
                Ok(()) => {
                    self.attempts.done(&key);
                    continue;
                }
                Err(Failure::Unavailable(reason)) => {
                    tracing::warn!(txn_id, event = %key, error = %reason, "the core cannot queue Matrix events now; the homeserver will send them again");
                    return Err(reason);
                }
                Err(Failure::Transient(reason)) => {
                    if !self.attempts.failed(&key) {
                        let attempt = self.attempts.failures(&key);
                        tracing::warn!(txn_id, event = %key, attempt, max = MAX_ATTEMPTS, error = %reason, "Matrix event not handled yet; the homeserver will send it again");
                        return Err(reason);
                    }
                    (DeadLetterKind::GaveUp, format!("failed {MAX_ATTEMPTS} times, last: {reason}"))
                }
                Err(Failure::Permanent(kind, reason)) => (kind, reason),
            };
            set_aside(self, &*self.hub, &self.id, ev, &key, kind, &reason).await?;
            self.attempts.done(&key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_ATTEMPTS, MatrixInbound, TransactionSink as _, push_lag};
    use crate::client::AsClient;
    use coi_bridge_api::testing::FakeHub;
    use coi_bridge_api::{DeadLetterKind, RemoteEvent};
    use serde_json::json;
    use std::sync::Arc;

    /// An endpoint whose homeserver does not answer (nothing listens on port 9: profile
    /// lookups, downloads and notices fail, as they may), feeding a fake hub.
    fn offline() -> (Arc<FakeHub>, MatrixInbound) {
        let cfg =
            serde_json::from_value(json!({"id": "matrix", "homeserver": "http://127.0.0.1:9", "server_name": "hs"}))
                .expect("config");
        let client = AsClient::new("http://127.0.0.1:9", "as-token", "@coibot:hs").expect("client");
        let hub = Arc::new(FakeHub::new());
        let state = Arc::new(coi_bridge_api::testing::MemoryState::default());
        let inbound = MatrixInbound::new("matrix".into(), client, hub.clone(), state, &cfg);
        (hub, inbound)
    }

    #[tokio::test]
    async fn an_event_failing_again_and_again_is_set_aside_and_the_rest_go_on() {
        let (hub, inbound) = offline();
        let ev = |id: &str, body: &str| {
            json!({"type": "m.room.message", "room_id": "!r", "sender": "@mara:hs", "event_id": id,
                   "content": {"msgtype": "m.text", "body": body}})
        };
        // A picture whose download fails (the homeserver does not answer): the event's
        // own transient failure, counted.
        let picture = json!({"type": "m.room.message", "room_id": "!r", "sender": "@mara:hs", "event_id": "$stuck",
                             "content": {"msgtype": "m.image", "body": "p.png", "url": "mxc://hs/p"}});
        let events = vec![picture, ev("$next", "next")];
        for _ in 1..MAX_ATTEMPTS {
            assert!(inbound.events("t1", events.clone()).await.is_err(), "transient: the homeserver retries");
        }
        inbound.events("t1", events.clone()).await.expect("the last attempt sets it aside");
        let dead = hub.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!((dead[0].event.as_str(), dead[0].kind), ("$stuck", DeadLetterKind::GaveUp));
        let bridged: Vec<String> = hub
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                RemoteEvent::Message { text, .. } => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(bridged, vec!["next".to_string()]);
        // Sent once more (a lost answer): nothing runs twice.
        inbound.events("t1", events).await.expect("again");
        assert_eq!(hub.events().len(), 1);
        assert_eq!(hub.dead_letters().len(), 1);
    }

    #[tokio::test]
    async fn an_event_the_core_cannot_queue_waits_however_long_and_is_never_set_aside() {
        let (hub, inbound) = offline();
        let events = vec![json!({"type": "m.room.message", "room_id": "!r", "sender": "@mara:hs", "event_id": "$m",
                                 "content": {"msgtype": "m.text", "body": "through the outage"}})];
        // The store is down (disk full) for three times the attempts an event gets.
        let refusals = 3 * MAX_ATTEMPTS as usize;
        hub.fail_next(refusals);
        for _ in 0..refusals {
            assert!(inbound.events("t1", events.clone()).await.is_err(), "the homeserver sends it again");
        }
        inbound.events("t1", events).await.expect("the store is back");
        assert!(hub.dead_letters().is_empty(), "{:?}", hub.dead_letters());
        assert!(matches!(&hub.events()[..], [(_, RemoteEvent::Message { text, .. })] if text == "through the outage"));
    }

    #[test]
    fn the_homeserver_push_lag_is_the_time_since_the_message_was_stamped() {
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let msg = json!({"type": "m.room.message", "origin_server_ts": 1_000_000_u64});
        assert_eq!(push_lag(&msg, at(1_000_035)), Some(std::time::Duration::from_millis(35)));
        assert_eq!(push_lag(&msg, at(999_000)), None, "a stamp ahead of our clock is skew, not a lag");
        let state = json!({"type": "m.room.member", "origin_server_ts": 1_000_000_u64});
        assert_eq!(push_lag(&state, at(1_000_035)), None, "only messages");
        assert_eq!(push_lag(&json!({"type": "m.room.message"}), at(1)), None, "no stamp");
        let hostile = json!({"type": "m.room.message", "origin_server_ts": u64::MAX});
        assert_eq!(push_lag(&hostile, at(1)), None, "a stamp at the end of time: no lag, no panic");
        let text = json!({"type": "m.room.message", "origin_server_ts": "soon"});
        assert_eq!(push_lag(&text, at(1)), None, "not a number");
    }
}
