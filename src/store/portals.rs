//! What the store keeps for bridges: portals, the map between COI Message-IDs and remote ids, and bridge state.

use async_trait::async_trait;

use super::StoreResult;

/// A COI chat linked to a remote room on one bridge instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    pub id: i64,
    pub chat_id: i64,
    pub bridge: String,
    pub remote_chat: String,
}

/// Where a post to a remote side stands in the send journal (see [`PortalStore::begin_send`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendRecord {
    /// Not posted before: it is recorded as started now.
    New,
    /// An earlier post started at this time (Unix seconds) and never finished: the
    /// process died during it, and the side may or may not have it.
    Unfinished(i64),
    /// Posted already; these are the ids the side gave it.
    Done(Vec<String>),
}

/// One copy of a COI message on a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCopy {
    pub remote_chat: String,
    pub remote_id: String,
    pub part: i64,
}

#[async_trait]
pub trait PortalStore: Send + Sync {
    /// Links a chat to a remote room; linking the same pair again is a no-op.
    async fn create_portal(&self, chat_id: i64, bridge: &str, remote_chat: &str) -> StoreResult<Portal>;
    async fn delete_portal(&self, bridge: &str, remote_chat: &str) -> StoreResult<bool>;
    /// The remote chat got a new id (a Telegram group upgraded to a supergroup): the
    /// portal follows it. `false` if there was no portal.
    async fn move_portal(&self, bridge: &str, from: &str, to: &str) -> StoreResult<bool>;
    /// Every portal, in the order they were linked.
    async fn portals(&self) -> StoreResult<Vec<Portal>>;
    /// The chat's portals, in the order they were linked (the order fan-out follows).
    async fn portals_of_chat(&self, chat_id: i64) -> StoreResult<Vec<Portal>>;
    async fn portal_by_remote(&self, bridge: &str, remote_chat: &str) -> StoreResult<Option<Portal>>;
    /// Records that `message_id` is `remote_id` (part `part`) on a bridge.
    async fn map_remote(&self, message_id: &str, bridge: &str, copy: &RemoteCopy) -> StoreResult<()>;
    /// Forgets one part of a COI message's copy on a bridge (it was deleted there while the
    /// message lives on: an edit needed fewer parts). Forgetting a part not kept is no error.
    async fn unmap_remote(&self, message_id: &str, bridge: &str, remote_id: &str) -> StoreResult<()>;
    /// The copies of a COI message on a bridge, by part.
    async fn remote_copies(&self, message_id: &str, bridge: &str) -> StoreResult<Vec<RemoteCopy>>;
    /// The COI Message-ID a remote message is a copy of.
    async fn coi_id_of_remote(&self, bridge: &str, remote_chat: &str, remote_id: &str) -> StoreResult<Option<String>>;
    /// Records that the post keyed `key` is about to go to `bridge`, or says how an earlier
    /// one with the same key went. An error means the store cannot record the post: it must
    /// not go (it could not be known as done after a crash, and would go twice).
    async fn begin_send(&self, bridge: &str, key: &str) -> StoreResult<SendRecord>;
    /// The post keyed `key` was taken by the side, as `remote_ids`.
    async fn finish_send(&self, bridge: &str, key: &str, remote_ids: &[String]) -> StoreResult<()>;
    /// The post keyed `key` was not taken (the side answered with an error): forgotten,
    /// so a later try is a fresh one.
    async fn abandon_send(&self, bridge: &str, key: &str) -> StoreResult<()>;
    /// Forgets journal entries started before `before` (Unix seconds); how many.
    async fn prune_send_journal(&self, before: i64) -> StoreResult<u64>;
    async fn bridge_state(&self, bridge: &str, key: &str) -> StoreResult<Option<String>>;
    async fn set_bridge_state(&self, bridge: &str, key: &str, value: &str) -> StoreResult<()>;
    /// Records a notice from the bridge itself (kind `notice`) in `chat_id` and queues it
    /// for `targets` (the chat's portals: the remote sides are told what COI did not get),
    /// in one transaction. Once per `notice_id`.
    async fn queue_portal_notice(
        &self,
        chat_id: i64,
        notice_id: &str,
        from_addr: &str,
        text: &str,
        targets: &[String],
    ) -> StoreResult<()>;
}
