//! One cancellation token and one task tracker for the whole daemon: no detached tasks, a graceful stop on SIGTERM/SIGINT.
//!
//! The first signal cancels the token and waits up to the grace period for every task to
//! finish its current item; a second signal, or the grace period running out, ends the
//! process at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every task finished after the signal.
    Clean,
    /// A task failed for good (it logged why).
    Fatal,
    /// A second signal, or tasks still running after the grace period.
    Forced,
}

pub struct Supervisor {
    token: CancellationToken,
    tracker: TaskTracker,
    fatal: Arc<AtomicBool>,
    term: Signal,
    int: Signal,
}

impl Supervisor {
    /// Takes over SIGTERM and SIGINT at once, so a signal that arrives while the daemon
    /// is still starting is a graceful stop too. Needs a running tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            fatal: Arc::new(AtomicBool::new(false)),
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The root token; every task gets a clone.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs a task that ends by itself once the token is cancelled. If it fails, the
    /// whole daemon stops: such tasks retry transient errors themselves.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token.clone();
        let fatal = self.fatal.clone();
        self.tracker.spawn(async move {
            match fut.await {
                Ok(()) => tracing::debug!(task = name, "task stopped"),
                Err(e) => {
                    tracing::error!(task = name, error = format!("{e:#}"), "task failed; stopping the daemon");
                    fatal.store(true, Ordering::SeqCst);
                    token.cancel();
                }
            }
        });
    }

    /// Waits for SIGTERM/SIGINT (or a fatal task), then stops everything within `grace`.
    pub async fn run_until_signal(self, grace: Duration) -> anyhow::Result<Stop> {
        let Self { token, tracker, fatal, mut term, mut int } = self;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            () = token.cancelled() => {}
        }
        token.cancel();
        tracker.close();
        let stop = tokio::select! {
            () = tracker.wait() => {
                if fatal.load(Ordering::SeqCst) { Stop::Fatal } else { Stop::Clean }
            }
            _ = term.recv() => { tracing::warn!("second signal: exiting now"); Stop::Forced }
            _ = int.recv() => { tracing::warn!("second signal: exiting now"); Stop::Forced }
            () = tokio::time::sleep(grace) => {
                tracing::warn!(?grace, "tasks still running after the grace period: exiting now");
                Stop::Forced
            }
        };
        tracing::info!(?stop, "stopped");
        Ok(stop)
    }
}
