//! One account's workers: its bridges (each with its delivery queue), IMAP, SMTP, retention and the migration sampler, spawned in the account's own task set.

use std::sync::Arc;
use std::time::Duration;

use crate::app::{BRIDGE_RECONNECT_MAX, Core};
use crate::supervisor::Tasks;

/// A bridge that ran this long before it stopped was healthy: its backoff starts afresh.
const BRIDGE_HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Spawns every worker of one account in `tasks`; they stop when its token is cancelled.
/// A panic in a worker is caught, counted, and the worker started again.
pub fn spawn_workers(core: &Arc<Core>, bridges: Vec<crate::bridges::Running>, tasks: &Tasks) {
    for r in bridges {
        let r = Arc::new(r);
        let (rr, token) = (r.clone(), tasks.token());
        tasks.spawn_restarting("bridge-delivery", move || {
            let (rr, token) = (rr.clone(), token.clone());
            async move {
                rr.delivery.run(token).await;
                Ok(())
            }
        });
        let cx = coi_bridge_api::BridgeContext {
            id: r.id.clone(),
            hub: core.hub.clone(),
            state: Arc::new(crate::hub::submit::StoreState::new(core.store.clone(), &r.id)),
            shutdown: tasks.token(),
            status: back_online_status(core.health.bridge(r.id.as_str()), r.delivery.back_online()),
        };
        let health = core.health.clone();
        let core_metrics = core.metrics.clone();
        tasks.spawn_restarting("bridge", move || {
            let (r, cx, health, core_metrics) = (r.clone(), cx.clone(), health.clone(), core_metrics.clone());
            async move {
                // A bridge that fails for a reason that may pass is restarted with backoff;
                // only a fatal error (bad credentials, bad config) stops its account.
                // At most BRIDGE_RECONNECT_MAX apart, so a bridge is back within seconds of its
                // network (the soak saw a 60 s cap leave Telegram 14 s behind the Bot API's return).
                let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), BRIDGE_RECONNECT_MAX);
                let stopped = |reason: &str| health.bridge_state(r.id.as_str(), "stopped", Some(reason.to_owned()));
                loop {
                    let started = tokio::time::Instant::now();
                    let outcome = r.bridge.run(cx.clone()).await;
                    if started.elapsed() > BRIDGE_HEALTHY_AFTER {
                        // It ran fine for a while: a new failure starts the backoff afresh.
                        backoff.reset();
                    }
                    match outcome {
                        Ok(()) => {
                            stopped("shut down");
                            return Ok(());
                        }
                        Err(coi_bridge_api::BridgeError::Fatal(e)) => {
                            stopped(&e);
                            return Err(anyhow::anyhow!("bridge {}: {e}", r.id));
                        }
                        Err(coi_bridge_api::BridgeError::Retry(e)) => {
                            let pause = backoff.next_delay();
                            health.bridge_state(r.id.as_str(), "reconnecting", Some(e.clone()));
                            core_metrics.failures.with_label_values(&[r.id.as_str(), "restart"]).inc();
                            tracing::warn!(bridge = %r.id, error = %e, retry_in = ?pause, "bridge stopped; restarting it");
                            tokio::select! {
                                () = cx.shutdown.cancelled() => return Ok(()),
                                () = tokio::time::sleep(pause) => {}
                            }
                        }
                    }
                }
            }
        });
    }
    keep_running(tasks, "imap", core, |c, token| async move { c.imap.run(token).await });
    keep_running(tasks, "retention", core, |c, token| async move {
        let task = crate::retention::Retention {
            store: c.store.clone(),
            ingest: c.ingest.clone(),
            config: c.retention,
            metrics: c.metrics.clone(),
            released: c.released.clone(),
        };
        task.run(token).await;
    });
    keep_running(tasks, "smtp", core, |c, token| async move { c.smtp.run(token).await });
    keep_running(tasks, "migration", core, |c, token| async move {
        let sampler = crate::hub::migration::Sampler {
            store: c.store.clone(),
            outbound: c.outbound.clone(),
            metrics: c.metrics.clone(),
            account: c.identity.addr.clone(),
            labels: c.securejoin.labels().clone(),
        };
        sampler.run(token).await;
    });
}

/// Runs one of the account's workers in `tasks`, started again if it panics.
fn keep_running<F, Fut>(tasks: &Tasks, name: &'static str, core: &Arc<Core>, run: F)
where
    F: Fn(Arc<Core>, tokio_util::sync::CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (c, token) = (core.clone(), tasks.token());
    tasks.spawn_restarting(name, move || {
        let worker = run(c.clone(), token.clone());
        async move {
            worker.await;
            Ok(())
        }
    });
}

/// A bridge's status handle that also tells its delivery queue when the network is back
/// (reconnecting, then connected), so retries waiting out a long backoff go at once. A
/// fresh process counts as coming back: rows a killed one left in a long backoff go at
/// its first connect (a restart inside an outage never saw the network go down).
fn back_online_status(health: coi_bridge_api::Status, back: Arc<tokio::sync::Notify>) -> coi_bridge_api::Status {
    let down = std::sync::atomic::AtomicBool::new(true);
    coi_bridge_api::Status::new(move |link| match link {
        coi_bridge_api::LinkState::Connected => {
            health.connected();
            if down.swap(false, std::sync::atomic::Ordering::SeqCst) {
                back.notify_one();
            }
        }
        coi_bridge_api::LinkState::Reconnecting(reason) => {
            down.store(true, std::sync::atomic::Ordering::SeqCst);
            health.reconnecting(reason);
        }
    })
}

#[cfg(test)]
mod back_online_tests {
    use super::*;

    /// The first connect of a process and every connect after a reconnecting wake the
    /// queue; a connect while connected does not.
    #[tokio::test]
    async fn the_queue_is_woken_at_the_first_connect_and_after_each_outage() {
        let back = Arc::new(tokio::sync::Notify::new());
        let status = back_online_status(coi_bridge_api::Status::new(|_| {}), back.clone());
        let woken =
            || async { tokio::time::timeout(std::time::Duration::from_millis(200), back.notified()).await.is_ok() };
        status.connected();
        assert!(woken().await, "the first connect of a process");
        status.connected();
        assert!(!woken().await, "still connected");
        status.reconnecting("down");
        status.connected();
        assert!(woken().await, "back after an outage");
    }
}
