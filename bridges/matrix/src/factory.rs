//! This crate's [`FACTORY`]: reads a `[[bridge]] kind = "matrix"` section, reaches the homeserver for `coi-bridge check`, and builds the bridge in either mode, with the appservice endpoint's routes in appservice mode.

use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::factory::read_file;
use coi_bridge_api::{BridgeFactory, BridgeSection, Built, CoreHandles, Environment};

use crate::appservice::{self, Appservice};
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
        let bridge = Arc::new(
            MatrixBridge::new(self.clone(), reg.clone(), env.address, env.display_name)
                .map_err(|e| format!("bridge {:?}: {e}", self.id))?,
        );
        // The homeserver pushes transactions to the daemon's listener; they reach the hub
        // through the same handling as bot mode's sync.
        let inbound = Arc::new(MatrixInbound::new(core.id, bridge.client().clone(), core.hub, self));
        let app = Appservice::new(&reg.hs_token, core.state, inbound).with_refusals(bridge.refusals());
        Ok(Built { bridge, routes: Some(appservice::router(Arc::new(app))) })
    }
}
