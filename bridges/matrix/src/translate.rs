//! Matrix event → hub event: the one translation appservice mode and bot mode share, so both bridge every event kind the same way.
//!
//! What differs between the modes (how a file is fetched, how a member is named, who the
//! bridge's own accounts are, how a notice is posted) is behind [`Homeserver`]; what an
//! event means for the hub is decided here only.

use async_trait::async_trait;
use coi_bridge_api::{Attachment, DeadLetterKind, Failure, Person, RemoteEvent};
use serde_json::Value;

use crate::config::MatrixConfig;
use crate::html;

/// The command prefix in Matrix rooms.
pub const PREFIX: &str = "!coi";

/// The file message types: their content names a file (`url`, or `file` when encrypted).
const FILE_TYPES: &[&str] = &["m.image", "m.file", "m.video", "m.audio"];

/// What a mode does for the translation: the homeserver as its account sees it.
#[async_trait]
pub trait Homeserver: Send + Sync {
    /// The bridge's own accounts (its bot, its ghosts): what they send is an echo.
    fn is_ours(&self, mxid: &str) -> bool;
    /// A room member as the hub names them.
    async fn person(&self, room: &str, mxid: &str) -> Person;
    /// The bytes of the file a content names (`url`, or `file` when encrypted), at most
    /// `max` bytes. A transient failure makes the event be tried again.
    async fn fetch(&self, content: &Value, max: u64) -> Result<Vec<u8>, Failure>;
    /// Who sent `event_id`; `None` when the bridge's account cannot see it.
    async fn sender_of(&self, room: &str, event_id: &str) -> Result<Option<String>, Failure>;
    /// Whether `user` may redact other people's events in `room`.
    async fn may_redact_others(&self, room: &str, user: &str) -> Result<bool, Failure>;
    /// Posts an `m.notice` as the bridge's account; the same `key` posts it once.
    async fn notice(&self, room: &str, key: &str, text: &str) -> Result<(), Failure>;
    /// Posts a PNG as the bridge's account.
    async fn image(&self, room: &str, key: &str, name: &str, png: Vec<u8>) -> Result<(), Failure>;
    /// The room's name, if it has one.
    async fn room_name(&self, room: &str) -> Option<String>;
    /// The room's joined people that are not the bridge's own accounts, shown as
    /// "Name (@mxid)"; `None` when the homeserver does not say.
    async fn matrix_people(&self, room: &str) -> Option<Vec<String>>;
    /// Whether `user` is an admin of `room`: may change its power levels.
    async fn room_admin(&self, room: &str, user: &str) -> Result<bool, Failure>;
    /// A new direct room of the bridge's account with `user` (invited); its id.
    async fn open_direct(&self, user: &str) -> Result<String, Failure>;
    /// Whether the direct room `room` with `user`, opened before, can still carry a word to
    /// them, inviting them again when they left it; `false` when the bridge's account is
    /// not in it any more (a new one is needed).
    async fn reopen_direct(&self, room: &str, user: &str) -> Result<bool, Failure>;
}

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
/// the plain body, without its reply fallback when it is a reply (a quote typed into a
/// plain message is the sender's text). `None` when there is neither.
pub fn text_of(content: &Value) -> Option<String> {
    if content["format"] == "org.matrix.custom.html"
        && let Some(formatted) = content["formatted_body"].as_str()
    {
        return Some(html::to_text(formatted));
    }
    let body = content["body"].as_str()?;
    let is_reply = content["m.relates_to"]["m.in_reply_to"].is_object();
    Some(if is_reply { strip_reply_fallback(body) } else { body }.to_owned())
}

/// Whether a message body is a `!coi` command.
pub fn is_command(body: &str) -> bool {
    body == PREFIX || body.starts_with("!coi ")
}

/// Every hub event one Matrix event (a room event, or an `m.receipt`) makes; none for
/// what is not bridged. An edit or redaction comes out unchecked: see [`crate::authority`].
pub async fn translate(hs: &dyn Homeserver, cfg: &MatrixConfig, ev: &Value) -> Result<Vec<RemoteEvent>, Failure> {
    if ev["type"] == "m.receipt" {
        return Ok(receipts(hs, cfg, ev).await);
    }
    Ok(one(hs, cfg, ev).await?.into_iter().collect())
}

/// `m.read` receipts of the bridge's owners, one event per receipt.
async fn receipts(hs: &dyn Homeserver, cfg: &MatrixConfig, ev: &Value) -> Vec<RemoteEvent> {
    let mut out = Vec::new();
    let (Some(room), Some(content)) = (ev["room_id"].as_str(), ev["content"].as_object()) else { return out };
    for (event_id, kinds) in content {
        let Some(readers) = kinds["m.read"].as_object() else { continue };
        for reader in readers.keys().filter(|r| cfg.is_owner(r)) {
            out.push(RemoteEvent::ReadReceipt {
                chat: room.into(),
                up_to: event_id.as_str().into(),
                reader: hs.person(room, reader).await,
            });
        }
    }
    out
}

/// A file's bytes as an attachment, or why it is not bridged (said in its place).
async fn attachment(
    hs: &dyn Homeserver,
    cfg: &MatrixConfig,
    content: &Value,
    name: &str,
    mime: &str,
) -> Result<Result<Attachment, String>, Failure> {
    let max = cfg.max_file_bytes;
    if let Some(size) = content["info"]["size"].as_u64().filter(|s| *s > max) {
        return Ok(Err(format!("{name} is {size} bytes, over max_file_bytes ({max})")));
    }
    match hs.fetch(content, max).await {
        Ok(data) if data.len() as u64 > max => {
            Ok(Err(format!("{name} is {} bytes, over max_file_bytes ({max})", data.len())))
        }
        Ok(data) => Ok(Ok(Attachment { name: name.to_owned(), mime: mime.to_owned(), data })),
        Err(Failure::Permanent(_, why)) => Ok(Err(why)),
        Err(transient) => Err(transient),
    }
}

/// A message's text and files. A file with a `filename` other than its `body` carries
/// the body as its caption.
async fn message_parts(
    hs: &dyn Homeserver,
    cfg: &MatrixConfig,
    content: &Value,
) -> Result<Option<(String, Vec<Attachment>)>, Failure> {
    let is_file = content["msgtype"].as_str().is_some_and(|t| FILE_TYPES.contains(&t));
    if !is_file {
        return Ok(text_of(content).map(|t| (t, Vec::new())));
    }
    let body = content["body"].as_str().unwrap_or_default();
    let filename = content["filename"].as_str().filter(|f| !f.is_empty());
    let name = filename.unwrap_or(if body.is_empty() { "file" } else { body });
    let caption = match filename {
        Some(f) if f != body => text_of(content).unwrap_or_default(),
        _ => String::new(),
    };
    let mime = content["info"]["mimetype"].as_str().unwrap_or("application/octet-stream");
    Ok(Some(match attachment(hs, cfg, content, name, mime).await? {
        Ok(a) => (caption, vec![a]),
        Err(why) if caption.is_empty() => (format!("[file not bridged: {why}]"), Vec::new()),
        Err(why) => (format!("[file not bridged: {why}]\n{caption}"), Vec::new()),
    }))
}

/// One room event as the hub sees it; `None` for what is not bridged.
async fn one(hs: &dyn Homeserver, cfg: &MatrixConfig, ev: &Value) -> Result<Option<RemoteEvent>, Failure> {
    let (Some(sender), Some(room), Some(event_id), Some(kind)) =
        (ev["sender"].as_str(), ev["room_id"].as_str(), ev["event_id"].as_str(), ev["type"].as_str())
    else {
        return Ok(None);
    };
    if hs.is_ours(sender) {
        return Ok(None); // our own relays: no echo
    }
    let (chat, id) = (room.into(), event_id.into());
    let content = &ev["content"];
    let relates = &content["m.relates_to"];
    let state = ev["state_key"] == "";
    Ok(match kind {
        "m.room.message" if relates["rel_type"] == "m.replace" => {
            let (Some(target), Some(new_text)) = (relates["event_id"].as_str(), text_of(&content["m.new_content"]))
            else {
                return Ok(None);
            };
            Some(RemoteEvent::Edit { chat, id, target: target.into(), sender: hs.person(room, sender).await, new_text })
        }
        "m.room.message" => {
            let Some((text, attachments)) = message_parts(hs, cfg, content).await? else { return Ok(None) };
            Some(RemoteEvent::Message {
                chat,
                id,
                sender: hs.person(room, sender).await,
                text,
                attachments,
                reply_to: relates["m.in_reply_to"]["event_id"].as_str().map(Into::into),
            })
        }
        "m.reaction" => {
            let (Some(target), Some(emoji)) = (relates["event_id"].as_str(), relates["key"].as_str()) else {
                return Ok(None);
            };
            let sender = hs.person(room, sender).await;
            Some(RemoteEvent::Reaction { chat, id, target: target.into(), sender, emoji: emoji.to_owned() })
        }
        "m.room.redaction" => {
            let Some(target) = ev["redacts"].as_str().or(content["redacts"].as_str()) else { return Ok(None) };
            Some(RemoteEvent::Delete { chat, id, target: target.into(), sender: hs.person(room, sender).await })
        }
        "m.room.name" if state => {
            let Some(name) = content["name"].as_str() else { return Ok(None) };
            Some(RemoteEvent::Renamed { chat, id, sender: hs.person(room, sender).await, name: name.to_owned() })
        }
        "m.room.topic" if state => {
            let text = content["topic"].as_str().unwrap_or_default().to_owned();
            Some(RemoteEvent::Described { chat, id, sender: hs.person(room, sender).await, text })
        }
        "m.room.avatar" if state => {
            let image = match content["url"].as_str() {
                Some(_) => {
                    let mime = content["info"]["mimetype"].as_str().unwrap_or("image/jpeg");
                    match attachment(hs, cfg, content, "group-avatar", mime).await? {
                        Ok(a) => Some(a),
                        Err(why) => {
                            let reason = format!("the room's new image could not be fetched: {why}");
                            return Err(Failure::Permanent(DeadLetterKind::Failed, reason));
                        }
                    }
                }
                None => None,
            };
            Some(RemoteEvent::AvatarChanged { chat, id, sender: hs.person(room, sender).await, image })
        }
        "m.room.member" => member_removed(hs, cfg, ev, sender, room, event_id).await?,
        _ => None,
    })
}

/// An admin removing (kick or ban) a COI person's ghost removes them from the COI group;
/// anyone else is told that only admins can.
async fn member_removed(
    hs: &dyn Homeserver,
    cfg: &MatrixConfig,
    ev: &Value,
    sender: &str,
    room: &str,
    event_id: &str,
) -> Result<Option<RemoteEvent>, Failure> {
    let Some(target) = ev["state_key"].as_str() else { return Ok(None) };
    let Some(member) = crate::registration::addr_of_ghost(&cfg.ghost_prefix, &cfg.server_name, target) else {
        return Ok(None);
    };
    if !matches!(ev["content"]["membership"].as_str(), Some("leave" | "ban")) || target == sender {
        return Ok(None);
    }
    if !cfg.is_admin(sender) {
        tracing::warn!(sender, room, member, "a non-admin removed a COI person's ghost; not mirrored");
        let text = format!("{member} is still in the COI group: only the bridge's admins can remove COI people.");
        if let Err(e) = hs.notice(room, &format!("kick-{event_id}"), &text).await {
            tracing::warn!(room, error = %e, "could not post the notice");
        }
        return Ok(None);
    }
    let sender = hs.person(room, sender).await;
    Ok(Some(RemoteEvent::MemberRemoved { chat: room.into(), id: event_id.into(), sender, member }))
}

#[cfg(test)]
mod tests {
    use super::{Homeserver, strip_reply_fallback, text_of, translate};
    use crate::config::MatrixConfig;
    use async_trait::async_trait;
    use coi_bridge_api::{DeadLetterKind, Failure, Person, RemoteEvent};
    use serde_json::{Value, json};
    use std::sync::Mutex;

    /// A homeserver whose files are `data` (or fail for good), recording notices.
    struct Room {
        data: Option<Vec<u8>>,
        notices: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Homeserver for Room {
        fn is_ours(&self, mxid: &str) -> bool {
            mxid == "@bot:hs"
        }
        async fn person(&self, _room: &str, mxid: &str) -> Person {
            Person { id: mxid.into(), display_name: mxid.into() }
        }
        async fn fetch(&self, _content: &Value, _max: u64) -> Result<Vec<u8>, Failure> {
            self.data.clone().ok_or_else(|| Failure::Permanent(DeadLetterKind::Failed, "404".into()))
        }
        async fn sender_of(&self, _room: &str, _event_id: &str) -> Result<Option<String>, Failure> {
            Ok(None)
        }
        async fn may_redact_others(&self, _room: &str, _user: &str) -> Result<bool, Failure> {
            Ok(false)
        }
        async fn notice(&self, _room: &str, _key: &str, text: &str) -> Result<(), Failure> {
            self.notices.lock().expect("lock").push(text.to_owned());
            Ok(())
        }
        async fn image(&self, _room: &str, _key: &str, _name: &str, _png: Vec<u8>) -> Result<(), Failure> {
            Ok(())
        }
        async fn room_name(&self, _room: &str) -> Option<String> {
            None
        }
        async fn matrix_people(&self, _room: &str) -> Option<Vec<String>> {
            None
        }
        async fn room_admin(&self, _room: &str, user: &str) -> Result<bool, Failure> {
            Ok(user == "@admin:hs")
        }
        async fn open_direct(&self, user: &str) -> Result<String, Failure> {
            Ok(format!("!dm-{user}"))
        }
        async fn reopen_direct(&self, _room: &str, _user: &str) -> Result<bool, Failure> {
            Ok(true)
        }
    }

    fn cfg() -> MatrixConfig {
        serde_json::from_value(json!({
            "id": "matrix", "homeserver": "http://127.0.0.1:9", "server_name": "hs", "admins": ["@admin:hs"],
            "max_file_bytes": 10
        }))
        .expect("config")
    }

    fn ev(kind: &str, sender: &str, content: Value) -> Value {
        json!({"type": kind, "room_id": "!r", "event_id": "$e", "sender": sender, "content": content})
    }

    #[tokio::test]
    async fn files_keep_their_caption_and_oversized_ones_are_named() {
        let room = Room { data: Some(vec![1, 2, 3]), notices: Mutex::default() };
        let pic = json!({"msgtype": "m.image", "filename": "a.png", "body": "look", "url": "mxc://hs/a",
                         "info": {"mimetype": "image/png"}});
        let out = translate(&room, &cfg(), &ev("m.room.message", "@u:hs", pic)).await.expect("translated");
        assert!(
            matches!(&out[..], [RemoteEvent::Message { text, attachments, .. }]
            if text == "look" && attachments[0].name == "a.png" && attachments[0].data == [1, 2, 3]),
            "{out:?}"
        );
        let big = json!({"msgtype": "m.file", "body": "big.bin", "url": "mxc://hs/b", "info": {"size": 11}});
        let out = translate(&room, &cfg(), &ev("m.room.message", "@u:hs", big)).await.expect("translated");
        assert!(
            matches!(&out[..], [RemoteEvent::Message { text, attachments, .. }]
            if text.starts_with("[file not bridged: big.bin is 11 bytes") && attachments.is_empty()),
            "{out:?}"
        );
        let echo = ev("m.room.message", "@bot:hs", json!({"msgtype": "m.text", "body": "mine"}));
        assert!(translate(&room, &cfg(), &echo).await.expect("translated").is_empty(), "no echo");
    }

    #[tokio::test]
    async fn only_admins_remove_ghosts_and_a_lost_room_image_is_set_aside() {
        let room = Room { data: None, notices: Mutex::default() };
        let kick = |sender: &str| {
            let mut e = ev("m.room.member", sender, json!({"membership": "leave"}));
            e["state_key"] = json!("@coi_alice=example.org:hs");
            e
        };
        let out = translate(&room, &cfg(), &kick("@admin:hs")).await.expect("translated");
        assert!(matches!(&out[..], [RemoteEvent::MemberRemoved { member, .. }] if member == "alice@example.org"));
        assert!(translate(&room, &cfg(), &kick("@else:hs")).await.expect("translated").is_empty());
        assert_eq!(room.notices.lock().expect("lock").len(), 1, "the non-admin is told");
        let mut avatar = ev("m.room.avatar", "@admin:hs", json!({"url": "mxc://hs/gone"}));
        avatar["state_key"] = json!("");
        let err = translate(&room, &cfg(), &avatar).await.expect_err("not fetched");
        assert!(matches!(err, Failure::Permanent(DeadLetterKind::Failed, _)), "{err:?}");
        let receipt = json!({"type": "m.receipt", "room_id": "!r",
            "content": {"$x": {"m.read": {"@admin:hs": {}, "@else:hs": {}}}}});
        let out = translate(&room, &cfg(), &receipt).await.expect("translated");
        assert!(matches!(&out[..], [RemoteEvent::ReadReceipt { reader, .. }] if reader.id.as_str() == "@admin:hs"));
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
        let reply = json!({"body": "> <@a:hs> q\n\nplain", "m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}});
        assert_eq!(text_of(&reply).as_deref(), Some("plain"));
        // Not a reply: the quote is what the sender typed, kept whole.
        let typed = json!({"body": "> the seeds need frost\n> says the book\n\nreally?"});
        assert_eq!(text_of(&typed).as_deref(), Some("> the seeds need frost\n> says the book\n\nreally?"));
        assert_eq!(text_of(&json!({"msgtype": "m.text"})), None);
    }
}
