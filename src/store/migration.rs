//! What the store keeps to show who has moved to COI: the people a bridge has seen in each remote chat, which COI address a remote user is (pairing), the personal invites handed out for that, and samples of both sides over time.
//!
//! The Bot API cannot list a group's members, so the bridge remembers the people it has
//! seen: a member who joined, posted or left ([`Seen`]). A pairing says "Telegram user
//! 42 is alice@example.org" for one bridge; it comes from a personal invite completed
//! through SecureJoin (the invite's auth secret names the remote user) or from an admin
//! (`/coi_pair`). The status and the report are computed from these rows and the COI
//! group's members; nothing here decides what is delivered.

use async_trait::async_trait;

use super::StoreResult;

/// The longest display name kept for a remote person, in characters (Telegram allows 129
/// for first and last name together; a Matrix name can be far longer).
pub const MAX_DISPLAY_NAME: usize = 256;

/// `name` cut to [`MAX_DISPLAY_NAME`] characters.
pub fn clip_display_name(name: &str) -> &str {
    name.char_indices().nth(MAX_DISPLAY_NAME).map_or(name, |(i, _)| &name[..i])
}

/// What the bridge saw a remote person do in a remote chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Joined the chat (or was added).
    Joined,
    /// Posted a message (also counts as being a member).
    Posted,
    /// Left the chat (or was removed).
    Left,
}

/// A person a bridge has seen in one remote chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePersonRow {
    pub bridge: String,
    pub remote_chat: String,
    /// The remote network's user id (Telegram's numeric id, a Matrix MXID).
    pub remote_user: String,
    /// The latest name seen.
    pub display_name: String,
    /// Unix seconds: first seen in this chat.
    pub first_seen: i64,
    /// Unix seconds: the latest message seen from them here, if any.
    pub last_posted: Option<i64>,
    /// Unix seconds: when they left, if they are gone (cleared when they come back).
    pub left_at: Option<i64>,
}

/// How a pairing was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairedVia {
    /// The remote user completed SecureJoin through their personal invite.
    Invite,
    /// An admin paired them by hand (`/coi_pair`, `!coi pair`).
    Admin,
}

impl PairedVia {
    pub fn as_str(self) -> &'static str {
        match self {
            PairedVia::Invite => "invite",
            PairedVia::Admin => "admin",
        }
    }

    /// The stored form back; unknown text is an admin pairing (never an invite proof).
    pub fn parse(s: &str) -> Self {
        if s == "invite" { PairedVia::Invite } else { PairedVia::Admin }
    }
}

/// "This remote user of this bridge is this COI address."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingRow {
    pub bridge: String,
    pub remote_user: String,
    /// Lower-case mail address.
    pub address: String,
    pub via: PairedVia,
    /// Unix seconds.
    pub paired_at: i64,
}

/// A personal invite: an ordinary SecureJoin invite (its row in the invite table) whose
/// auth secret was handed to one remote user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalInviteRow {
    /// The invite's auth secret (the key of the invite table's row).
    pub auth: String,
    pub bridge: String,
    pub remote_user: String,
    /// The remote chat it was asked for (the portal whose COI group it joins), if any.
    pub remote_chat: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Both sides of one portal at one time, for the report's chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationSample {
    pub bridge: String,
    pub remote_chat: String,
    /// Unix seconds.
    pub at: i64,
    /// Remote members (as many as the bridge knows: the count the network gives when it
    /// gives one, else the people seen and not gone).
    pub remote_members: i64,
    /// Members of the COI chat.
    pub coi_members: i64,
    /// Remote members who are also on COI (paired and in the COI chat).
    pub moved: i64,
}

#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// Records that `remote_user` (named `display_name`) was seen in `remote_chat` at
    /// `at`: the first sighting sets `first_seen` (never later: an older sighting
    /// arriving late moves it back); `Posted` sets `last_posted` (never backwards) and
    /// clears `left_at`; `Joined` clears `left_at`; `Left` sets it. A `Posted` or `Joined`
    /// older than the `left_at` it would clear (a late event) leaves it. The name is
    /// updated every time, cut to [`MAX_DISPLAY_NAME`] characters. One statement: two
    /// callers at once both count.
    async fn note_remote_person(
        &self,
        bridge: &str,
        remote_chat: &str,
        remote_user: &str,
        display_name: &str,
        seen: Seen,
        at: i64,
    ) -> StoreResult<()>;
    /// Everyone seen in `remote_chat` of `bridge`, gone ones included, by `first_seen`.
    async fn remote_people(&self, bridge: &str, remote_chat: &str) -> StoreResult<Vec<RemotePersonRow>>;
    /// The remote chat moved (a Telegram group became a supergroup): its people follow,
    /// and so do its personal invites, migration samples and announcements, so the
    /// report's history stays whole. A person already seen in `to_chat` keeps that row's
    /// name and `left_at`, with the earlier `first_seen` and the later `last_posted` of
    /// the two; a sample or announcement `to_chat` already has wins over the moved one.
    async fn move_remote_people(&self, bridge: &str, from_chat: &str, to_chat: &str) -> StoreResult<()>;

    /// Records a pairing; a later one for the same (bridge, remote user) replaces it. The
    /// address is stored lower-cased.
    async fn pair(&self, row: &PairingRow) -> StoreResult<()>;
    /// Removes the pairing of a remote user; `false` when there was none.
    async fn unpair(&self, bridge: &str, remote_user: &str) -> StoreResult<bool>;
    async fn pairing(&self, bridge: &str, remote_user: &str) -> StoreResult<Option<PairingRow>>;
    /// The remote users of `bridge` paired with `address`, whatever its case (one person
    /// may have paired two remote accounts), by `paired_at`.
    async fn pairings_of_address(&self, bridge: &str, address: &str) -> StoreResult<Vec<PairingRow>>;
    /// Every pairing of `bridge`, by `paired_at`.
    async fn pairings(&self, bridge: &str) -> StoreResult<Vec<PairingRow>>;

    /// Records a personal invite (its invite row is added separately, through
    /// `KeyStore::add_invite`). Recording the same row again is fine (a retry); an auth
    /// secret already handed to another remote user is never re-bound: a
    /// [`StoreError::Fatal`](super::StoreError::Fatal).
    async fn add_personal_invite(&self, row: &PersonalInviteRow) -> StoreResult<()>;
    /// The personal invite with this auth secret, if the secret is one.
    async fn personal_invite(&self, auth: &str) -> StoreResult<Option<PersonalInviteRow>>;

    /// Adds a sample; a second one for the same (bridge, remote chat, at) replaces it.
    async fn record_migration_sample(&self, sample: &MigrationSample) -> StoreResult<()>;
    /// The samples of one portal, oldest first.
    async fn migration_samples(&self, bridge: &str, remote_chat: &str) -> StoreResult<Vec<MigrationSample>>;

    /// Marks that `what` (e.g. `closable`) was announced for this remote chat; `true` only
    /// the first time, so two callers racing announce once.
    async fn announce_once(&self, bridge: &str, remote_chat: &str, what: &str, at: i64) -> StoreResult<bool>;
    /// Forgets an announcement, so it may be made again (someone active has not moved
    /// any more, say a newcomer).
    async fn clear_announcement(&self, bridge: &str, remote_chat: &str, what: &str) -> StoreResult<()>;
}
