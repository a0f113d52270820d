//! Pure rules: which chat a mail belongs to, and whom it shows to be in that chat.

use crate::coi::{ChatMessage, GroupChange, Kind};
use crate::store::{ChatKind, ChatRef, StoredMessage};

/// Picks the chat: a valid `Chat-Group-ID` wins; then the chat of a known parent
/// (In-Reply-To/References); else the 1:1 chat with the other person.
pub fn chat_for(msg: &ChatMessage, me: &str, parent: Option<ChatRef>) -> ChatRef {
    if let Some(g) = &msg.group {
        return ChatRef { kind: ChatKind::Group, key: g.id.clone(), name: g.name.clone() };
    }
    if let Some(parent) = parent {
        return parent;
    }
    if msg.from.addr == me {
        // Our own mail seen again (another device, or sent to ourselves).
        let peer = msg.to.iter().chain(&msg.cc).find(|m| m.addr != me).unwrap_or(&msg.from);
        return ChatRef { kind: ChatKind::Single, key: peer.addr.clone(), name: peer.display().to_owned() };
    }
    ChatRef { kind: ChatKind::Single, key: msg.from.addr.clone(), name: msg.from.display().to_owned() }
}

/// Where mail goes that cannot be attributed to its sender (unsigned, or signed with
/// another key): a 1:1 chat of its own, apart from the contact's real chat.
pub fn unattributed_chat(from: &str) -> ChatRef {
    ChatRef { kind: ChatKind::Single, key: format!("unverified:{from}"), name: format!("{from} (unverified)") }
}

/// The Message-IDs to look up for the parent's chat, nearest first.
pub fn parent_ids(msg: &ChatMessage) -> Vec<String> {
    let mut ids: Vec<String> = msg.in_reply_to.iter().cloned().collect();
    if let Some(t) = msg.target() {
        ids.push(t.to_owned());
    }
    ids.extend(msg.references.iter().rev().cloned());
    ids.dedup();
    ids
}

/// The message a text message answers by quoting it, which must be known to show the
/// message as a reply (see [`quote_of_unknown`]).
pub fn quoted_parent(msg: &ChatMessage) -> Option<&str> {
    match msg.kind {
        Kind::Text if msg.quote.is_some() => msg.in_reply_to.as_deref(),
        _ => None,
    }
}

/// A quote of a message this bridge never saw (sent before it joined, or in another
/// chat): Delta Chat shows the quoted text with no message to go to, and no bridge can
/// point at one. The quote goes back into the text, so every side still shows it, and the
/// message answers nothing; its `In-Reply-To` still threads (kept in `references`).
pub fn quote_of_unknown(msg: &mut ChatMessage) {
    let Some(quote) = msg.quote.take() else { return };
    if let Some(parent) = msg.in_reply_to.take()
        && !msg.references.contains(&parent)
    {
        msg.references.push(parent);
    }
    let mut text: String = quote.split('\n').map(|l| format!("> {l}\n")).collect();
    if msg.text.is_empty() {
        text.pop();
    } else {
        text.push('\n');
        text.push_str(&msg.text);
    }
    msg.text = text;
}

/// What a reply to `parent` quotes: its text, or for a file without text what Delta Chat
/// quotes then (a summary such as "Image", never an empty quote: without a quote Delta Chat
/// shows no reply).
pub fn quote_of(parent: &StoredMessage) -> String {
    if !parent.text.is_empty() {
        return parent.text.clone();
    }
    let Some(file) = parent.attachments.first() else { return "…".to_owned() };
    let kind = file.mime.split('/').next().unwrap_or_default();
    match (kind, file.mime.as_str()) {
        (_, "image/gif") => "GIF".to_owned(),
        ("image", _) => "Image".to_owned(),
        ("video", _) => "Video".to_owned(),
        ("audio", _) => "Audio".to_owned(),
        _ => file.name.clone(),
    }
}

/// (added, removed) member addresses, without our own.
pub fn member_changes(msg: &ChatMessage, me: &str) -> (Vec<String>, Vec<String>) {
    let removed: Vec<String> = match msg.group.as_ref().and_then(|g| g.change.as_ref()) {
        Some(GroupChange::MemberRemoved(a)) => vec![a.clone()],
        _ => Vec::new(),
    };
    let mut added: Vec<String> =
        std::iter::once(&msg.from).chain(msg.to.iter()).chain(msg.cc.iter()).map(|m| m.addr.clone()).collect();
    if let Some(GroupChange::MemberAdded(a)) = msg.group.as_ref().and_then(|g| g.change.as_ref()) {
        added.push(a.clone());
    }
    added.retain(|a| a != me && !removed.contains(a));
    added.sort();
    added.dedup();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::{Group, Mailbox};

    fn msg(from: &str, to: &[&str]) -> ChatMessage {
        ChatMessage {
            message_id: "m@x".into(),
            from: Mailbox::new(from, Some("Alice")),
            to: to.iter().map(|a| Mailbox::new(a, None)).collect(),
            ..ChatMessage::default()
        }
    }

    #[test]
    fn group_id_wins_over_parent() {
        let mut m = msg("alice@x.org", &["me@x.org"]);
        m.group = Some(Group { id: "abcdefghijkl".into(), name: "G".into(), change: None });
        let parent = ChatRef { kind: ChatKind::Single, key: "bob@x.org".into(), name: "Bob".into() };
        assert_eq!(chat_for(&m, "me@x.org", Some(parent)).key, "abcdefghijkl");
    }

    #[test]
    fn parent_then_sender() {
        let m = msg("alice@x.org", &["me@x.org"]);
        let parent = ChatRef { kind: ChatKind::Group, key: "grp".into(), name: "G".into() };
        assert_eq!(chat_for(&m, "me@x.org", Some(parent.clone())), parent);
        let one = chat_for(&m, "me@x.org", None);
        assert_eq!((one.kind, one.key.as_str(), one.name.as_str()), (ChatKind::Single, "alice@x.org", "Alice"));
    }

    #[test]
    fn own_mail_goes_to_the_peer() {
        let m = msg("me@x.org", &["me@x.org", "bob@x.org"]);
        assert_eq!(chat_for(&m, "me@x.org", None).key, "bob@x.org");
    }

    #[test]
    fn a_quote_of_an_unknown_message_stays_in_the_text_and_answers_nothing() {
        let mut m = msg("alice@x.org", &["me@x.org"]);
        m.in_reply_to = Some("gone@x".into());
        m.references = vec!["root@x".into()];
        m.quote = Some("what Bob said\nin two lines".into());
        m.text = "I agree".into();
        assert_eq!(quoted_parent(&m), Some("gone@x"));
        quote_of_unknown(&mut m);
        assert_eq!(m.text, "> what Bob said\n> in two lines\n\nI agree");
        assert_eq!((m.quote.as_deref(), m.in_reply_to.as_deref(), m.target()), (None, None, None));
        assert_eq!(m.references, vec!["root@x".to_string(), "gone@x".to_string()], "still threads");

        let mut bare = msg("alice@x.org", &["me@x.org"]);
        bare.in_reply_to = Some("p@x".into());
        bare.quote = Some("only a quote".into());
        quote_of_unknown(&mut bare);
        assert_eq!(bare.text, "> only a quote");

        let mut reaction = msg("alice@x.org", &["me@x.org"]);
        reaction.kind = Kind::Reaction { emoji: "👍".into() };
        reaction.in_reply_to = Some("p@x".into());
        assert_eq!(quoted_parent(&reaction), None, "a reaction's target is no quote");
    }

    #[test]
    fn a_reply_quotes_a_file_without_text_by_its_kind() {
        use crate::store::{Direction, StoredAttachment};
        let parent = |text: &str, mime: &str| StoredMessage {
            message_id: "p@x".into(),
            chat_id: 1,
            direction: Direction::In,
            kind: crate::store::MessageKind::Text,
            from_addr: "alice@x.org".into(),
            from_name: "Alice".into(),
            text: text.into(),
            in_reply_to: None,
            target: None,
            attachments: vec![StoredAttachment { name: "notes.pdf".into(), mime: mime.into(), data: vec![1] }],
            security: "verified".into(),
            awaits_file: false,
        };
        assert_eq!(quote_of(&parent("look", "image/png")), "look");
        assert_eq!(quote_of(&parent("", "image/png")), "Image");
        assert_eq!(quote_of(&parent("", "application/pdf")), "notes.pdf");
    }

    #[test]
    fn members_exclude_me_and_the_removed() {
        let mut m = msg("alice@x.org", &["me@x.org", "bob@x.org", "carol@x.org"]);
        m.group = Some(Group {
            id: "abcdefghijkl".into(),
            name: "G".into(),
            change: Some(GroupChange::MemberRemoved("carol@x.org".into())),
        });
        let (added, removed) = member_changes(&m, "me@x.org");
        assert_eq!(added, vec!["alice@x.org".to_string(), "bob@x.org".to_string()]);
        assert_eq!(removed, vec!["carol@x.org".to_string()]);
    }
}
