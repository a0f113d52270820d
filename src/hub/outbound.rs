//! Outbound: a message for COI gets its Message-ID, is signed and encrypted (or not, by policy), and is recorded and queued for SMTP in one transaction.

use std::sync::Arc;

use crate::coi::autocrypt::AutocryptHeader;
use crate::coi::{ChatMessage, Group, GroupChange, Kind, Mailbox, crypto, render};
use crate::config::EncryptionPolicy;
use crate::hub::e2ee::{Identity, recipient_keys};
use crate::hub::route;
use crate::hub::wake::OutboxNotifier;
use crate::store::{Chat, ChatKind, ChatRef, Envelope, Origin, OutboundMail, Store, StoreError};

pub mod smear;

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store could not take it now; try again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `encryption = "required"` and these recipients have no key yet (they need to
    /// join through an invite link, or send the bridge a signed message first).
    #[error("no encryption key for {0:?}; the recipients must join through an invite link first")]
    NoKey(Vec<String>),
    #[error("nothing to send to: no recipients")]
    NoRecipients,
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

/// Queues mail from the bridge's identity.
pub struct Outbound {
    store: Arc<dyn Store>,
    me: Mailbox,
    identity: Arc<Identity>,
    policy: EncryptionPolicy,
    wake: Arc<OutboxNotifier>,
    /// Dates of their own for mail created in the same second.
    clock: smear::ChatClocks,
}

impl Outbound {
    /// `me` is the bridge identity's mailbox; `wake` tells the SMTP and bridge workers
    /// about new rows.
    pub fn new(
        store: Arc<dyn Store>,
        me: Mailbox,
        identity: Arc<Identity>,
        policy: EncryptionPolicy,
        wake: Arc<OutboxNotifier>,
    ) -> Self {
        Self { store, me, identity, policy, wake, clock: smear::ChatClocks::default() }
    }

    /// The daemon's outbox notifier (the one this queues with).
    pub fn notifier(&self) -> &Arc<OutboxNotifier> {
        &self.wake
    }

    /// The bridge's own address.
    pub fn address(&self) -> String {
        self.me.addr.clone()
    }

    /// Durably queues `msg` for `recipients` in `chat`, and returns its Message-ID.
    ///
    /// `From` is always the bridge's address. A different display name in `msg.from`
    /// (a relayed person) is kept, with `Sender:` set to the bridge. Group messages carry
    /// the members' fingerprints and gossip their keys.
    pub async fn queue(&self, chat: ChatRef, recipients: &[String], msg: ChatMessage) -> Result<String, QueueError> {
        self.queue_from(Origin::Local, chat, recipients, msg).await
    }

    /// [`Outbound::queue`] for a message that came from a bridge: `origin` is mapped to
    /// the new Message-ID and that bridge gets no copy back.
    pub async fn queue_from(
        &self,
        origin: Origin,
        chat: ChatRef,
        recipients: &[String],
        mut msg: ChatMessage,
    ) -> Result<String, QueueError> {
        if recipients.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        self.prepare(&chat.key, recipients, &mut msg);
        let raw = match recipient_keys(self.store.as_ref(), recipients).await? {
            Ok(keys) => {
                if chat.kind == ChatKind::Group && msg.group.is_some() && msg.member_fprs.is_empty() {
                    let key_of = |addr: &str| recipients.iter().position(|r| r == addr).map(|i| &keys[i]);
                    // Current members in To order, then past members.
                    let listed: Vec<&str> = msg
                        .to
                        .iter()
                        .map(|m| m.addr.as_str())
                        .chain(msg.past_members.iter().map(String::as_str))
                        .collect();
                    msg.member_fprs = listed.iter().filter_map(|a| key_of(a)).map(crypto::fingerprint).collect();
                    if msg.member_timestamps.len() != msg.member_fprs.len() {
                        msg.member_timestamps = vec![msg.date.unwrap_or_default(); msg.member_fprs.len()];
                    }
                    if let Some(GroupChange::MemberAdded(a) | GroupChange::MemberRemoved(a)) =
                        msg.group.as_ref().and_then(|g| g.change.as_ref())
                    {
                        msg.change_fpr = key_of(a).map(crypto::fingerprint);
                    }
                    msg.gossip = recipients
                        .iter()
                        .zip(&keys)
                        .map(|(addr, key)| AutocryptHeader {
                            addr: addr.clone(),
                            prefer_mutual: false,
                            keydata: crypto::public_to_bytes(key),
                        })
                        .collect();
                }
                self.seal(&msg, keys).await?
            }
            Err(missing) if self.policy == EncryptionPolicy::Opportunistic => {
                tracing::info!(?missing, message_id = %msg.message_id, "sending unencrypted to recipients without a key");
                let keyed: Vec<String> = recipients.iter().filter(|r| !missing.contains(r)).cloned().collect();
                if keyed.is_empty() {
                    render(&msg)
                } else {
                    // Encrypted to those with a key, plaintext only to those without.
                    let keys = match recipient_keys(self.store.as_ref(), &keyed).await? {
                        Ok(k) => k,
                        Err(gone) => return Err(QueueError::NoKey(gone)),
                    };
                    let sealed = self.seal(&msg, keys).await?;
                    let plain = (Envelope { from: self.me.addr.clone(), to: missing }, render(&msg));
                    return self.store_and_wake_with(chat, &keyed, msg, sealed, Some(plain), origin).await;
                }
            }
            Err(missing) if chat.kind == ChatKind::Group && missing.len() < recipients.len() => {
                // A member without a key never blocks the others: they get it, and the
                // bridged sides are told who did not.
                let keyed: Vec<String> = recipients.iter().filter(|r| !missing.contains(r)).cloned().collect();
                tracing::warn!(?missing, message_id = %msg.message_id, "group members without a key skipped");
                let tell = matches!(origin, Origin::Bridge { .. }) && msg.kind == Kind::Text;
                let what: String = msg.text.chars().take(60).collect();
                let key = chat.key.clone();
                let id = Box::pin(self.queue_from(origin, chat, &keyed, msg)).await?;
                if tell && let Some(c) = self.store.find_chat(ChatKind::Group, &key).await? {
                    let text = format!(
                        "⚠️ Not delivered on COI to {}: \"{what}\" (the bridge has no encryption key for them; \
                         they need to join through the group's invite link again)",
                        missing.join(", ")
                    );
                    let notice_id = format!("{id}#nokey");
                    route::queue_portal_notice(self.store.as_ref(), &self.wake, c.id, &notice_id, &self.me.addr, &text)
                        .await?;
                }
                return Ok(id);
            }
            Err(missing) => return Err(QueueError::NoKey(missing)),
        };
        self.store_and_wake_with(chat, recipients, msg, raw, None, origin).await
    }

    /// Signs, compresses and encrypts on the blocking pool: a large attachment must not
    /// hold up an async worker.
    async fn seal(&self, msg: &ChatMessage, keys: Vec<pgp::composed::SignedPublicKey>) -> Result<Vec<u8>, QueueError> {
        let (identity, msg) = (self.identity.clone(), msg.clone());
        tokio::task::spawn_blocking(move || identity.seal(&msg, &keys))
            .await
            .map_err(|e| QueueError::Crypto(crypto::CryptoError::Encrypt(format!("the sealing task failed: {e}"))))?
            .map_err(QueueError::from)
    }

    /// Queues a SecureJoin v3 step, encrypted with the invite's password instead of keys.
    /// The joiner's `vc-request-pubkey` goes unsigned and without our key.
    pub async fn queue_with_password(
        &self,
        chat: ChatRef,
        recipient: &str,
        mut msg: ChatMessage,
        password: &str,
    ) -> Result<String, QueueError> {
        let recipients = [recipient.to_owned()];
        self.prepare(&chat.key, &recipients, &mut msg);
        let first_step = msg.secure_join_header("Secure-Join") == Some("vc-request-pubkey");
        if first_step {
            msg.autocrypt = None;
            msg.from.name = None;
        }
        let raw = self.identity.seal_with_password(&msg, password, !first_step)?;
        self.store_and_wake(chat, &recipients, msg, raw).await
    }

    /// Sends `msg` to every member of a group chat, with its group headers. A removed
    /// member is told too.
    pub async fn queue_to_group(&self, chat: &Chat, msg: ChatMessage) -> Result<String, QueueError> {
        self.queue_to_chat(Origin::Local, chat, msg).await
    }

    /// Sends `msg` into a chat, group or 1:1, on behalf of `origin` if a bridge sent it.
    pub async fn queue_to_chat(&self, origin: Origin, chat: &Chat, mut msg: ChatMessage) -> Result<String, QueueError> {
        if chat.kind == ChatKind::Single {
            let chat_ref = ChatRef { kind: ChatKind::Single, key: chat.key.clone(), name: chat.name.clone() };
            return self.queue_from(origin, chat_ref, std::slice::from_ref(&chat.key), msg).await;
        }
        let group =
            msg.group.get_or_insert_with(|| Group { id: chat.key.clone(), name: chat.name.clone(), change: None });
        group.id.clone_from(&chat.key);
        if group.name.is_empty() {
            group.name.clone_from(&chat.name);
        }
        if msg.subject.is_none() {
            msg.subject = Some(group.name.clone());
        }
        let mut recipients: Vec<String> = chat.members.clone();
        if let Some(GroupChange::MemberRemoved(gone)) = msg.group.as_ref().and_then(|g| g.change.as_ref()) {
            // The removed member is no longer listed, but is told.
            let gone = gone.clone();
            recipients.retain(|r| *r != gone);
            msg.to = recipients.iter().map(|a| Mailbox::new(a, None)).collect();
            msg.past_members = vec![gone.clone()];
            recipients.push(gone);
        }
        // When each listed member joined, then when the past ones left (now): a list that
        // said "now" for everyone could undo a removal Delta Chat has not seen yet.
        let now = chrono::Utc::now().timestamp();
        let listed: Vec<String> =
            if msg.to.is_empty() { recipients.clone() } else { msg.to.iter().map(|m| m.addr.clone()).collect() };
        let since = |addr: &String| {
            chat.members
                .iter()
                .position(|m| m == addr)
                .and_then(|i| chat.member_since.get(i))
                .copied()
                .filter(|t| *t > 0)
        };
        msg.member_timestamps = listed
            .iter()
            .filter(|a| !msg.past_members.contains(a))
            .map(|a| since(a).unwrap_or(now))
            .chain(msg.past_members.iter().map(|_| now))
            .collect();
        let chat_ref = ChatRef { kind: ChatKind::Group, key: chat.key.clone(), name: chat.name.clone() };
        self.queue_from(origin, chat_ref, &recipients, msg).await
    }

    fn prepare(&self, chat: &str, recipients: &[String], msg: &mut ChatMessage) {
        if msg.message_id.is_empty() {
            msg.message_id = new_message_id();
        }
        let relayed_name = msg.from.name.take().filter(|n| Some(n) != self.me.name.as_ref());
        msg.from = Mailbox { addr: self.me.addr.clone(), name: relayed_name.clone().or_else(|| self.me.name.clone()) };
        if relayed_name.is_some() {
            msg.sender = Some(self.me.clone());
        }
        msg.date.get_or_insert_with(|| self.clock.next(chat, chrono::Utc::now().timestamp()));
        // The password-encrypted SecureJoin steps are not chat messages; all else is.
        msg.is_chat = !matches!(msg.secure_join_header("Secure-Join"), Some("vc-request-pubkey" | "vc-pubkey"));
        if msg.to.is_empty() && (!msg.is_chat || !msg.past_members.is_empty()) {
            // Hidden recipients, as Delta Chat writes these steps, and a removal of the
            // last member (who is a past member now, not in To).
        } else if msg.to.is_empty() {
            msg.to = recipients.iter().map(|a| Mailbox::new(a, None)).collect();
        }
        msg.autocrypt = Some(self.identity.autocrypt());
        // Ask for read receipts on what people write, as Delta Chat does.
        if msg.kind == Kind::Text && msg.is_chat && msg.disposition_notification_to.is_none() {
            msg.disposition_notification_to = Some(self.me.addr.clone());
        }
        if let Kind::ReadReceipt { .. } = msg.kind {
            // Receipts carry no gossip (Delta Chat never gossips in MDNs).
            msg.gossip.clear();
        }
    }

    async fn store_and_wake(
        &self,
        chat: ChatRef,
        recipients: &[String],
        msg: ChatMessage,
        raw: Vec<u8>,
    ) -> Result<String, QueueError> {
        self.store_and_wake_with(chat, recipients, msg, raw, None, Origin::Local).await
    }

    async fn store_and_wake_with(
        &self,
        chat: ChatRef,
        recipients: &[String],
        msg: ChatMessage,
        raw: Vec<u8>,
        also: Option<(Envelope, Vec<u8>)>,
        origin: Origin,
    ) -> Result<String, QueueError> {
        let envelope = Envelope { from: self.me.addr.clone(), to: recipients.to_vec() };
        let id = msg.message_id.clone();
        let targets = route::outbound(&route::portals_of(self.store.as_ref(), &chat).await?, &origin);
        let mail = OutboundMail { chat, message: msg, raw, envelope, also, origin, targets };
        self.store.queue_outbound(&mail).await?;
        self.wake.queued(std::iter::once(crate::store::SMTP_TARGET).chain(mail.targets.iter().map(String::as_str)));
        Ok(id)
    }
}

/// A fresh Message-ID in Delta Chat's shape: a random UUID at `localhost`.
pub fn new_message_id() -> String {
    format!("{}@localhost", uuid::Uuid::new_v4())
}
