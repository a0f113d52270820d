//! This crate's [`FACTORY`]: reads a `[[bridge]] kind = "matrix"` section, reaches the homeserver for `coi-bridge check`, and builds the bridge in either mode, with the appservice endpoint's routes in appservice mode.
//!
//! Appservice mode: bridges built from one registration (the same `hs_token`), in one
//! account or in many, share one endpoint, kept in the daemon's [`SharedRoutes`]. The
//! first build makes it and returns its routes; the others join it and return none.

use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::factory::read_file;
use coi_bridge_api::{BridgeFactory, BridgeSection, Built, CoreHandles, Environment, SharedRoutes};

use crate::appservice::{self, Appservice, Member};
use crate::bot::BotBridge;
use crate::bridge::MatrixBridge;
use crate::client::AsClient;
use crate::config::{MatrixConfig, Mode};
use crate::inbound::MatrixInbound;
use crate::registration::Registration;

/// The Matrix bridge kind, for the core's registry.
pub static FACTORY: BridgeFactory = BridgeFactory { kind: "matrix", label: "Matrix", parse };

fn parse(section: serde_json::Value) -> Result<Box<dyn BridgeSection>, String> {
    let cfg: MatrixConfig = serde_json::from_value(section).map_err(|e| e.to_string())?;
    Ok(Box::new(cfg))
}

/// The appservice registration the section names (relative to the config file).
fn registration(cfg: &MatrixConfig, env: &Environment<'_>) -> Result<Registration, String> {
    let what = "run `coi-bridge generate-registration` and give it to the homeserver";
    let text = read_file(env, &cfg.id, "registration", &cfg.registration, what)?;
    Registration::from_yaml(&text).map_err(|e| format!("bridge {:?}: {e}", cfg.id))
}

/// The endpoint of the registration whose homeserver token is `hs_token`: the one the
/// daemon has, or a new one (`true`: its routes are for the listener).
fn endpoint(shared: &SharedRoutes, hs_token: &str, file: &std::path::Path) -> (Arc<Appservice>, bool) {
    // The token itself is no key: keys may be logged.
    let key = format!("matrix/appservice/{:016x}", appservice::fnv1a(hs_token.as_bytes()));
    let (app, made) = shared.get_or_make(&key, || {
        let app = Appservice::new(hs_token, &file.display().to_string(), shared.unrouted());
        // Several daemons on one store: what no bridge here has waits for another daemon.
        Arc::new(match shared.relay() {
            Some(relay) => app.with_relay(relay, shared.waker()),
            None => app,
        })
    });
    if made {
        let drain: Arc<dyn coi_bridge_api::Drain> = Arc::clone(&*app) as _;
        shared.add_drain(Arc::downgrade(&drain));
    }
    (Arc::clone(&app), made)
}

/// Bot mode: the account's password, from `password_file`.
fn bot_password(cfg: &MatrixConfig, env: &Environment<'_>) -> Result<String, String> {
    let file = cfg.password_file.clone().unwrap_or_default();
    let what = "put the bot account's password there";
    Ok(read_file(env, &cfg.id, "password_file", &file, what)?.trim_end_matches(['\r', '\n']).to_owned())
}

#[async_trait]
impl BridgeSection for MatrixConfig {
    fn id(&self) -> &str {
        &self.id
    }

    fn validate(&self) -> Result<(), String> {
        MatrixConfig::validate(self)
    }

    /// A bridge with people to speak for opens a DM room with them.
    fn opens_dms(&self) -> bool {
        !self.owner_list().is_empty()
    }

    async fn check(&self, env: &Environment<'_>) -> Result<String, (String, String)> {
        if self.mode == Mode::Bot {
            let client =
                AsClient::new(&self.homeserver, "", "").map_err(|e| (e, "check the bridge's homeserver URL".into()))?;
            return client
                .versions()
                .await
                .map(|v| format!("{} answers (Matrix {v}); bot mode", self.homeserver))
                .map_err(|e| {
                    (
                        format!("{}: {e}", self.homeserver),
                        format!("is the homeserver running, and is [[bridge]] id = {:?} homeserver right?", self.id),
                    )
                });
        }
        let reg = registration(self, env).map_err(|e| (e, "run `coi-bridge generate-registration`".into()))?;
        let bridge = MatrixBridge::new(self.clone(), reg, env.address, "")
            .map_err(|e| (e, format!("check [[bridge]] id = {:?}", self.id)))?;
        bridge.check().await
    }

    fn build(&self, env: &Environment<'_>, core: CoreHandles) -> Result<Built, String> {
        if self.mode == Mode::Bot {
            let password = bot_password(self, env)?;
            let store_dir = env.state_dir.join(format!("matrix-{}", self.id));
            let bridge = BotBridge::new(self.clone(), env.address, env.display_name, store_dir, password);
            return Ok(Built { bridge: Arc::new(bridge), routes: None });
        }
        let reg = registration(self, env)?;
        let bridge = MatrixBridge::new(self.clone(), reg.clone(), env.address, env.display_name)
            .map_err(|e| format!("bridge {:?} ({}): {e}", self.id, env.config_file.display()))?;
        // The homeserver pushes transactions to the daemon's listener; they reach the hub
        // through the same handling as bot mode's sync.
        let inbound =
            Arc::new(MatrixInbound::new(core.id.clone(), bridge.client().clone(), core.hub, core.state.clone(), self));
        let (app, made) = endpoint(env.shared, &reg.hs_token, &env.resolve(&self.registration));
        let member = Member {
            id: core.id,
            source: env.config_file.display().to_string(),
            state: core.state,
            sink: inbound,
            refusals: bridge.refusals(),
        };
        let membership = app.join(&bridge.client().bot, member)?;
        let routes = made.then(|| appservice::router(app));
        Ok(Built { bridge: Arc::new(bridge.with_membership(membership)), routes })
    }
}
