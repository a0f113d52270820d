//! COI → remote: drains one bridge's outbox rows in order per chat, translates each message for the bridge, maps the remote id, and degrades what the bridge cannot carry.
//!
//! What the bridge cannot carry is degraded first, from its [`Capabilities`] (see
//! [`crate::hub::degrade`]): a reaction it does not take becomes the nearest one or a short
//! text, a long text goes in parts ([`parts`]). A delivery that still fails after its retries
//! is not dropped silently: the row is marked failed, the COI chat gets a visible notice, and
//! the metrics count it.

use std::sync::Arc;
use std::time::Duration;

use coi_bridge_api::{
    Bridge, BridgeId, Capabilities, DeliverError, DeliveryKey, Outgoing, Person, RemoteChatId, RemoteMsgId,
};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::coi::ChatMessage;
use crate::hub::outbound::Outbound;
use crate::metrics::Metrics;
use crate::store::portals::RemoteCopy;
use crate::store::{
    ChatKind, Direction, MessageKind, Origin, OutboxItem, Store, StoreResult, StoredAttachment, StoredMessage,
};
use crate::transport::smtp::RetryPolicy;

/// Chats delivered to at once (one message each, so order within a chat holds). A
/// catch-up after an outage is bound by the remote server's time per post (Synapse: ~30
/// ms): with 4 at once, 20 busy rooms drained at about 20 messages a second (#14).
const PARALLEL: usize = 16;
/// How long an idle worker sleeps when nothing wakes it: rows queued in this process wake
/// it (the outbox notifier) and a retry wakes it when it comes due, so this look only
/// finds rows another process queued (the CLI) whose wake-up (`POST /wake`) did not
/// reach the daemon. Each look opens a store connection for a moment (an idle account
/// holds none), so it is rare and [`crate::backoff::spread`]: 1,000 accounts that started together and
/// looked every 5 minutes opened 1,000 connections in the same second (#12).
pub const SAFETY_POLL: Duration = Duration::from_secs(600);

/// The COI message an edit, delete or reaction is about, and its copy here by part.
struct Target {
    message_id: String,
    copies: Vec<RemoteCopy>,
}

/// Delivers to one bridge instance.
pub struct BridgeDelivery {
    id: BridgeId,
    /// The network's name, for notices ("not delivered to Matrix").
    label: String,
    bridge: Arc<dyn Bridge>,
    store: Arc<dyn Store>,
    outbound: Arc<Outbound>,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    /// Told when the bridge reports its network reachable again (see [`Self::back_online`]).
    back: Arc<tokio::sync::Notify>,
    /// See [`SAFETY_POLL`].
    safety_poll: Duration,
}

/// How many tries a pre-message waits for its file before its text goes alone
/// (with the backoff, about a minute).
const WAIT_FOR_FILE_ATTEMPTS: u32 = 6;

enum Built {
    /// What to post, and for an edit, delete or reaction what it targets.
    Send(RemoteChatId, Box<Outgoing>, Option<Target>),
    /// Nothing to deliver (a receipt, a merged post-message, a portal gone).
    Skip(&'static str),
    /// The store could not be read; try again later.
    Retry(String),
    /// Opening the portal failed.
    Failed(DeliverError),
}

impl BridgeDelivery {
    pub fn new(
        id: BridgeId,
        label: &str,
        bridge: Arc<dyn Bridge>,
        store: Arc<dyn Store>,
        outbound: Arc<Outbound>,
        policy: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let back = Arc::default();
        Self { id, label: label.to_owned(), bridge, store, outbound, policy, metrics, back, safety_poll: SAFETY_POLL }
    }

    /// Another [`SAFETY_POLL`] (tests make it long, to see nothing depends on it).
    pub fn with_safety_poll(mut self, every: Duration) -> Self {
        self.safety_poll = every;
        self
    }

    /// How long an idle worker may sleep: until the next retry comes due, at most
    /// [`Self::safety_poll`]. A store error is a short pause, not a long one.
    async fn idle_pause(&self, now: i64) -> Duration {
        match self.store.next_outbox_due(self.id.as_str()).await {
            Ok(Some(at)) => Duration::from_secs(at.saturating_sub(now).max(0) as u64)
                .min(crate::backoff::spread(self.safety_poll))
                .max(Duration::from_millis(50)),
            Ok(None) => crate::backoff::spread(self.safety_poll),
            Err(e) => {
                tracing::warn!(bridge = %self.id, error = %e, "bridge outbox: cannot read the next due time");
                Duration::from_secs(1)
            }
        }
    }

    /// Notify it when the bridge's network is reachable again after it was not: the
    /// queue's heads are tried at once instead of when their backoff, grown over the
    /// outage (up to minutes), runs out.
    pub fn back_online(&self) -> Arc<tokio::sync::Notify> {
        self.back.clone()
    }

    /// Every chat's head, due or not, delivered now (their attempts count as usual).
    async fn retry_now(&self) {
        match self.store.due_outbox(self.id.as_str(), i64::MAX, 64).await {
            Ok(heads) if !heads.is_empty() => {
                tracing::info!(bridge = %self.id, chats = heads.len(), "the bridge's network is back; retrying its queue now");
                let _: Vec<()> = futures::stream::iter(heads)
                    .map(|item| self.deliver(item))
                    .buffer_unordered(PARALLEL)
                    .collect()
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(bridge = %self.id, error = %e, "bridge outbox: cannot read the store"),
        }
    }

    /// Runs until `shutdown`; a delivery in flight is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut store_backoff = backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        // New rows wake the worker at once; it sleeps until the next retry comes due.
        let wake = self.outbound.notifier().clone();
        while !shutdown.is_cancelled() {
            let now = chrono::Utc::now().timestamp();
            match self.store.due_outbox(self.id.as_str(), now, 64).await {
                Ok(due) if due.is_empty() => {
                    store_backoff.reset();
                    let pause = self.idle_pause(now).await;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = wake.wait(self.id.as_str()) => {}
                        () = self.back.notified() => self.retry_now().await,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Ok(due) => {
                    store_backoff.reset();
                    let _: Vec<()> = futures::stream::iter(due)
                        .map(|item| self.deliver(item))
                        .buffer_unordered(PARALLEL)
                        .collect()
                        .await;
                }
                Err(e) => {
                    let pause = store_backoff.next_delay();
                    tracing::error!(bridge = %self.id, error = %e, retry_in = ?pause, "bridge outbox: cannot read the store");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// The main part (part 0) of a COI message's copy on this bridge. A store error is an
    /// error, never "no copy": that would turn a reply into a plain message or skip an edit.
    async fn remote_of(&self, message_id: &str) -> StoreResult<Option<RemoteMsgId>> {
        Ok(self.remote_parts(message_id).await?.into_iter().next())
    }

    /// Every part of a COI message's copy on this bridge, the main part first.
    async fn remote_parts(&self, message_id: &str) -> StoreResult<Vec<RemoteMsgId>> {
        let copies = self.store.remote_copies(message_id, self.id.as_str()).await?;
        Ok(copies.into_iter().map(|c| RemoteMsgId(c.remote_id)).collect())
    }

    /// Records one part of a COI message's copy (a failure is logged: the delivery stands).
    async fn map_part(&self, message_id: &str, to: &RemoteChatId, part: i64, remote: &RemoteMsgId) {
        let copy = RemoteCopy { remote_chat: to.0.clone(), remote_id: remote.0.clone(), part };
        let write = || self.store.map_remote(message_id, self.id.as_str(), &copy);
        if let Err(e) = backoff::until_ok(backoff::RECORD_FOR, write).await {
            tracing::error!(bridge = %self.id, message_id, part, error = %e, "delivered, but the id map was not written");
        }
    }

    /// A contact's avatar as an attachment (its type from its first bytes).
    async fn avatar_of(&self, addr: &str) -> StoreResult<Option<coi_bridge_api::Attachment>> {
        let Some(data) = self.store.contact_avatar(addr).await? else { return Ok(None) };
        let mime = crate::store::kind::image_mime(&data);
        Ok(Some(coi_bridge_api::Attachment { name: "avatar".into(), mime: mime.into(), data }))
    }

    /// A COI contact wrote 1:1 to the bridge and the chat has no portal here: the bridge
    /// opens one with its owners. `None` if this chat does not get one.
    async fn open_dm(&self, item: &OutboxItem, peer: &Person) -> Result<Option<RemoteChatId>, DeliverError> {
        let chat = match self.store.chat(item.chat_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => return Err(DeliverError::Retry { reason: e.to_string(), after: None }),
        };
        if chat.kind != ChatKind::Single || chat.key.starts_with("unverified:") {
            return Ok(None);
        }
        let peer = Person { id: chat.key.as_str().into(), display_name: peer.display_name.clone() };
        let remote = match self.bridge.open_dm(&peer).await {
            Ok(r) => r,
            Err(DeliverError::Unsupported) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.store.create_portal(chat.id, self.id.as_str(), remote.as_str()).await.map_err(|e| {
            DeliverError::Retry { reason: format!("DM portal opened but not recorded: {e}"), after: None }
        })?;
        tracing::info!(bridge = %self.id, peer = %chat.key, remote = %remote, "opened a DM portal");
        Ok(Some(remote))
    }

    async fn build(&self, item: &OutboxItem, msg: &StoredMessage) -> Built {
        match self.build_inner(item, msg).await {
            Ok(built) => built,
            Err(e) => Built::Retry(format!("the store could not be read: {e}")),
        }
    }

    async fn build_inner(&self, item: &OutboxItem, msg: &StoredMessage) -> StoreResult<Built> {
        let portal = match self.store.portals_of_chat(item.chat_id).await {
            Ok(p) => p.into_iter().find(|p| p.bridge == self.id.as_str()),
            Err(e) => return Ok(Built::Retry(e.to_string())),
        };
        let sender = Person { id: msg.from_addr.as_str().into(), display_name: msg.from_name.clone() };
        let to = match portal {
            Some(p) => RemoteChatId(p.remote_chat),
            None => match self.open_dm(item, &sender).await {
                Ok(Some(to)) => to,
                Ok(None) => return Ok(Built::Skip("the portal was removed")),
                Err(e) => return Ok(Built::Failed(e)),
            },
        };
        // Delta Chat sends a large file after its text (pre-/post-message): wait for the
        // file a while rather than send the text without it for good.
        if msg.awaits_file && item.attempts < WAIT_FOR_FILE_ATTEMPTS {
            return Ok(Built::Retry("its file (Delta Chat's post-message) has not arrived yet".into()));
        }
        let outgoing = match msg.kind {
            MessageKind::Text => Outgoing::Message {
                sender,
                text: msg.text.clone(),
                attachments: msg.attachments.iter().map(to_api).collect(),
                reply_to: match &msg.in_reply_to {
                    Some(p) => self.remote_of(p).await?,
                    None => None,
                },
                avatar: match msg.direction {
                    Direction::In => self.avatar_of(&msg.from_addr).await?,
                    Direction::Out => None,
                },
            },
            MessageKind::Reaction | MessageKind::Edit | MessageKind::Delete => {
                let Some(target_id) = msg.target.clone() else { return Ok(Built::Skip("no target")) };
                let copies = self.store.remote_copies(&target_id, self.id.as_str()).await?;
                let Some(main) = copies.first() else {
                    return Ok(Built::Skip("its target never reached this bridge"));
                };
                let target = RemoteMsgId(main.remote_id.clone());
                let outgoing = match msg.kind {
                    MessageKind::Reaction => Outgoing::Reaction { sender, target, emoji: msg.text.clone() },
                    MessageKind::Edit => Outgoing::Edit { sender, target, new_text: msg.text.clone() },
                    MessageKind::Delete => Outgoing::Delete { sender, target },
                    MessageKind::Text
                    | MessageKind::Receipt
                    | MessageKind::Report
                    | MessageKind::MemberAdded
                    | MessageKind::MemberRemoved
                    | MessageKind::Renamed
                    | MessageKind::Described
                    | MessageKind::Avatar
                    | MessageKind::Notice
                    | MessageKind::MergedPost => return Ok(Built::Skip("not about another message")),
                };
                return Ok(Built::Send(to, Box::new(outgoing), Some(Target { message_id: target_id, copies })));
            }
            MessageKind::Receipt => match msg.direction {
                // A COI person read a message: their ghost marks it read.
                Direction::In => {
                    let Some(target) = msg.target.as_deref() else { return Ok(Built::Skip("no target")) };
                    let Some(up_to) = self.remote_of(target).await? else {
                        return Ok(Built::Skip("its target never reached this bridge"));
                    };
                    Outgoing::ReadReceipt { reader: sender, up_to }
                }
                // Our own receipt to COI for a remote reader: the remote side has it.
                Direction::Out => return Ok(Built::Skip("a receipt the bridge sent")),
            },
            kind @ (MessageKind::MemberAdded | MessageKind::MemberRemoved) => {
                let Some(addr) = msg.target.clone() else { return Ok(Built::Skip("no member")) };
                if addr.eq_ignore_ascii_case(&self.outbound.address()) {
                    return Ok(Built::Skip("the bridge itself"));
                }
                let name = addr.split('@').next().unwrap_or(&addr).to_owned();
                let member = Person { id: addr.into(), display_name: name };
                if kind == MessageKind::MemberAdded {
                    Outgoing::MemberJoined { member }
                } else {
                    Outgoing::MemberLeft { member }
                }
            }
            MessageKind::Renamed => match msg.target.clone() {
                Some(name) if !name.is_empty() => Outgoing::Rename { name },
                _ => return Ok(Built::Skip("no name")),
            },
            // The bridge's own word to the remote side (what COI did not get).
            MessageKind::Notice => Outgoing::Notice { text: msg.text.clone() },
            MessageKind::Described => Outgoing::Describe { text: msg.target.clone().unwrap_or_default() },
            MessageKind::Avatar => Outgoing::GroupAvatar { image: msg.attachments.first().map(to_api) },
            MessageKind::Report => return Ok(Built::Skip("a report mail (key update, sync)")),
            MessageKind::MergedPost => return Ok(Built::Skip("its file went with its pre-message")),
        };
        Ok(Built::Send(to, Box::new(outgoing), None))
    }

    async fn deliver(&self, item: OutboxItem) {
        let msg = match self.store.message(&item.message_id).await {
            Ok(Some(m)) => m,
            Ok(None) => return self.fail(&item, None, "the message is gone from the store".into()).await,
            Err(e) => return self.retry(&item, None, &e.to_string()).await,
        };
        let (to, outgoing, target) = match self.build(&item, &msg).await {
            Built::Send(to, o, target) => (to, o, target),
            Built::Skip(why) => {
                tracing::debug!(bridge = %self.id, message_id = %item.message_id, why, "not delivered to the bridge");
                let _ = self.store.outbox_done(item.id).await;
                return;
            }
            Built::Retry(reason) => return self.retry(&item, None, &reason).await,
            Built::Failed(DeliverError::Retry { reason, after }) => return self.retry(&item, after, &reason).await,
            Built::Failed(DeliverError::Permanent(reason)) => return self.fail(&item, Some(&msg), reason).await,
            Built::Failed(DeliverError::Unsupported) => {
                let _ = self.store.outbox_done(item.id).await;
                return;
            }
        };
        let caps = self.bridge.capabilities();
        match self.send(&item, &to, *outgoing, target, &caps).await {
            Ok(parts) => {
                for (part, remote) in parts.into_iter().enumerate() {
                    self.map_part(&item.message_id, &to, part as i64, &remote).await;
                }
                // Marked before the chat's next item goes, or the next round sends it again.
                if let Err(e) = backoff::until_ok(backoff::RECORD_FOR, || self.store.outbox_done(item.id)).await {
                    tracing::error!(bridge = %self.id, error = %e, "delivered, but the outbox row was not marked");
                }
                self.metrics.delivered(self.id.as_str(), &item.message_id, item.queued_at_ms);
            }
            Err(DeliverError::Retry { reason, after }) => self.retry(&item, after, &reason).await,
            Err(DeliverError::Permanent(reason)) => self.fail(&item, Some(&msg), reason).await,
            Err(DeliverError::Unsupported) => {
                let _ = self.store.outbox_done(item.id).await;
            }
        }
    }

    /// Posts `outgoing` in the form the bridge can carry; the remote ids to map to the
    /// message by position (parts of a split text are mapped as they go).
    async fn send(
        &self,
        item: &OutboxItem,
        to: &RemoteChatId,
        outgoing: Outgoing,
        target: Option<Target>,
        caps: &Capabilities,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let key = DeliveryKey(format!("coi-{}", item.message_id));
        let fallback_key = || DeliveryKey(format!("coi-{}-fallback", item.message_id));
        match outgoing {
            Outgoing::Reaction { sender, target: remote, emoji } => {
                let quote = match &target {
                    Some(t) => self.store.message(&t.message_id).await.ok().flatten().map(|m| m.text),
                    None => None,
                };
                self.react(to, &key, sender, remote, &emoji, quote, caps, &fallback_key()).await
            }
            Outgoing::Edit { sender, target: remote, new_text } if caps.edits => match target {
                Some(t) => self.edit(item, to, sender, &t, new_text, caps).await,
                None => self.post(to, &key, &Outgoing::Edit { sender, target: remote, new_text }).await,
            },
            Outgoing::Delete { sender, target: remote } if caps.deletes => {
                let result = self.post(to, &key, &Outgoing::Delete { sender: sender.clone(), target: remote }).await?;
                // A delete removes every part of a multi-part copy (text parts and files).
                let more = target.map(|t| t.copies).unwrap_or_default().into_iter().skip(1);
                for (i, part) in more.enumerate() {
                    let key = DeliveryKey(format!("coi-{}-part{}", item.message_id, i + 1));
                    let more = Outgoing::Delete { sender: sender.clone(), target: RemoteMsgId(part.remote_id) };
                    self.post(to, &key, &more).await?;
                }
                Ok(result)
            }
            o @ (Outgoing::Edit { .. } | Outgoing::Delete { .. }) => match degrade(&o) {
                Some(fallback) => self.message(item, to, fallback, caps, &fallback_key()).await,
                None => Err(DeliverError::Unsupported),
            },
            o @ Outgoing::Message { .. } => self.message(item, to, o, caps, &key).await,
            other => self.post(to, &key, &other).await,
        }
    }

    async fn retry(&self, item: &OutboxItem, after: Option<Duration>, reason: &str) {
        let attempts = item.attempts + 1;
        if attempts >= self.policy.max_attempts {
            return self.fail(item, None, format!("gave up after {attempts} attempts: {reason}")).await;
        }
        let pause = after.unwrap_or_else(|| backoff::delay(self.policy.base, self.policy.max_delay, item.attempts));
        let next = chrono::Utc::now().timestamp() + pause.as_secs().max(1) as i64;
        self.metrics.delivery_retry(self.id.as_str());
        tracing::warn!(bridge = %self.id, message_id = %item.message_id, attempts, retry_in = ?pause, reason, "not delivered to the bridge; will retry");
        if let Err(e) = self.store.outbox_retry(item.id, next, reason).await {
            tracing::error!(bridge = %self.id, error = %e, "could not record the retry");
            // The row stays due: without a pause the worker would take it again at once,
            // in a loop for as long as the store refuses writes (a full disk).
            tokio::time::sleep(backoff::PROBE_EVERY).await;
        }
    }

    /// Gives up: the row is marked failed and the COI chat is told.
    async fn fail(&self, item: &OutboxItem, msg: Option<&StoredMessage>, reason: String) {
        self.metrics.delivery_failed(self.id.as_str());
        tracing::error!(bridge = %self.id, message_id = %item.message_id, reason = %reason, "not delivered to the bridge, for good");
        if let Err(e) = self.store.outbox_failed(item.id, &reason).await {
            tracing::error!(bridge = %self.id, error = %e, "could not record the failure");
        }
        let Ok(Some(chat)) = self.store.chat(item.chat_id).await else { return };
        let what = msg.map(|m| m.text.chars().take(60).collect::<String>()).unwrap_or_default();
        let notice = ChatMessage {
            text: format!("⚠️ Not delivered to {}: \"{what}\" ({reason})", self.label),
            in_reply_to: Some(item.message_id.clone()),
            ..ChatMessage::default()
        };
        if let Err(e) = self.outbound.queue_to_chat(Origin::Notice, &chat, notice).await {
            tracing::error!(bridge = %self.id, error = %e, "could not queue the failure notice");
        }
    }
}

fn to_api(a: &StoredAttachment) -> coi_bridge_api::Attachment {
    coi_bridge_api::Attachment { name: a.name.clone(), mime: a.mime.clone(), data: a.data.clone() }
}

/// What to send instead when a bridge cannot carry an edit or a delete natively (a
/// reaction: see [`crate::hub::degrade::reaction_text`]).
pub fn degrade(o: &Outgoing) -> Option<Outgoing> {
    let text = match o {
        Outgoing::Edit { new_text, .. } => format!("✏️ {new_text}"),
        Outgoing::Delete { sender, .. } => format!("{} deleted a message", sender.display_name),
        Outgoing::Message { .. }
        | Outgoing::Reaction { .. }
        | Outgoing::Notice { .. }
        | Outgoing::ReadReceipt { .. }
        | Outgoing::MemberJoined { .. }
        | Outgoing::MemberLeft { .. }
        | Outgoing::Rename { .. }
        | Outgoing::Describe { .. }
        | Outgoing::GroupAvatar { .. } => return None,
    };
    let sender = match o {
        Outgoing::Edit { sender, .. } | Outgoing::Delete { sender, .. } => sender.clone(),
        _ => return None,
    };
    let reply_to = match o {
        Outgoing::Edit { target, .. } | Outgoing::Delete { target, .. } => Some(target.clone()),
        _ => None,
    };
    Some(Outgoing::Message { sender, text, attachments: Vec::new(), reply_to, avatar: None })
}

mod parts;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_back;
#[cfg(test)]
mod tests_idle;
#[cfg(test)]
mod tests_journal;
#[cfg(test)]
mod tests_parts;
