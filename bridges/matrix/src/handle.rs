//! One Matrix event handled the same way in both modes: `!coi` commands, the shared translation, the edit/redact authority, submitting to the hub, and setting aside what fails.
//!
//! Who may say what: the configured admins every command; anyone `!coi invite` (their
//! personal invite, in the direct room the bridge keeps with them); the configured admins
//! and the room's own admins `!coi pair @user:server ADDRESS`.

use coi_bridge_api::{
    BridgeId, BridgeState, Command, DeadLetter, DeadLetterKind, Failure, Hub, RemoteChatId, SubmitError,
};
use serde_json::Value;

use crate::authority::{Verdict, verdict};
use crate::config::MatrixConfig;
use crate::translate::{Homeserver, PREFIX, is_command, translate};

/// What handling an event needs from the bridge: the hub, its id, config and state.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub hub: &'a dyn Hub,
    pub id: &'a BridgeId,
    pub cfg: &'a MatrixConfig,
    /// Where the direct rooms with people are remembered.
    pub state: &'a dyn BridgeState,
}

/// One event, durably: `Ok` once everything it means is queued in the hub (or refused by
/// it for good); `Transient` to try it again, `Permanent` to set it aside.
pub async fn handle(hs: &dyn Homeserver, parts: Parts<'_>, ev: &Value) -> Result<(), Failure> {
    let Parts { hub, id, cfg, .. } = parts;
    let sender = ev["sender"].as_str().unwrap_or_default();
    let body = ev["content"]["body"].as_str().unwrap_or_default();
    if ev["type"] == "m.room.message" && !sender.is_empty() && !hs.is_ours(sender) && is_command(body) {
        return command(hs, parts, ev, body).await;
    }
    if ev["type"] == "m.room.member" {
        membership(hs, parts, ev).await?;
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
async fn command(hs: &dyn Homeserver, parts: Parts<'_>, ev: &Value, body: &str) -> Result<(), Failure> {
    let Parts { hub, id, cfg, .. } = parts;
    let (Some(sender), Some(room), Some(event_id)) =
        (ev["sender"].as_str(), ev["room_id"].as_str(), ev["event_id"].as_str())
    else {
        return Ok(());
    };
    let key = format!("cmd-{event_id}");
    let words = body.trim_start_matches(PREFIX);
    if words.split_whitespace().next() == Some("pair") {
        return pair(hs, parts, room, sender, &key, words).await;
    }
    if !cfg.is_admin(sender) {
        if Command::parse(words) == Ok(Command::Invite) {
            return personal_invite(hs, parts, room, sender, &key).await;
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
    // Counted before the core's status reads the count.
    let people = if status { count_people(hs, parts.state, room).await } else { None };
    match hub.command(id, &RemoteChatId(room.to_owned()), &title, command).await {
        Ok(mut reply) => {
            if let Some(people) = people {
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
/// in the room that it is there. Said in the direct room (no portal), it brings one to
/// each bridged group they are in. A refusal for asking too often goes to the direct room
/// only, so asking again and again does not fill the group's room.
async fn personal_invite(
    hs: &dyn Homeserver,
    parts: Parts<'_>,
    room: &str,
    sender: &str,
    key: &str,
) -> Result<(), Failure> {
    let person = hs.person(room, sender).await;
    match parts.hub.personal_invite(parts.id, &RemoteChatId(room.to_owned()), &person).await {
        Ok(reply) => {
            tell_privately(hs, parts.state, sender, key, &reply.text, reply.qr_png).await?;
            // Asked in the direct room itself (for every group they are in): it is there.
            let direct = parts.state.get(&direct_key(sender)).await.map_err(state_failure)?;
            if reply.link.is_none() || direct.as_deref() == Some(room) {
                return Ok(());
            }
            let text = format!("{}, your personal invite is in a direct chat with me.", person.display_name);
            hs.notice(room, &format!("{key}-hint"), &text).await
        }
        Err(SubmitError::Retry(e)) => Err(Failure::Unavailable(e)),
        Err(SubmitError::Rejected(e)) => hs.notice(room, key, &format!("That did not work: {e}")).await,
    }
}

/// The [`BridgeState`] key of the direct room the bridge keeps with `user`.
pub(crate) fn direct_key(user: &str) -> String {
    format!("direct/{user}")
}

pub(crate) fn state_failure(e: SubmitError) -> Failure {
    match e {
        SubmitError::Retry(e) => Failure::Unavailable(e),
        SubmitError::Rejected(e) => Failure::Permanent(DeadLetterKind::Failed, e),
    }
}

/// Sends `text` (and `png`, a QR code) to `user` alone, in the direct room the bridge keeps
/// with them: made the first time and remembered at once, so an attempt that made the room
/// and then failed to post in it, tried again, posts in that room instead of making another.
pub async fn tell_privately(
    hs: &dyn Homeserver,
    state: &dyn BridgeState,
    user: &str,
    key: &str,
    text: &str,
    png: Option<Vec<u8>>,
) -> Result<(), Failure> {
    let slot = direct_key(user);
    let room = match state.get(&slot).await.map_err(state_failure)? {
        Some(room) if hs.reopen_direct(&room, user).await? => room,
        earlier => {
            if let Some(gone) = earlier {
                tracing::info!(user, room = %gone, "the direct room with this user is gone; opening another");
            }
            let room = hs.open_direct(user).await?;
            state.set(&slot, &room).await.map_err(state_failure)?;
            room
        }
    };
    hs.notice(&room, key, text).await?;
    match png {
        Some(png) => hs.image(&room, &format!("{key}-qr"), "invite-qr.png", png).await,
        None => Ok(()),
    }
}

/// `!coi pair @user:server ADDRESS` (`words` without the prefix): a configured admin or an
/// admin of the room says that this Matrix user is that COI address.
async fn pair(
    hs: &dyn Homeserver,
    parts: Parts<'_>,
    room: &str,
    sender: &str,
    key: &str,
    words: &str,
) -> Result<(), Failure> {
    if !parts.cfg.is_admin(sender) && !hs.room_admin(room, sender).await? {
        tracing::warn!(sender, room, "!coi pair from someone who is no admin here; refused");
        let text = format!("Sorry {sender}, only the bridge's admins and this room's admins can pair people.");
        return hs.notice(room, key, &text).await;
    }
    let (user, address) = match words.split_whitespace().collect::<Vec<_>>()[..] {
        [_, user, address] if is_user_id(user) && address.contains('@') && !address.starts_with('@') => (user, address),
        _ => {
            let usage =
                format!("Usage: {PREFIX} pair @user:server ADDRESS (the person's Matrix id, then their COI address).");
            return hs.notice(room, key, &usage).await;
        }
    };
    let person = hs.person(room, user).await;
    match parts.hub.pair(parts.id, &RemoteChatId(room.to_owned()), &person, address).await {
        Ok(reply) => hs.notice(room, key, &reply.text).await,
        Err(SubmitError::Retry(e)) => Err(Failure::Unavailable(e)),
        Err(SubmitError::Rejected(e)) => hs.notice(room, key, &format!("That did not work: {e}")).await,
    }
}

/// `@localpart:server`, roughly (the homeserver has the last word).
fn is_user_id(s: &str) -> bool {
    s.strip_prefix('@').and_then(|r| r.split_once(':')).is_some_and(|(l, server)| !l.is_empty() && !server.is_empty())
}

/// The joined people of `room` that are not the bridge's own accounts, as
/// [`Homeserver::matrix_people`] names them; their number kept where the core's migration
/// status reads it. `None` when the homeserver did not say.
async fn count_people(hs: &dyn Homeserver, state: &dyn BridgeState, room: &str) -> Option<Vec<String>> {
    let people = hs.matrix_people(room).await?;
    let key = coi_bridge_api::member_count_key(&RemoteChatId(room.to_owned()));
    // Only a number the status shows: a failed write waits for the next count.
    if let Err(e) = state.set(&key, &people.len().to_string()).await {
        tracing::warn!(room, error = %e, "could not keep the room's member count");
    }
    Some(people)
}

/// A person (not the bridge's own account) joined or left a room: the migration status
/// counts them (the hub ignores rooms that are no portal), and a portal's people again.
async fn membership(hs: &dyn Homeserver, parts: Parts<'_>, ev: &Value) -> Result<(), Failure> {
    let Parts { hub, id, state, .. } = parts;
    let (Some(room), Some(user)) = (ev["room_id"].as_str(), ev["state_key"].as_str()) else { return Ok(()) };
    let joined = match ev["content"]["membership"].as_str() {
        Some("join") => true,
        Some("leave" | "ban") => false,
        _ => return Ok(()),
    };
    if user.is_empty() || hs.is_ours(user) {
        return Ok(());
    }
    // Counted first, so the status after a departure has the new number; portals only
    // (the direct rooms with people are no group to count).
    let chat = RemoteChatId(room.to_owned());
    if state.remote_chats().await.is_ok_and(|portals| portals.contains(&chat)) {
        count_people(hs, state, room).await;
    }
    let person = hs.person(room, user).await;
    match hub.person_seen(id, &chat, &person, joined).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use coi_bridge_api::Person;
    use coi_bridge_api::testing::{FakeHub, MemoryState};
    use serde_json::json;
    use std::sync::Mutex;

    /// A homeserver recording the direct rooms it opens and what it posts where; the
    /// first `fail_posts` posts fail for now.
    #[derive(Default)]
    struct Hs {
        opened: Mutex<Vec<String>>,
        posts: Mutex<Vec<(String, String)>>,
        fail_posts: Mutex<usize>,
        /// Direct rooms the bot has left.
        gone: Mutex<Vec<String>>,
        /// What `matrix_people` answers (every room the same).
        people: Mutex<Option<Vec<String>>>,
    }

    #[async_trait]
    impl Homeserver for Hs {
        fn is_ours(&self, mxid: &str) -> bool {
            mxid == "@bot:hs"
        }
        async fn person(&self, _room: &str, mxid: &str) -> Person {
            Person { id: mxid.into(), display_name: mxid.trim_start_matches('@').into() }
        }
        async fn fetch(&self, _content: &Value, _max: u64) -> Result<Vec<u8>, Failure> {
            Ok(Vec::new())
        }
        async fn sender_of(&self, _room: &str, _event_id: &str) -> Result<Option<String>, Failure> {
            Ok(None)
        }
        async fn may_redact_others(&self, _room: &str, _user: &str) -> Result<bool, Failure> {
            Ok(false)
        }
        async fn notice(&self, room: &str, _key: &str, text: &str) -> Result<(), Failure> {
            let mut fail = self.fail_posts.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                return Err(Failure::Transient("502 from the homeserver".into()));
            }
            self.posts.lock().expect("lock").push((room.to_owned(), text.to_owned()));
            Ok(())
        }
        async fn image(&self, room: &str, _key: &str, name: &str, _png: Vec<u8>) -> Result<(), Failure> {
            self.posts.lock().expect("lock").push((room.to_owned(), name.to_owned()));
            Ok(())
        }
        async fn room_name(&self, _room: &str) -> Option<String> {
            None
        }
        async fn matrix_people(&self, _room: &str) -> Option<Vec<String>> {
            self.people.lock().expect("lock").clone()
        }
        async fn room_admin(&self, _room: &str, user: &str) -> Result<bool, Failure> {
            Ok(user == "@roomadmin:hs")
        }
        async fn open_direct(&self, user: &str) -> Result<String, Failure> {
            let mut opened = self.opened.lock().expect("lock");
            opened.push(user.to_owned());
            Ok(format!("!dm{}", opened.len()))
        }
        async fn reopen_direct(&self, room: &str, _user: &str) -> Result<bool, Failure> {
            Ok(!self.gone.lock().expect("lock").iter().any(|g| g == room))
        }
    }

    impl Hs {
        fn posts(&self) -> Vec<(String, String)> {
            self.posts.lock().expect("lock").clone()
        }
    }

    #[tokio::test]
    async fn a_word_in_private_made_its_room_and_failed_goes_to_that_room_when_tried_again() {
        let (hs, state) = (Hs::default(), MemoryState::default());
        *hs.fail_posts.lock().expect("lock") = 1;
        let first = tell_privately(&hs, &state, "@nina:hs", "cmd-$1", "your invite", Some(vec![1])).await;
        assert!(matches!(first, Err(Failure::Transient(_))), "{first:?}");
        tell_privately(&hs, &state, "@nina:hs", "cmd-$1", "your invite", Some(vec![1])).await.expect("again");
        tell_privately(&hs, &state, "@nina:hs", "cmd-$2", "another", None).await.expect("a second request");
        assert_eq!(*hs.opened.lock().expect("lock"), ["@nina:hs"], "one direct room for Nina");
        let rooms: Vec<String> = hs.posts().into_iter().map(|(r, _)| r).collect();
        assert_eq!(rooms, ["!dm1", "!dm1", "!dm1"], "the text, the QR code, the second text");
        // Someone else gets a room of their own; a room the bot is no longer in is replaced.
        tell_privately(&hs, &state, "@olga:hs", "cmd-$3", "yours", None).await.expect("olga");
        hs.gone.lock().expect("lock").push("!dm1".into());
        tell_privately(&hs, &state, "@nina:hs", "cmd-$4", "again", None).await.expect("a new room");
        assert_eq!(hs.posts().last(), Some(&("!dm3".to_owned(), "again".to_owned())));
        assert_eq!(state.get("direct/@nina:hs").await.expect("state").as_deref(), Some("!dm3"));
    }

    fn cfg() -> MatrixConfig {
        serde_json::from_value(json!({
            "id": "matrix", "homeserver": "http://127.0.0.1:9", "server_name": "hs", "admins": ["@admin:hs"]
        }))
        .expect("config")
    }

    async fn say(hs: &Hs, sender: &str, body: &str) -> String {
        let (hub, state, cfg, id) = (FakeHub::new(), MemoryState::default(), cfg(), BridgeId::from("matrix"));
        let parts = Parts { hub: &hub, id: &id, cfg: &cfg, state: &state };
        let ev = json!({"type": "m.room.message", "room_id": "!r", "event_id": "$p", "sender": sender,
                        "content": {"msgtype": "m.text", "body": body}});
        handle(hs, parts, &ev).await.expect("handled");
        hs.posts().last().map(|(_, t)| t.clone()).unwrap_or_default()
    }

    /// A state whose portals are `!portal`.
    #[derive(Default)]
    struct PortalState(MemoryState);

    #[async_trait]
    impl BridgeState for PortalState {
        async fn get(&self, key: &str) -> Result<Option<String>, SubmitError> {
            self.0.get(key).await
        }
        async fn set(&self, key: &str, value: &str) -> Result<(), SubmitError> {
            self.0.set(key, value).await
        }
        async fn remote_chats(&self) -> Result<Vec<RemoteChatId>, SubmitError> {
            Ok(vec!["!portal".into()])
        }
    }

    #[tokio::test]
    async fn a_portals_people_are_counted_when_someone_joins_or_leaves_and_at_status() {
        let (hs, hub, state, cfg, id) = (Hs::default(), FakeHub::new(), PortalState::default(), cfg(), "matrix".into());
        let parts = Parts { hub: &hub, id: &id, cfg: &cfg, state: &state };
        let count = |room: &str| coi_bridge_api::member_count_key(&RemoteChatId(room.to_owned()));
        *hs.people.lock().expect("lock") = Some(vec!["Nina (@nina:hs)".into(), "Olga (@olga:hs)".into()]);
        for room in ["!portal", "!dm"] {
            let ev = json!({"type": "m.room.member", "room_id": room, "event_id": "$j", "sender": "@olga:hs",
                            "state_key": "@olga:hs", "content": {"membership": "join"}});
            handle(&hs, parts, &ev).await.expect("handled");
        }
        assert_eq!(state.get(&count("!portal")).await.expect("state").as_deref(), Some("2"));
        assert_eq!(state.get(&count("!dm")).await.expect("state"), None, "a direct room is no group to count");
        // Olga leaves: counted again.
        hs.people.lock().expect("lock").as_mut().expect("people").pop();
        let ev = json!({"type": "m.room.member", "room_id": "!portal", "event_id": "$l", "sender": "@olga:hs",
                        "state_key": "@olga:hs", "content": {"membership": "leave"}});
        handle(&hs, parts, &ev).await.expect("handled");
        assert_eq!(state.get(&count("!portal")).await.expect("state").as_deref(), Some("1"));
        // An admin's status counts too (the people who were there before the bot).
        *hs.people.lock().expect("lock") = Some((0..5).map(|i| format!("@p{i}:hs")).collect());
        let ev = json!({"type": "m.room.message", "room_id": "!portal", "event_id": "$s", "sender": "@admin:hs",
                        "content": {"msgtype": "m.text", "body": "!coi status"}});
        handle(&hs, parts, &ev).await.expect("handled");
        assert_eq!(state.get(&count("!portal")).await.expect("state").as_deref(), Some("5"));
    }

    #[tokio::test]
    async fn pairing_is_for_the_bridges_admins_and_the_rooms_admins() {
        let hs = Hs::default();
        let pair = "!coi pair @nina:hs nina@example.org";
        assert!(say(&hs, "@nina:hs", pair).await.starts_with("Sorry @nina:hs, only the bridge's admins"));
        // The fake hub cannot pair: the answer shows the command reached it.
        let reached = "That did not work: pairing is not available here";
        assert_eq!(say(&hs, "@admin:hs", pair).await, reached);
        assert_eq!(say(&hs, "@roomadmin:hs", pair).await, reached);
        for bad in ["!coi pair nina nina@example.org", "!coi pair @nina:hs", "!coi pair @nina:hs @x:hs"] {
            assert!(say(&hs, "@admin:hs", bad).await.starts_with("Usage: !coi pair @user:server ADDRESS"), "{bad}");
        }
    }
}
