//! The typed chat message the codec parses into and renders from.

use coi_bridge_api::Attachment;

use super::autocrypt::AutocryptHeader;

/// A mailbox: an address and the display name shown with it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Lower-cased `local@domain`.
    pub addr: String,
    pub name: Option<String>,
}

impl Mailbox {
    pub fn new(addr: &str, name: Option<&str>) -> Self {
        Self {
            addr: addr.trim().to_lowercase(),
            name: name.map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned),
        }
    }

    /// The name to show, falling back to the address.
    pub fn display(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.addr)
    }
}

/// A change to a group's membership or name, announced by one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    MemberAdded(String),
    MemberRemoved(String),
    NameChanged {
        old: String,
    },
    /// `Chat-Group-Description-Changed`; the new description (`Chat-Group-Description`).
    DescriptionChanged {
        text: String,
    },
    /// `Chat-Content: group-avatar-changed`; the new image (`Chat-Group-Avatar`), `None`
    /// when it was removed.
    AvatarChanged(Option<Vec<u8>>),
}

/// The group headers of a group message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// `Chat-Group-ID`: 11 to 32 base64url characters.
    pub id: String,
    /// `Chat-Group-Name`.
    pub name: String,
    pub change: Option<GroupChange>,
}

/// What a message does.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    /// A normal message: text and attachments.
    #[default]
    Text,
    /// RFC 9078 reaction to `in_reply_to`; an empty emoji retracts.
    Reaction { emoji: String },
    /// `Chat-Edit`: `text` replaces the target's text.
    Edit { target: String },
    /// `Chat-Delete`: the targets are deleted.
    Delete { targets: Vec<String> },
    /// A report that is not a read receipt (Delta Chat's key updates, sync reports):
    /// nothing to show.
    Report,
    /// A read receipt (MDN) for `original`, and maybe more.
    ReadReceipt { original: String, additional: Vec<String> },
}

/// One chat message, without transport or encryption details.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChatMessage {
    /// Without angle brackets.
    pub message_id: String,
    /// The mail carried `Chat-Version` (it came from a chat app).
    pub is_chat: bool,
    pub from: Mailbox,
    /// `Sender:`, set when `From` carries a relayed person's name.
    pub sender: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// Unix seconds from `Date`.
    pub date: Option<i64>,
    pub subject: Option<String>,
    /// The message this one answers or reacts to, without angle brackets. A text message
    /// answers only the message it quotes (Delta Chat's rule: see [`ChatMessage::quote`]);
    /// the parser keeps a bare threading `In-Reply-To` in `references` instead.
    pub in_reply_to: Option<String>,
    /// `References`, oldest first, without angle brackets: threading only, for chat
    /// assignment.
    pub references: Vec<String>,
    pub group: Option<Group>,
    pub kind: Kind,
    /// The message's own text, without the quote and the `-- ` footer.
    pub text: String,
    /// The quoted text (`> ` lines at the top), without the `> ` markers. A text message
    /// with a quote answers `in_reply_to`; rendered, a quote is what makes Delta Chat show
    /// a reply.
    pub quote: Option<String>,
    pub attachments: Vec<Attachment>,
    /// `Chat-Disposition-Notification-To`: the sender asks for read receipts.
    pub disposition_notification_to: Option<String>,
    /// The text came from an HTML part (there was no text/plain).
    pub from_html: bool,
    /// `Autocrypt:` (inside the encrypted part): the sender's key.
    pub autocrypt: Option<AutocryptHeader>,
    /// `Autocrypt-Gossip:`: other members' keys, as the sender knows them.
    pub gossip: Vec<AutocryptHeader>,
    /// `Chat-Group-Member-Fpr`: the members' key fingerprints, in `To` order.
    pub member_fprs: Vec<String>,
    /// `Chat-Group-Past-Members`: members who left or were removed (their fingerprints and
    /// timestamps follow the current members' in the lists).
    pub past_members: Vec<String>,
    /// `Chat-Group-Member-Timestamps`: when each member (in `To` order, then past members)
    /// was added or removed.
    pub member_timestamps: Vec<i64>,
    /// `Chat-Group-Member-Added-Fpr` / `-Removed-Fpr`: the key of the member the group
    /// change is about.
    pub change_fpr: Option<String>,
    /// `Chat-Post-Message-ID`: this is a pre-message; its file follows in that message.
    pub post_message_id: Option<String>,
    /// Outer `Chat-Is-Post-Message: 1`: this carries the file of an earlier pre-message.
    pub is_post_message: bool,
    /// `Secure-Join*` headers in order (name as written, value).
    pub secure_join: Vec<(String, String)>,
    /// `Chat-User-Avatar`: the sender's new avatar image; empty when removed (`0`).
    pub user_avatar: Option<Vec<u8>>,
}

impl ChatMessage {
    /// The message this one reacts to, edits or answers, if any. A text message answers
    /// only what it quotes: a parsed message without a quote has no target, whatever its
    /// threading headers say.
    pub fn target(&self) -> Option<&str> {
        match &self.kind {
            Kind::Edit { target } => Some(target),
            Kind::Delete { targets } => targets.first().map(String::as_str),
            Kind::ReadReceipt { original, .. } => Some(original),
            Kind::Text | Kind::Reaction { .. } => self.in_reply_to.as_deref(),
            Kind::Report => None,
        }
    }

    /// A short name for the kind, as stored and used in metric labels.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Text => "text",
            Kind::Reaction { .. } => "reaction",
            Kind::Edit { .. } => "edit",
            Kind::Delete { .. } => "delete",
            Kind::ReadReceipt { .. } => "receipt",
            Kind::Report => "report",
        }
    }
}

/// Something wrong with a message that was still parsed; logged and counted by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A part's transfer encoding could not be decoded cleanly.
    BadEncoding { part: String },
    /// A `Chat-Group-ID` that is not 11 to 32 base64url characters; ignored.
    BadGroupId(String),
    /// The message had no Message-ID; one was derived from its content.
    MissingMessageId,
    /// A part was dropped because the message holds too many parts.
    TooManyParts,
}

impl Problem {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Problem::BadEncoding { .. } => "bad_encoding",
            Problem::BadGroupId(_) => "bad_group_id",
            Problem::MissingMessageId => "missing_message_id",
            Problem::TooManyParts => "too_many_parts",
        }
    }
}

impl ChatMessage {
    /// The value of a `Secure-Join*` header, by case-insensitive name.
    pub fn secure_join_header(&self, name: &str) -> Option<&str> {
        self.secure_join.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
