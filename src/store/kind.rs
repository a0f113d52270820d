//! The kind of a recorded message as one enum, stored as the strings the database has always held, and what a backend writes for a message (kind, target, text, files), derived once for every backend.
//!
//! The strings are the contract with stores written by earlier versions: they are never
//! renamed (no migration rewrites them), and every string an earlier version wrote parses.

use coi_bridge_api::Attachment;

use crate::coi::{ChatMessage, GroupChange, Kind};

/// What a recorded message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A person's message (text and files).
    Text,
    /// A reaction; its text is the emoji and its target the message reacted to.
    Reaction,
    /// An edit; its target is the edited message.
    Edit,
    /// A delete; its target is the deleted message.
    Delete,
    /// A read receipt (MDN); its target is the message read.
    Receipt,
    /// A report mail (key update, sync): never delivered.
    Report,
    /// A member joined the group; the target is the address.
    MemberAdded,
    /// A member left or was removed; the target is the address.
    MemberRemoved,
    /// The group was renamed; the target is the new name.
    Renamed,
    /// The group's description changed; the target is the new text.
    Described,
    /// The group's image changed; the image is the message's attachment (none: removed).
    Avatar,
    /// The bridge's own word to the remote sides (what COI did not get).
    Notice,
    /// A Delta Chat post-message whose file went to its pre-message's row.
    MergedPost,
}

impl MessageKind {
    /// Every kind, for parsing and tests.
    pub const ALL: [MessageKind; 13] = [
        MessageKind::Text,
        MessageKind::Reaction,
        MessageKind::Edit,
        MessageKind::Delete,
        MessageKind::Receipt,
        MessageKind::Report,
        MessageKind::MemberAdded,
        MessageKind::MemberRemoved,
        MessageKind::Renamed,
        MessageKind::Described,
        MessageKind::Avatar,
        MessageKind::Notice,
        MessageKind::MergedPost,
    ];

    /// The string stored in `message.kind` (and used in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Reaction => "reaction",
            MessageKind::Edit => "edit",
            MessageKind::Delete => "delete",
            MessageKind::Receipt => "receipt",
            MessageKind::Report => "report",
            MessageKind::MemberAdded => "member-added",
            MessageKind::MemberRemoved => "member-removed",
            MessageKind::Renamed => "renamed",
            MessageKind::Described => "described",
            MessageKind::Avatar => "avatar",
            MessageKind::Notice => "notice",
            MessageKind::MergedPost => "merged-post",
        }
    }

    /// The kind a stored string names; `None` for a string no version of coi-bridge wrote.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of a parsed COI message, as coi-bridge records it.
    pub fn of_coi(kind: &Kind) -> Self {
        match kind {
            Kind::Text => MessageKind::Text,
            Kind::Reaction { .. } => MessageKind::Reaction,
            Kind::Edit { .. } => MessageKind::Edit,
            Kind::Delete { .. } => MessageKind::Delete,
            Kind::ReadReceipt { .. } => MessageKind::Receipt,
            Kind::Report => MessageKind::Report,
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MessageKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// A stored kind string this version does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown message kind {0:?} in the store (written by a newer coi-bridge?)")]
pub struct UnknownKind(pub String);

/// Compares with the stored string, so callers holding one (tests, logs) need no parse.
impl PartialEq<str> for MessageKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a backend writes for one message: derived here, so every backend records the
/// same kind, target and text for the same mail.
pub struct MessageRecord<'a> {
    pub kind: MessageKind,
    /// See [`super::StoredMessage::target`].
    pub target: Option<&'a str>,
    /// A reaction's text is its emoji.
    pub text: &'a str,
    /// A new group image, kept as the message's last attachment.
    group_avatar: Option<Attachment>,
    message: &'a ChatMessage,
}

impl<'a> MessageRecord<'a> {
    pub fn of(m: &'a ChatMessage) -> Self {
        // Group changes are kinds of their own, so bridges can mirror them: the target is
        // the member's address, or the new name.
        let change = m.group.as_ref().and_then(|g| g.change.as_ref().map(|c| (g, c))).filter(|_| m.kind == Kind::Text);
        let (kind, target) = match change {
            Some((_, GroupChange::MemberAdded(a))) => (MessageKind::MemberAdded, Some(a.as_str())),
            Some((_, GroupChange::MemberRemoved(a))) => (MessageKind::MemberRemoved, Some(a.as_str())),
            Some((g, GroupChange::NameChanged { .. })) => (MessageKind::Renamed, Some(g.name.as_str())),
            Some((_, GroupChange::DescriptionChanged { text })) => (MessageKind::Described, Some(text.as_str())),
            // The image itself is kept as the message's attachment (none: removed).
            Some((_, GroupChange::AvatarChanged(_))) => (MessageKind::Avatar, None),
            None => (MessageKind::of_coi(&m.kind), m.target()),
        };
        let text = match &m.kind {
            Kind::Reaction { emoji } => emoji.as_str(),
            Kind::Text | Kind::Edit { .. } | Kind::Delete { .. } | Kind::ReadReceipt { .. } | Kind::Report => {
                m.text.as_str()
            }
        };
        let group_avatar = match change {
            Some((_, GroupChange::AvatarChanged(Some(data)))) => {
                Some(Attachment { name: "group-avatar".into(), mime: image_mime(data).into(), data: data.clone() })
            }
            _ => None,
        };
        Self { kind, target, text, group_avatar, message: m }
    }

    /// The files to keep with the message, in order (`idx` 0, 1, …).
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.message.attachments.iter().chain(self.group_avatar.as_ref())
    }
}

/// An image's type from its first bytes (JPEG when unknown: Delta Chat sends JPEG).
pub fn image_mime(data: &[u8]) -> &'static str {
    match data.get(..4) {
        Some([0x89, b'P', b'N', b'G']) => "image/png",
        Some([b'G', b'I', b'F', _]) => "image/gif",
        Some([b'R', b'I', b'F', b'F']) => "image/webp",
        _ => "image/jpeg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::Group;

    /// The strings are what stores already hold: each kind keeps its string, and every
    /// string parses back to its kind.
    #[test]
    fn every_kind_keeps_the_string_earlier_versions_stored() {
        let stored = [
            "text",
            "reaction",
            "edit",
            "delete",
            "receipt",
            "report",
            "member-added",
            "member-removed",
            "renamed",
            "described",
            "avatar",
            "notice",
            "merged-post",
        ];
        let strings: Vec<&str> = MessageKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(strings, stored);
        for s in stored {
            let kind: MessageKind = s.parse().expect("parses");
            assert_eq!(kind, s);
        }
        assert_eq!("poll".parse::<MessageKind>(), Err(UnknownKind("poll".into())));
    }

    #[test]
    fn a_group_change_is_recorded_as_its_own_kind_with_its_target() {
        let group = |change| Some(Group { id: "g".into(), name: "New name".into(), change: Some(change) });
        let m = ChatMessage { group: group(GroupChange::MemberAdded("bob@x".into())), ..ChatMessage::default() };
        let r = MessageRecord::of(&m);
        assert_eq!((r.kind, r.target), (MessageKind::MemberAdded, Some("bob@x")));
        let m = ChatMessage { group: group(GroupChange::NameChanged { old: "Old".into() }), ..ChatMessage::default() };
        let r = MessageRecord::of(&m);
        assert_eq!((r.kind, r.target), (MessageKind::Renamed, Some("New name")));
        let png = vec![0x89, b'P', b'N', b'G', 1];
        let m = ChatMessage { group: group(GroupChange::AvatarChanged(Some(png))), ..ChatMessage::default() };
        let r = MessageRecord::of(&m);
        let files: Vec<(&str, &str)> = r.attachments().map(|a| (a.name.as_str(), a.mime.as_str())).collect();
        assert_eq!((r.kind, files), (MessageKind::Avatar, vec![("group-avatar", "image/png")]));
        // A reaction keeps its emoji as text and its target; it is not a group change.
        let m = ChatMessage {
            kind: Kind::Reaction { emoji: "🎉".into() },
            in_reply_to: Some("p@x".into()),
            text: "ignored".into(),
            group: group(GroupChange::MemberRemoved("bob@x".into())),
            ..ChatMessage::default()
        };
        let r = MessageRecord::of(&m);
        assert_eq!((r.kind, r.target, r.text), (MessageKind::Reaction, Some("p@x"), "🎉"));
    }
}
