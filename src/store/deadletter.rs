//! What the store keeps of remote events a bridge set aside: one row per bridge and event, with the reason.

use async_trait::async_trait;

use super::StoreResult;

/// A remote event a bridge could not handle, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub bridge: String,
    pub remote_chat: Option<String>,
    pub event: String,
    /// `failed`, `gave_up`, `unparseable`, `panicked` or `forbidden`.
    pub kind: String,
    pub reason: String,
    /// The raw event (cut to 64 KiB by the bridge).
    pub payload: String,
    /// Unix seconds.
    pub created_at: i64,
}

#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Records a set-aside event; the same (bridge, event) again replaces the reason.
    async fn record_dead_letter(&self, row: &DeadLetterRow) -> StoreResult<()>;
    /// Every set-aside event of `bridge`, oldest first.
    async fn dead_letters(&self, bridge: &str) -> StoreResult<Vec<DeadLetterRow>>;
}
