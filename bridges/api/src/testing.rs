//! An in-memory hub and state store for testing bridge crates against the contract, with failure injection.
//!
//! This is the contract's reference implementation of `Ok means durably queued`: a bridge
//! test can make the next submits fail with [`SubmitError::Retry`] and check that the bridge
//! does not advance its cursor past them.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{BridgeId, BridgeState, Hub, RemoteEvent, SubmitError};

/// Records every accepted event in order.
#[derive(Default)]
pub struct FakeHub {
    inner: Mutex<FakeHubInner>,
    changed: Notify,
}

#[derive(Default)]
struct FakeHubInner {
    events: Vec<(BridgeId, RemoteEvent)>,
    commands: Vec<(crate::RemoteChatId, String, crate::Command)>,
    fail_next: usize,
    refused: usize,
    dead: Vec<crate::DeadLetter>,
}

impl FakeHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` submits fail with [`SubmitError::Retry`].
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Every event accepted so far, in submit order.
    pub fn events(&self) -> Vec<(BridgeId, RemoteEvent)> {
        self.lock().events.clone()
    }

    /// Every command received: (chat, title, command).
    pub fn commands(&self) -> Vec<(crate::RemoteChatId, String, crate::Command)> {
        self.lock().commands.clone()
    }

    /// How many submits were refused by [`FakeHub::fail_next`].
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// Every event set aside so far, in order.
    pub fn dead_letters(&self) -> Vec<crate::DeadLetter> {
        self.lock().dead.clone()
    }

    /// Waits until at least `n` events were accepted.
    pub async fn wait_for(&self, n: usize) -> Vec<(BridgeId, RemoteEvent)> {
        loop {
            let notified = self.changed.notified();
            {
                let inner = self.lock();
                if inner.events.len() >= n {
                    return inner.events.clone();
                }
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeHubInner> {
        // A panic while holding the lock is a test failure already; keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Hub for FakeHub {
    async fn command(
        &self,
        _from: &BridgeId,
        chat: &crate::RemoteChatId,
        title: &str,
        command: crate::Command,
    ) -> Result<crate::CommandReply, SubmitError> {
        self.lock().commands.push((chat.clone(), title.to_owned(), command.clone()));
        self.changed.notify_waiters();
        Ok(crate::CommandReply { text: format!("fake reply to {command:?}"), link: None, qr_png: None })
    }

    async fn dead_letter(&self, _from: &BridgeId, letter: crate::DeadLetter) -> Result<(), SubmitError> {
        self.lock().dead.push(letter);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn submit(&self, from: &BridgeId, event: RemoteEvent) -> Result<(), SubmitError> {
        {
            let mut inner = self.lock();
            if inner.fail_next > 0 {
                inner.fail_next -= 1;
                inner.refused += 1;
                return Err(SubmitError::Retry("injected failure".into()));
            }
            inner.events.push((from.clone(), event));
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

/// A [`BridgeState`] kept in memory.
#[derive(Default)]
pub struct MemoryState(Mutex<HashMap<String, String>>);

#[async_trait]
impl BridgeState for MemoryState {
    async fn get(&self, key: &str) -> Result<Option<String>, SubmitError> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned())
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), SubmitError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Person, RemoteChatId, RemoteMsgId};

    fn msg(n: u32) -> RemoteEvent {
        RemoteEvent::Message {
            chat: RemoteChatId::from("room"),
            id: RemoteMsgId(n.to_string()),
            sender: Person { id: "u".into(), display_name: "U".into() },
            text: format!("hello {n}"),
            attachments: vec![],
            reply_to: None,
        }
    }

    #[tokio::test]
    async fn injected_failures_are_refused_then_accepted_in_order() {
        let hub = FakeHub::new();
        let id = BridgeId::from("b");
        hub.fail_next(1);
        assert!(matches!(hub.submit(&id, msg(1)).await, Err(SubmitError::Retry(_))));
        hub.submit(&id, msg(1)).await.expect("second try accepted");
        hub.submit(&id, msg(2)).await.expect("accepted");
        let events = hub.wait_for(2).await;
        assert_eq!(events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), vec![msg(1), msg(2)]);
        assert_eq!(hub.refused(), 1);
    }

    #[tokio::test]
    async fn memory_state_round_trips() {
        let st = MemoryState::default();
        assert_eq!(st.get("offset").await.unwrap(), None);
        st.set("offset", "42").await.unwrap();
        assert_eq!(st.get("offset").await.unwrap().as_deref(), Some("42"));
    }
}
