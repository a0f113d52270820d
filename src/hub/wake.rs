//! The outbox notifier: one per daemon, made by the app and handed to whoever queues outbox rows and whoever drains them (SMTP and every bridge), so a worker wakes when its rows are committed instead of at its next poll.
//!
//! It is a wake-up, not a queue: the store stays the record. A wake-up for a target
//! nobody waits on yet is kept (one permit), so a worker that starts later, or is busy
//! when the rows land, still looks at once. Rows queued by another process (the CLI) are
//! found by the workers' poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Outbox target → its worker's wake-up.
#[derive(Debug, Default)]
pub struct OutboxNotifier {
    targets: Mutex<HashMap<String, Arc<Notify>>>,
}

impl OutboxNotifier {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn slot(&self, target: &str) -> Arc<Notify> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is intact.
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.entry(target.to_owned()).or_default().clone()
    }

    /// Rows for these targets were committed: their workers look at the outbox now.
    pub fn queued<'a>(&self, targets: impl IntoIterator<Item = &'a str>) {
        for target in targets {
            self.slot(target).notify_one();
        }
    }

    /// Waits until rows for `target` are queued (at once if they were since the last wait).
    pub async fn wait(&self, target: &str) {
        let slot = self.slot(target);
        slot.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(n: &OutboxNotifier, target: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(100), n.wait(target)).await.is_ok()
    }

    #[tokio::test]
    async fn a_worker_is_woken_for_its_own_target_only_and_a_wake_up_waits_for_it() {
        let n = OutboxNotifier::new();
        // Queued before anyone waits (the worker is busy or not started): kept for it.
        n.queued(["smtp", "matrix"]);
        assert!(woken(&n, "smtp").await);
        assert!(woken(&n, "matrix").await);
        assert!(!woken(&n, "smtp").await, "one wake-up per queueing, not a stuck flag");
        n.queued(["telegram"]);
        assert!(!woken(&n, "matrix").await, "another target's rows do not wake it");
        // A worker already waiting is woken when its rows land.
        let waiter = {
            let n = n.clone();
            tokio::spawn(async move { n.wait("matrix").await })
        };
        tokio::task::yield_now().await;
        n.queued(["matrix"]);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
    }
}
