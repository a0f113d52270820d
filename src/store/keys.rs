//! What the store keeps of keys: the bridge's own, its contacts', key changes and SecureJoin invites.

use async_trait::async_trait;

use super::StoreResult;

/// The bridge identity's key, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKeyRow {
    pub fingerprint: String,
    pub public_key: Vec<u8>,
    /// Locked with the passphrase when `protected`.
    pub secret_key: Vec<u8>,
    pub protected: bool,
    pub created_at: i64,
}

impl std::fmt::Debug for AccountKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeyRow")
            .field("fingerprint", &self.fingerprint)
            .field("protected", &self.protected)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// Where a contact's key was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Autocrypt,
    Gossip,
    Vcard,
    SecureJoin,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Autocrypt => "autocrypt",
            KeySource::Gossip => "gossip",
            KeySource::Vcard => "vcard",
            KeySource::SecureJoin => "securejoin",
        }
    }
}

/// A contact's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactKeyRow {
    pub addr: String,
    pub fingerprint: String,
    pub public_key: Vec<u8>,
    pub verified: bool,
    pub source: String,
}

/// What learning a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLearned {
    /// First key for this address.
    New,
    /// The key already on record (maybe now verified).
    Same,
    /// The key on record was replaced (only the operator's `key accept` does this).
    Replaced { old_fingerprint: String },
    /// Another key for an address whose key is in use (key continuity): kept aside in
    /// `key_change` for the operator (`coi-bridge key changes` / `key accept`), not used.
    Flagged { old_fingerprint: String },
}

/// An invite the bridge handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRow {
    pub invite_number: String,
    pub auth: String,
    pub group_id: Option<String>,
}

/// An invite of someone else's that the bridge is joining through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRow {
    pub id: i64,
    pub inviter_addr: String,
    pub inviter_fpr: String,
    pub invite_number: String,
    pub auth: String,
    pub group_id: Option<String>,
    pub group_name: Option<String>,
    /// `requested`, `auth-sent` or `done`.
    pub state: String,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn account_key(&self) -> StoreResult<Option<AccountKeyRow>>;
    /// Stores `row` unless a key exists already; returns the key in place, so two
    /// processes starting at once end up with one key.
    async fn init_account_key(&self, row: &AccountKeyRow) -> StoreResult<AccountKeyRow>;
    async fn contact_key(&self, addr: &str) -> StoreResult<Option<ContactKeyRow>>;
    /// Records a contact's avatar image; empty `data` removes it.
    async fn set_contact_avatar(&self, addr: &str, data: &[u8]) -> StoreResult<()>;
    async fn contact_avatar(&self, addr: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Records a key for `addr` under the rules of [`KeyLearned`]: a new address takes the
    /// key; the same key is refreshed (and marked verified if `verified`); a different key
    /// never replaces the one on record (key continuity): it is flagged for the operator.
    async fn learn_contact_key(
        &self,
        addr: &str,
        fingerprint: &str,
        public_key: &[u8],
        source: KeySource,
        verified: bool,
    ) -> StoreResult<KeyLearned>;
    /// Flagged key changes of an address, newest first: (old, new) fingerprints.
    async fn key_changes(&self, addr: &str) -> StoreResult<Vec<(String, String)>>;
    /// Every flagged key change, newest first: (addr, old, new fingerprint, seen_at).
    async fn all_key_changes(&self) -> StoreResult<Vec<(String, String, String, i64)>>;
    /// The operator accepts a flagged key: it becomes the address's key (verified, as an
    /// out-of-band decision) and the flag is cleared. `false` when no such flag exists.
    async fn accept_key_change(&self, addr: &str, new_fingerprint: &str) -> StoreResult<bool>;
    async fn add_invite(&self, invite: &InviteRow) -> StoreResult<()>;
    async fn invite(&self, invite_number: &str) -> StoreResult<Option<InviteRow>>;
    async fn invite_by_auth(&self, auth: &str) -> StoreResult<Option<InviteRow>>;
    /// Every invite handed out, newest first.
    async fn invites(&self) -> StoreResult<Vec<InviteRow>>;
    /// Invites handed out at or after `since` (unix seconds), newest first: the only
    /// ones whose secrets are tried as passwords on inbound mail.
    async fn live_invites(&self, since: i64) -> StoreResult<Vec<InviteRow>>;
    /// Records a join in progress (again: no-op); returns its row.
    async fn add_join(&self, join: &JoinRow) -> StoreResult<JoinRow>;
    /// Joins not yet done, newest first.
    async fn open_joins(&self) -> StoreResult<Vec<JoinRow>>;
    /// The joins (any state) through invites to group `group_id`, newest first.
    async fn joins_of_group(&self, group_id: &str) -> StoreResult<Vec<JoinRow>>;
    async fn set_join_state(&self, id: i64, state: &str) -> StoreResult<()>;
}
