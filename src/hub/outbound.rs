//! Outbound: a message for COI gets its Message-ID, is signed and encrypted (or not, by policy), and is recorded and queued for SMTP in one transaction.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::coi::{ChatMessage, Mailbox, crypto, render};
use crate::config::EncryptionPolicy;
use crate::hub::e2ee::{Identity, recipient_keys};
use crate::store::{ChatKind, ChatRef, Envelope, OutboundMail, Store, StoreError};

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
    wake: Arc<Notify>,
}

impl Outbound {
    /// `me` is the bridge identity's mailbox; `wake` tells the SMTP worker about new work.
    pub fn new(
        store: Arc<dyn Store>,
        me: Mailbox,
        identity: Arc<Identity>,
        policy: EncryptionPolicy,
        wake: Arc<Notify>,
    ) -> Self {
        Self { store, me, identity, policy, wake }
    }

    /// Durably queues `msg` for `recipients` in `chat`, and returns its Message-ID.
    ///
    /// `From` is always the bridge's address. A different display name in `msg.from`
    /// (a relayed person) is kept, with `Sender:` set to the bridge. Group messages carry
    /// the members' fingerprints and gossip their keys.
    pub async fn queue(
        &self,
        chat: ChatRef,
        recipients: &[String],
        mut msg: ChatMessage,
    ) -> Result<String, QueueError> {
        if recipients.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        if msg.message_id.is_empty() {
            msg.message_id = new_message_id();
        }
        let relayed_name = msg.from.name.take().filter(|n| Some(n) != self.me.name.as_ref());
        msg.from = Mailbox { addr: self.me.addr.clone(), name: relayed_name.clone().or_else(|| self.me.name.clone()) };
        if relayed_name.is_some() {
            msg.sender = Some(self.me.clone());
        }
        msg.is_chat = true;
        msg.date.get_or_insert_with(|| chrono::Utc::now().timestamp());
        if msg.to.is_empty() {
            msg.to = recipients.iter().map(|a| Mailbox::new(a, None)).collect();
        }
        msg.autocrypt = Some(self.identity.autocrypt());
        let raw = match recipient_keys(self.store.as_ref(), recipients).await? {
            Ok(keys) => {
                if chat.kind == ChatKind::Group && msg.member_fprs.is_empty() {
                    msg.member_fprs = keys.iter().map(crypto::fingerprint).collect();
                    msg.gossip = recipients
                        .iter()
                        .zip(&keys)
                        .map(|(addr, key)| crate::coi::autocrypt::AutocryptHeader {
                            addr: addr.clone(),
                            prefer_mutual: false,
                            keydata: crypto::public_to_bytes(key),
                        })
                        .collect();
                }
                self.identity.seal(&msg, &keys)?
            }
            Err(missing) if self.policy == EncryptionPolicy::Opportunistic => {
                tracing::info!(?missing, message_id = %msg.message_id, "sending unencrypted: recipients without a key");
                render(&msg)
            }
            Err(missing) => return Err(QueueError::NoKey(missing)),
        };
        let envelope = Envelope { from: self.me.addr.clone(), to: recipients.to_vec() };
        let id = msg.message_id.clone();
        self.store.queue_outbound(&OutboundMail { chat, message: msg, raw, envelope }).await?;
        self.wake.notify_one();
        Ok(id)
    }
}

/// A fresh Message-ID in Delta Chat's shape: a random UUID at `localhost`.
pub fn new_message_id() -> String {
    format!("{}@localhost", uuid::Uuid::new_v4())
}
