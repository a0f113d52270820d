//! The registry of bridge kinds, one line per bridge crate, and what the core does with any `[[bridge]]`: reads it through its kind's factory, checks it, builds it into its parts (the bridge, its delivery worker, its HTTP routes). Nothing here knows one bridge from another.
//!
//! # Many accounts, one listener
//! A daemon running several accounts builds each account's bridges with [`build_shared`],
//! handing every call the daemon's one [`SharedRoutes`] (made once with
//! [`shared_routes`], which also registers its metric). Bridges of different accounts that
//! serve one endpoint (every account's Matrix bridge on one appservice registration) then
//! share it: the build that made it returns its routes in [`Bridges::routes`], the others
//! return none, so the HTTP listener mounts each route set once. Mount the routes of every
//! build, for the daemon's life (an endpoint outlives the account that made it: the
//! others' events still arrive there). An account's bridges leave a shared endpoint when
//! their `run` is cancelled or they are dropped. [`build`] is the one-account form: a
//! registry of its own.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use coi_bridge_api::{Bridge, BridgeFactory, BridgeId, BridgeSection, CoreHandles, Environment, Hub, SharedRoutes};
use serde::Deserialize;

use crate::app::Core;
use crate::config::Loaded;
use crate::hub::delivery::BridgeDelivery;
use crate::hub::submit::StoreState;
use crate::transport::smtp::RetryPolicy;

/// Every bridge kind this build has. A new bridge crate is one line here (and its
/// dependency in Cargo.toml).
pub static REGISTRY: &[&BridgeFactory] = &[
    &coi_bridge_matrix::FACTORY,   // kind = "matrix"
    &coi_bridge_telegram::FACTORY, // kind = "telegram"
];

/// The factory registered for `kind`.
pub fn factory(kind: &str) -> Option<&'static BridgeFactory> {
    REGISTRY.iter().copied().find(|f| f.kind == kind)
}

/// The registered kinds, for error messages: `matrix, telegram`.
pub fn kinds() -> String {
    REGISTRY.iter().map(|f| f.kind).collect::<Vec<_>>().join(", ")
}

/// One `[[bridge]]` entry: its kind's factory and the section that factory read. The
/// section is the bridge crate's own config type (strict, documented there).
pub struct BridgeConfig {
    factory: &'static BridgeFactory,
    section: Box<dyn BridgeSection>,
}

impl BridgeConfig {
    /// Reads one `[[bridge]]` table: `kind` picks the factory, which reads the rest.
    pub fn parse(mut table: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let kind = match table.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => return Err(format!("kind: {other} is not a bridge kind; use one of: {}", kinds())),
            None => return Err(format!("missing field `kind`; use one of: {}", kinds())),
        };
        let factory =
            factory(&kind).ok_or_else(|| format!("kind: unknown bridge kind {kind:?}; this build has: {}", kinds()))?;
        let name = match table.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("bridge {id:?} (kind = {kind:?})"),
            None => format!("bridge (kind = {kind:?})"),
        };
        let section = (factory.parse)(serde_json::Value::Object(table)).map_err(|e| format!("{name}: {e}"))?;
        Ok(Self { factory, section })
    }

    pub fn id(&self) -> &str {
        self.section.id()
    }

    /// The `kind` it was configured with.
    pub fn kind(&self) -> &'static str {
        self.factory.kind
    }

    /// The network's name people read ("Matrix").
    pub fn label(&self) -> &'static str {
        self.factory.label
    }

    pub fn section(&self) -> &dyn BridgeSection {
        self.section.as_ref()
    }

    /// The section as its crate's own config type, for a command of one bridge kind
    /// (`generate-registration` reads Matrix's); `None` for every other kind.
    pub fn config<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = self.section.as_ref();
        any.downcast_ref()
    }
}

impl fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeConfig").field("kind", &self.factory.kind).field("section", &self.section).finish()
    }
}

impl<'de> Deserialize<'de> for BridgeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = serde_json::Map::deserialize(d)?;
        Self::parse(table).map_err(serde::de::Error::custom)
    }
}

/// One running bridge instance.
pub struct Running {
    pub id: BridgeId,
    pub bridge: Arc<dyn Bridge>,
    pub delivery: BridgeDelivery,
}

/// Everything the configured bridges add to the daemon.
pub struct Bridges {
    pub running: Vec<Running>,
    /// Routes for the HTTP listener (the appservice endpoint).
    pub routes: axum::Router,
}

/// The network name each bridge instance shows after relayed names ("Ann (Matrix)").
pub fn labels(bridges: &[BridgeConfig]) -> HashMap<String, String> {
    bridges.iter().map(|b| (b.id().to_owned(), b.label().to_owned())).collect()
}

/// `check`'s row for one bridge: its name, then what answered or why not and the fix.
pub async fn check(loaded: &Loaded, b: &BridgeConfig) -> (String, Result<String, (String, String)>) {
    let state_dir = loaded.config.store.state_dir();
    let shared = SharedRoutes::default();
    let env = environment(loaded, &state_dir, &shared);
    (format!("{} {}", b.kind(), b.id()), b.section().check(&env).await)
}

/// What a factory is told about the daemon: the account, and the directories relative
/// paths and a bridge's own files are under.
fn environment<'a>(loaded: &'a Loaded, state_dir: &'a std::path::Path, shared: &'a SharedRoutes) -> Environment<'a> {
    Environment {
        address: &loaded.config.account.address,
        display_name: &loaded.config.account.display_name,
        config_dir: loaded.source.parent().unwrap_or(std::path::Path::new(".")),
        state_dir,
        config_file: &loaded.source,
        shared,
    }
}

/// The daemon's one registry of shared endpoints, for every account's [`build_shared`].
/// Registers `coi_bridge_appservice_unrouted_events_total` (events a shared endpoint took
/// that belong to no account's bridge, dropped; on PostgreSQL, relayed events no daemon
/// took within `coi_bridge_api::relay::RELAY_TTL`, pruned) in `metrics`; call it once per daemon.
pub fn shared_routes(metrics: &crate::metrics::Metrics) -> SharedRoutes {
    let counter = prometheus::IntCounter::new(
        "appservice_unrouted_events_total",
        "Events a shared appservice endpoint took that belong to no account's bridge (dropped; with several daemons: pruned from the relay unclaimed)",
    );
    let counter = match counter {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the unrouted-events metric could not be made");
            return SharedRoutes::default();
        }
    };
    if let Err(e) = metrics.registry.register(Box::new(counter.clone())) {
        tracing::warn!(error = %e, "the unrouted-events metric is not exported");
    }
    SharedRoutes::new(move || counter.inc())
}

/// Builds every configured bridge of the one account in `loaded` through its factory;
/// no network I/O. A daemon of one account: see [`build_shared`] for many.
pub fn build(loaded: &Loaded, core: &Core) -> anyhow::Result<Bridges> {
    build_shared(loaded, core, &shared_routes(&core.metrics))
}

/// Builds the bridges of one account (`loaded`: its config file and sections; `core`: its
/// store, hub and workers) with the daemon's `shared` registry; no network I/O. Routes of
/// an endpoint another account's build made already are not returned again (see the
/// module doc). Call it once per account, each with the same `shared`.
pub fn build_shared(loaded: &Loaded, core: &Core, shared: &SharedRoutes) -> anyhow::Result<Bridges> {
    let mut running = Vec::new();
    let mut routes = axum::Router::new();
    let policy = RetryPolicy { base: Duration::from_secs(1), max_delay: Duration::from_secs(300), max_attempts: 30 };
    let state_dir = loaded.config.store.state_dir();
    let env = environment(loaded, &state_dir, shared);
    for b in &loaded.config.bridge {
        let id = BridgeId(b.id().to_owned());
        let hub: Arc<dyn Hub> = core.hub.clone();
        let handles = CoreHandles { id: id.clone(), hub, state: Arc::new(StoreState::new(core.store.clone(), &id)) };
        let built = b.section().build(&env, handles).map_err(|e| anyhow::anyhow!(e))?;
        if let Some(r) = built.routes {
            routes = merge_routes(routes, r, b)?;
        }
        // Each bridge with its delivery worker, labelled for notices ("not delivered to Matrix").
        let delivery = BridgeDelivery::new(
            id.clone(),
            b.label(),
            built.bridge.clone(),
            core.store.clone(),
            core.outbound.clone(),
            policy,
            core.metrics.clone(),
        );
        running.push(Running { id, bridge: built.bridge, delivery });
    }
    // Bridges with people to speak for open a DM portal when a COI contact writes 1:1.
    let dm = loaded.config.bridge.iter().filter(|b| b.section().opens_dms()).map(|b| b.id().to_owned()).collect();
    core.ingest.set_dm_bridges(dm);
    Ok(Bridges { running, routes })
}

/// Adds one bridge's routes to the listener's. Two bridges serving the same path with
/// different registrations (two Matrix appservices: the transaction endpoint's path is
/// fixed by the spec) cannot share one listener; bridges on one registration share its
/// endpoint and return its routes once; axum refuses that with a panic, which becomes a start error naming the
/// bridge. Runs at start, before any task is spawned, so the panic hook is silenced for
/// the merge alone (the error says it all; no backtrace that reads like a bug).
fn merge_routes(routes: axum::Router, more: axum::Router, b: &BridgeConfig) -> anyhow::Result<axum::Router> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| routes.merge(more)));
    std::panic::set_hook(hook);
    merged.map_err(|panic| {
        anyhow::anyhow!(
            "bridge {:?}: its HTTP routes overlap another bridge's ({}); one daemon serves one such endpoint: \
             run this {} bridge in another mode or in a daemon of its own",
            b.id(),
            crate::supervisor::panic_message(panic.as_ref()),
            b.label()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[[bridge]]` sections of config/coi-bridge.example.toml, uncommented, by kind.
    fn example_sections() -> Vec<(String, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/coi-bridge.example.toml");
        let text = std::fs::read_to_string(&path).expect("the example config");
        let mut sections: Vec<String> = Vec::new();
        for line in text.lines() {
            let Some(line) = line.strip_prefix("# ").or_else(|| (line == "#").then_some("")) else {
                sections.push(String::new()); // a line that is not commented out ends a section
                continue;
            };
            if line.trim() == "[[bridge]]" {
                sections.push(format!("{line}\n"));
            } else if let Some(s) = sections.last_mut().filter(|s| !s.is_empty()) {
                s.push_str(line);
                s.push('\n');
            }
        }
        sections
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                let kind = s
                    .lines()
                    .find_map(|l| l.strip_prefix("kind = "))
                    .map(|k| k.split('#').next().unwrap_or_default().trim().trim_matches('"').to_owned())
                    .expect("every example section names its kind");
                (kind, s)
            })
            .collect()
    }

    fn parse_toml(toml: &str) -> Result<Vec<BridgeConfig>, String> {
        #[derive(Deserialize)]
        struct File {
            bridge: Vec<BridgeConfig>,
        }
        use figment::providers::Format as _;
        figment::Figment::new()
            .merge(figment::providers::Toml::string(toml))
            .extract::<File>()
            .map(|f| f.bridge)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_registered_kind_parses_its_example_section() {
        let sections = example_sections();
        for f in REGISTRY {
            let (_, toml) = sections
                .iter()
                .find(|(kind, _)| kind == f.kind)
                .unwrap_or_else(|| panic!("config/coi-bridge.example.toml has no [[bridge]] kind = {:?}", f.kind));
            let parsed = parse_toml(toml).unwrap_or_else(|e| panic!("kind {:?}: {e}\n{toml}", f.kind));
            let [b] = parsed.as_slice() else { panic!("one section, got {}", parsed.len()) };
            assert_eq!((b.kind(), b.label()), (f.kind, f.label));
            b.section().validate().unwrap_or_else(|e| panic!("kind {:?}: {e}", f.kind));
        }
        // And every example section is of a registered kind.
        for (kind, _) in &sections {
            assert!(factory(kind).is_some(), "the example has a section of kind {kind:?}, which no crate registers");
        }
    }

    #[test]
    fn an_unknown_kind_is_named_with_the_registered_ones() {
        let err = parse_toml("[[bridge]]\nid = \"x\"\nkind = \"xmpp\"\n").expect_err("refused");
        assert!(err.contains("\"xmpp\"") && err.contains("bridge.0"), "{err}");
        for f in REGISTRY {
            assert!(err.contains(f.kind), "the error should list {:?}: {err}", f.kind);
        }
        let err = parse_toml("[[bridge]]\nid = \"x\"\n").expect_err("refused");
        assert!(err.contains("kind") && err.contains(REGISTRY[0].kind), "{err}");
    }

    #[test]
    fn a_section_error_names_the_bridge_and_the_key() {
        let err = parse_toml("[[bridge]]\nid = \"tg\"\nkind = \"telegram\"\ntokn_file = \"t\"\n").expect_err("refused");
        assert!(err.contains("bridge \"tg\"") && err.contains("tokn_file") && err.contains("token_file"), "{err}");
        // The concrete type is reachable for commands of one kind, and only for that kind.
        let parsed = parse_toml("[[bridge]]\nid = \"tg\"\nkind = \"telegram\"\n").expect("parses");
        assert!(parsed[0].config::<coi_bridge_telegram::config::TelegramConfig>().is_some());
        assert!(parsed[0].config::<coi_bridge_matrix::config::MatrixConfig>().is_none());
    }
}
