//! Inbound: fetched mail is parsed, assigned to its chat and recorded together with the IMAP cursor, in one transaction.
//!
//! A mail that cannot be parsed is kept aside (table `rejected`) with a log line and a
//! metric, and the cursor moves past it: bad mail never blocks the mail behind it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};

use crate::coi::Kind;
use crate::config::EncryptionPolicy;
use crate::hub::e2ee::{self, Budget, Identity, OpenError, Trust};
use crate::hub::outbound::QueueError;
use crate::hub::resolve::{chat_for, member_changes, parent_ids, quote_of_unknown, quoted_parent, unattributed_chat};
use crate::hub::route::{self, DmBridges};
use crate::hub::securejoin::{SecureJoin, Step};
use crate::hub::wake::OutboxNotifier;
use crate::metrics::Metrics;
use crate::store::keys::KeyLearned;
use crate::store::{BatchOutcome, ChatKind, ChatRef, ImapCursor, InboundMessage, Rejected, Store, StoreResult};

/// One mail as fetched from IMAP.
#[derive(Debug)]
pub struct Fetched {
    pub uid: u32,
    pub raw: Vec<u8>,
    /// Set (with the size) when the mail was over the size limit and not downloaded.
    pub oversize: Option<u64>,
}

/// One mail's opening: its result, or the panic it caught.
type Opening = std::thread::Result<Result<e2ee::Opened, OpenError>>;
/// A fetched mail's bytes, shared with its opening.
type Raw = Arc<Vec<u8>>;
/// A fetched mail and, unless it was over the size limit, its bytes and opening.
type Slot = (Fetched, Option<(Raw, Opening)>);
/// A mail opened, by its place in the batch.
type Done = (usize, Raw, Opening);

/// Senders whose mail is opened at once: the blocking pool decrypts on every core, and
/// the store reads between the steps overlap too. At least 2, at most 8.
fn open_parallel() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// The outer `From` header's value, lowercased, as a lane key (not parsed, not trusted:
/// it only keeps one sender's mails in their order). Mail without one shares a lane.
fn outer_from(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(64 * 1024)];
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
    head[..end]
        .split(|&b| b == b'\n')
        .find(|line| line.len() > 5 && line[..5].eq_ignore_ascii_case(b"from:"))
        .map(|line| String::from_utf8_lossy(&line[5..]).trim().to_lowercase())
        .unwrap_or_default()
}

/// Records fetched mail.
pub struct Ingest {
    store: Arc<dyn Store>,
    identity: Arc<Identity>,
    policy: EncryptionPolicy,
    budget: Budget,
    metrics: Arc<Metrics>,
    securejoin: Option<Arc<SecureJoin>>,
    /// Wakes the bridges' workers when their rows are recorded.
    wake: Arc<OutboxNotifier>,
    /// See [`route::inbound`].
    dm: DmBridges,
}

impl Ingest {
    pub fn new(
        store: Arc<dyn Store>,
        identity: Arc<Identity>,
        policy: EncryptionPolicy,
        budget: Budget,
        metrics: Arc<Metrics>,
        wake: Arc<OutboxNotifier>,
    ) -> Self {
        Self { store, identity, policy, budget, metrics, securejoin: None, wake, dm: DmBridges::default() }
    }

    /// The bridges that open a DM portal when a COI contact writes 1:1 to the bridge and
    /// the chat has no portal yet: such messages are queued for them.
    pub fn set_dm_bridges(&self, bridges: Vec<String>) {
        self.dm.set(bridges);
    }

    /// Lets SecureJoin steps be answered instead of recorded.
    pub fn with_securejoin(mut self, sj: Arc<SecureJoin>) -> Self {
        self.securejoin = Some(sj);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Moves the cursor without recording anything (a recreated mailbox starts at 0).
    pub async fn advance(&self, folder: &str, cursor: ImapCursor) -> StoreResult<()> {
        self.store.record_inbound(folder, cursor, &[], &[]).await.map(|_| ())
    }

    /// Opens, parses and records a batch with the cursor. On error nothing is recorded
    /// and the cursor stays, so the same batch is fetched again.
    pub async fn batch(&self, folder: &str, cursor: ImapCursor, fetched: Vec<Fetched>) -> StoreResult<BatchOutcome> {
        let me = self.identity.addr.as_str();
        let mut messages: Vec<InboundMessage> = Vec::with_capacity(fetched.len());
        let mut rejected = Vec::new();
        // Failures are counted once the batch is recorded: a batch that fails is fetched
        // again, and must not count twice.
        let mut decrypt_failures = 0u64;
        let mut signature_failures: Vec<&'static str> = Vec::new();
        let mut batch_chats: HashMap<String, ChatRef> = HashMap::new();
        // Mail that is handled but not recorded as a chat message (key-exchange steps,
        // reports): it still counts as mail in.
        let mut not_recorded = 0u64;
        for (f, opened) in self.open_all(fetched).await {
            let Some((raw, opened)) = opened else {
                let size = f.oversize.unwrap_or_default();
                let reason = format!(
                    "too_large: {size} bytes is over imap.max_message_bytes (uid {} uidvalidity {}); left on the server",
                    f.uid, cursor.uid_validity
                );
                self.reject(folder, f.uid, "too_large", reason, Vec::new(), &mut rejected);
                continue;
            };
            let raw = || Arc::try_unwrap(raw.clone()).unwrap_or_else(|shared| shared.as_ref().clone());
            let opened = match opened {
                Ok(Ok(o)) => o,
                Ok(Err(OpenError::Store(e))) => return Err(e),
                Ok(Err(e)) => {
                    if matches!(e, OpenError::NotForUs(_)) {
                        decrypt_failures += 1;
                    }
                    self.reject(folder, f.uid, e.label(), e.to_string(), raw(), &mut rejected);
                    continue;
                }
                Err(_) => {
                    self.reject(folder, f.uid, "parser_panic", "the MIME parser panicked".into(), raw(), &mut rejected);
                    continue;
                }
            };
            for p in &opened.problems {
                self.metrics.inbound_problems.with_label_values(&[p.label()]).inc();
                tracing::warn!(folder, uid = f.uid, message_id = %opened.message.message_id, problem = ?p, "mail has a defect; recorded anyway");
            }
            for (addr, learned) in &opened.key_events {
                match learned {
                    KeyLearned::Flagged { old_fingerprint } => {
                        self.metrics.key_changes_flagged.inc();
                        tracing::warn!(addr = %addr, old = %old_fingerprint, "a verified contact sent another key; kept aside, not used");
                    }
                    other => tracing::info!(addr = %addr, outcome = ?other, "contact key learned"),
                }
            }
            if let Some(sj) = &self.securejoin
                && !opened.message.secure_join.is_empty()
            {
                match sj.handle(&opened).await {
                    Ok(Step::Consumed) => {
                        not_recorded += 1;
                        continue;
                    }
                    Ok(Step::NotSecureJoin) => {}
                    Err(QueueError::Store(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(uid = f.uid, error = %e, "SecureJoin step could not be answered");
                        not_recorded += 1;
                        continue;
                    }
                }
            }
            let mut msg = opened.message;
            if msg.kind == Kind::Report {
                tracing::debug!(uid = f.uid, message_id = %msg.message_id, "report mail (key update, sync): nothing to record");
                not_recorded += 1;
                continue;
            }
            let sender_has_key = self.store.contact_key(&msg.from.addr).await?.is_some();
            let attributed = match &opened.trust {
                Trust::Verified { .. } => true,
                Trust::Invite { signer, .. } => signer.is_some(),
                // Our own address is only ever spoken for by our own signature (e2ee::open),
                // never by the absence of a key on record.
                Trust::Plain | Trust::Unverified => {
                    self.policy == EncryptionPolicy::Opportunistic && !sender_has_key && msg.from.addr != me
                }
            };
            let security = match &opened.trust {
                Trust::Plain => "plain",
                Trust::Unverified => "unverified",
                Trust::Verified { .. } => "verified",
                Trust::Invite { .. } => "invite",
            };
            if let Some(avatar) = msg.user_avatar.take() {
                // Only a signed, encrypted message may change how its sender looks.
                if attributed && security == "verified" && msg.from.addr != me {
                    self.store.set_contact_avatar(&msg.from.addr, &avatar).await?;
                } else {
                    self.metrics.inbound_problems.with_label_values(&["avatar_ignored"]).inc();
                }
            }
            // Group authority: only a member (as we know the group) posts into it or
            // changes it. A group new to us starts with its sender; SecureJoin adds
            // members through its own steps, before this point.
            if attributed
                && msg.from.addr != me
                && let Some(g) = &msg.group
                && let Some(known) = self.store.find_chat(ChatKind::Group, &g.id).await?
                && !known.members.contains(&msg.from.addr)
                && !self.inviter_of(&g.id, &msg.from.addr, &opened.trust).await?
            {
                let reason = format!(
                    "not_a_member: {} is not a member of group {:?} ({}); set apart, nothing changed",
                    msg.from.addr, known.name, known.key
                );
                self.reject(folder, f.uid, "not_a_member", reason, raw(), &mut rejected);
                continue;
            }
            // A quote of a message we never saw: no side can point at it (resolve.rs).
            if let Some(parent) = quoted_parent(&msg)
                && !batch_chats.contains_key(parent)
                && self.store.chat_of_any(&[parent.to_owned()]).await?.is_none()
            {
                quote_of_unknown(&mut msg);
            }
            let chat = if attributed {
                let ids = parent_ids(&msg);
                let parent = match ids.iter().find_map(|id| batch_chats.get(id).cloned()) {
                    Some(c) => Some(c),
                    None if ids.is_empty() => None,
                    None => self.store.chat_of_any(&ids).await?,
                };
                chat_for(&msg, me, parent)
            } else {
                // Not provably from its sender: no group state, no threading into other
                // chats, and not the sender's own chat.
                if msg.group.take().is_some() {
                    self.metrics.inbound_problems.with_label_values(&["unsigned_group_ignored"]).inc();
                }
                signature_failures.push(if security == "plain" { "unsigned" } else { "unknown_or_wrong_key" });
                tracing::warn!(
                    folder, uid = f.uid, from = %msg.from.addr, security,
                    "mail not signed by its sender's key: recorded apart, not attributed to the contact"
                );
                unattributed_chat(&msg.from.addr)
            };
            batch_chats.insert(msg.message_id.clone(), chat.clone());
            let (mut members_added, members_removed) =
                if attributed { member_changes(&msg, me) } else { (Vec::new(), Vec::new()) };
            if security == "verified" {
                // Delta Chat's key rule: a member we hold no key for is not a member (one
                // keyless address would otherwise block every send to the group).
                let mut keyed = Vec::with_capacity(members_added.len());
                for a in members_added {
                    if self.store.contact_key(&a).await?.is_some() {
                        keyed.push(a);
                    } else {
                        self.metrics.inbound_problems.with_label_values(&["member_without_key"]).inc();
                        tracing::warn!(uid = f.uid, addr = %a, "group mail names a member we have no key for; not added");
                    }
                }
                members_added = keyed;
            }
            tracing::debug!(folder, uid = f.uid, message_id = %msg.message_id, chat = %chat.key, kind = msg.kind_name(), security, "mail opened");
            messages.push(InboundMessage {
                uid: f.uid,
                chat,
                message: msg,
                members_added,
                members_removed,
                security,
                targets: Vec::new(),
            });
        }
        route::route_inbound(self.store.as_ref(), &self.dm.get(), &mut messages).await?;
        let outcome = self.store.record_inbound(folder, cursor, &messages, &rejected).await?;
        self.wake.queued(messages.iter().flat_map(|m| m.targets.iter().map(String::as_str)));
        self.metrics.inbound_recorded.inc_by(outcome.recorded as u64);
        // Every new mail counts as mail in, whatever became of it: recorded, a step of a
        // key exchange, a report, or set apart. A mail fetched again (duplicate) does not.
        let mail_in = outcome.recorded as u64 + outcome.rejected as u64 + not_recorded;
        self.metrics.messages.with_label_values(&[crate::metrics::COI, "in"]).inc_by(mail_in);
        self.metrics.decrypt_failures.inc_by(decrypt_failures);
        self.metrics.failures.with_label_values(&["ingest", "decrypt"]).inc_by(decrypt_failures);
        for reason in signature_failures {
            self.metrics.signature_failures.with_label_values(&[reason]).inc();
            self.metrics.failures.with_label_values(&["ingest", "signature"]).inc();
        }
        let unusable = (rejected.len() as u64).saturating_sub(decrypt_failures);
        self.metrics.failures.with_label_values(&["ingest", "rejected"]).inc_by(unusable);
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

    /// Opens (decrypts, verifies, parses) a batch's mails, several at once: each sender's
    /// mails in turn (a first mail's Autocrypt key is learned before the next one is
    /// checked against it), different senders' side by side on the blocking pool. The
    /// results come back in the batch's (UID) order; an oversize mail has none.
    async fn open_all(&self, fetched: Vec<Fetched>) -> Vec<Slot> {
        let mut slots: Vec<Slot> = Vec::with_capacity(fetched.len());
        // (sender, its mails by place in the batch)
        let mut lanes: Vec<(String, Vec<(usize, Raw)>)> = Vec::new();
        for mut f in fetched {
            if f.oversize.is_none() {
                let raw = Arc::new(std::mem::take(&mut f.raw));
                let sender = outer_from(&raw);
                match lanes.iter_mut().find(|(s, _)| *s == sender) {
                    Some((_, lane)) => lane.push((slots.len(), raw)),
                    None => lanes.push((sender, vec![(slots.len(), raw)])),
                }
            }
            slots.push((f, None));
        }
        let opened: Vec<Vec<Done>> = futures::stream::iter(lanes)
            .map(|(_, lane)| async move {
                let mut out = Vec::with_capacity(lane.len());
                for (i, raw) in lane {
                    let opening =
                        AssertUnwindSafe(e2ee::open(raw.clone(), &self.identity, self.store.as_ref(), &self.budget))
                            .catch_unwind()
                            .await;
                    out.push((i, raw, opening));
                }
                out
            })
            .buffer_unordered(open_parallel())
            .collect()
            .await;
        for (i, raw, opening) in opened.into_iter().flatten() {
            slots[i].1 = Some((raw, opening));
        }
        slots
    }

    /// Whether `from`, signing with the key `trust` names, is the inviter of a SecureJoin
    /// we made into group `group_id`: a completed join makes its inviter (and whom the
    /// inviter lists) members, even when the group was known before (a portal made with
    /// `!coi link` waits for it).
    async fn inviter_of(&self, group_id: &str, from: &str, trust: &Trust) -> StoreResult<bool> {
        let Trust::Verified { fingerprint } = trust else { return Ok(false) };
        let joins = self.store.joins_of_group(group_id).await?;
        Ok(joins.iter().any(|j| j.inviter_addr.eq_ignore_ascii_case(from) && j.inviter_fpr == *fingerprint))
    }

    fn reject(&self, folder: &str, uid: u32, label: &str, reason: String, raw: Vec<u8>, out: &mut Vec<Rejected>) {
        self.metrics.inbound_rejected.with_label_values(&[label]).inc();
        tracing::warn!(folder, uid, reason = %reason, bytes = raw.len(), "mail kept aside: not a usable chat mail");
        out.push(Rejected { uid, reason, raw });
    }
}

#[cfg(test)]
mod tests {
    use super::outer_from;

    #[test]
    fn the_lane_of_a_mail_is_its_outer_from_header_only() {
        let mail = b"Subject: x\r\nFROM:  Alice <ALICE@x.org>\r\nTo: b@x.org\r\n\r\nFrom: mallory@x.org\r\n";
        assert_eq!(outer_from(mail), "alice <alice@x.org>");
        assert_eq!(outer_from(b"Subject: no sender\r\n\r\nFrom: body@x.org\r\n"), "", "the body is not a header");
        assert_eq!(outer_from(b""), "");
    }
}
