//! Matrix → hub: turns the events of an appservice transaction into `RemoteEvent`s and submits them; the bridge's own ghosts and bot are ignored (no echo loops).
//!
//! One event never blocks the others: an event whose handling fails for good (a refused
//! notice, a panic, another user's edit) is set aside as a dead letter with its reason, and
//! one that fails transiently is tried again with the whole transaction, at most
//! [`MAX_ATTEMPTS`] times, then set aside too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use coi_bridge_api::deadletter::{Attempts, MAX_ATTEMPTS, catch_panic};
use coi_bridge_api::{
    Attachment, BridgeId, Command, DeadLetter, DeadLetterKind, Failure, Hub, Person, RemoteChatId, RemoteEvent,
    SubmitError,
};
use serde_json::Value;

use crate::appservice::TransactionSink;
use crate::authority::{Verdict, check_edit, check_redaction};
use crate::client::{AsClient, MatrixError, seg};
use crate::config::MatrixConfig;
use crate::html;

/// Submits what people do in portal rooms.
pub struct MatrixInbound {
    id: BridgeId,
    client: AsClient,
    hub: Arc<dyn Hub>,
    cfg: MatrixConfig,
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

/// The command prefix in Matrix rooms.
pub const PREFIX: &str = "!coi";

/// Drops the quoted fallback (`> <@user> text` lines and the blank line after them) that
/// clients put in front of a reply's body.
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    match body.find("\n\n") {
        Some(i) if body[..i].lines().all(|l| l.starts_with('>')) => &body[i + 2..],
        _ => body,
    }
}

/// The text of a message's content: the HTML body made readable when there is one, else
/// the plain body without its reply fallback. `None` when there is neither.
pub fn text_of(content: &Value) -> Option<String> {
    if content["format"] == "org.matrix.custom.html"
        && let Some(formatted) = content["formatted_body"].as_str()
    {
        return Some(html::to_text(formatted));
    }
    content["body"].as_str().map(|b| strip_reply_fallback(b).to_owned())
}

impl MatrixInbound {
    pub fn new(id: BridgeId, client: AsClient, hub: Arc<dyn Hub>, cfg: &MatrixConfig) -> Self {
        Self { id, client, hub, cfg: cfg.clone(), names: Mutex::default(), attempts: Attempts::default() }
    }

    fn ours(&self, mxid: &str) -> bool {
        mxid == self.client.bot || mxid.strip_prefix('@').is_some_and(|l| l.starts_with(&self.cfg.ghost_prefix))
    }

    /// Answers in the room as the bot, with a notice.
    async fn notice(&self, room: &str, txn: &str, text: &str) -> Result<(), Failure> {
        let content = serde_json::json!({ "msgtype": "m.notice", "body": text });
        self.client.send(room, &self.client.bot, "m.room.message", txn, &content).await.map(|_| ()).map_err(failure)
    }

    /// `!coi …` from a person: admins' commands go to the hub, others get a refusal.
    async fn command(&self, ev: &Value, body: &str) -> Result<(), Failure> {
        let (Some(sender), Some(room), Some(event_id)) =
            (ev["sender"].as_str(), ev["room_id"].as_str(), ev["event_id"].as_str())
        else {
            return Ok(());
        };
        let txn = format!("cmd-{event_id}");
        if !self.cfg.is_admin(sender) {
            tracing::warn!(sender, room, "!coi command from a non-admin; refused");
            return self
                .notice(room, &txn, &format!("Sorry {sender}, only the bridge's admins can use {PREFIX} commands."))
                .await;
        }
        let command = match Command::parse(body.trim_start_matches(PREFIX)) {
            Ok(c) => c,
            Err(e) => return self.notice(room, &txn, &e).await,
        };
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", seg(room));
        let title = match self.client.call(reqwest::Method::GET, &path, None, None).await {
            Ok(v) => v["name"].as_str().unwrap_or(room).to_owned(),
            Err(_) => room.to_owned(),
        };
        let status = command == Command::Status;
        match self.hub.command(&self.id, &RemoteChatId(room.to_owned()), &title, command).await {
            Ok(mut reply) => {
                if status && let Some(only) = self.matrix_only(room).await {
                    reply.text.push_str(&format!("\nOnly on Matrix: {only}."));
                }
                self.notice(room, &txn, &reply.text).await?;
                match reply.qr_png {
                    Some(png) => self.image(room, &format!("{txn}-qr"), "invite-qr.png", png).await,
                    None => Ok(()),
                }
            }
            Err(SubmitError::Retry(e)) => Err(Failure::Transient(e)),
            Err(SubmitError::Rejected(e)) => self.notice(room, &txn, &format!("That did not work: {e}")).await,
        }
    }

    /// The room's Matrix people (not ghosts, not the bot), for `!coi status`.
    async fn matrix_only(&self, room: &str) -> Option<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", seg(room));
        let v = self.client.call(reqwest::Method::GET, &path, None, None).await.ok()?;
        let mut names: Vec<String> = v["joined"]
            .as_object()?
            .iter()
            .filter(|(mxid, _)| !self.ours(mxid))
            .map(|(mxid, m)| match m["display_name"].as_str() {
                Some(n) if !n.is_empty() => format!("{n} ({mxid})"),
                _ => mxid.clone(),
            })
            .collect();
        names.sort();
        Some(if names.is_empty() { "nobody".into() } else { names.join(", ") })
    }

    /// Posts a PNG in the room as the bot.
    async fn image(&self, room: &str, txn: &str, name: &str, png: Vec<u8>) -> Result<(), Failure> {
        let size = png.len();
        let bot = self.client.bot.clone();
        let uri = self.client.upload(&bot, name, "image/png", png).await.map_err(failure)?;
        let content = serde_json::json!({
            "msgtype": "m.image",
            "body": name,
            "url": uri,
            "info": { "mimetype": "image/png", "size": size },
        });
        self.client.send(room, &bot, "m.room.message", txn, &content).await.map(|_| ()).map_err(failure)
    }

    /// `m.read` receipts of the bridge's owners, one event per receipt.
    async fn receipts(&self, ev: &Value) -> Vec<RemoteEvent> {
        let mut out = Vec::new();
        let (Some(room), Some(content)) = (ev["room_id"].as_str(), ev["content"].as_object()) else { return out };
        for (event_id, kinds) in content {
            let Some(readers) = kinds["m.read"].as_object() else { continue };
            for reader in readers.keys().filter(|r| self.cfg.is_owner(r)) {
                out.push(RemoteEvent::ReadReceipt {
                    chat: room.into(),
                    up_to: event_id.as_str().into(),
                    reader: self.person(reader).await,
                });
            }
        }
        out
    }

    async fn person(&self, mxid: &str) -> Person {
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

    /// Downloads an `mxc://server/id` file through the authenticated media API.
    async fn download(&self, mxc: &str, name: &str, mime: &str) -> Result<Attachment, String> {
        let rest = mxc.strip_prefix("mxc://").ok_or_else(|| format!("{mxc:?} is not an mxc URI"))?;
        let (server, media) = rest.split_once('/').ok_or_else(|| format!("{mxc:?} has no media id"))?;
        let data = self.client.download(server, media, self.cfg.max_file_bytes).await.map_err(|e| e.to_string())?;
        Ok(Attachment { name: name.to_owned(), mime: mime.to_owned(), data })
    }

    /// One event as the hub sees it; `None` for what is not bridged.
    async fn translate(&self, ev: &Value) -> Option<RemoteEvent> {
        let sender = ev["sender"].as_str()?;
        if self.ours(sender) {
            return None;
        }
        let room = ev["room_id"].as_str()?;
        let event_id = ev["event_id"].as_str()?;
        let content = &ev["content"];
        let relates = &content["m.relates_to"];
        match ev["type"].as_str()? {
            "m.room.message" if relates["rel_type"] == "m.replace" => Some(RemoteEvent::Edit {
                chat: room.into(),
                id: event_id.into(),
                target: relates["event_id"].as_str()?.into(),
                sender: self.person(sender).await,
                new_text: text_of(&content["m.new_content"])?,
            }),
            "m.room.message" => {
                let body = content["body"].as_str().unwrap_or_default();
                let reply_to = relates["m.in_reply_to"]["event_id"].as_str().map(Into::into);
                let (text, attachments) = match content["msgtype"].as_str() {
                    Some("m.image" | "m.file" | "m.video" | "m.audio") => {
                        let mime = content["info"]["mimetype"].as_str().unwrap_or("application/octet-stream");
                        match self.download(content["url"].as_str().unwrap_or_default(), body, mime).await {
                            Ok(a) => (String::new(), vec![a]),
                            Err(e) => (format!("[file not bridged: {e}]"), Vec::new()),
                        }
                    }
                    _ => (text_of(content)?, Vec::new()),
                };
                Some(RemoteEvent::Message {
                    chat: room.into(),
                    id: event_id.into(),
                    sender: self.person(sender).await,
                    text,
                    attachments,
                    reply_to,
                })
            }
            "m.room.name" if ev["state_key"] == "" => Some(RemoteEvent::Renamed {
                chat: room.into(),
                id: event_id.into(),
                sender: self.person(sender).await,
                name: content["name"].as_str()?.to_owned(),
            }),
            "m.room.topic" if ev["state_key"] == "" => Some(RemoteEvent::Described {
                chat: room.into(),
                id: event_id.into(),
                sender: self.person(sender).await,
                text: content["topic"].as_str().unwrap_or_default().to_owned(),
            }),
            "m.room.avatar" if ev["state_key"] == "" => {
                let image = match content["url"].as_str() {
                    Some(url) => {
                        let mime = content["info"]["mimetype"].as_str().unwrap_or("image/jpeg");
                        match self.download(url, "group-avatar", mime).await {
                            Ok(a) => Some(a),
                            Err(e) => {
                                tracing::warn!(room, error = %e, "the room's new image could not be fetched");
                                return None;
                            }
                        }
                    }
                    None => None,
                };
                Some(RemoteEvent::AvatarChanged {
                    chat: room.into(),
                    id: event_id.into(),
                    sender: self.person(sender).await,
                    image,
                })
            }
            "m.room.member" => {
                // An admin removing a COI person's ghost removes them from the COI group.
                let target = ev["state_key"].as_str()?;
                let member = crate::registration::addr_of_ghost(&self.cfg.ghost_prefix, &self.cfg.server_name, target)?;
                if !matches!(content["membership"].as_str(), Some("leave" | "ban")) || target == sender {
                    return None;
                }
                if !self.cfg.is_admin(sender) {
                    tracing::warn!(sender, room, member, "a non-admin removed a COI person's ghost; not mirrored");
                    let text =
                        format!("{member} is still in the COI group: only the bridge's admins can remove COI people.");
                    if let Err(e) = self.notice(room, &format!("kick-{event_id}"), &text).await {
                        tracing::warn!(room, error = %e, "could not post the notice");
                    }
                    return None;
                }
                Some(RemoteEvent::MemberRemoved {
                    chat: room.into(),
                    id: event_id.into(),
                    sender: self.person(sender).await,
                    member,
                })
            }
            "m.reaction" => Some(RemoteEvent::Reaction {
                chat: room.into(),
                id: event_id.into(),
                target: relates["event_id"].as_str()?.into(),
                sender: self.person(sender).await,
                emoji: relates["key"].as_str()?.to_owned(),
            }),
            "m.room.redaction" => Some(RemoteEvent::Delete {
                chat: room.into(),
                id: event_id.into(),
                target: ev["redacts"].as_str().or(content["redacts"].as_str())?.into(),
                sender: self.person(sender).await,
            }),
            _ => None,
        }
    }
}

impl MatrixInbound {
    /// An edit or a redaction of someone else's message: only its sender may edit it, and
    /// only its sender or someone with the room's redact power may redact it.
    async fn authority(&self, remote: &RemoteEvent) -> Result<Verdict, Failure> {
        match remote {
            RemoteEvent::Edit { chat, sender, target, .. } => {
                check_edit(&self.client, chat.as_str(), sender.id.as_str(), target.as_str()).await.map_err(failure)
            }
            RemoteEvent::Delete { chat, sender, target, .. } => {
                check_redaction(&self.client, chat.as_str(), sender.id.as_str(), target.as_str()).await.map_err(failure)
            }
            _ => Ok(Verdict::Allowed),
        }
    }

    /// One event of a transaction, handled durably.
    async fn handle(&self, txn_id: &str, ev: &Value) -> Result<(), Failure> {
        let sender = ev["sender"].as_str().unwrap_or_default();
        let body = ev["content"]["body"].as_str().unwrap_or_default();
        // The bot follows admins' invitations into rooms.
        if ev["type"] == "m.room.member"
            && ev["state_key"].as_str() == Some(&self.client.bot)
            && ev["content"]["membership"] == "invite"
        {
            if let Some(room) = ev["room_id"].as_str().filter(|_| self.cfg.is_admin(sender))
                && let Err(e) = self.client.join(room, &self.client.bot).await
            {
                tracing::warn!(room, error = %e, "could not accept the invitation");
            }
            return Ok(());
        }
        if ev["type"] == "m.room.message" && !self.ours(sender) && (body == PREFIX || body.starts_with("!coi ")) {
            return self.command(ev, body).await;
        }
        let remotes = if ev["type"] == "m.receipt" {
            self.receipts(ev).await
        } else {
            self.translate(ev).await.into_iter().collect()
        };
        for remote in remotes {
            if let Verdict::Forbidden(reason) = self.authority(&remote).await? {
                return Err(Failure::Permanent(DeadLetterKind::Forbidden, reason));
            }
            match self.hub.submit(&self.id, remote).await {
                Ok(()) => {}
                // Not queued: the homeserver sends the whole transaction again.
                Err(SubmitError::Retry(e)) => return Err(Failure::Transient(e)),
                Err(SubmitError::Rejected(e)) => {
                    tracing::info!(txn_id, event_id = ev["event_id"].as_str(), reason = %e, "Matrix event not bridged");
                }
            }
        }
        Ok(())
    }

    /// Sets an event aside: a dead letter in the core, and a notice in its room where the
    /// bot may post one. `Err` only when the dead letter could not be recorded now.
    async fn set_aside(&self, ev: &Value, key: &str, kind: DeadLetterKind, reason: &str) -> Result<(), String> {
        let room = ev["room_id"].as_str();
        let letter = DeadLetter::new(room.map(Into::into), key, kind, reason, &ev.to_string());
        match self.hub.dead_letter(&self.id, letter).await {
            Ok(()) => {}
            Err(SubmitError::Retry(e)) => return Err(format!("could not set aside {key}: {e}")),
            Err(SubmitError::Rejected(e)) => tracing::warn!(event = key, error = %e, "dead letter refused"),
        }
        self.attempts.done(key);
        // Someone else's edit or redaction: Matrix clients ignore it as well; no notice.
        if kind == DeadLetterKind::Forbidden {
            return Ok(());
        }
        if let Some(room) = room {
            let who = ev["sender"].as_str().unwrap_or("someone");
            let short: String = reason.chars().take(300).collect();
            let text = format!("An event from {who} could not be bridged to COI and was set aside ({short}).");
            if let Err(e) = self.notice(room, &format!("dead-{key}"), &text).await {
                tracing::info!(room, event = key, error = %e, "no notice about the set-aside event could be posted");
            }
        }
        Ok(())
    }
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
            let outcome = catch_panic(self.handle(txn_id, ev))
                .await
                .unwrap_or_else(|panic| Err(Failure::Permanent(DeadLetterKind::Panicked, panic)));
            match outcome {
                Ok(()) => self.attempts.done(&key),
                Err(Failure::Transient(reason)) => {
                    if !self.attempts.failed(&key) {
                        let attempt = self.attempts.failures(&key);
                        tracing::warn!(txn_id, event = %key, attempt, max = MAX_ATTEMPTS, error = %reason, "Matrix event not handled yet; the homeserver will send it again");
                        return Err(reason);
                    }
                    let reason = format!("failed {MAX_ATTEMPTS} times, last: {reason}");
                    self.set_aside(ev, &key, DeadLetterKind::GaveUp, &reason).await?;
                }
                Err(Failure::Permanent(kind, reason)) => self.set_aside(ev, &key, kind, &reason).await?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_ATTEMPTS, MatrixInbound, TransactionSink as _, strip_reply_fallback, text_of};
    use crate::client::AsClient;
    use coi_bridge_api::testing::FakeHub;
    use coi_bridge_api::{DeadLetterKind, RemoteEvent};
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_event_failing_again_and_again_is_set_aside_and_the_rest_go_on() {
        // Nothing listens on port 9: profile lookups and notices fail, as they may.
        let cfg =
            serde_json::from_value(json!({"id": "matrix", "homeserver": "http://127.0.0.1:9", "server_name": "hs"}))
                .expect("config");
        let client = AsClient::new("http://127.0.0.1:9", "as-token", "@coibot:hs").expect("client");
        let hub = Arc::new(FakeHub::new());
        let inbound = MatrixInbound::new("matrix".into(), client, hub.clone(), &cfg);
        let ev = |id: &str, body: &str| {
            json!({"type": "m.room.message", "room_id": "!r", "sender": "@mara:hs", "event_id": id,
                   "content": {"msgtype": "m.text", "body": body}})
        };
        let events = vec![ev("$stuck", "stuck"), ev("$next", "next")];
        hub.fail_next(MAX_ATTEMPTS as usize);
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

    #[test]
    fn reply_fallbacks_are_dropped() {
        assert_eq!(strip_reply_fallback("> <@a:hs> original\n> more\n\nmy answer"), "my answer");
        assert_eq!(strip_reply_fallback("plain"), "plain");
        assert_eq!(strip_reply_fallback("> a quote without answer"), "> a quote without answer");
    }

    #[test]
    fn html_bodies_win_and_are_made_plain() {
        let c =
            json!({"body": "**hi**", "format": "org.matrix.custom.html", "formatted_body": "<b>hi</b> <i>there</i>"});
        assert_eq!(text_of(&c).as_deref(), Some("*hi* _there_"));
        assert_eq!(text_of(&json!({"body": "> <@a:hs> q\n\nplain"})).as_deref(), Some("plain"));
        assert_eq!(text_of(&json!({"msgtype": "m.text"})), None);
    }
}
