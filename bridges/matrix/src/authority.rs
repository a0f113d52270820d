//! Who may change a bridged message: an edit (`m.replace`) only from the target's sender, a redaction from the target's sender or someone with the room's redact power; and who is an admin of a room (for `!coi pair`).
//!
//! The homeserver does not enforce either: any member can send an `m.replace` for any
//! event (clients are expected to ignore it), and a redaction of someone else's event
//! passes the room's auth rules in many cases and is only checked when applied. The bridge
//! checks like a careful client does, before anything reaches COI.

use coi_bridge_api::{Failure, RemoteEvent};
use serde_json::Value;

use crate::client::{AsClient, MatrixError, seg};
use crate::translate::Homeserver;

/// The power level `redact` has when the room's power levels do not say.
pub const DEFAULT_REDACT_LEVEL: i64 = 50;

/// A power level as the spec allows it: an integer, or (in old rooms) a string of one.
fn level(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Room versions in which the room's creators have unlimited power and are not listed in
/// `m.room.power_levels` (MSC4289: version 12 and the "hydra" test versions).
fn creators_are_privileged(room_version: &str) -> bool {
    room_version.parse::<u32>().is_ok_and(|v| v >= 12) || room_version.starts_with("org.matrix.hydra")
}

/// What the room's creation alone decides for `user`: everything for the creators of a
/// version 12 room; without power levels, a creator has 100 and everyone else 0. `None`:
/// the power levels decide.
fn by_creation(power_levels: Option<&Value>, create: Option<&Value>, user: &str) -> Option<bool> {
    let create = create?;
    let version = create["content"]["room_version"].as_str().unwrap_or("1");
    let is_creator = create["sender"] == user
        || create["content"]["additional_creators"].as_array().is_some_and(|a| a.iter().any(|c| c == user));
    if is_creator && creators_are_privileged(version) {
        return Some(true);
    }
    power_levels.is_none().then_some(is_creator)
}

/// `user`'s level in the power levels `pl`.
fn level_of(pl: &Value, user: &str) -> i64 {
    pl["users"].get(user).and_then(level).or_else(|| level(&pl["users_default"])).unwrap_or(0)
}

/// Whether `user` may redact other people's events, from the room's `m.room.power_levels`
/// content (`None`: the room has none) and its full `m.room.create` event.
pub fn may_redact_others(power_levels: Option<&Value>, create: Option<&Value>, user: &str) -> bool {
    if let Some(decided) = by_creation(power_levels, create, user) {
        return decided;
    }
    let Some(pl) = power_levels else { return false };
    level_of(pl, user) >= level(&pl["redact"]).unwrap_or(DEFAULT_REDACT_LEVEL)
}

/// The power level sending state events has when the room's power levels do not say.
pub const DEFAULT_STATE_LEVEL: i64 = 50;

/// Whether `user` is an admin of the room: may change its `m.room.power_levels` (who is
/// admin), from that content (`None`: the room has none) and the full `m.room.create` event.
pub fn may_change_power_levels(power_levels: Option<&Value>, create: Option<&Value>, user: &str) -> bool {
    if let Some(decided) = by_creation(power_levels, create, user) {
        return decided;
    }
    let Some(pl) = power_levels else { return false };
    let needed = pl["events"]
        .get("m.room.power_levels")
        .and_then(level)
        .or_else(|| level(&pl["state_default"]))
        .unwrap_or(DEFAULT_STATE_LEVEL);
    level_of(pl, user) >= needed
}

/// [`may_change_power_levels`] from the room's state as the appservice's bot reads it.
pub async fn may_change_power_levels_in(client: &AsClient, room: &str, user: &str) -> Result<bool, MatrixError> {
    let power_levels = state_event(client, room, "m.room.power_levels").await?;
    let create = state_event(client, room, "m.room.create").await?;
    Ok(may_change_power_levels(power_levels.as_ref().map(|e| &e["content"]), create.as_ref(), user))
}

/// What an edit or a redaction may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not bridged; the reason is for the log and the dead letter.
    Forbidden(String),
}

/// The sender of `event_id` in `room` as the appservice's bot sees it; `None` when the
/// homeserver does not show it to the bot (unknown, or from before the bot joined).
pub async fn sender_of(client: &AsClient, room: &str, event_id: &str) -> Result<Option<String>, MatrixError> {
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", seg(room), seg(event_id));
    match client.call(reqwest::Method::GET, &path, None, None).await {
        Ok(ev) => Ok(ev["sender"].as_str().map(str::to_owned)),
        Err(MatrixError::Refused { status: 403 | 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A state event of `room` (`format=event`: with its sender); `None` when there is none.
async fn state_event(client: &AsClient, room: &str, event_type: &str) -> Result<Option<Value>, MatrixError> {
    let path = format!("/_matrix/client/v3/rooms/{}/state/{event_type}/?format=event", seg(room));
    match client.call(reqwest::Method::GET, &path, None, None).await {
        Ok(ev) => Ok(Some(ev)),
        Err(MatrixError::Refused { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`may_redact_others`] from the room's state as the appservice's bot reads it.
pub async fn may_redact_others_in(client: &AsClient, room: &str, user: &str) -> Result<bool, MatrixError> {
    let power_levels = state_event(client, room, "m.room.power_levels").await?;
    let create = state_event(client, room, "m.room.create").await?;
    Ok(may_redact_others(power_levels.as_ref().map(|e| &e["content"]), create.as_ref(), user))
}

/// An edit by `sender` of `target`: only the target's own sender may.
pub async fn check_edit(hs: &dyn Homeserver, room: &str, sender: &str, target: &str) -> Result<Verdict, Failure> {
    Ok(match hs.sender_of(room, target).await? {
        Some(author) if author == sender => Verdict::Allowed,
        Some(author) => Verdict::Forbidden(format!("{sender} tried to edit a message by {author}")),
        None => Verdict::Forbidden(format!("{sender} edited {target}, which the bridge cannot see")),
    })
}

/// A redaction by `sender` of `target`: its own sender, or someone with the redact power.
pub async fn check_redaction(hs: &dyn Homeserver, room: &str, sender: &str, target: &str) -> Result<Verdict, Failure> {
    let author = hs.sender_of(room, target).await?;
    if author.as_deref() == Some(sender) || hs.may_redact_others(room, sender).await? {
        return Ok(Verdict::Allowed);
    }
    let author = author.unwrap_or_else(|| "someone the bridge cannot see".into());
    Ok(Verdict::Forbidden(format!("{sender} tried to redact a message by {author} without the power to")))
}

/// Whether a hub event may pass: edits and redactions are checked, the rest always may.
pub async fn verdict(hs: &dyn Homeserver, remote: &RemoteEvent) -> Result<Verdict, Failure> {
    match remote {
        RemoteEvent::Edit { chat, sender, target, .. } => {
            check_edit(hs, chat.as_str(), sender.id.as_str(), target.as_str()).await
        }
        RemoteEvent::Delete { chat, sender, target, .. } => {
            check_redaction(hs, chat.as_str(), sender.id.as_str(), target.as_str()).await
        }
        _ => Ok(Verdict::Allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_redact_level_decides_for_others() {
        let pl = json!({"users": {"@mod:hs": 50, "@admin:hs": 100, "@low:hs": "10"}, "users_default": 0});
        let create = json!({"sender": "@admin:hs", "content": {"room_version": "10"}});
        assert!(may_redact_others(Some(&pl), Some(&create), "@mod:hs"), "50 is the default redact level");
        assert!(may_redact_others(Some(&pl), Some(&create), "@admin:hs"));
        assert!(!may_redact_others(Some(&pl), Some(&create), "@low:hs"), "string levels are read");
        assert!(!may_redact_others(Some(&pl), Some(&create), "@nobody:hs"), "users_default 0");
        let strict = json!({"users": {"@mod:hs": 50}, "redact": 75});
        assert!(!may_redact_others(Some(&strict), None, "@mod:hs"));
        let lax = json!({"users_default": 60});
        assert!(may_redact_others(Some(&lax), None, "@anyone:hs"));
    }

    #[test]
    fn room_admins_are_who_may_change_the_power_levels() {
        let pl = json!({"users": {"@mod:hs": 50, "@admin:hs": 100}, "events": {"m.room.power_levels": 100}});
        let create = json!({"sender": "@admin:hs", "content": {"room_version": "10"}});
        assert!(may_change_power_levels(Some(&pl), Some(&create), "@admin:hs"));
        assert!(!may_change_power_levels(Some(&pl), Some(&create), "@mod:hs"), "a moderator is no admin");
        assert!(!may_change_power_levels(Some(&pl), Some(&create), "@nobody:hs"));
        // Without an entry for the power levels, state_default says (50 when absent).
        assert!(may_change_power_levels(Some(&json!({"users": {"@mod:hs": 50}})), None, "@mod:hs"));
        let strict = json!({"users": {"@mod:hs": 50}, "state_default": 75});
        assert!(!may_change_power_levels(Some(&strict), None, "@mod:hs"));
        // Version 12: the creators, who are not listed.
        let v12 = json!({"sender": "@owner:hs", "content": {"room_version": "12"}});
        assert!(may_change_power_levels(Some(&pl), Some(&v12), "@owner:hs"));
        assert!(!may_change_power_levels(None, None, "@owner:hs"));
    }

    #[test]
    fn creators_of_version_12_rooms_always_may() {
        // Version 12 creators are not listed in the power levels.
        let pl = json!({"users": {"@mod:hs": 50}});
        let create =
            json!({"sender": "@owner:hs", "content": {"room_version": "12", "additional_creators": ["@co:hs"]}});
        assert!(may_redact_others(Some(&pl), Some(&create), "@owner:hs"));
        assert!(may_redact_others(Some(&pl), Some(&create), "@co:hs"));
        assert!(!may_redact_others(Some(&pl), Some(&create), "@else:hs"));
        // Before version 12, the creator is just a user of the power levels.
        let old = json!({"sender": "@owner:hs", "content": {"room_version": "11"}});
        assert!(!may_redact_others(Some(&pl), Some(&old), "@owner:hs"));
        // No power levels at all: only the creator.
        assert!(may_redact_others(None, Some(&old), "@owner:hs"));
        assert!(!may_redact_others(None, Some(&old), "@else:hs"));
        assert!(!may_redact_others(None, None, "@else:hs"));
    }
}
