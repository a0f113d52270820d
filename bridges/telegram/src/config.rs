//! The `[[bridge]] kind = "telegram"` section: strict, documented, owned by this crate.

use std::path::PathBuf;

use serde::Deserialize;

/// One Telegram bridge instance (a bot).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The instance id; scopes every row this bridge owns. Not "smtp".
    pub id: String,
    /// The Bot API base URL; tests point it at the fake.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// A file holding the bot token from @BotFather (or env `COI_BRIDGE_TELEGRAM_TOKEN`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Telegram user ids who may command the bridge in any chat, besides each chat's own
    /// administrators.
    #[serde(default)]
    pub admins: Vec<i64>,
    /// The chats that may be bridged; in any other chat the bot says so and leaves.
    /// Empty: none.
    #[serde(default)]
    pub allowed_chats: Vec<i64>,
    /// The least time between two messages the bot sends into one chat, in
    /// milliseconds (Telegram allows about one a second per chat, 20 a minute per group).
    #[serde(default = "default_chat_interval")]
    pub chat_interval_ms: u64,
    /// The most messages the bot sends per second over all chats (Telegram: about 30).
    #[serde(default = "default_global_rate")]
    pub global_per_second: u32,
    /// Files larger than this (bytes) are not bridged; the sender is told.
    #[serde(default = "default_max_file")]
    pub max_file_bytes: u64,
    /// The COI addresses a private message to the bot reaches: each Telegram user's private
    /// chat becomes a COI group "Name (Telegram)" with these people, and their answers go
    /// back. Empty: the bot answers that it takes no private messages (besides `/start`,
    /// `/coi_invite` and `/coi_to @handle`, which writes to someone who moved to COI).
    #[serde(default)]
    pub owners: Vec<String>,
}

fn default_api_url() -> String {
    "https://api.telegram.org".into()
}
fn default_chat_interval() -> u64 {
    1000
}
fn default_global_rate() -> u32 {
    30
}
fn default_max_file() -> u64 {
    20 * 1024 * 1024
}

impl TelegramConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.global_per_second == 0 {
            return Err(format!("bridge {:?}: global_per_second must be at least 1 (default 30)", self.id));
        }
        if url::Url::parse(&self.api_url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
            return Err(format!("bridge {:?}: api_url {:?} is not an http(s) URL", self.id, self.api_url));
        }
        if let Some(o) = self.owners.iter().find(|o| !is_address(o)) {
            return Err(format!("bridge {:?}: owners entry {o:?} is not a mail address (name@domain)", self.id));
        }
        Ok(())
    }

    /// `owners`, lower-cased.
    pub fn owner_list(&self) -> Vec<String> {
        self.owners.iter().map(|o| o.trim().to_lowercase()).collect()
    }

    pub fn is_allowed(&self, chat: i64) -> bool {
        self.allowed_chats.contains(&chat)
    }
}

/// `name@domain`, one `@`, no spaces or angle brackets: what a COI address looks like.
fn is_address(s: &str) -> bool {
    let s = s.trim();
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c: TelegramConfig =
            serde_json::from_value(serde_json::json!({"id": "tg", "allowed_chats": [-100]})).expect("parses");
        assert_eq!(c.api_url, "https://api.telegram.org");
        assert!(c.validate().is_ok());
        assert!(c.is_allowed(-100) && !c.is_allowed(-200));
        let bad = TelegramConfig { api_url: "ftp://x".into(), ..c };
        assert!(bad.validate().unwrap_err().contains("api_url"));
        let unknown = serde_json::from_value::<TelegramConfig>(serde_json::json!({"id": "tg", "tokn_file": "x"}));
        assert!(unknown.is_err());
    }

    #[test]
    fn owners_are_addresses() {
        let with = |owners: serde_json::Value| {
            serde_json::from_value::<TelegramConfig>(serde_json::json!({"id": "tg", "owners": owners})).expect("parses")
        };
        let ok = with(serde_json::json!(["Alice@Example.org", "bob@x.example.org"]));
        assert!(ok.validate().is_ok());
        assert_eq!(ok.owner_list(), ["alice@example.org", "bob@x.example.org"]);
        for bad in ["alice", "@example.org", "alice@", "alice@localhost", "a@b@c.org", "a b@c.org", "<a@b.org>"] {
            let e = with(serde_json::json!([bad])).validate().unwrap_err();
            assert!(e.contains("owners"), "{bad}: {e}");
        }
    }
}
