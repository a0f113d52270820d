//! Many accounts in one daemon: each account's workers in a task set of its own, started and stopped as the accounts dir (SIGHUP) and, on PostgreSQL, the leases say.
//!
//! - **Which accounts**: the main file's `[account]` and every file of `[accounts] dir`
//!   ([`crate::config::Daemon::read_dir`]). SIGHUP reads the dir again: a new file starts
//!   its account, a removed one stops it, a changed one restarts it.
//! - **SQLite**: this daemon runs every account (the files are its own).
//! - **PostgreSQL**: several daemons may share the store. An account runs only under its
//!   lease ([`crate::store::lease`]). A renewal loop renews what this daemon holds every
//!   third of `cluster.lease_secs`, beside (not between) the starts, and stops an account at once when its lease
//!   is lost (the store refuses its writes from then on anyway: the fence); the account
//!   loop takes free or expired leases. A clean stop releases the leases, so another daemon takes over at once.
//!   Daemons spread the accounts: each announces itself in the node table
//!   ([`crate::store::nodes`]), takes free accounts only up to its fair share and hands
//!   over what it holds beyond it.
//! - A failure of an account's worker stops that account, not the daemon (a daemon of one
//!   account on SQLite keeps today's behaviour: it stops, and systemd restarts it).

mod running;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub use running::{AccountView, DynamicRoutes, Running};

use crate::app::Core;
use crate::config::{Daemon, Loaded};
use crate::metrics::Metrics;
use crate::store::lease::{Fence, Leases};
use crate::store::nodes::{Nodes, fair_share};
use crate::supervisor::Tasks;
use crate::transport::smtp::{FailedDelivery, FailureHook};

/// How long an account that failed to start (or whose worker failed) waits before it is
/// tried again (SIGHUP tries at once).
const RETRY_FAILED: Duration = Duration::from_secs(60);

/// At most this many accounts are handed to other daemons per tick: each is stopped
/// cleanly, which takes a while, and a daemon hands over a little at a time.
const HAND_OVER_PER_TICK: usize = 10;

/// One account this daemon should run, as the config says.
#[derive(Clone, Debug)]
struct Wanted {
    key: String,
    /// Its file (the main file for the main account).
    source: PathBuf,
    /// The account file's digest; the main account's is read at start only.
    digest: Option<[u8; 32]>,
    main: bool,
}

/// A running account: what stops it.
struct Started {
    wanted: Wanted,
    tasks: Tasks,
    fence: Option<Fence>,
}

/// Starts, stops and (on PostgreSQL) leases this daemon's accounts.
pub struct Manager {
    daemon: Daemon,
    metrics: Arc<Metrics>,
    root: Tasks,
    shared: coi_bridge_api::SharedRoutes,
    routes: Arc<DynamicRoutes>,
    running: Arc<Running>,
    started: tokio::sync::Mutex<BTreeMap<String, Started>>,
    /// Accounts that failed, with when they may be tried again.
    failed: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Why an account's worker failed, sent by its task set's `on_fatal`.
    fatal_tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    fatal_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>,
    leases: Option<Leases>,
    /// The live daemons on the store (PostgreSQL only), for each one's fair share.
    nodes: Option<Nodes>,
    node: String,
    /// A daemon of the main account only, on SQLite: a failure stops the daemon (today's
    /// behaviour, which systemd's restart relies on).
    single: bool,
    /// The last lease renewal succeeded: new leases are taken only then.
    renewed: std::sync::atomic::AtomicBool,
}

impl Manager {
    pub async fn new(daemon: Daemon, metrics: Arc<Metrics>, root: Tasks) -> anyhow::Result<Self> {
        let postgres = crate::store::sqlite_path(&daemon.store.url, &daemon.store.state_dir()).is_none();
        let leases = if postgres {
            Some(Leases::open(&daemon.store.url).await.context("the account leases ([cluster], store.url)")?)
        } else {
            None
        };
        let nodes = match &leases {
            Some(l) => Some(Nodes::open(l.pool()).await.context("the node table ([cluster], store.url)")?),
            None => None,
        };
        let node = daemon.cluster.node_name();
        let single = !postgres && daemon.accounts.dir.is_none();
        let shared = crate::bridges::shared_routes(&metrics);
        let (fatal_tx, fatal_rx) = tokio::sync::mpsc::unbounded_channel();
        let running = Arc::new(Running::new(leases.as_ref().map(|_| node.clone())));
        metrics.accounts_held.set(0);
        Ok(Self {
            daemon,
            metrics,
            root,
            shared,
            routes: Arc::new(DynamicRoutes::default()),
            running,
            started: tokio::sync::Mutex::default(),
            failed: Mutex::default(),
            fatal_tx,
            fatal_rx: tokio::sync::Mutex::new(fatal_rx),
            leases,
            nodes,
            node,
            single,
            renewed: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// What `/ready`, `/metrics` and the watchdog read.
    pub fn running(&self) -> Arc<Running> {
        self.running.clone()
    }

    /// The bridges' HTTP routes (the appservice endpoints), as accounts add them.
    pub fn routes(&self) -> axum::Router {
        self.routes.router()
    }

    /// What every account's bridges share (the daemon sets its event relay there).
    pub fn shared(&self) -> &coi_bridge_api::SharedRoutes {
        &self.shared
    }

    /// The accounts the config names now. A file that does not parse is logged, counted
    /// and shown in `/ready`; the others run.
    fn wanted(&self) -> Vec<Wanted> {
        let mut out = Vec::new();
        if let Some(main) = &self.daemon.main {
            out.push(Wanted { key: main.key(), source: self.daemon.source.clone(), digest: None, main: true });
        }
        match self.daemon.read_dir() {
            Ok(files) => {
                for f in files {
                    match f.loaded {
                        Ok(l) => {
                            out.push(Wanted { key: l.key(), source: f.path, digest: Some(f.digest), main: false });
                        }
                        Err(e) => {
                            let why = format!("{e:#}");
                            tracing::error!(file = %f.path.display(), error = %why, "account file not run");
                            self.metrics.account_config_errors.inc();
                            self.running.set_broken(&f.path.display().to_string(), why);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "accounts.dir: cannot read it; running the accounts already known"
                );
                self.metrics.account_config_errors.inc();
            }
        }
        out
    }

    /// Reads one account's configuration again from its file.
    fn load(&self, w: &Wanted) -> anyhow::Result<Loaded> {
        if w.main {
            crate::config::load_daemon(&w.source)?.main.context("the main file no longer has an [account]")
        } else {
            let l = self.daemon.read_account(&w.source)?;
            anyhow::ensure!(l.key() == w.key, "{}: its address changed to {}", w.source.display(), l.key());
            Ok(l)
        }
    }

    /// Without leases (SQLite), every account starts at once; the main account of a
    /// one-account daemon must start, or the daemon does not.
    pub async fn start_unleased(&self) -> anyhow::Result<()> {
        if self.leases.is_some() {
            return Ok(());
        }
        for w in self.wanted() {
            if let Err(e) = self.start(&w, None).await {
                if self.single {
                    return Err(e);
                }
                self.account_failed(&w.key, &format!("{e:#}"));
            }
        }
        Ok(())
    }

    /// Builds and spawns one account: its store (schema or file, under `fence`), its key,
    /// transport and bridges.
    async fn start(&self, w: &Wanted, fence: Option<Fence>) -> anyhow::Result<()> {
        let loaded = self.load(w)?;
        let options = crate::store::OpenOptions { fence: fence.clone(), ..loaded.store_options() };
        let key = w.key.clone();
        let on_failure: FailureHook = Arc::new(move |f: FailedDelivery| {
            tracing::error!(account = %key, message_id = %f.message_id, chat_id = f.chat_id, reason = %f.reason, "delivery to COI failed for good");
        });
        let core = Arc::new(
            Core::build_in(&loaded, on_failure, self.metrics.clone(), &options)
                .await
                .with_context(|| format!("account {} ({})", w.key, loaded.source.display()))?,
        );
        let bridges = crate::bridges::build_shared(&loaded, &core, &self.shared)
            .with_context(|| format!("account {} ({})", w.key, loaded.source.display()))?;
        let mut targets = vec![crate::store::SMTP_TARGET.to_owned()];
        targets.extend(bridges.running.iter().map(|r| r.id.as_str().to_owned()));
        self.routes.add(bridges.routes);
        let on_fatal: Option<crate::supervisor::OnFatal> = if self.single {
            None
        } else {
            let (tx, key) = (self.fatal_tx.clone(), w.key.clone());
            Some(Arc::new(move |why: &str| drop(tx.send((key.clone(), why.to_owned())))))
        };
        let tasks = self.root.child(&w.key, on_fatal);
        workers::spawn_workers(&core, bridges.running, &tasks);
        tracing::info!(
            account = %w.key,
            fingerprint = %core.identity.fingerprint,
            file = %w.source.display(),
            epoch = fence.as_ref().map(|f| f.epoch),
            "account running"
        );
        self.running.insert(AccountView {
            key: w.key.clone(),
            main: w.main,
            health: core.health.clone(),
            store: core.store.clone(),
            targets,
            epoch: fence.as_ref().map(|f| f.epoch),
            outbox: core.outbound.notifier().clone(),
            released: core.released.clone(),
        });
        if let Some(push) = core.imap.push() {
            self.running.insert_push(push);
        }
        self.started.lock().await.insert(w.key.clone(), Started { wanted: w.clone(), tasks, fence });
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.key);
        self.metrics.accounts_held.set(self.running.len() as i64);
        self.metrics.account_held.with_label_values(&[&w.key]).set(1);
        Ok(())
    }

    /// Stops one account's workers and waits for them; then releases its lease.
    async fn stop(&self, key: &str, why: &str) {
        let Some(s) = self.started.lock().await.remove(key) else { return };
        self.running.remove(key);
        self.metrics.accounts_held.set(self.running.len() as i64);
        let _ = self.metrics.account_held.remove_label_values(&[key]);
        s.tasks.stop().await;
        tracing::info!(account = %key, reason = why, "account stopped");
        if let (Some(leases), Some(fence)) = (&self.leases, &s.fence)
            && let Err(e) = leases.release(fence).await
        {
            tracing::warn!(account = %key, error = %e, "cannot release the lease; it expires by itself");
        }
    }

    fn account_failed(&self, key: &str, why: &str) {
        tracing::error!(account = %key, error = why, retry_in = ?RETRY_FAILED, "account cannot run");
        self.metrics.account_failures.inc();
        self.running.set_broken(key, why.to_owned());
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), tokio::time::Instant::now() + RETRY_FAILED);
    }

    fn may_try(&self, key: &str) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_none_or(|at| tokio::time::Instant::now() >= *at)
    }

    /// Runs until `token` is cancelled: SIGHUP reloads, failed accounts stop, and on
    /// PostgreSQL the lease loop. At the end every account is stopped and its lease released.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let mut hup = signal(SignalKind::hangup()).context("cannot take over SIGHUP")?;
        let every = self.tick();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fatal = self.fatal_rx.lock().await;
        let accounts = async {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reading the accounts again");
                        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        self.running.clear_broken();
                        self.reconcile().await;
                    }
                    Some((key, why)) = fatal.recv() => {
                        self.stop(&key, &why).await;
                        self.account_failed(&key, &why);
                    }
                    _ = tick.tick() => self.reconcile().await,
                }
            }
        };
        // Both run in this one task: the renewals go on while a start or a stop waits.
        tokio::join!(accounts, self.renew_leases(&token));
        let keys: Vec<String> = self.started.lock().await.keys().cloned().collect();
        for key in keys {
            self.stop(&key, "the daemon stops").await;
        }
        if let Some(nodes) = &self.nodes
            && let Err(e) = nodes.leave(&self.node).await
        {
            tracing::warn!(error = %e, "cannot take this daemon out of the node table; its row expires by itself");
        }
        Ok(())
    }

    /// How often the leases are renewed and free ones looked for; without leases, how
    /// often failed accounts are tried again.
    fn tick(&self) -> Duration {
        if self.leases.is_some() { Duration::from_secs(self.daemon.cluster.lease_secs) / 3 } else { RETRY_FAILED / 4 }
    }

    /// How many accounts this daemon should run: all of them without leases; on
    /// PostgreSQL its fair share among the live daemons (all of them if the node table
    /// cannot be read: running too many beats running none).
    async fn share(&self, accounts: usize, ttl: Duration) -> usize {
        let Some(nodes) = &self.nodes else { return accounts };
        match nodes.heartbeat(&self.node, ttl).await {
            Ok(live) => {
                self.metrics.cluster_nodes.set(live as i64);
                fair_share(accounts, live)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node table; taking free accounts without a share");
                accounts
            }
        }
    }

    /// Hands accounts beyond `share` to the other daemons (the last by address first, at
    /// most [`HAND_OVER_PER_TICK`] a tick): each stops cleanly and its lease is released,
    /// so a daemon under its share takes it on its next tick.
    async fn hand_over_surplus(&self, share: usize) {
        let surplus: Vec<String> = {
            let started = self.started.lock().await;
            let n = started.len().saturating_sub(share).min(HAND_OVER_PER_TICK);
            started.keys().rev().take(n).cloned().collect()
        };
        for key in surplus {
            tracing::info!(account = %key, share, "handing the account to another daemon to spread the accounts");
            self.metrics.accounts_handed_over.inc();
            self.stop(&key, "handed over to spread the accounts").await;
        }
    }

    /// Renews every lease this daemon holds, on its own clock beside [`Self::reconcile`]:
    /// starting many accounts (each opening its store, and on PostgreSQL migrating its
    /// schema) can take longer than a lease, and a renewal that waited for the starts would
    /// let the first accounts' leases expire under them. An account whose lease is lost stops
    /// at once; past two thirds of the lease without a renewal, every account stops, since
    /// this daemon can no longer be sure it holds them.
    async fn renew_leases(&self, token: &CancellationToken) {
        let Some(leases) = &self.leases else { return token.cancelled().await };
        let ttl = Duration::from_secs(self.daemon.cluster.lease_secs);
        let mut tick = tokio::time::interval(self.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let fences: Vec<Fence> = self.started.lock().await.values().filter_map(|s| s.fence.clone()).collect();
            match leases.renew(&self.node, &fences, ttl).await {
                Ok(held) => {
                    last_renewed = tokio::time::Instant::now();
                    self.renewed.store(true, std::sync::atomic::Ordering::Release);
                    for f in fences.iter().filter(|f| !held.contains(&f.account)) {
                        // A hand-over or a reload may have stopped it (and released its
                        // lease) since the fences were read: that is no loss.
                        if !self.holds(f).await {
                            continue;
                        }
                        tracing::warn!(account = %f.account, epoch = f.epoch, "lease lost to another daemon; stopping the account");
                        self.metrics.leases_lost.inc();
                        self.stop(&f.account, "lease lost").await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leases");
                    self.renewed.store(false, std::sync::atomic::Ordering::Release);
                    if last_renewed.elapsed() >= ttl * 2 / 3 {
                        for f in &fences {
                            if !self.holds(f).await {
                                continue;
                            }
                            self.metrics.leases_lost.inc();
                            self.stop(&f.account, "lease not renewed in time").await;
                        }
                    }
                }
            }
        }
    }

    /// This daemon still runs the account under this very lease.
    async fn holds(&self, fence: &Fence) -> bool {
        self.started.lock().await.get(&fence.account).and_then(|s| s.fence.as_ref()) == Some(fence)
    }

    /// Brings what runs in line with the config and the leases.
    async fn reconcile(&self) {
        let wanted = self.wanted();
        let ttl = Duration::from_secs(self.daemon.cluster.lease_secs);
        // While the leases cannot be renewed, take no new ones.
        if self.leases.is_some() && !self.renewed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let share = self.share(wanted.len(), ttl).await;
        let wanted_keys: Vec<&str> = wanted.iter().map(|w| w.key.as_str()).collect();
        let stale: Vec<(String, bool)> = self
            .started
            .lock()
            .await
            .iter()
            .map(|(k, s)| {
                let changed = wanted
                    .iter()
                    .find(|w| &w.key == k)
                    .is_some_and(|w| w.digest != s.wanted.digest || w.source != s.wanted.source);
                (k.clone(), changed)
            })
            .filter(|(k, changed)| *changed || !wanted_keys.contains(&k.as_str()))
            .collect();
        for (key, changed) in stale {
            self.stop(&key, if changed { "its file changed" } else { "its file was removed" }).await;
        }
        self.hand_over_surplus(share).await;
        for w in &wanted {
            if self.started.lock().await.contains_key(&w.key) || !self.may_try(&w.key) {
                continue;
            }
            if self.started.lock().await.len() >= share {
                break;
            }
            let fence = match &self.leases {
                None => None,
                Some(leases) => match leases.try_acquire(&w.key, &self.node, ttl).await {
                    Ok(Some(f)) => Some(f),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(account = %w.key, error = %e, "cannot take the lease");
                        continue;
                    }
                },
            };
            if let Err(e) = self.start(w, fence.clone()).await {
                self.account_failed(&w.key, &format!("{e:#}"));
                if let (Some(leases), Some(f)) = (&self.leases, &fence)
                    && let Err(e) = leases.release(f).await
                {
                    tracing::warn!(account = %w.key, error = %e, "cannot release the lease; it expires by itself");
                }
            }
        }
    }
}
