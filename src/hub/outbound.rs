//! Outbound: a message for COI gets its Message-ID, is rendered, and is recorded and queued for SMTP in one transaction.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::coi::{ChatMessage, Mailbox, render};
use crate::store::{ChatRef, Envelope, OutboundMail, Store, StoreError, StoreResult};

/// Queues mail from the bridge's identity.
pub struct Outbound {
    store: Arc<dyn Store>,
    me: Mailbox,
    wake: Arc<Notify>,
}

impl Outbound {
    /// `me` is the bridge identity; `wake` tells the SMTP worker there is new work.
    pub fn new(store: Arc<dyn Store>, me: Mailbox, wake: Arc<Notify>) -> Self {
        Self { store, me, wake }
    }

    /// Durably queues `msg` for `recipients` in `chat`, and returns its Message-ID.
    ///
    /// `From` is always the bridge's address. A different display name in `msg.from`
    /// (a relayed person) is kept, with `Sender:` set to the bridge.
    pub async fn queue(&self, chat: ChatRef, recipients: &[String], mut msg: ChatMessage) -> StoreResult<String> {
        if recipients.is_empty() {
            return Err(StoreError::Fatal(format!("message for chat {} has no recipients", chat.key)));
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
        let raw = render(&msg);
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
