//! The mapping store: the `Store` trait the daemon talks to, its row types, and backend selection from `store.url`.
//!
//! The store, not the IMAP server, is the lasting record: chatmail servers delete mail
//! after days. Every write that acknowledges something (a fetched UID, a queued message)
//! happens in one transaction with the data it acknowledges.
//!
//! SQLite ([`sqlite`]) is the embedded default. A PostgreSQL backend implements the same
//! trait; nothing outside this module names a backend.

pub mod backup;
#[doc(hidden)]
pub mod conformance;
pub mod deadletter;
pub mod keys;
pub mod kind;
pub mod lease;
pub mod migrate;
pub mod migration;
pub mod nodes;
pub mod portals;
pub mod postgres;
pub mod relay;
pub mod retention;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::coi::ChatMessage;
pub use kind::MessageKind;
pub use lease::account_schema;

/// A store error: the caller retries the operation later, or gives up for good.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Busy, locked, I/O hiccup: the same call may succeed later.
    #[error("store temporarily unavailable: {0}")]
    Retry(String),
    /// Corrupt data, schema from the future, constraint that cannot hold.
    #[error("store error: {0}")]
    Fatal(String),
    /// The write was refused because this store's lease passed to another daemon or
    /// expired ([`lease`]): the account must stop here; the call is never retried.
    #[error("store fenced, lease lost: {0}")]
    Fenced(String),
}

impl StoreError {
    pub fn is_retry(&self) -> bool {
        matches!(self, StoreError::Retry(_))
    }

    /// The store's lease is gone: stop the account, never retry.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// 1:1 or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    Single,
    Group,
}

impl ChatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Single => "single",
            ChatKind::Group => "group",
        }
    }
}

/// Which COI chat a message belongs to: a 1:1 with an address, or a group by
/// `Chat-Group-ID`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChatRef {
    pub kind: ChatKind,
    /// The peer's address (1:1) or the group id (group).
    pub key: String,
    /// The group name, or the peer's display name.
    pub name: String,
}

/// A chat row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    pub id: i64,
    pub kind: ChatKind,
    pub key: String,
    pub name: String,
    /// Known member addresses, without the bridge's own (sorted).
    pub members: Vec<String>,
    /// When each of `members` joined (unix seconds), same order.
    pub member_since: Vec<i64>,
}

/// Incoming (from COI) or outgoing (to COI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// A recorded message, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub message_id: String,
    pub chat_id: i64,
    pub direction: Direction,
    pub kind: MessageKind,
    pub from_addr: String,
    pub from_name: String,
    pub text: String,
    pub in_reply_to: Option<String>,
    /// What the message is about: the Message-ID a reaction, edit, delete or receipt
    /// targets; the address of a `member-added`/`member-removed`; the new name of a
    /// `renamed`.
    pub target: Option<String>,
    pub attachments: Vec<StoredAttachment>,
    /// `plain`, `unverified`, `verified`, `invite`, or `sent` for our own.
    pub security: String,
    /// A Delta Chat pre-message whose file (its post-message) has not arrived yet.
    pub awaits_file: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAttachment {
    pub name: String,
    pub mime: String,
    pub data: Vec<u8>,
}

/// Where the IMAP transport stands in one folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImapCursor {
    pub uid_validity: u32,
    pub last_uid: u32,
}

/// One fetched mail that parsed, with its chat already resolved.
#[derive(Clone, Debug)]
pub struct InboundMessage {
    pub uid: u32,
    pub chat: ChatRef,
    pub message: ChatMessage,
    /// Addresses this message shows to be in the chat (the bridge's own excluded).
    pub members_added: Vec<String>,
    /// Addresses this message removes from the chat.
    pub members_removed: Vec<String>,
    /// `plain`, `unverified`, `verified` or `invite` (see `hub::e2ee::Trust`).
    pub security: &'static str,
    /// The bridges it is queued for if it is new (the hub's routing: `hub::route`).
    pub targets: Vec<String>,
}

/// One fetched mail that could not be parsed, kept aside for the operator.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub uid: u32,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// What a batch write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub recorded: usize,
    /// Already known by Message-ID (a re-fetch, our own echo).
    pub duplicates: usize,
    pub rejected: usize,
}

/// A message to send to COI: recorded as sent and queued for SMTP in one transaction.
#[derive(Clone, Debug)]
pub struct OutboundMail {
    pub chat: ChatRef,
    pub message: ChatMessage,
    /// The finished RFC 5322 bytes.
    pub raw: Vec<u8>,
    pub envelope: Envelope,
    /// A second copy for other recipients (the plaintext copy of an opportunistic
    /// send), queued as its own outbox row.
    pub also: Option<(Envelope, Vec<u8>)>,
    /// Where it came from: a bridge's own copy is mapped to the Message-ID.
    pub origin: Origin,
    /// The bridges that get a copy besides SMTP (the hub's routing: `hub::route`).
    pub targets: Vec<String>,
}

/// Where an outgoing COI message came from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Origin {
    /// The bridge itself (a command, SecureJoin): every portal of the chat gets it.
    #[default]
    Local,
    /// A bridge: its remote message (if it has one) is mapped to the Message-ID, and the
    /// chat's other portals get it (N-way), that bridge does not.
    Bridge { bridge: String, copy: Option<portals::RemoteCopy> },
    /// A notice for the COI side only (a delivery failure): no portal gets it, so a
    /// failing bridge cannot cause notices about notices.
    Notice,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub to: Vec<String>,
}

/// The outbox target for mail.
pub const SMTP_TARGET: &str = "smtp";

/// One queued delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub target: String,
    pub chat_id: i64,
    pub message_id: String,
    pub payload: Vec<u8>,
    pub envelope: Option<Envelope>,
    pub attempts: u32,
    /// When the row was queued (unix milliseconds): the start of its delivery latency.
    pub queued_at_ms: i64,
}

/// The pending rows of one outbox target, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxStats {
    pub target: String,
    pub depth: u64,
    /// When the oldest pending row was queued (unix milliseconds).
    pub oldest_queued_ms: i64,
}

/// The state of one outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxState {
    Pending { attempts: u32, last_error: Option<String> },
    Done,
    Failed { reason: String },
}

/// What the daemon needs from a store backend.
#[async_trait]
pub trait Store:
    keys::KeyStore
    + portals::PortalStore
    + deadletter::DeadLetterStore
    + retention::RetentionStore
    + migration::MigrationStore
    + Send
    + Sync
    + 'static
{
    // --- inbound ---------------------------------------------------------------------
    async fn imap_cursor(&self, folder: &str) -> StoreResult<Option<ImapCursor>>;

    /// Records a batch of fetched mail, queues each new message for its `targets`, and
    /// moves the cursor to `cursor`, all in one transaction. Messages already known by
    /// Message-ID are counted as duplicates and queue nothing.
    async fn record_inbound(
        &self,
        folder: &str,
        cursor: ImapCursor,
        messages: &[InboundMessage],
        rejected: &[Rejected],
    ) -> StoreResult<BatchOutcome>;

    /// The chat of the first of these Message-IDs that is known.
    async fn chat_of_any(&self, message_ids: &[String]) -> StoreResult<Option<ChatRef>>;

    // --- outbound --------------------------------------------------------------------
    /// Records an outgoing message, its SMTP outbox row(s) and a row for each of its
    /// `targets`, in one transaction; a Message-ID already known queues nothing.
    async fn queue_outbound(&self, mail: &OutboundMail) -> StoreResult<()>;

    /// For each chat, its oldest pending item for `target` if it is due at `now` (unix
    /// seconds). Later items of a chat wait behind its head, which keeps per-chat order.
    async fn due_outbox(&self, target: &str, now: i64, limit: u32) -> StoreResult<Vec<OutboxItem>>;

    /// The earliest `next_attempt_at` of a chat's head pending for `target`: when the next
    /// item comes due (one behind its chat's head waits for the head, whatever its own time).
    async fn next_outbox_due(&self, target: &str) -> StoreResult<Option<i64>>;

    async fn outbox_done(&self, id: i64) -> StoreResult<()>;
    async fn outbox_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> StoreResult<()>;
    async fn outbox_failed(&self, id: i64, reason: &str) -> StoreResult<()>;
    /// Every target with pending rows: how many, and since when (by target name).
    async fn outbox_stats(&self) -> StoreResult<Vec<OutboxStats>>;
    /// A cheap round trip to the database (`/ready`).
    async fn ping(&self) -> StoreResult<()>;
    /// How many rows wait for `target`.
    async fn outbox_depth(&self, target: &str) -> StoreResult<u64>;
    /// Narrows a mail row's envelope to the recipients still to be reached.
    async fn outbox_set_recipients(&self, id: i64, envelope: &Envelope) -> StoreResult<()>;
    async fn outbox_state(&self, target: &str, message_id: &str) -> StoreResult<Option<OutboxState>>;

    // --- reading -----------------------------------------------------------------------
    async fn message(&self, message_id: &str) -> StoreResult<Option<StoredMessage>>;
    async fn chat(&self, id: i64) -> StoreResult<Option<Chat>>;
    /// Every chat, in the order they were made.
    async fn chats(&self) -> StoreResult<Vec<Chat>>;
    /// The chat with this kind and key, if it exists.
    async fn find_chat(&self, kind: ChatKind, key: &str) -> StoreResult<Option<Chat>>;
    /// Creates the chat if needed (renaming it if `chat.name` is set); returns its id.
    async fn ensure_chat(&self, chat: &ChatRef) -> StoreResult<i64>;
    /// Adds and removes members of a chat.
    async fn update_members(&self, chat_id: i64, add: &[String], remove: &[String]) -> StoreResult<()>;
    /// Every recorded message of a direction, oldest first.
    async fn messages(&self, direction: Direction) -> StoreResult<Vec<StoredMessage>>;
    /// How many mails were kept aside as unparseable.
    async fn rejected_count(&self) -> StoreResult<u64>;
}

/// A store URL as it may be shown (logs, `check`, errors, `Debug`): a password in it, in
/// the user part (`postgres://coi:SECRET@db/coi`) or as a `password=` parameter, becomes `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?', '#']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@').map(|i| rest + i)
            && let Some(colon) = out[rest..at].find(':').map(|i| rest + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// Where a `sqlite://` store URL keeps its file (relative paths are under `state_dir`);
/// `None` for other URLs.
pub fn sqlite_path(url: &str, state_dir: &Path) -> Option<std::path::PathBuf> {
    let path = Path::new(url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?);
    Some(if path.is_absolute() { path.to_path_buf() } else { state_dir.join(path) })
}

/// The store is not there (or has no key yet): only the daemon's first start creates the
/// store and the bridge's key, so a command beside it refuses instead of making new ones.
#[derive(Debug, thiserror::Error)]
pub enum Uninitialized {
    #[error("no store at {}{hint}", path.display())]
    NoStore { path: std::path::PathBuf, hint: String },
    #[error("the store at {} has no bridge key yet{hint}", path.display())]
    NoKey { path: std::path::PathBuf, hint: String },
}

/// Opens the existing store named by `url`; a missing SQLite file is an [`Uninitialized`] error,
/// never a new, empty store.
pub async fn open_existing(url: &str, state_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_path(url, state_dir) {
        return Ok(Arc::new(sqlite::SqliteStore::open_existing(&path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::open_existing(url).await?));
    }
    open(url, state_dir).await
}

/// Opens the store named by `url`. A relative SQLite path is taken relative to `state_dir`.
pub async fn open(url: &str, state_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    open_with(url, state_dir, &OpenOptions::default()).await
}

/// Where one account's store is, besides `store.url`: the defaults are the URL's own
/// namespace, unfenced.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// PostgreSQL: the schema the account's tables live in ([`account_schema`]), made if
    /// missing. `None`: the URL's default `search_path`.
    pub schema: Option<String>,
    /// PostgreSQL: the lease the store writes under; once it passed on, every write fails
    /// with [`StoreError::Fenced`]. `None`: unfenced (the CLI, migrate-store, one daemon).
    pub fence: Option<lease::Fence>,
    /// SQLite: the account's database file instead of the URL's (directories are made).
    pub sqlite_path: Option<PathBuf>,
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Options for the other backend are a mistake of the caller, never silently ignored.
fn check_options(url: &str, state_dir: &Path, options: &OpenOptions) -> anyhow::Result<Option<PathBuf>> {
    let sqlite = sqlite_path(url, state_dir);
    if sqlite.is_some() && (options.schema.is_some() || options.fence.is_some()) {
        anyhow::bail!("store: a schema or a lease fence needs a PostgreSQL store.url, not {}", redact_url(url));
    }
    if is_postgres(url) && options.sqlite_path.is_some() {
        anyhow::bail!("store: a SQLite file was given for the PostgreSQL store.url {}", redact_url(url));
    }
    Ok(options.sqlite_path.clone().or(sqlite))
}

/// Opens one account's store: [`open`], in `options`' schema under its fence (PostgreSQL)
/// or in its file (SQLite).
pub async fn open_with(url: &str, state_dir: &Path, options: &OpenOptions) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = check_options(url, state_dir, options)? {
        let store = sqlite::SqliteStore::open(&path).await?;
        return Ok(Arc::new(store));
    }
    if is_postgres(url) {
        return Ok(Arc::new(postgres::PgStore::open_in(url, options).await?));
    }
    anyhow::bail!("store.url: {url:?} is not a store URL; use \"sqlite://PATH\" (relative to the state dir)")
}

/// [`open_existing`] for one account's store (see [`open_with`]).
pub async fn open_existing_with(url: &str, state_dir: &Path, options: &OpenOptions) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = check_options(url, state_dir, options)? {
        return Ok(Arc::new(sqlite::SqliteStore::open_existing(&path).await?));
    }
    if is_postgres(url) {
        return Ok(Arc::new(postgres::PgStore::open_existing_in(url, options).await?));
    }
    open_with(url, state_dir, options).await
}
