//! The contract between the coi-bridge core and its bridge modules: ids, events, errors, the `Bridge` and `Hub` traits.
//!
//! A bridge sees only this crate. It never touches IMAP, SMTP or SQL. Remote ids are
//! opaque strings to the core; a bridge chooses their shape and the core only stores and
//! compares them.
//!
//! Rules every bridge follows:
//! - `new(config)` does no network I/O; [`Bridge::run`] connects and reconnects by itself
//!   until [`BridgeContext::shutdown`] is cancelled.
//! - A bridge advances its own cursor (sync token, update offset) only after
//!   [`Hub::submit`] returned `Ok`: `Ok` means the event is durably queued, or set aside
//!   with [`Hub::dead_letter`] after it failed for good or [`deadletter::MAX_ATTEMPTS`] times.
//! - Delivery is at least once. The core dedupes by ids, so the effect is exactly once.
//!
//! Each bridge crate exports one [`BridgeFactory`] ([`factory`]): the core's registry
//! lists them, one line each, and builds every `[[bridge]]` through its kind's factory.

pub mod deadletter;
pub mod factory;
pub mod relay;
pub mod testing;

pub use deadletter::{DeadLetter, DeadLetterKind, Failure};
pub use factory::{BridgeFactory, BridgeSection, Built, CoreHandles, Environment, SharedRoutes};
pub use relay::{Drain, EventRelay, Relayed};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as the string the store keeps.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

opaque_id!(
    /// A configured bridge instance (`[[bridge]] id`); scopes every row the bridge owns.
    BridgeId
);
opaque_id!(
    /// A chat or room on the remote network (Matrix room id, Telegram chat id, ...).
    RemoteChatId
);
opaque_id!(
    /// A message on the remote network (Matrix event id, Telegram message id, ...).
    RemoteMsgId
);
opaque_id!(
    /// A person on the remote network (MXID, Telegram user id, ...).
    RemoteUserId
);
opaque_id!(
    /// Identifies one delivery (one COI message to one bridge, or one fallback of it),
    /// the same on every retry.
    DeliveryKey
);

/// How a side counts the length of a text (see [`TextLimit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextUnit {
    /// UTF-16 code units, as Telegram counts: a character outside the BMP is two.
    Utf16,
    /// UTF-8 bytes.
    Utf8,
    /// UTF-8 bytes once escaped for a JSON string or an HTML body, whichever costs more
    /// for each character (`&` is 5 as `&amp;`, `"` 6 as `&quot;`, a line break 4 as
    /// `<br>`, another control character 6 as `\u00XX`): what a text adds to a Matrix event.
    Escaped,
}

impl TextUnit {
    /// What one character counts.
    pub fn cost(self, c: char) -> usize {
        match self {
            Self::Utf16 => c.len_utf16(),
            Self::Utf8 => c.len_utf8(),
            Self::Escaped => match c {
                '"' => 6,
                '&' | '\'' => 5,
                '<' | '>' | '\n' => 4,
                '\\' | '\r' | '\t' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            },
        }
    }

    /// How long `s` is in this unit.
    pub fn len(self, s: &str) -> usize {
        s.chars().map(|c| self.cost(c)).sum()
    }
}

/// The longest text one remote message carries, as the side counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLimit {
    pub max: usize,
    pub unit: TextUnit,
}

/// What a bridge can carry natively. The core reads it before every delivery and degrades
/// what a side cannot do: a reaction becomes the nearest allowed one or a short text, a long
/// text several messages (or a text file), an edit a correction message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub edits: bool,
    pub deletes: bool,
    pub reactions: bool,
    pub replies: bool,
    pub media: bool,
    /// Each COI person appears as their own remote user (puppet), not through a relay bot.
    pub ghosts: bool,
    /// The largest file the remote side accepts, in bytes; `None` means no known limit.
    pub max_file_size: Option<u64>,
    /// The longest text of one message, including what the bridge adds itself (an edit
    /// marker, a copy in `m.new_content`), but not the sender's name prefix: the core keeps
    /// room for that. A longer text is split by the core into parts, in order; the bridge
    /// never sees one over the limit. `None`: no known limit.
    pub max_text: Option<TextLimit>,
    /// The reactions the side accepts, spelled as it spells them; `None`: any. The core
    /// sends another as the nearest allowed one, or as a short text.
    pub allowed_reactions: Option<&'static [&'static str]>,
}

/// A person as the other side should show them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: RemoteUserId,
    pub display_name: String,
}

/// Who a COI-side sender is, as a bridge should show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// A COI person: a ghost of their own, or their name as a prefix.
    Person,
    /// The bridge itself (notices, its own messages): no name.
    Bridge,
    /// Someone the bridge relays from another network ("Tom (Telegram)"): the bridge
    /// speaks, with their name.
    Relayed,
}

impl Person {
    /// Sorts a COI sender: mail from the bridge's own address is the bridge itself when
    /// it carries the bridge's own name, else a person relayed from another network.
    pub fn speaker(&self, bridge_addr: &str, bridge_name: &str) -> Speaker {
        if !self.id.as_str().eq_ignore_ascii_case(bridge_addr) {
            Speaker::Person
        } else if self.display_name.is_empty() || self.display_name == bridge_name {
            Speaker::Bridge
        } else {
            Speaker::Relayed
        }
    }
}

/// A file carried with a message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub mime: String,
    pub data: Vec<u8>,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Something that happened on a remote network, handed to the core with [`Hub::submit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteEvent {
    Message {
        chat: RemoteChatId,
        id: RemoteMsgId,
        sender: Person,
        text: String,
        attachments: Vec<Attachment>,
        reply_to: Option<RemoteMsgId>,
    },
    /// `id` is the edit's own remote id (dedupes a repeated submit); `target` the edited message.
    Edit {
        chat: RemoteChatId,
        id: RemoteMsgId,
        target: RemoteMsgId,
        sender: Person,
        new_text: String,
    },
    Delete {
        chat: RemoteChatId,
        id: RemoteMsgId,
        target: RemoteMsgId,
        sender: Person,
    },
    Reaction {
        chat: RemoteChatId,
        id: RemoteMsgId,
        target: RemoteMsgId,
        sender: Person,
        /// The emoji; empty retracts the sender's reaction.
        emoji: String,
    },
    ReadReceipt {
        chat: RemoteChatId,
        up_to: RemoteMsgId,
        reader: Person,
    },
    /// The remote chat got a new name.
    Renamed {
        chat: RemoteChatId,
        id: RemoteMsgId,
        sender: Person,
        name: String,
    },
    /// The remote chat got a new topic.
    Described {
        chat: RemoteChatId,
        id: RemoteMsgId,
        sender: Person,
        text: String,
    },
    /// The remote chat got a new image (`None`: removed).
    AvatarChanged {
        chat: RemoteChatId,
        id: RemoteMsgId,
        sender: Person,
        image: Option<Attachment>,
    },
    /// The remote chat now lives under another id (Telegram's group → supergroup
    /// upgrade); its portal follows.
    Migrated {
        chat: RemoteChatId,
        new_chat: RemoteChatId,
    },
    /// A COI member's puppet was removed from the remote chat by an admin; `member` is
    /// the COI address the bridge mapped the puppet back to.
    MemberRemoved {
        chat: RemoteChatId,
        id: RemoteMsgId,
        sender: Person,
        member: String,
    },
}

impl RemoteEvent {
    /// The remote chat the event belongs to.
    pub fn chat(&self) -> &RemoteChatId {
        match self {
            Self::Message { chat, .. }
            | Self::Edit { chat, .. }
            | Self::Delete { chat, .. }
            | Self::Reaction { chat, .. }
            | Self::ReadReceipt { chat, .. }
            | Self::Renamed { chat, .. }
            | Self::Described { chat, .. }
            | Self::Migrated { chat, .. }
            | Self::AvatarChanged { chat, .. }
            | Self::MemberRemoved { chat, .. } => chat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(Command::parse(" bridge"), Ok(Command::Bridge));
        assert_eq!(Command::parse(""), Ok(Command::Help));
        assert_eq!(Command::parse("link https://i.delta.chat/#X"), Ok(Command::Link("https://i.delta.chat/#X".into())));
        assert!(Command::parse("link").is_err());
        assert_eq!(Command::parse("start mailto:a@b.org"), Ok(Command::Start("a@b.org".into())));
        assert!(Command::parse("start alice").is_err());
        assert!(Command::parse("frobnicate").unwrap_err().contains("frobnicate"));
    }
}

/// What the core asks a bridge to post. Reply targets are already translated to the
/// bridge's own ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outgoing {
    Message {
        /// Who wrote it on the COI side, for ghosts or relay prefixes.
        sender: Person,
        text: String,
        attachments: Vec<Attachment>,
        reply_to: Option<RemoteMsgId>,
        /// The sender's avatar (from `Chat-User-Avatar`), for bridges that show one.
        avatar: Option<Attachment>,
    },
    Edit {
        sender: Person,
        target: RemoteMsgId,
        new_text: String,
    },
    Delete {
        sender: Person,
        target: RemoteMsgId,
    },
    Reaction {
        sender: Person,
        target: RemoteMsgId,
        emoji: String,
    },
    /// `reader` (a COI person) has read everything up to `up_to`.
    ReadReceipt {
        reader: Person,
        up_to: RemoteMsgId,
    },
    /// `member` joined the COI chat: their puppet joins the remote chat.
    MemberJoined {
        member: Person,
    },
    /// `member` left or was removed from the COI chat: their puppet leaves.
    MemberLeft {
        member: Person,
    },
    /// The COI group got a new name.
    Rename {
        name: String,
    },
    /// The COI group got a new description (empty: none).
    Describe {
        text: String,
    },
    /// The COI group got a new image (`None`: removed).
    GroupAvatar {
        image: Option<Attachment>,
    },
    /// A notice from the bridge itself (delivery failures, command answers).
    Notice {
        text: String,
    },
}

/// Why [`Bridge::deliver`] failed; decides what the core does next.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Try again later (network error, 5xx, rate limit). `after` is the server's hint.
    #[error("temporary failure: {reason}")]
    Retry { reason: String, after: Option<Duration> },
    /// Will never succeed (room gone, message too large): log, notify the origin, drop.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The bridge cannot carry this kind of event; the core degrades it.
    #[error("not supported by this bridge")]
    Unsupported,
}

/// Why [`Bridge::run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The supervisor restarts the bridge with backoff.
    #[error("bridge failed, will restart: {0}")]
    Retry(String),
    /// Configuration or credentials are wrong; restarting cannot help.
    #[error("bridge cannot run: {0}")]
    Fatal(String),
}

/// Why [`Hub::submit`] refused an event.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The core could not queue it now (store busy, shutting down). Keep the cursor and
    /// submit again.
    #[error("not queued, submit again: {0}")]
    Retry(String),
    /// The event can never be accepted (unknown chat, too large). Advance past it.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// A management command given in a remote chat (`!coi …` on Matrix, `/coi_…` on
/// Telegram). The bridge checks that the sender is an admin before passing it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Bridge this chat to a new COI group (or show the invite if it is bridged).
    Bridge,
    /// Show the COI group's invite link again.
    Invite,
    /// Show the portal and who is reachable where.
    Status,
    /// Remove the portal.
    Unlink,
    /// Join a Delta Chat invite link (a group or a contact) and link that chat here.
    Link(String),
    /// Open a 1:1 portal with a COI address whose key the bridge already has.
    Start(String),
}

impl Command {
    /// Parses the words after the prefix (`bridge`, `invite`, …).
    pub fn parse(words: &str) -> Result<Self, String> {
        let mut w = words.split_whitespace();
        let verb = w.next().unwrap_or("help");
        let arg = w.next();
        match (verb, arg) {
            ("help", _) => Ok(Self::Help),
            ("bridge", _) => Ok(Self::Bridge),
            ("invite", _) => Ok(Self::Invite),
            ("status", _) => Ok(Self::Status),
            ("unlink", _) => Ok(Self::Unlink),
            ("link", Some(link)) => Ok(Self::Link(link.to_owned())),
            ("link", None) => Err("link needs a Delta Chat invite link: link https://i.delta.chat/#…".into()),
            ("start", Some(addr)) if addr.contains('@') => {
                Ok(Self::Start(addr.trim_start_matches("mailto:").to_owned()))
            }
            ("start", _) => Err("start needs an e-mail address: start alice@example.org".into()),
            (other, _) => Err(format!("unknown command {other:?}; try help")),
        }
    }
}

/// What a command answers: text, and an invite link the bridge may also draw as a QR code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    pub text: String,
    pub link: Option<String>,
    /// The link as a QR-code PNG, for people who scan rather than click.
    pub qr_png: Option<Vec<u8>>,
}

/// Whom a private chat with a bridge's bot reaches on COI ([`Hub::private_chat`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateTo {
    /// The bridge's owners: these COI addresses (none: the bridge takes no private messages).
    Owners(Vec<String>),
    /// The COI address this remote user of the bridge is paired with (a person who moved).
    Paired(RemoteUserId),
}

/// What [`Hub::private_chat`] found or made. Only `Ready` lets the bridge submit the
/// private chat's messages; the others are for the bridge to tell the person why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateChat {
    /// The remote chat has its portal; `opened` when it was made just now.
    Ready { opened: bool },
    /// `PrivateTo::Owners` with no owners: nobody takes private messages here.
    NoOwners,
    /// `PrivateTo::Paired` names a remote user who is paired with nobody.
    NotPaired,
    /// The bridge has no encryption key for anyone it would reach yet.
    NoKey,
    /// Too many new private chats lately; the person may try again in a minute.
    Busy,
    /// The portal's COI chat has no members left (they left it): nobody would read it.
    Nobody,
}

/// The core as a bridge sees it.
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    /// Queues an event durably; `Ok` only once it is in the store.
    async fn submit(&self, from: &BridgeId, event: RemoteEvent) -> Result<(), SubmitError>;

    /// Runs an admin's command for the remote chat `chat` (whose title is `title`).
    async fn command(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        title: &str,
        command: Command,
    ) -> Result<CommandReply, SubmitError>;

    /// A remote person joined (`true`) or left (`false`) the remote chat `chat`, for the
    /// migration status (the sender of a submitted message is noted by `submit`). The
    /// default (for hubs without a store) ignores it.
    async fn person_seen(
        &self,
        _from: &BridgeId,
        _chat: &RemoteChatId,
        _person: &Person,
        _joined: bool,
    ) -> Result<(), SubmitError> {
        Ok(())
    }

    /// A personal invite for `person`, a member of the remote chat `chat` (the bridge has
    /// checked that): a link to the COI chat of `chat`'s portal whose completion through
    /// SecureJoin pairs `person` with the joiner's address, so the status names them as
    /// moved.
    async fn personal_invite(
        &self,
        _from: &BridgeId,
        _chat: &RemoteChatId,
        _person: &Person,
    ) -> Result<CommandReply, SubmitError> {
        Err(SubmitError::Rejected("personal invites are not available here".into()))
    }

    /// An admin of the remote chat `chat` pairs `person` with the COI `address` (whose key
    /// the bridge must have).
    async fn pair(
        &self,
        _from: &BridgeId,
        _chat: &RemoteChatId,
        _person: &Person,
        _address: &str,
    ) -> Result<CommandReply, SubmitError> {
        Err(SubmitError::Rejected("pairing is not available here".into()))
    }

    /// A person wrote to the bot in a private chat: makes sure the remote chat `chat` (the
    /// bridge's id for that private chat and whom it reaches) has a portal to a COI chat of
    /// its own with `to`, made once (a retry finds it). `person` names it. The default (for
    /// hubs without a store) has nobody to reach.
    async fn private_chat(
        &self,
        _from: &BridgeId,
        _chat: &RemoteChatId,
        _person: &Person,
        _to: &PrivateTo,
    ) -> Result<PrivateChat, SubmitError> {
        Ok(PrivateChat::NoOwners)
    }

    /// A remote message spent `took` in `hop` before it reached the bridge (the hops a
    /// bridge can see and the core cannot: `homeserver_push` for Matrix). The core counts it
    /// in `hop_seconds`; the default (for hubs without metrics) ignores it.
    fn hop(&self, _hop: &str, _took: std::time::Duration) {}

    /// Sets aside an event the bridge could not handle, so it never blocks the ones behind
    /// it: the core keeps it with its reason and counts it. `Err(Retry)` only when it could
    /// not be recorded now. The default (for hubs without a store) only logs it.
    async fn dead_letter(&self, from: &BridgeId, letter: DeadLetter) -> Result<(), SubmitError> {
        tracing::warn!(bridge = %from, event = %letter.event, kind = letter.kind.as_str(), reason = %letter.reason, "event set aside");
        Ok(())
    }
}

/// Per-bridge persistent key/value state (cursors, tokens), scoped by bridge id.
#[async_trait]
pub trait BridgeState: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, SubmitError>;
    async fn set(&self, key: &str, value: &str) -> Result<(), SubmitError>;
    /// The remote chats this bridge instance has portals in (a shared endpoint routes
    /// their events to it). The default, for states without portals, has none.
    async fn remote_chats(&self) -> Result<Vec<RemoteChatId>, SubmitError> {
        Ok(Vec::new())
    }
}

/// The [`BridgeState`] key of how many people the remote chat `chat` has, as its network
/// counts them (the bridge's own bot and puppets not counted), in decimal. A bridge that can
/// count sets it whenever it learns the number; the core's migration status takes it as the
/// size of the remote side, since a bridge can name only the people it has seen.
pub fn member_count_key(chat: &RemoteChatId) -> String {
    format!("member_count:{chat}")
}

/// Everything a running bridge is handed by the core.
#[derive(Clone)]
pub struct BridgeContext {
    pub id: BridgeId,
    pub hub: Arc<dyn Hub>,
    pub state: Arc<dyn BridgeState>,
    /// Cancelled once, on shutdown. `run` returns soon after.
    pub shutdown: CancellationToken,
    /// Where the bridge says whether it can reach its network (`/ready`, metrics).
    pub status: Status,
}

/// Whether a bridge can reach its remote network right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The last call to the remote network worked.
    Connected,
    /// The remote network cannot be reached or refused us; the bridge keeps trying.
    Reconnecting(String),
}

/// A bridge's handle for reporting its [`LinkState`]; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Status(Arc<dyn Fn(LinkState) + Send + Sync>);

impl Status {
    pub fn new(report: impl Fn(LinkState) + Send + Sync + 'static) -> Self {
        Self(Arc::new(report))
    }
    /// A status nobody reads (unit tests).
    pub fn ignored() -> Self {
        Self::new(|_| {})
    }
    pub fn connected(&self) {
        (self.0)(LinkState::Connected)
    }
    /// The remote network failed; `reason` is shown on `/ready` (no secrets in it).
    pub fn reconnecting(&self, reason: impl Into<String>) {
        (self.0)(LinkState::Reconnecting(reason.into()))
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Status")
    }
}

/// A remote network, seen from the core.
#[async_trait]
pub trait Bridge: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;
    /// Connects, listens and submits events until `cx.shutdown` is cancelled.
    async fn run(&self, cx: BridgeContext) -> Result<(), BridgeError>;
    /// Posts one item to a remote chat and returns its remote ids, one per part: a
    /// message with text and two files can be three remote messages. Part 0 is the main
    /// one, which replies, edits and reactions point at. Items without a remote id of
    /// their own (read receipts) return none.
    ///
    /// `key` is stable for one delivery across retries and restarts: a bridge whose
    /// network takes an idempotency key (Matrix transaction ids) passes it on, so a
    /// delivery repeated after a crash is not a duplicate.
    async fn deliver(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        msg: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError>;

    /// Opens a new remote chat for a COI 1:1 chat with `peer` (who wrote to the bridge's
    /// address), shared with the people this bridge speaks for. `Unsupported` when the
    /// bridge has nobody to open it with.
    async fn open_dm(&self, peer: &Person) -> Result<RemoteChatId, DeliverError> {
        let _ = peer;
        Err(DeliverError::Unsupported)
    }
}
