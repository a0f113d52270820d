//! Appservice mode's side of the one translation: the events of a transaction go through [`crate::handle`] with the appservice's view of the homeserver; the bridge's own ghosts and bot are ignored (no echo loops), and its bot's invitations answered (admins', and direct chats of people in its portals).
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
use crate::handle::{Parts, direct_key, handle, set_aside, state_failure};
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

/// The most portals the bot asks the homeserver about for one direct-chat invitation:
/// anyone may send one, so what it costs is bounded.
const PORTALS_LOOKED_AT: usize = 50;

/// How many of a direct chat's latest events the bot reads when it joins, for what was
/// said before.
const BACKLOG: usize = 20;

/// The `!coi` commands of `user` in `chunk` (a room's events, newest first) from before the
/// latest join of `bot` and after its membership before that (an invitation aside), oldest
/// first: what came after the join comes in a transaction anyway.
fn said_before_join(chunk: &[Value], bot: &str, user: &str) -> Vec<Value> {
    let is_bots = |e: &Value| e["type"] == "m.room.member" && e["state_key"] == bot;
    let mut said: Vec<Value> = chunk
        .iter()
        .skip_while(|e| !(is_bots(e) && e["content"]["membership"] == "join"))
        .skip(1)
        .take_while(|e| !is_bots(e) || e["content"]["membership"] == "invite")
        .filter(|e| {
            e["type"] == "m.room.message"
                && e["sender"] == user
                && e["content"]["body"].as_str().is_some_and(crate::translate::is_command)
        })
        .cloned()
        .collect();
    said.reverse();
    said
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
        if ev["type"] == "m.room.member"
            && ev["state_key"].as_str() == Some(&self.client.bot)
            && ev["content"]["membership"] == "invite"
        {
            return self.invitation(ev).await;
        }
        let parts = Parts { hub: &*self.hub, id: &self.id, cfg: &self.cfg, state: &*self.state };
        handle(self, parts, ev).await
    }

    /// The bot follows admins' invitations into rooms, and a direct chat's from someone in
    /// one of the bridge's portals (it becomes the direct room the bridge keeps with them);
    /// anyone else's direct chat it declines, other rooms it ignores.
    async fn invitation(&self, ev: &Value) -> Result<(), Failure> {
        let (Some(room), Some(sender)) = (ev["room_id"].as_str(), ev["sender"].as_str()) else { return Ok(()) };
        let bot = &self.client.bot;
        if self.cfg.is_admin(sender) {
            if let Err(e) = self.client.join(room, bot).await {
                tracing::warn!(room, error = %e, "could not accept the invitation");
            }
            return Ok(());
        }
        if ev["content"]["is_direct"] != true {
            tracing::info!(room, sender, "invitation from a non-admin ignored");
            return Ok(());
        }
        if !self.in_a_portal(sender).await? {
            tracing::info!(room, sender, "direct chat from someone in no bridged room declined");
            if let Err(e) = self.client.leave(room, bot).await {
                tracing::info!(room, error = %e, "could not decline the invitation");
            }
            return Ok(());
        }
        match self.client.join(room, bot).await {
            Ok(()) => {}
            Err(MatrixError::Retry { reason, .. }) => return Err(Failure::Transient(reason)),
            Err(refused @ MatrixError::Refused { .. }) => {
                tracing::warn!(room, sender, error = %refused, "could not accept the direct chat");
                return Ok(());
            }
        }
        // Tried again after a failure below, the join is a no-op.
        let slot = direct_key(sender);
        let adopt = match self.state.get(&slot).await.map_err(state_failure)? {
            Some(kept) if kept == room => false,
            Some(kept) => self.direct_gone(&kept, sender).await?,
            None => true,
        };
        if adopt {
            self.state.set(&slot, room).await.map_err(state_failure)?;
            tracing::info!(room, sender, "a member's direct chat is the direct room with them from now on");
        }
        // What they said before the bot was in the room never came in a transaction.
        let said = self.said_before_the_join(room, sender).await;
        let parts = Parts { hub: &*self.hub, id: &self.id, cfg: &self.cfg, state: &*self.state };
        for said in &said {
            // Each once, also when the invitation is tried again after a later one failed.
            let key = said["event_id"].as_str().unwrap_or_default();
            if self.attempts.is_done(key) {
                continue;
            }
            match handle(self, parts, said).await {
                Ok(()) => {}
                Err(Failure::Permanent(kind, reason)) => {
                    set_aside(self, &*self.hub, &self.id, said, key, kind, &reason)
                        .await
                        .map_err(Failure::Unavailable)?;
                }
                Err(e) => return Err(e),
            }
            self.attempts.done(key);
        }
        if said.is_empty() {
            let hello =
                format!("Hello! Say \"{PREFIX} invite\" here for your personal invite to the COI groups you are in.");
            let key = format!("hello-{}", ev["event_id"].as_str().unwrap_or(room));
            if let Err(e) = self.notice(room, &key, &hello).await {
                tracing::info!(room, error = ?e, "no greeting in the direct chat");
            }
        }
        Ok(())
    }

    /// The `!coi` commands `user` said in `room` before the bot's latest join (since its
    /// membership before that, among the last [`BACKLOG`] events), oldest first: the
    /// homeserver sends an appservice only what happens in rooms its users are in.
    async fn said_before_the_join(&self, room: &str, user: &str) -> Vec<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={BACKLOG}", seg(room));
        let page = match self.client.call(reqwest::Method::GET, &path, None, None).await {
            Ok(page) => page,
            Err(e) => {
                tracing::info!(room, error = %e, "what was said before the bot joined is not readable");
                return Vec::new();
            }
        };
        let mut said = said_before_join(page["chunk"].as_array().map_or(&[], Vec::as_slice), &self.client.bot, user);
        for ev in &mut said {
            ev["room_id"] = Value::from(room);
        }
        said
    }

    /// Whether `user` is in one of the bridge's portals (the first [`PORTALS_LOOKED_AT`]),
    /// as the homeserver says. One small request per portal (the member's own state
    /// event, not the room's member list): anyone may invite the bot.
    async fn in_a_portal(&self, user: &str) -> Result<bool, Failure> {
        let portals = self.state.remote_chats().await.map_err(state_failure)?;
        for portal in portals.iter().take(PORTALS_LOOKED_AT) {
            match self.client.membership(portal.as_str(), user).await {
                Ok(Some(m)) if m == "join" => return Ok(true),
                Ok(_) => {}
                // The bot is no longer in that portal: it cannot say.
                Err(MatrixError::Refused { .. }) => {}
                Err(MatrixError::Retry { reason, .. }) => return Err(Failure::Transient(reason)),
            }
        }
        Ok(false)
    }

    /// Whether the direct room kept with `user` can no longer reach them: they or the bot
    /// have left it.
    async fn direct_gone(&self, room: &str, user: &str) -> Result<bool, Failure> {
        match self.client.membership(room, user).await {
            Ok(m) => Ok(m.as_deref() != Some("join")),
            Err(MatrixError::Refused { .. }) => Ok(true),
            Err(MatrixError::Retry { reason, .. }) => Err(Failure::Transient(reason)),
        }
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
    fn what_the_inviter_said_before_the_bot_joined_is_answered_and_nothing_else() {
        let msg =
            |sender: &str, body: &str| json!({"type": "m.room.message", "sender": sender, "content": {"body": body}});
        let bot = |m: &str| json!({"type": "m.room.member", "state_key": "@bot:hs", "content": {"membership": m}});
        // Newest first, as `/messages?dir=b` gives them.
        let chunk = [
            msg("@nina:hs", "!coi invite after"),
            bot("join"),
            msg("@nina:hs", "!coi invite"),
            msg("@olga:hs", "!coi invite"),
            msg("@nina:hs", "hello"),
            bot("invite"),
            msg("@nina:hs", "!coi status"),
            bot("leave"),
            msg("@nina:hs", "!coi long ago"),
        ];
        let said = super::said_before_join(&chunk, "@bot:hs", "@nina:hs");
        let said: Vec<&str> = said.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
        assert_eq!(said, ["!coi status", "!coi invite"], "oldest first, since the bot's last leave");
        assert!(super::said_before_join(&chunk[2..], "@bot:hs", "@nina:hs").is_empty(), "no join seen: nothing");
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
