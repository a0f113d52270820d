//! Wires the daemon together: config -> store -> identity -> transport -> (bridges) -> supervisor, and runs it until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::coi::Mailbox;
use crate::config::Loaded;
use crate::hub::e2ee::Identity;
use crate::hub::ingest::Ingest;
use crate::hub::outbound::Outbound;
use crate::hub::securejoin::SecureJoin;
use crate::hub::submit::CoreHub;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervisor::{Stop, Supervisor};
use crate::transport::imap::{ImapSettings, ImapWorker};
use crate::transport::smtp::{self, FailedDelivery, FailureHook, RetryPolicy, SmtpWorker};
use crate::{http, store};

/// How long a stop may take before the process exits anyway.
pub const GRACE: Duration = Duration::from_secs(30);

/// The longest pause between a bridge's reconnect attempts (with ±20 % jitter): one cheap
/// request (Telegram's `getMe`, a Matrix `/versions`) every few seconds while its network
/// is down, and traffic again within seconds of its return.
pub const BRIDGE_RECONNECT_MAX: Duration = Duration::from_secs(4);

/// A bridge that ran this long before it stopped was healthy: its backoff starts afresh.
const BRIDGE_HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Everything but the HTTP listener and the signal handling: what the daemon runs, and
/// what integration tests drive in-process.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub identity: Arc<Identity>,
    pub metrics: Arc<Metrics>,
    /// Each part's state for `/ready`.
    pub health: Arc<crate::health::Health>,
    /// Where bridges hand messages for COI.
    pub outbound: Arc<Outbound>,
    /// Invite links and the inviter's side of SecureJoin.
    pub securejoin: Arc<SecureJoin>,
    /// What bridges submit remote events to (the bridge modules arrive with #4/#5).
    pub hub: Arc<CoreHub>,
    pub imap: ImapWorker,
    /// What the IMAP worker records fetched mail with; retention takes released mail
    /// through it again.
    pub ingest: Arc<Ingest>,
    pub smtp: SmtpWorker,
}

impl Core {
    /// Opens the store, loads (or creates) the key and sets up the transport; no network
    /// I/O yet. `on_failure` hears of every message the outbox gave up on.
    pub async fn build(loaded: &Loaded, on_failure: FailureHook) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
        let store = store::open(&cfg.store.url, &cfg.store.state_dir()).await?;
        let metrics = Arc::new(Metrics::new());
        let health = crate::health::Health::new(metrics.clone());
        let identity = Arc::new(
            Identity::load_or_create(store.as_ref(), &cfg.account.address, loaded.key_passphrase.clone())
                .await
                .context("the bridge's OpenPGP key")?,
        );
        // One outbox notifier: whoever queues rows wakes whoever drains them.
        let wake = crate::hub::wake::OutboxNotifier::new();
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(cfg.smtp.retry_max_delay_secs),
            max_attempts: cfg.smtp.max_attempts,
        };
        let smtp =
            SmtpWorker::new(smtp::transport(loaded)?, store.clone(), policy, wake.clone(), on_failure, metrics.clone())
                .with_health(health.clone());
        let me = Mailbox::new(&cfg.account.address, Some(&cfg.account.display_name));
        let outbound =
            Arc::new(Outbound::new(store.clone(), me, identity.clone(), cfg.account.encryption, wake.clone()));
        let securejoin =
            Arc::new(SecureJoin::new(store.clone(), identity.clone(), outbound.clone(), &cfg.account.display_name));
        let ingest = Arc::new(
            Ingest::new(
                store.clone(),
                identity.clone(),
                cfg.account.encryption,
                crate::hub::e2ee::Budget {
                    invite_max_age: Duration::from_secs(u64::from(cfg.account.invite_max_age_days) * 24 * 3600),
                    ..crate::hub::e2ee::Budget::default()
                },
                metrics.clone(),
                wake,
            )
            .with_securejoin(securejoin.clone()),
        );
        let imap = ImapWorker::new(ImapSettings::from_config(loaded)?, ingest.clone(), metrics.clone(), health.clone());
        let hub = Arc::new(
            CoreHub::new(
                store.clone(),
                outbound.clone(),
                identity.clone(),
                &cfg.account.display_name,
                crate::bridges::labels(&cfg.bridge),
            )
            .with_metrics(metrics.clone()),
        );
        Ok(Self { store, identity, metrics, health, outbound, securejoin, hub, imap, ingest, smtp })
    }
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

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(loaded: Loaded) -> anyhow::Result<Stop> {
    let cfg = &loaded.config;

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}; pick a free address", cfg.http.listen))?;
    let http_addr = listener.local_addr()?;
    let mut sup = Supervisor::new().context("cannot take over SIGTERM/SIGINT")?;

    // Until bridges exist there is no origin side to tell: the failure is logged and counted.
    let on_failure: FailureHook = Arc::new(|f: FailedDelivery| {
        tracing::error!(message_id = %f.message_id, chat_id = f.chat_id, reason = %f.reason, "delivery to COI failed for good");
    });
    let core = Arc::new(Core::build(&loaded, on_failure).await?);
    tracing::info!(fingerprint = %core.identity.fingerprint, "bridge key loaded");
    sup.count_panics(core.metrics.panics.clone());
    let crate::bridges::Bridges { running, routes } = crate::bridges::build(&loaded, &core)?;
    let mut targets = vec![crate::store::SMTP_TARGET.to_owned()];
    targets.extend(running.iter().map(|r| r.id.as_str().to_owned()));
    for r in running {
        let r = Arc::new(r);
        // A panic in a worker is caught, counted, and the worker started again.
        let (rr, token) = (r.clone(), sup.token());
        sup.spawn_restarting("bridge-delivery", move || {
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
            shutdown: sup.token(),
            status: back_online_status(core.health.bridge(r.id.as_str()), r.delivery.back_online()),
        };
        let health = core.health.clone();
        let core_metrics = core.metrics.clone();
        sup.spawn_restarting("bridge", move || {
            let (r, cx, health, core_metrics) = (r.clone(), cx.clone(), health.clone(), core_metrics.clone());
            async move {
            // A bridge that fails for a reason that may pass is restarted with backoff; only
            // a fatal error (bad credentials, bad config) stops the daemon.
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
    let (c, token) = (core.clone(), sup.token());
    sup.spawn_restarting("imap", move || {
        let (c, token) = (c.clone(), token.clone());
        async move {
            c.imap.run(token).await;
            Ok(())
        }
    });
    let (c, token) = (core.clone(), sup.token());
    let retention = cfg.retention;
    sup.spawn_restarting("retention", move || {
        let (c, token) = (c.clone(), token.clone());
        async move {
            let task = crate::retention::Retention {
                store: c.store.clone(),
                ingest: c.ingest.clone(),
                config: retention,
                metrics: c.metrics.clone(),
            };
            task.run(token).await;
            Ok(())
        }
    });
    let (c, token) = (core.clone(), sup.token());
    sup.spawn_restarting("smtp", move || {
        let (c, token) = (c.clone(), token.clone());
        async move {
            c.smtp.run(token).await;
            Ok(())
        }
    });
    let state =
        http::Http { metrics: core.metrics.clone(), health: core.health.clone(), store: core.store.clone(), targets };
    let token = sup.token();
    let timeouts = http::Timeouts::from_config(&cfg.http);
    sup.spawn("http", async move { http::serve(listener, state, routes, token, timeouts).await });

    // systemd (Type=notify): ready once every worker runs, stopping on the signal, and a
    // watchdog ping that only a live runtime sends.
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready();
    let (token, store) = (sup.token(), core.store.clone());
    sup.spawn("systemd-notify", async move {
        match notifier.watchdog_interval() {
            // A ping needs a live runtime and a store that answers; otherwise systemd
            // restarts the daemon after WatchdogSec.
            Some(every) => loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(every) => {
                        match tokio::time::timeout(every, store.ping()).await {
                            Ok(Ok(())) => notifier.watchdog(),
                            Ok(Err(e)) => tracing::error!(error = %e, "the store does not answer; no watchdog ping"),
                            Err(_) => tracing::error!("the store did not answer in time; no watchdog ping"),
                        }
                    }
                }
            },
            None => token.cancelled().await,
        }
        notifier.stopping();
        Ok(())
    });

    tracing::info!(
        address = %cfg.account.address,
        state_dir = %cfg.store.state_dir().display(),
        http = %http_addr,
        "coi-bridge running"
    );
    sup.run_until_signal(GRACE).await
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
