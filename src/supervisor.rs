//! One cancellation token and one task tracker for the whole daemon: no detached tasks, a graceful stop on SIGTERM/SIGINT, and no task that dies silently.
//!
//! The first signal cancels the token and waits up to the grace period for every task to
//! finish its current item; a second signal, or the grace period running out, ends the
//! process at once.
//!
//! A panic in a task is caught, logged at ERROR with its message and counted
//! (`coi_bridge_panics_total{task}`). A task started with [`Supervisor::spawn_restarting`]
//! is then started again after a backoff; any other task stops the daemon, which exits
//! non-zero so that systemd restarts it. The watchdog never pings for a dead task.
//!
//! Each account runs its tasks in a child set ([`Tasks::child`]): stopped alone when the
//! account is removed or its lease is lost, and a failure there stops that account only.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use prometheus::IntCounterVec;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// The first pause before a panicked task is started again, and the longest.
pub const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

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
    tasks: Tasks,
    fatal: Arc<AtomicBool>,
    term: Signal,
    int: Signal,
}

/// What a task set does when one of its tasks fails for good; it hears why.
pub type OnFatal = Arc<dyn Fn(&str) + Send + Sync>;

/// A set of tasks under one token: the daemon's root set, or an account's (a child of the
/// root: stopping the daemon stops it, and it can be stopped alone). A task of a child set
/// that fails stops its set and calls the set's `on_fatal`; the root set's stops the daemon.
#[derive(Clone)]
pub struct Tasks {
    name: Arc<str>,
    token: CancellationToken,
    tracker: TaskTracker,
    /// The root's tracker, which the daemon's grace period waits on (None for the root).
    root: Option<TaskTracker>,
    panics: Option<IntCounterVec>,
    backoff: (Duration, Duration),
    on_fatal: OnFatal,
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Supervisor {
    /// Takes over SIGTERM and SIGINT at once, so a signal that arrives while the daemon
    /// is still starting is a graceful stop too. Needs a running tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        let token = CancellationToken::new();
        let fatal = Arc::new(AtomicBool::new(false));
        let (t, f) = (token.clone(), fatal.clone());
        let on_fatal: OnFatal = Arc::new(move |_why: &str| {
            f.store(true, Ordering::SeqCst);
            t.cancel();
        });
        Ok(Self {
            tasks: Tasks {
                name: Arc::from("daemon"),
                token,
                tracker: TaskTracker::new(),
                root: None,
                panics: None,
                backoff: RESTART_BACKOFF,
                on_fatal,
            },
            fatal,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Counts caught panics here, by task name (`Metrics::panics`).
    pub fn count_panics(&mut self, counter: IntCounterVec) {
        self.tasks.panics = Some(counter);
    }

    /// The pauses before a panicked task is started again (first, longest).
    pub fn set_restart_backoff(&mut self, first: Duration, max: Duration) {
        self.tasks.backoff = (first, max);
    }

    /// The root token; every task gets a clone.
    pub fn token(&self) -> CancellationToken {
        self.tasks.token.clone()
    }

    /// The root task set, to make child sets from.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// See [`Tasks::spawn`]: a failure stops the daemon.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(name, fut);
    }

    /// See [`Tasks::spawn_restarting`].
    pub fn spawn_restarting<F, Fut>(&self, name: &'static str, start: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn_restarting(name, start);
    }

    /// Waits for SIGTERM/SIGINT (or a fatal task), then stops everything within `grace`.
    pub async fn run_until_signal(self, grace: Duration) -> anyhow::Result<Stop> {
        let Self { tasks, fatal, mut term, mut int } = self;
        let Tasks { token, tracker, .. } = tasks;
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

impl Tasks {
    /// A child set: its own token (a child of this one) and tracker. When one of its
    /// tasks fails, the set stops and `on_fatal` hears why (an account: marked failed,
    /// the daemon goes on).
    /// `None` keeps this set's reaction (for the root: a failure stops the daemon).
    pub fn child(&self, name: &str, on_fatal: Option<OnFatal>) -> Tasks {
        Tasks {
            name: Arc::from(name),
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
            root: Some(self.root.clone().unwrap_or_else(|| self.tracker.clone())),
            panics: self.panics.clone(),
            backoff: self.backoff,
            on_fatal: on_fatal.unwrap_or_else(|| self.on_fatal.clone()),
        }
    }

    /// This set's token; its tasks stop when it is cancelled.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancels this set's token and waits until every task of the set has ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn spawn_tracked<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // A child's task is tracked by both: its set waits for it, the daemon's grace too.
        match &self.root {
            Some(root) => drop(root.spawn(self.tracker.track_future(fut))),
            None => drop(self.tracker.spawn(fut)),
        }
    }

    /// Runs a task that ends by itself once the token is cancelled. If it fails or
    /// panics, the set stops (for the root set: the daemon, which exits non-zero): such
    /// tasks retry transient errors themselves, and cannot be started again.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token.clone();
        let on_fatal = self.on_fatal.clone();
        let panics = self.panics.clone();
        let set = self.name.clone();
        // Boxed: an async block that awaits a future it captured holds it twice (the
        // capture and the await), which doubled every worker's memory (#12).
        let fut = Box::pin(fut);
        self.spawn_tracked(async move {
            let result = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(r) => r,
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    count(panics.as_ref(), name);
                    tracing::error!(task = name, set = %set, panic = %message, "task panicked; stopping its set");
                    Err(anyhow::anyhow!("panicked: {message}"))
                }
            };
            match result {
                Ok(()) => tracing::debug!(task = name, set = %set, "task stopped"),
                Err(e) => {
                    let why = format!("{name}: {e:#}");
                    tracing::error!(task = name, set = %set, error = %why, "task failed; stopping its set");
                    token.cancel();
                    on_fatal(&why);
                }
            }
        });
    }

    /// Runs the task `start()` makes; if it panics, the panic is logged and counted and
    /// the task is started again after a backoff (1 s doubling to 60 s, reset after a
    /// run of 60 s without a panic). An error stops the set as with [`Self::spawn`];
    /// `Ok` ends the task.
    pub fn spawn_restarting<F, Fut>(&self, name: &'static str, start: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token.clone();
        let panics = self.panics.clone();
        let (first, max) = self.backoff;
        // What one run of the task holds for its life, however long it waits (#12 sized
        // the workers by it: a worker boxes its rare, large steps so that waiting is small).
        tracing::debug!(task = name, future_bytes = std::mem::size_of::<Fut>(), "task spawned");
        self.spawn(name, async move {
            let mut backoff = Backoff::new(first, max);
            loop {
                let started = tokio::time::Instant::now();
                match AssertUnwindSafe(start()).catch_unwind().await {
                    Ok(result) => return result,
                    Err(payload) => {
                        if started.elapsed() >= max {
                            backoff.reset();
                        }
                        let pause = backoff.next_delay();
                        count(panics.as_ref(), name);
                        tracing::error!(
                            task = name,
                            panic = %panic_message(payload.as_ref()),
                            restart_in = ?pause,
                            "task panicked; starting it again"
                        );
                        tokio::select! {
                            () = token.cancelled() => return Ok(()),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        });
    }
}

fn count(panics: Option<&IntCounterVec>, task: &str) {
    if let Some(c) = panics {
        c.with_label_values(&[task]).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("panics_total", "test"), &["task"]).expect("counter")
    }

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_started_again() {
        let mut sup = Supervisor::new().expect("signals");
        let panics = counter();
        sup.count_panics(panics.clone());
        sup.set_restart_backoff(Duration::from_millis(1), Duration::from_millis(20));
        let runs = Arc::new(AtomicU32::new(0));
        let (r, token) = (runs.clone(), sup.token());
        sup.spawn_restarting("flaky", move || {
            let (r, token) = (r.clone(), token.clone());
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= 3 {
                    // A multi-byte character cut at byte 1, as a parser bug would.
                    let text = String::from("é!");
                    let _ = &text[..1];
                }
                // The fourth run works, until the daemon stops.
                token.cancelled().await;
                Ok(())
            }
        });
        let stopper = sup.token();
        let r = runs.clone();
        let stop = tokio::spawn(async move {
            while r.load(Ordering::SeqCst) < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stopper.cancel();
        });
        let result = tokio::time::timeout(Duration::from_secs(60), sup.run_until_signal(Duration::from_secs(5)))
            .await
            .expect("stops");
        stop.await.expect("stopper");
        assert_eq!(result.expect("stop"), Stop::Clean, "restarted panics are not fatal");
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(panics.with_label_values(&["flaky"]).get(), 3);
    }

    #[tokio::test]
    async fn a_panic_in_a_task_that_cannot_restart_stops_the_daemon_non_zero() {
        let mut sup = Supervisor::new().expect("signals");
        let panics = counter();
        sup.count_panics(panics.clone());
        let token = sup.token();
        sup.spawn("steady", async move {
            token.cancelled().await;
            Ok(())
        });
        sup.spawn("broken", async {
            let v: Vec<u8> = Vec::new();
            let _ = v[usize::from(v.is_empty())];
            Ok(())
        });
        let result = tokio::time::timeout(Duration::from_secs(60), sup.run_until_signal(Duration::from_secs(5)))
            .await
            .expect("stops by itself");
        assert_eq!(result.expect("stop"), Stop::Fatal);
        assert_eq!(panics.with_label_values(&["broken"]).get(), 1);
    }

    /// An account's set: its failing task stops that set alone and reports why; the daemon
    /// goes on, and stopping the daemon still stops every set.
    #[tokio::test]
    async fn a_failure_in_a_child_set_stops_only_that_set() {
        let sup = Supervisor::new().expect("signals");
        let why = Arc::new(std::sync::Mutex::new(None::<String>));
        let w = why.clone();
        let a = sup
            .tasks()
            .child("a@example.org", Some(Arc::new(move |e: &str| *w.lock().expect("lock") = Some(e.into()))));
        let b = sup.tasks().child("b@example.org", None);
        let (ta, tb) = (a.token(), b.token());
        a.spawn("steady", async move {
            ta.cancelled().await;
            Ok(())
        });
        a.spawn("broken", async { Err(anyhow::anyhow!("bad password")) });
        b.spawn("steady", async move {
            tb.cancelled().await;
            Ok(())
        });
        tokio::time::timeout(Duration::from_secs(30), a.stop()).await.expect("the failed set stops");
        assert_eq!(why.lock().expect("lock").as_deref(), Some("broken: bad password"));
        assert!(!b.token().is_cancelled() && !sup.token().is_cancelled(), "the others go on");
        sup.token().cancel();
        let stop = tokio::time::timeout(Duration::from_secs(30), sup.run_until_signal(Duration::from_secs(5)))
            .await
            .expect("stops");
        assert_eq!(stop.expect("stop"), Stop::Clean, "a child's failure is not the daemon's");
        assert!(b.token().is_cancelled());
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let p = std::panic::catch_unwind(|| panic!("static")).expect_err("panics");
        assert_eq!(panic_message(p.as_ref()), "static");
        let p = std::panic::catch_unwind(|| panic!("formatted {}", 7)).expect_err("panics");
        assert_eq!(panic_message(p.as_ref()), "formatted 7");
    }
}
