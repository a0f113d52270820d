//! Inbound: fetched mail is parsed, assigned to its chat and recorded together with the IMAP cursor, in one transaction.
//!
//! A mail that cannot be parsed is kept aside (table `rejected`) with a log line and a
//! metric, and the cursor moves past it: bad mail never blocks the mail behind it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::coi::{Limits, parse};
use crate::hub::resolve::{chat_for, member_changes, parent_ids};
use crate::metrics::Metrics;
use crate::store::{BatchOutcome, ChatRef, ImapCursor, InboundMessage, Rejected, Store, StoreResult};

/// One mail as fetched from IMAP.
#[derive(Debug)]
pub struct Fetched {
    pub uid: u32,
    pub raw: Vec<u8>,
    /// Set (with the size) when the mail was over the size limit and not downloaded.
    pub oversize: Option<u64>,
}

/// Records fetched mail.
pub struct Ingest {
    store: Arc<dyn Store>,
    me: String,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// `me` is the bridge's own address.
    pub fn new(store: Arc<dyn Store>, me: &str, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self { store, me: me.to_lowercase(), limits, metrics }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Moves the cursor without recording anything (a recreated mailbox starts at 0).
    pub async fn advance(&self, folder: &str, cursor: ImapCursor) -> StoreResult<()> {
        self.store.record_inbound(folder, cursor, &[], &[]).await.map(|_| ())
    }

    /// Parses a batch and records it with the cursor. On error nothing is recorded and
    /// the cursor stays, so the same batch is fetched again.
    pub async fn batch(&self, folder: &str, cursor: ImapCursor, fetched: Vec<Fetched>) -> StoreResult<BatchOutcome> {
        let mut messages: Vec<InboundMessage> = Vec::with_capacity(fetched.len());
        let mut rejected = Vec::new();
        let mut batch_chats: HashMap<String, ChatRef> = HashMap::new();
        for f in fetched {
            if let Some(size) = f.oversize {
                let reason = format!(
                    "too_large: {size} bytes is over imap.max_message_bytes (uid {} uidvalidity {}); left on the server",
                    f.uid, cursor.uid_validity
                );
                self.reject(folder, f.uid, "too_large", reason, Vec::new(), &mut rejected);
                continue;
            }
            let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| parse(&f.raw, &self.limits)));
            let parsed = match parsed {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    self.reject(folder, f.uid, e.label(), e.to_string(), f.raw, &mut rejected);
                    continue;
                }
                Err(_) => {
                    self.reject(folder, f.uid, "parser_panic", "the MIME parser panicked".into(), f.raw, &mut rejected);
                    continue;
                }
            };
            for p in &parsed.problems {
                self.metrics.inbound_problems.with_label_values(&[p.label()]).inc();
                tracing::warn!(folder, uid = f.uid, message_id = %parsed.message.message_id, problem = ?p, "mail has a defect; recorded anyway");
            }
            let msg = parsed.message;
            let ids = parent_ids(&msg);
            let parent = match ids.iter().find_map(|id| batch_chats.get(id).cloned()) {
                Some(c) => Some(c),
                None if ids.is_empty() => None,
                None => self.store.chat_of_any(&ids).await?,
            };
            let chat = chat_for(&msg, &self.me, parent);
            batch_chats.insert(msg.message_id.clone(), chat.clone());
            let (members_added, members_removed) = member_changes(&msg, &self.me);
            tracing::debug!(folder, uid = f.uid, message_id = %msg.message_id, chat = %chat.key, kind = msg.kind_name(), "mail parsed");
            messages.push(InboundMessage { uid: f.uid, chat, message: msg, members_added, members_removed });
        }
        let outcome = self.store.record_inbound(folder, cursor, &messages, &rejected).await?;
        self.metrics.inbound_recorded.inc_by(outcome.recorded as u64);
        self.metrics.inbound_duplicates.inc_by(outcome.duplicates as u64);
        if outcome.recorded + outcome.duplicates + outcome.rejected > 0 {
            tracing::info!(
                folder,
                recorded = outcome.recorded,
                duplicates = outcome.duplicates,
                rejected = outcome.rejected,
                last_uid = cursor.last_uid,
                "inbound batch recorded"
            );
        }
        Ok(outcome)
    }

    fn reject(&self, folder: &str, uid: u32, label: &str, reason: String, raw: Vec<u8>, out: &mut Vec<Rejected>) {
        self.metrics.inbound_rejected.with_label_values(&[label]).inc();
        tracing::warn!(folder, uid, reason = %reason, bytes = raw.len(), "mail kept aside: not a usable chat mail");
        out.push(Rejected { uid, reason, raw });
    }
}
