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
use crate::transport::smtp::{self, FailureHook, RetryPolicy, SmtpWorker};
use crate::{http, store};

/// How long a stop may take before the process exits anyway.
pub const GRACE: Duration = Duration::from_secs(30);

/// The longest pause between a bridge's reconnect attempts (with ±20 % jitter): one cheap
/// request (Telegram's `getMe`, a Matrix `/versions`) every few seconds while its network
/// is down, and traffic again within seconds of its return.
pub const BRIDGE_RECONNECT_MAX: Duration = Duration::from_secs(4);

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
    /// The caps on what is set apart, for the retention task.
    pub retention: crate::config::RetentionConfig,
    /// Wakes the retention task's look for released mail (`POST /wake`: a `quarantine
    /// release` beside the daemon).
    pub released: Arc<tokio::sync::Notify>,
}

impl Core {
    /// Opens the store, loads (or creates) the key and sets up the transport; no network
    /// I/O yet. `on_failure` hears of every message the outbox gave up on.
    pub async fn build(loaded: &Loaded, on_failure: FailureHook) -> anyhow::Result<Self> {
        Self::build_in(loaded, on_failure, Arc::new(Metrics::new()), &store::OpenOptions::default()).await
    }

    /// [`Core::build`] for one account of many: the daemon's `metrics`, and the store
    /// opened with `options` (the account's schema or file, under its lease's fence).
    pub async fn build_in(
        loaded: &Loaded,
        on_failure: FailureHook,
        metrics: Arc<Metrics>,
        options: &store::OpenOptions,
    ) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
        let store = store::open_with(&cfg.store.url, &cfg.store.state_dir(), options).await?;
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
        let securejoin = Arc::new(
            SecureJoin::new(store.clone(), identity.clone(), outbound.clone(), &cfg.account.display_name)
                .with_labels(crate::bridges::labels(&cfg.bridge))
                .with_metrics(metrics.clone()),
        );
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
        Ok(Self {
            store,
            identity,
            metrics,
            health,
            outbound,
            securejoin,
            hub,
            imap,
            ingest,
            smtp,
            retention: cfg.retention,
            released: Arc::new(tokio::sync::Notify::new()),
        })
    }
}

/// Runs the daemon until SIGTERM/SIGINT: the HTTP listener, and every account (the main
/// file's and those of `[accounts] dir`) in a task set of its own.
pub async fn run(daemon: crate::config::Daemon) -> anyhow::Result<Stop> {
    let listener = tokio::net::TcpListener::bind(daemon.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}; pick a free address", daemon.http.listen))?;
    let http_addr = listener.local_addr()?;
    let mut sup = Supervisor::new().context("cannot take over SIGTERM/SIGINT")?;
    let metrics = Arc::new(Metrics::new());
    sup.count_panics(metrics.panics.clone());
    let timeouts = http::Timeouts::from_config(&daemon.http);
    let (state_dir, listen) = (daemon.store.state_dir(), daemon.http.listen);
    // Several daemons may share a PostgreSQL store: appservice events for an account
    // another daemon runs wait for it in the relay.
    let relay = match store::sqlite_path(&daemon.store.url, &state_dir) {
        Some(_) => None,
        None => Some(
            store::relay::PgRelay::open(&daemon.store.url)
                .await
                .context("the appservice event relay (store.url)")?
                .with_metrics(&metrics),
        ),
    };
    let manager = crate::accounts::Manager::new(daemon, metrics.clone(), sup.tasks().clone()).await?;
    if let Some(relay) = relay {
        manager.shared().set_relay(Arc::new(relay));
        let (shared, token) = (manager.shared().clone(), sup.token());
        sup.spawn("appservice-relay", async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = shared.run_relay() => {}
            }
            Ok(())
        });
    }
    // The heap trimmer runs from before the accounts start: starting 1,000 of them takes
    // about 12 s and frees hundreds of megabytes, which go back at its first looks.
    let (token, trims) = (sup.token(), metrics.heap_trims.clone());
    sup.spawn("heap", async move {
        crate::heap::run(token, trims).await;
        Ok(())
    });
    // The accounts that run without a lease start now, so a bad one fails the start.
    manager.start_unleased().await?;
    let state = http::Http::new(metrics.clone(), manager.running());
    let notify_state = state.clone();
    let routes = manager.routes();
    let token = sup.token();
    sup.spawn("http", async move { http::serve(listener, state, routes, token, timeouts).await });
    let token = sup.token();
    sup.spawn("accounts", async move { manager.run(token).await });

    // systemd (Type=notify): ready once every worker runs, stopping on the signal, and a
    // watchdog ping that only a live runtime sends.
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready();
    let token = sup.token();
    let accounts = notify_state.accounts;
    sup.spawn("systemd-notify", async move {
        match notifier.watchdog_interval() {
            // A ping needs a live runtime and stores that answer; otherwise systemd
            // restarts the daemon after WatchdogSec.
            Some(every) => loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(every) => {
                        match tokio::time::timeout(every, accounts.ping()).await {
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

    tracing::info!(state_dir = %state_dir.display(), http = %http_addr, listen = %listen, "coi-bridge running");
    sup.run_until_signal(GRACE).await
}
