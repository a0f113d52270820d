//! One Matrix event handled the same way in both modes: `!coi` commands, the shared translation, the edit/redact authority, submitting to the hub, and setting aside what fails.

use coi_bridge_api::{BridgeId, Command, DeadLetter, DeadLetterKind, Failure, Hub, RemoteChatId, SubmitError};
use serde_json::Value;

use crate::authority::{Verdict, verdict};
use crate::config::MatrixConfig;
use crate::translate::{Homeserver, PREFIX, is_command, translate};

/// One event, durably: `Ok` once everything it means is queued in the hub (or refused by
/// it for good); `Transient` to try it again, `Permanent` to set it aside.
pub async fn handle(
    hs: &dyn Homeserver,
    hub: &dyn Hub,
    id: &BridgeId,
    cfg: &MatrixConfig,
    ev: &Value,
) -> Result<(), Failure> {
    let sender = ev["sender"].as_str().unwrap_or_default();
    let body = ev["content"]["body"].as_str().unwrap_or_default();
    if ev["type"] == "m.room.message" && !sender.is_empty() && !hs.is_ours(sender) && is_command(body) {
        return command(hs, hub, id, cfg, ev, body).await;
    }
    if ev["type"] == "m.room.member" {
        membership(hs, hub, id, ev).await?;
    }
    for remote in translate(hs, cfg, ev).await? {
        if let Verdict::Forbidden(reason) = verdict(hs, &remote).await? {
            return Err(Failure::Permanent(DeadLetterKind::Forbidden, reason));
        }
        match hub.submit(id, remote).await {
            Ok(()) => {}
            Err(SubmitError::Retry(e)) => return Err(Failure::Unavailable(e)),
            Err(SubmitError::Rejected(e)) => {
                tracing::info!(bridge = %id, event_id = ev["event_id"].as_str(), reason = %e, "Matrix event not bridged");
            }
        }
    }
    Ok(())
}

/// `!coi …` from a person: admins' commands go to the hub, others get a refusal.
async fn command(
    hs: &dyn Homeserver,
    hub: &dyn Hub,
    id: &BridgeId,
    cfg: &MatrixConfig,
    ev: &Value,
    body: &str,
) -> Result<(), Failure> {
    let (Some(sender), Some(room), Some(event_id)) =
        (ev["sender"].as_str(), ev["room_id"].as_str(), ev["event_id"].as_str())
    else {
        return Ok(());
    };
    let key = format!("cmd-{event_id}");
    if !cfg.is_admin(sender) {
        if Command::parse(body.trim_start_matches(PREFIX)) == Ok(Command::Invite) {
            return personal_invite(hs, hub, id, room, sender, &key).await;
        }
        tracing::warn!(sender, room, "!coi command from a non-admin; refused");
        let text = format!("Sorry {sender}, only the bridge's admins can use {PREFIX} commands.");
        return hs.notice(room, &key, &text).await;
    }
    let command = match Command::parse(body.trim_start_matches(PREFIX)) {
        Ok(c) => c,
        Err(e) => return hs.notice(room, &key, &e).await,
    };
    let title = hs.room_name(room).await.unwrap_or_else(|| room.to_owned());
    let status = command == Command::Status;
    match hub.command(id, &RemoteChatId(room.to_owned()), &title, command).await {
        Ok(mut reply) => {
            if status && let Some(people) = hs.matrix_people(room).await {
                let only = if people.is_empty() { "nobody".to_owned() } else { people.join(", ") };
                reply.text.push_str(&format!("\nOnly on Matrix: {only}."));
            }
            hs.notice(room, &key, &reply.text).await?;
            match reply.qr_png {
                Some(png) => hs.image(room, &format!("{key}-qr"), "invite-qr.png", png).await,
                None => Ok(()),
            }
        }
        Err(SubmitError::Retry(e)) => Err(Failure::Unavailable(e)),
        Err(SubmitError::Rejected(e)) => hs.notice(room, &key, &format!("That did not work: {e}")).await,
    }
}

/// A member's `!coi invite` (no admin): their personal invite to the room's COI group, sent
/// to them alone in a direct room (whoever completes it is paired with them), and a word
/// in the room that it is there.
async fn personal_invite(
    hs: &dyn Homeserver,
    hub: &dyn Hub,
    id: &BridgeId,
    room: &str,
    sender: &str,
    key: &str,
) -> Result<(), Failure> {
    let person = hs.person(room, sender).await;
    match hub.personal_invite(id, &RemoteChatId(room.to_owned()), &person).await {
        Ok(reply) => {
            hs.tell_privately(sender, key, &reply.text, reply.qr_png).await?;
            let text = format!("{}, your personal invite is in a direct chat with me.", person.display_name);
            hs.notice(room, &format!("{key}-hint"), &text).await
        }
        Err(SubmitError::Retry(e)) => Err(Failure::Unavailable(e)),
        Err(SubmitError::Rejected(e)) => hs.notice(room, key, &format!("That did not work: {e}")).await,
    }
}

/// A person (not the bridge's own account) joined or left a room: the migration status
/// counts them (the hub ignores rooms that are no portal).
async fn membership(hs: &dyn Homeserver, hub: &dyn Hub, id: &BridgeId, ev: &Value) -> Result<(), Failure> {
    let (Some(room), Some(user)) = (ev["room_id"].as_str(), ev["state_key"].as_str()) else { return Ok(()) };
    let joined = match ev["content"]["membership"].as_str() {
        Some("join") => true,
        Some("leave" | "ban") => false,
        _ => return Ok(()),
    };
    if user.is_empty() || hs.is_ours(user) {
        return Ok(());
    }
    let person = hs.person(room, user).await;
    match hub.person_seen(id, &RemoteChatId(room.to_owned()), &person, joined).await {
        Ok(()) => Ok(()),
        Err(SubmitError::Retry(e)) => Err(Failure::Unavailable(e)),
        Err(SubmitError::Rejected(e)) => {
            tracing::info!(bridge = %id, room, user, reason = %e, "membership not noted");
            Ok(())
        }
    }
}

/// Sets an event aside: a dead letter in the core, and a notice in its room where the
/// bridge may post one (not for someone else's edit or redaction: Matrix clients ignore
/// those as well). `Err` only when the dead letter could not be recorded now.
pub async fn set_aside(
    hs: &dyn Homeserver,
    hub: &dyn Hub,
    id: &BridgeId,
    ev: &Value,
    key: &str,
    kind: DeadLetterKind,
    reason: &str,
) -> Result<(), String> {
    let room = ev["room_id"].as_str();
    let letter = DeadLetter::new(room.map(Into::into), key, kind, reason, &ev.to_string());
    match hub.dead_letter(id, letter).await {
        Ok(()) => {}
        Err(SubmitError::Retry(e)) => return Err(format!("could not set aside {key}: {e}")),
        Err(SubmitError::Rejected(e)) => tracing::warn!(bridge = %id, event = key, error = %e, "dead letter refused"),
    }
    tracing::warn!(bridge = %id, event = key, kind = kind.as_str(), reason, "Matrix event set aside");
    if kind == DeadLetterKind::Forbidden {
        return Ok(());
    }
    if let Some(room) = room {
        let who = ev["sender"].as_str().unwrap_or("someone");
        let short: String = reason.chars().take(300).collect();
        let text = format!("An event from {who} could not be bridged to COI and was set aside ({short}).");
        if let Err(e) = hs.notice(room, &format!("dead-{key}"), &text).await {
            tracing::info!(room, event = key, error = %e, "no notice about the set-aside event could be posted");
        }
    }
    Ok(())
}
