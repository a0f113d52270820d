//! Degraded deliveries: a text too long for one message goes in parts (or as a text file), an edit keeps every part of such a copy in step, and a reaction goes in a form the side takes.
//!
//! Every post goes through the send journal ([`BridgeDelivery::post`]), keyed by its
//! delivery key: a part, an edit step or a whole message the side took is never posted
//! again, so a retry after a failure half-way sends only what is missing (editing a part
//! twice would be refused by Telegram, "message is not modified"; a text twice shown twice).

use std::collections::HashSet;
use std::fmt::Display;

use coi_bridge_api::{
    Attachment, Capabilities, DeliverError, DeliveryKey, Outgoing, Person, RemoteChatId, RemoteMsgId,
};

use super::{BridgeDelivery, Target};
use crate::backoff;
use crate::hub::degrade::{self, EditStep, FULL_TEXT_SLOT, Slot};
use crate::store::OutboxItem;
use crate::store::portals::SendRecord;

fn store_retry(e: impl Display) -> DeliverError {
    DeliverError::Retry { reason: format!("the store could not be read: {e}"), after: None }
}

/// The delivery key of text part `i` of a delivery keyed `key`: part 0 keeps the key itself.
fn part_key(key: &DeliveryKey, i: usize) -> DeliveryKey {
    if i == 0 { key.clone() } else { DeliveryKey(format!("{key}-text{i}")) }
}

/// The whole text as a file, after its start went as text.
fn full_text_message(sender: Person, text: String) -> Outgoing {
    let file = Attachment { name: degrade::FULL_TEXT_NAME.into(), mime: "text/plain".into(), data: text.into_bytes() };
    Outgoing::Message { sender, text: String::new(), attachments: vec![file], reply_to: None, avatar: None }
}

impl BridgeDelivery {
    /// A reaction the side takes (itself or the nearest), else, or if the side refuses it,
    /// a short text in reply to its target. A retraction with nothing native to retract is done.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn react(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        sender: Person,
        target: RemoteMsgId,
        emoji: &str,
        quote: Option<String>,
        caps: &Capabilities,
        fallback_key: &DeliveryKey,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let native = if caps.reactions { degrade::nearest_reaction(emoji, caps.allowed_reactions) } else { None };
        if let Some(nearest) = native {
            if nearest != emoji {
                tracing::info!(bridge = %self.id, emoji, nearest = %nearest, "reaction sent as the nearest one the side takes");
            }
            let out = Outgoing::Reaction { sender: sender.clone(), target: target.clone(), emoji: nearest };
            match self.post(to, key, &out).await {
                Err(DeliverError::Permanent(reason)) => {
                    tracing::info!(bridge = %self.id, emoji, %reason, "the side refused the reaction; sent as text");
                }
                Err(DeliverError::Unsupported) => {}
                other => return other,
            }
        }
        if emoji.trim().is_empty() {
            return Ok(Vec::new());
        }
        tracing::info!(bridge = %self.id, emoji, "no reaction the side takes is close; sent as text");
        let text = degrade::reaction_text(emoji, quote.as_deref());
        let out = Outgoing::Message { sender, text, attachments: Vec::new(), reply_to: Some(target), avatar: None };
        self.post(to, fallback_key, &out).await
    }

    /// A message, in parts if its text is too long for the side: the first part carries
    /// the reply and the avatar, the last one the files, then (if the plan says so) the
    /// whole text follows as a file. The positional ids of a one-part message are returned
    /// for the caller to map; the parts of a longer one are mapped here, as they go.
    pub(super) async fn message(
        &self,
        item: &OutboxItem,
        to: &RemoteChatId,
        o: Outgoing,
        caps: &Capabilities,
        key: &DeliveryKey,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let Outgoing::Message { sender, text, attachments, reply_to, avatar } = o else {
            return self.post(to, key, &o).await;
        };
        let plan = degrade::plan_text(&text, caps, &sender.display_name);
        if plan.parts.len() == 1 && plan.full_text.is_none() {
            let o = Outgoing::Message { sender, text, attachments, reply_to, avatar };
            return self.post(to, key, &o).await;
        }
        tracing::info!(
            bridge = %self.id, message_id = %item.message_id, parts = plan.parts.len(), as_file = plan.full_text.is_some(),
            "a text too long for one message goes in parts"
        );
        // What an earlier attempt delivered already.
        let have: HashSet<i64> = self
            .store
            .remote_copies(&item.message_id, self.id.as_str())
            .await
            .map_err(store_retry)?
            .into_iter()
            .map(|c| c.part)
            .collect();
        let last = plan.parts.len() - 1;
        let (mut files, mut reply_to, mut avatar) = (Some(attachments), reply_to, avatar);
        for (i, part) in plan.parts.into_iter().enumerate() {
            let files = if i == last { files.take().unwrap_or_default() } else { Vec::new() };
            let (reply_to, avatar) = (reply_to.take(), avatar.take());
            if have.contains(&degrade::text_slot(i)) {
                continue;
            }
            let out = Outgoing::Message { sender: sender.clone(), text: part, attachments: files, reply_to, avatar };
            let ids = self.post(to, &part_key(key, i), &out).await?;
            // The text first, then the files (of the last part): files keep parts 1, 2, …
            for (j, id) in ids.iter().enumerate() {
                let part = if j == 0 { degrade::text_slot(i) } else { (j as i64).min(FULL_TEXT_SLOT - 1) };
                self.map_part(&item.message_id, to, part, id).await;
            }
        }
        if let Some(full) = plan.full_text
            && !have.iter().any(|p| Slot::of(*p) == Slot::FullText)
        {
            let key = DeliveryKey(format!("{key}-fulltext"));
            let ids = self.post(to, &key, &full_text_message(sender, full)).await?;
            for (j, id) in ids.iter().enumerate() {
                self.map_part(&item.message_id, to, FULL_TEXT_SLOT + j as i64, id).await;
            }
        }
        Ok(Vec::new())
    }

    /// An edit of a COI message whose copy here is (or becomes) several parts: each part
    /// that changed is edited, surplus parts are deleted, missing ones sent. Returns the
    /// ids of the edit of the main part, mapped to the edit by the caller.
    pub(super) async fn edit(
        &self,
        item: &OutboxItem,
        to: &RemoteChatId,
        sender: Person,
        target: &Target,
        new_text: String,
        caps: &Capabilities,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let plan = degrade::plan_text(&new_text, caps, &sender.display_name);
        let mut text_parts = Vec::new();
        let mut full = Vec::new();
        for c in &target.copies {
            match Slot::of(c.part) {
                Slot::Text(i) => text_parts.push((i, c.remote_id.clone())),
                Slot::FullText => full.push((c.part, c.remote_id.clone())),
                Slot::File => {}
            }
        }
        let key = DeliveryKey(format!("coi-{}", item.message_id));
        let main = RemoteMsgId(target.copies.first().map(|c| c.remote_id.clone()).unwrap_or_default());
        // What the copy shows now (the last edit's text, else the message's own), kept so a
        // later edit leaves the parts that stay the same alone: Telegram refuses an edit
        // that changes nothing.
        let shown_key = format!("core:text:{}", target.message_id);
        if text_parts.len() <= 1 && full.is_empty() && plan.parts.len() == 1 && plan.full_text.is_none() {
            // One part before and after: an edit as ever.
            let out = Outgoing::Edit { sender, target: main, new_text: new_text.clone() };
            let ids = self.post(to, &key, &out).await?;
            self.record_shown(&shown_key, &new_text).await;
            return Ok(ids);
        }
        let shown = match self.store.bridge_state(self.id.as_str(), &shown_key).await.map_err(store_retry)? {
            Some(text) => Some(text),
            None => self.store.message(&target.message_id).await.map_err(store_retry)?.map(|m| m.text),
        };
        let before = shown.map(|t| degrade::plan_text(&t, caps, &sender.display_name).parts).unwrap_or_default();
        let steps = degrade::edit_steps(&text_parts, &full, &plan);
        tracing::info!(
            bridge = %self.id, message_id = %item.message_id, parts_before = text_parts.len(), parts = plan.parts.len(),
            "an edit of a text in parts"
        );
        let mut own = Vec::new();
        for step in steps {
            let (step_key, out) = match &step {
                EditStep::Edit { index, text, .. } if before.get(*index) == Some(text) => continue,
                EditStep::Edit { index, target, text } => (
                    part_key(&key, *index),
                    Outgoing::Edit {
                        sender: sender.clone(),
                        target: RemoteMsgId(target.clone()),
                        new_text: text.clone(),
                    },
                ),
                EditStep::Send { index, text } => (
                    part_key(&key, *index),
                    Outgoing::Message {
                        sender: sender.clone(),
                        text: text.clone(),
                        attachments: Vec::new(),
                        reply_to: None,
                        avatar: None,
                    },
                ),
                EditStep::Drop { index, target } => (
                    DeliveryKey(format!("{key}-drop{index}")),
                    Outgoing::Delete { sender: sender.clone(), target: RemoteMsgId(target.clone()) },
                ),
                EditStep::DropFullText { part, target } => (
                    DeliveryKey(format!("{key}-dropfull{part}")),
                    Outgoing::Delete { sender: sender.clone(), target: RemoteMsgId(target.clone()) },
                ),
                EditStep::SendFullText { text } => {
                    (DeliveryKey(format!("{key}-fulltext")), full_text_message(sender.clone(), text.clone()))
                }
            };
            let ids = self.post(to, &step_key, &out).await?;
            match step {
                EditStep::Edit { index: 0, .. } => own = ids,
                EditStep::Edit { .. } => {}
                EditStep::Send { index, .. } => {
                    if let Some(id) = ids.first() {
                        self.map_part(&target.message_id, to, degrade::text_slot(index), id).await;
                    }
                }
                EditStep::Drop { target: gone, .. } | EditStep::DropFullText { target: gone, .. } => {
                    if let Err(e) = self.store.unmap_remote(&target.message_id, self.id.as_str(), &gone).await {
                        tracing::error!(bridge = %self.id, error = %e, "a part was deleted, but the id map still has it");
                    }
                }
                EditStep::SendFullText { .. } => {
                    for (j, id) in ids.iter().enumerate() {
                        self.map_part(&target.message_id, to, FULL_TEXT_SLOT + j as i64, id).await;
                    }
                }
            }
        }
        self.record_shown(&shown_key, &new_text).await;
        Ok(own)
    }

    async fn record_shown(&self, key: &str, text: &str) {
        if let Err(e) = self.store.set_bridge_state(self.id.as_str(), key, text).await {
            tracing::warn!(bridge = %self.id, error = %e, "could not record the edited text");
        }
    }

    /// Posts `out` to the side once per delivery key, through the send journal: a post the
    /// side took is never repeated (its recorded ids are returned), and nothing is posted
    /// while the store cannot record it. Telegram takes no idempotency key, so without this
    /// a daemon killed between a post and the outbox mark showed the message twice.
    pub(super) async fn post(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        out: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let bridge = self.id.as_str();
        match self.store.begin_send(bridge, key.as_str()).await {
            Ok(SendRecord::New) => {}
            Ok(SendRecord::Done(ids)) => {
                tracing::info!(bridge = %self.id, key = %key, "posted before (the journal has it); not posted again");
                return Ok(ids.into_iter().map(RemoteMsgId).collect());
            }
            Ok(SendRecord::Unfinished(since)) => {
                // The process died during the post: the side may have it. Posting again is
                // the only way not to lose it; a side with idempotency keys drops the copy.
                self.metrics.delivery_unconfirmed(bridge);
                tracing::warn!(bridge = %self.id, key = %key, since, "a post a stopped daemon had started is posted again; the side may show it twice");
            }
            Err(e) => {
                return Err(DeliverError::Retry {
                    reason: format!("the store cannot record the post, so it is held back: {e}"),
                    after: None,
                });
            }
        }
        match self.bridge.deliver(to, key, out).await {
            Ok(ids) => {
                let raw: Vec<String> = ids.iter().map(|i| i.0.clone()).collect();
                let write = || self.store.finish_send(bridge, key.as_str(), &raw);
                if let Err(e) = backoff::until_ok(backoff::RECORD_FOR, write).await {
                    tracing::error!(bridge = %self.id, key = %key, error = %e, "posted, but the send journal was not completed");
                }
                Ok(ids)
            }
            Err(e) => {
                if let Err(store) = self.store.abandon_send(bridge, key.as_str()).await {
                    tracing::warn!(bridge = %self.id, key = %key, error = %store, "could not clear a refused post from the send journal");
                }
                Err(e)
            }
        }
    }
}
