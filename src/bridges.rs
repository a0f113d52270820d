//! The registry of bridge modules: builds each configured `[[bridge]]` into its parts (delivery worker, HTTP routes) over the core. A new bridge kind is one arm here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use coi_bridge_api::{Bridge, BridgeId, Hub};
use coi_bridge_matrix::appservice::{self, Appservice};
use coi_bridge_matrix::bridge::MatrixBridge;
use coi_bridge_matrix::config::Mode;
use coi_bridge_matrix::inbound::MatrixInbound;
use coi_bridge_matrix::registration::Registration;

use crate::app::Core;
use crate::config::{BridgeConfig, Loaded};
use crate::hub::delivery::BridgeDelivery;
use crate::hub::submit::StoreState;
use crate::transport::smtp::RetryPolicy;

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
pub fn labels(bridges: &[BridgeConfig]) -> std::collections::HashMap<String, String> {
    bridges
        .iter()
        .map(|b| match b {
            BridgeConfig::Matrix(m) => (m.id.clone(), "Matrix".to_owned()),
            BridgeConfig::Telegram(t) => (t.id.clone(), "Telegram".to_owned()),
        })
        .collect()
}

/// Where a Telegram bot token comes from when `token_file` is not set.
pub const TELEGRAM_TOKEN_ENV: &str = "COI_BRIDGE_TELEGRAM_TOKEN";

/// Builds every configured bridge; no network I/O.
pub fn build(loaded: &Loaded, core: &Core) -> anyhow::Result<Bridges> {
    let mut running = Vec::new();
    let mut routes = axum::Router::new();
    let policy = RetryPolicy { base: Duration::from_secs(1), max_delay: Duration::from_secs(300), max_attempts: 30 };
    // Each bridge with its delivery worker, labelled for notices ("not delivered to Matrix").
    let runner = |id: BridgeId, label: &str, bridge: Arc<dyn Bridge>| {
        let delivery = BridgeDelivery::new(
            id.clone(),
            label,
            bridge.clone(),
            core.store.clone(),
            core.outbound.clone(),
            policy,
            core.metrics.clone(),
        );
        Running { id, bridge, delivery }
    };
    for b in &loaded.config.bridge {
        match b {
            BridgeConfig::Matrix(m) => {
                let base = loaded.source.parent().unwrap_or(std::path::Path::new("."));
                let id = BridgeId(m.id.clone());
                if m.mode == Mode::Bot {
                    let file = m.password_file.clone().unwrap_or_default();
                    // `join` keeps an absolute path as it is.
                    let file = base.join(file);
                    let password = std::fs::read_to_string(&file)
                        .with_context(|| {
                            format!(
                                "bridge {:?}: password_file {} cannot be read; put the bot account's password there",
                                m.id,
                                file.display()
                            )
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    let store_dir = loaded.config.store.state_dir().join(format!("matrix-{}", m.id));
                    let bridge = Arc::new(coi_bridge_matrix::bot::BotBridge::new(
                        (**m).clone(),
                        &loaded.config.account.address,
                        &loaded.config.account.display_name,
                        store_dir,
                        password,
                    ));
                    running.push(runner(id, "Matrix", bridge));
                    continue;
                }
                let path = base.join(&m.registration);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "bridge {:?}: registration {} cannot be read; run `coi-bridge generate-registration` and give it to \
                         the homeserver",
                        m.id,
                        path.display()
                    )
                })?;
                let reg = Registration::from_yaml(&text).map_err(|e| anyhow::anyhow!("bridge {:?}: {e}", m.id))?;
                let bridge = Arc::new(
                    MatrixBridge::new(
                        (**m).clone(),
                        reg.clone(),
                        &loaded.config.account.address,
                        &loaded.config.account.display_name,
                    )
                    .map_err(|e| anyhow::anyhow!("bridge {:?}: {e}", m.id))?,
                );
                let hub: Arc<dyn Hub> = core.hub.clone();
                let inbound = Arc::new(MatrixInbound::new(id.clone(), bridge.client().clone(), hub, m));
                let state = Arc::new(StoreState::new(core.store.clone(), &id));
                routes = routes.merge(appservice::router(Arc::new(Appservice::new(&reg.hs_token, state, inbound))));
                running.push(runner(id, "Matrix", bridge));
            }
            BridgeConfig::Telegram(t) => {
                let base = loaded.source.parent().unwrap_or(std::path::Path::new("."));
                let token = match &t.token_file {
                    Some(file) => {
                        let file = base.join(file);
                        std::fs::read_to_string(&file)
                            .with_context(|| {
                                format!(
                                    "bridge {:?}: token_file {} cannot be read; put the bot token from @BotFather there",
                                    t.id,
                                    file.display()
                                )
                            })?
                            .trim()
                            .to_owned()
                    }
                    None => std::env::var(TELEGRAM_TOKEN_ENV).map_err(|_| {
                        anyhow::anyhow!(
                            "bridge {:?}: no bot token; set token_file, or the environment variable {TELEGRAM_TOKEN_ENV}",
                            t.id
                        )
                    })?,
                };
                let id = BridgeId(t.id.clone());
                let bridge = Arc::new(
                    coi_bridge_telegram::bridge::TelegramBridge::new(
                        (**t).clone(),
                        &token,
                        &loaded.config.account.address,
                        &loaded.config.account.display_name,
                    )
                    .map_err(|e| anyhow::anyhow!("bridge {:?}: {e}", t.id))?,
                );
                running.push(runner(id, "Telegram", bridge));
            }
        }
    }
    // Bridges with people to speak for open a DM portal when a COI contact writes 1:1.
    let dm: Vec<String> = loaded
        .config
        .bridge
        .iter()
        .filter_map(|b| match b {
            BridgeConfig::Matrix(m) if !m.owner_list().is_empty() => Some(m.id.clone()),
            _ => None,
        })
        .collect();
    core.store.set_dm_bridges(dm);
    Ok(Bridges { running, routes })
}
