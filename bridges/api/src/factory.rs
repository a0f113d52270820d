//! The factory each bridge crate exports: its `kind`, its label, and how one `[[bridge]]` section of its kind is read, checked (`coi-bridge check`) and built into a running bridge with its HTTP routes.
//!
//! A new bridge is one crate plus one line in the core's registry (`src/bridges.rs`):
//! the crate exports a `pub static FACTORY: BridgeFactory`, and its config type
//! implements [`BridgeSection`]. The core knows no bridge by name.
//!
//! One daemon can run many accounts, each building its own bridges. What the bridges of
//! several accounts share (one Matrix appservice endpoint per registration) lives in the
//! daemon's [`SharedRoutes`], which every build is handed through [`Environment::shared`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;

use crate::relay::{DRAIN_EVERY, Drain, EventRelay, PRUNE_EVERY, RELAY_TTL};
use crate::{Bridge, BridgeId, BridgeState, Hub};

/// One bridge kind, as the core's registry lists it.
pub struct BridgeFactory {
    /// The value of `[[bridge]] kind = "…"`, lower case.
    pub kind: &'static str,
    /// The network's name as people read it: after relayed names ("Ann (Matrix)") and in
    /// notices ("not delivered to Matrix").
    pub label: &'static str,
    /// Reads one `[[bridge]]` section: every key but `kind`. Strict: an unknown key, a
    /// missing one or a wrong type is an error that names it. No I/O; what serde cannot
    /// check is [`BridgeSection::validate`]'s.
    pub parse: fn(serde_json::Value) -> Result<Box<dyn BridgeSection>, String>,
}

impl fmt::Debug for BridgeFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeFactory").field("kind", &self.kind).field("label", &self.label).finish()
    }
}

/// What the core tells a section about the daemon it is part of.
#[derive(Clone, Copy, Debug)]
pub struct Environment<'a> {
    /// The bridge identity's mail address.
    pub address: &'a str,
    /// The name COI users see for the bridge itself.
    pub display_name: &'a str,
    /// The directory of the config file: relative paths in a section are relative to it.
    pub config_dir: &'a Path,
    /// The daemon's state directory; a bridge keeps its own files in a subdirectory
    /// named after its kind and id.
    pub state_dir: &'a Path,
    /// The config file the section is in (the main file, or an account's file), for
    /// errors that name it.
    pub config_file: &'a Path,
    /// What the bridges of every account in this daemon share (one per daemon).
    pub shared: &'a SharedRoutes,
}

/// What bridges built for different accounts of one daemon share: endpoints the daemon's
/// HTTP listener serves once for all of them (the Matrix appservice endpoint of one
/// registration). The daemon makes one and hands it to every account's build; a bridge
/// crate keeps its shared parts under keys it prefixes with its kind.
///
/// With several daemons on one store it also carries the [`EventRelay`] (set once, before
/// the first build) and runs the periodic drain of every endpoint ([`SharedRoutes::run_relay`]).
#[derive(Clone)]
pub struct SharedRoutes {
    slots: Arc<Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>>,
    unrouted: Arc<dyn Fn() + Send + Sync>,
    relay: Arc<OnceLock<Arc<dyn EventRelay>>>,
    drains: Arc<Mutex<Vec<Weak<dyn Drain>>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Default for SharedRoutes {
    fn default() -> Self {
        Self::new(|| {})
    }
}

impl fmt::Debug for SharedRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.slots.lock().map_or(0, |s| s.len());
        f.debug_struct("SharedRoutes").field("slots", &n).finish_non_exhaustive()
    }
}

impl SharedRoutes {
    /// `unrouted` counts an event a shared endpoint took that belongs to none of its
    /// bridges (the daemon's metric).
    pub fn new(unrouted: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            slots: Arc::default(),
            unrouted: Arc::new(unrouted),
            relay: Arc::default(),
            drains: Arc::default(),
            wake: Arc::default(),
        }
    }

    /// These shared routes with `relay` (see [`SharedRoutes::set_relay`]).
    pub fn with_relay(self, relay: Arc<dyn EventRelay>) -> Self {
        self.set_relay(relay);
        self
    }

    /// Endpoints made from now on keep the events none of their bridges has in `relay`
    /// (several daemons on one store). Once per daemon; a second relay is ignored.
    pub fn set_relay(&self, relay: Arc<dyn EventRelay>) {
        if self.relay.set(relay).is_err() {
            tracing::error!("a second event relay for one daemon; the first is kept");
        }
    }

    /// The relay, if the daemon has one.
    pub fn relay(&self) -> Option<Arc<dyn EventRelay>> {
        self.relay.get().cloned()
    }

    /// `drain` takes relayed events out for its bridges at every round of
    /// [`SharedRoutes::run_relay`], for as long as it lives.
    pub fn add_drain(&self, drain: Weak<dyn Drain>) {
        self.drains.lock().unwrap_or_else(|e| e.into_inner()).push(drain);
    }

    /// Starts a drain round now (an endpoint gained a bridge).
    pub fn drain_soon(&self) {
        self.wake.notify_one();
    }

    /// [`SharedRoutes::drain_soon`] for an endpoint to keep (it holds nothing else of these
    /// shared routes, so no cycle through the slots).
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let wake = self.wake.clone();
        Arc::new(move || wake.notify_one())
    }

    /// The daemon's relay task, until the future is dropped (the daemon selects it against
    /// its shutdown token): every [`DRAIN_EVERY`] (or at once when woken) each endpoint
    /// drains; every [`PRUNE_EVERY`] events older than [`RELAY_TTL`] are pruned, logged and
    /// counted as unrouted. Without a relay it waits forever, doing nothing.
    pub async fn run_relay(&self) {
        let Some(relay) = self.relay() else { return std::future::pending().await };
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                match relay.prune(RELAY_TTL).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(
                            events = n,
                            ttl_secs = RELAY_TTL.as_secs(),
                            "relayed appservice events no daemon's bridge took in time; dropped"
                        );
                        for _ in 0..n {
                            (self.unrouted)();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot prune the appservice relay; next time"),
                }
            }
            let drains: Vec<Arc<dyn Drain>> = {
                let mut list = self.drains.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|d| d.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            for d in drains {
                d.drain().await;
            }
            let _ = tokio::time::timeout(DRAIN_EVERY, self.wake.notified()).await;
        }
    }

    /// The counter of events no bridge of a shared endpoint has.
    pub fn unrouted(&self) -> Arc<dyn Fn() + Send + Sync> {
        self.unrouted.clone()
    }

    /// The part kept under `key`, made by `make` if there is none yet; `true` when it
    /// was made now (the caller then returns its routes, so the listener mounts them
    /// once). A part of another type under the same key is left alone and a fresh,
    /// unshared one is made.
    pub fn get_or_make<T: Any + Send + Sync>(&self, key: &str, make: impl FnOnce() -> T) -> (Arc<T>, bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slots.get(key) {
            if let Ok(t) = found.clone().downcast::<T>() {
                return (t, false);
            }
            tracing::error!(key, "a shared part of another type under this key; this one is not shared");
            return (Arc::new(make()), true);
        }
        let made = Arc::new(make());
        slots.insert(key.to_owned(), made.clone());
        (made, true)
    }
}

impl Environment<'_> {
    /// `path` as the operator wrote it in the config: relative to the config file's
    /// directory, an absolute path as it is.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.config_dir.join(path)
    }
}

/// The core's parts a bridge's HTTP routes hand events to. [`Bridge::run`] gets the same
/// in its [`crate::BridgeContext`]; routes are built before the bridge runs.
#[derive(Clone)]
pub struct CoreHandles {
    pub id: BridgeId,
    pub hub: Arc<dyn Hub>,
    /// This bridge instance's persistent state (the same rows `run` sees).
    pub state: Arc<dyn BridgeState>,
}

/// A built bridge instance.
pub struct Built {
    pub bridge: Arc<dyn Bridge>,
    /// Routes the daemon's HTTP listener serves for this instance (the Matrix
    /// appservice's transaction endpoint); `None` when the bridge only connects out.
    pub routes: Option<axum::Router>,
}

/// One parsed `[[bridge]]` section: the bridge crate's own config type, which knows how
/// to check and build itself. The core reaches the concrete type (for commands of one
/// bridge, such as `generate-registration`) by downcasting through [`Any`].
#[async_trait]
pub trait BridgeSection: fmt::Debug + Any + Send + Sync {
    /// The instance id (`[[bridge]] id`), which scopes every row the bridge owns.
    fn id(&self) -> &str;

    /// Checks what serde cannot. The error names the bridge id, the key and the fix.
    fn validate(&self) -> Result<(), String>;

    /// Whether the bridge opens a portal when a COI contact writes 1:1 to the bridge: it
    /// has people it speaks for ([`Bridge::open_dm`]).
    fn opens_dms(&self) -> bool {
        false
    }

    /// For `coi-bridge check`: reaches the bridge's server. `Ok` says what answered;
    /// `Err((what went wrong, the fix))`.
    async fn check(&self, env: &Environment<'_>) -> Result<String, (String, String)>;

    /// Builds the bridge and its routes, with secrets read relative to the config file or
    /// from the environment. No network I/O: [`Bridge::run`] connects. The error names
    /// the bridge id, what is missing and the fix. Routes shared with other accounts'
    /// bridges ([`Environment::shared`]) come back from the build that made them only.
    fn build(&self, env: &Environment<'_>, core: CoreHandles) -> Result<Built, String>;
}

/// Reads a file named by `key` in a section (a secret, a registration), relative to the
/// config file. The error names the bridge, the key, the file and what belongs in it.
pub fn read_file(env: &Environment<'_>, id: &str, key: &str, file: &Path, what: &str) -> Result<String, String> {
    let path = env.resolve(file);
    std::fs::read_to_string(&path)
        .map_err(|e| format!("bridge {id:?}: {key} {} cannot be read; {what}: {e}", path.display()))
}
