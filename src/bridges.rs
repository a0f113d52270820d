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

/// The appservice registration a Matrix bridge names (relative to the config file).
fn registration(loaded: &Loaded, m: &coi_bridge_matrix::config::MatrixConfig) -> anyhow::Result<Registration> {
    let base = loaded.source.parent().unwrap_or(std::path::Path::new("."));
    let path = base.join(&m.registration);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "bridge {:?}: registration {} cannot be read; run `coi-bridge generate-registration` and give it to \
             the homeserver",
            m.id,
            path.display()
        )
    })?;
    Registration::from_yaml(&text).map_err(|e| anyhow::anyhow!("bridge {:?}: {e}", m.id))
}

/// A Telegram bridge's bot token, from `token_file` or the environment.
fn telegram_token(loaded: &Loaded, t: &coi_bridge_telegram::config::TelegramConfig) -> anyhow::Result<String> {
    let base = loaded.source.parent().unwrap_or(std::path::Path::new("."));
    match &t.token_file {
        Some(file) => {
            let file = base.join(file);
            Ok(std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "bridge {:?}: token_file {} cannot be read; put the bot token from @BotFather there",
                        t.id,
                        file.display()
                    )
                })?
                .trim()
                .to_owned())
        }
        None => std::env::var(TELEGRAM_TOKEN_ENV).map_err(|_| {
            anyhow::anyhow!(
                "bridge {:?}: no bot token; set token_file, or the environment variable {TELEGRAM_TOKEN_ENV}",
                t.id
            )
        }),
    }
}

/// `check`'s row for one bridge: its name, then what answered or why not and the fix.
pub async fn check(loaded: &Loaded, b: &BridgeConfig) -> (String, Result<String, (String, String)>) {
    match b {
        BridgeConfig::Matrix(m) => {
            let item = format!("matrix {}", m.id);
            if m.mode == Mode::Bot {
                let client = match coi_bridge_matrix::client::AsClient::new(&m.homeserver, "", "") {
                    Ok(c) => c,
                    Err(e) => return (item, Err((e, "check the bridge's homeserver URL".into()))),
                };
                return (
                    item,
                    client
                        .versions()
                        .await
                        .map(|v| format!("{} answers (Matrix {v}); bot mode", m.homeserver))
                        .map_err(|e| {
                            (
                                format!("{}: {e}", m.homeserver),
                                format!(
                                    "is the homeserver running, and is [[bridge]] id = {:?} homeserver right?",
                                    m.id
                                ),
                            )
                        }),
                );
            }
            let reg = match registration(loaded, m) {
                Ok(r) => r,
                Err(e) => return (item, Err((format!("{e:#}"), "run `coi-bridge generate-registration`".into()))),
            };
            let bridge = match MatrixBridge::new((**m).clone(), reg, &loaded.config.account.address, "") {
                Ok(b) => b,
                Err(e) => return (item, Err((e, format!("check [[bridge]] id = {:?}", m.id)))),
            };
            (item, bridge.check().await)
        }
        BridgeConfig::Telegram(t) => {
            let item = format!("telegram {}", t.id);
            let token = match telegram_token(loaded, t) {
                Ok(t) => t,
                Err(e) => return (item, Err((format!("{e:#}"), "give the bot token from @BotFather".into()))),
            };
            match coi_bridge_telegram::bridge::TelegramBridge::new((**t).clone(), &token, "", "") {
                Ok(b) => (item, b.check().await),
                Err(e) => (item, Err((e, format!("check [[bridge]] id = {:?} api_url", t.id)))),
            }
        }
    }
}

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
                let reg = registration(loaded, m)?;
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
                let app = Appservice::new(&reg.hs_token, state, inbound).with_refusals(bridge.refusals());
                routes = routes.merge(appservice::router(Arc::new(app)));
                running.push(runner(id, "Matrix", bridge));
            }
            BridgeConfig::Telegram(t) => {
                let token = telegram_token(loaded, t)?;
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
