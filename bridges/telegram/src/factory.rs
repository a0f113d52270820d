//! This crate's [`FACTORY`]: reads a `[[bridge]] kind = "telegram"` section, finds the bot token (`token_file` or env), asks the Bot API for `coi-bridge check`, and builds the bridge.

use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::factory::read_file;
use coi_bridge_api::{BridgeFactory, BridgeSection, Built, CoreHandles, Environment};

use crate::bridge::TelegramBridge;
use crate::config::TelegramConfig;

/// The Telegram bridge kind, for the core's registry.
pub static FACTORY: BridgeFactory = BridgeFactory { kind: "telegram", label: "Telegram", parse };

/// Where a bot token comes from when `token_file` is not set.
pub const TOKEN_ENV: &str = "COI_BRIDGE_TELEGRAM_TOKEN";

fn parse(section: serde_json::Value) -> Result<Box<dyn BridgeSection>, String> {
    let cfg: TelegramConfig = serde_json::from_value(section).map_err(|e| e.to_string())?;
    Ok(Box::new(cfg))
}

/// The bot token, from `token_file` (relative to the config file) or [`TOKEN_ENV`].
fn token(cfg: &TelegramConfig, env: &Environment<'_>) -> Result<String, String> {
    match &cfg.token_file {
        Some(file) => {
            let what = "put the bot token from @BotFather there";
            Ok(read_file(env, &cfg.id, "token_file", file, what)?.trim().to_owned())
        }
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            format!("bridge {:?}: no bot token; set token_file, or the environment variable {TOKEN_ENV}", cfg.id)
        }),
    }
}

#[async_trait]
impl BridgeSection for TelegramConfig {
    fn id(&self) -> &str {
        &self.id
    }

    fn validate(&self) -> Result<(), String> {
        TelegramConfig::validate(self)
    }

    async fn check(&self, env: &Environment<'_>) -> Result<String, (String, String)> {
        let token = token(self, env).map_err(|e| (e, "give the bot token from @BotFather".into()))?;
        let bridge = TelegramBridge::new(self.clone(), &token, "", "")
            .map_err(|e| (e, format!("check [[bridge]] id = {:?} api_url", self.id)))?;
        bridge.check().await
    }

    fn build(&self, env: &Environment<'_>, _core: CoreHandles) -> Result<Built, String> {
        let token = token(self, env)?;
        let bridge = TelegramBridge::new(self.clone(), &token, env.address, env.display_name)
            .map_err(|e| format!("bridge {:?}: {e}", self.id))?;
        Ok(Built { bridge: Arc::new(bridge), routes: None })
    }
}
