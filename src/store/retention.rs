//! What the store keeps apart (rejected mail, unverified 1:1 chats, dead letters) and how long: listing, release, drop, and pruning by age and size.
//!
//! The bridge's address is public, so anyone can fill these. They are pruned by
//! `[retention]`'s caps: everything older than the age cap goes, then the oldest items
//! until the rest fits the size cap. A released mail waits (marked in `rejected`) until
//! the daemon takes its raw bytes through ingest again; ingest dedupes by Message-ID, so a
//! release never delivers a message twice.

use async_trait::async_trait;

use super::StoreResult;

/// One rejected mail, as `coi-bridge quarantine` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetApart {
    pub id: i64,
    /// Unix seconds.
    pub recorded_at: i64,
    pub reason: String,
    /// Size of the kept raw copy (0: none kept, e.g. too large to fetch).
    pub bytes: u64,
    /// The first bytes of the raw copy (enough for its header).
    pub head: Vec<u8>,
    /// Released, waiting for the daemon to take it through ingest again.
    pub released: bool,
}

/// A 1:1 chat holding mail not signed by its sender's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnverifiedChat {
    pub chat_id: i64,
    /// The address the mail claimed to be from.
    pub addr: String,
    pub messages: u64,
    pub bytes: u64,
    /// Unix seconds of the newest message.
    pub last_at: i64,
}

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Items recorded before this (unix seconds) are pruned.
    pub older_than: i64,
    /// Then the oldest items go until the rest is at most this many bytes.
    pub max_bytes: u64,
}

/// What one pruning pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rejected: u64,
    pub messages: u64,
    pub chats: u64,
    pub dead_letters: u64,
    pub bytes: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        self.rejected + self.messages + self.chats + self.dead_letters == 0
    }
}

/// What `release` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Released,
    AlreadyReleased,
    /// No raw copy was kept (it was too large to fetch): nothing to take through ingest.
    NoCopy,
    NotFound,
}

/// A released mail's raw copy, for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub id: i64,
    pub uid: u32,
    pub raw: Vec<u8>,
}

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Every rejected mail, oldest first.
    async fn set_apart(&self) -> StoreResult<Vec<SetApart>>;
    /// Every unverified 1:1 chat with messages, oldest activity first.
    async fn unverified_chats(&self) -> StoreResult<Vec<UnverifiedChat>>;
    /// How many dead letters (bridge events set aside) are kept.
    async fn dead_letter_count(&self) -> StoreResult<u64>;
    /// Marks a rejected mail for the daemon to take through ingest again.
    async fn release_rejected(&self, id: i64) -> StoreResult<Release>;
    /// Deletes a rejected mail; `false` if there was none with that id.
    async fn drop_rejected(&self, id: i64) -> StoreResult<bool>;
    /// Released mail waiting for ingest, oldest first.
    async fn released(&self, limit: u32) -> StoreResult<Vec<Released>>;
    /// Ingest has taken a released mail (recorded it, found it known, or set it apart
    /// again under its new reason): its old row goes.
    async fn forget_released(&self, id: i64) -> StoreResult<()>;
    /// One pruning pass, in one transaction.
    async fn prune(&self, caps: Caps) -> StoreResult<Pruned>;
}
