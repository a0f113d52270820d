//! The `[[bridge]] kind = "matrix"` section: strict, documented, owned by this crate.

use std::path::PathBuf;

use serde::Deserialize;

/// How the bridge talks to the homeserver.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Registered appservice: ghosts for every COI person (the main mode).
    #[default]
    Appservice,
    /// A plain account relaying with name prefixes, for homeservers without appservices.
    Bot,
}

/// One Matrix bridge instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The instance id; scopes every row this bridge owns. Not "smtp".
    pub id: String,
    /// The client-server API base, e.g. `https://matrix.example.org`.
    pub homeserver: String,
    /// The homeserver's name, the part after `:` in MXIDs.
    pub server_name: String,
    #[serde(default)]
    pub mode: Mode,
    /// The appservice registration file (`coi-bridge generate-registration` writes it).
    #[serde(default = "default_registration")]
    pub registration: PathBuf,
    /// Where the homeserver reaches the bridge's appservice endpoint; defaults to the
    /// `[http] listen` address.
    #[serde(default)]
    pub appservice_url: Option<String>,
    /// Who may command the bridge: MXIDs (`@alice:example.org`) or whole servers
    /// (`*:example.org`).
    #[serde(default)]
    pub admins: Vec<String>,
    /// The Matrix users this bridge speaks for (MXIDs): their read receipts become the
    /// bridge account's read receipts on COI. Defaults to the MXIDs among `admins`.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Ghost localparts start with this: `@coi_alice=example.org:server`.
    #[serde(default = "default_prefix")]
    pub ghost_prefix: String,
    /// The bot user's localpart. Defaults to the registration's `sender_localpart`. When
    /// several accounts' bridges share one registration, each needs its own bot: a
    /// localpart in the registration's user namespace (starting with the bot prefix
    /// `generate-registration` wrote, `coibot` by default, or with `ghost_prefix`).
    #[serde(default)]
    pub bot_localpart: Option<String>,
    /// Bot mode: the account's MXID (`@relay:example.org`).
    #[serde(default)]
    pub user: Option<String>,
    /// Bot mode: a file holding the account's password (used for the first login; the
    /// session is kept in the state directory after that).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Files larger than this (bytes) are not bridged; the sender is told.
    #[serde(default = "default_max_file")]
    pub max_file_bytes: u64,
}

fn default_registration() -> PathBuf {
    PathBuf::from("registration.yaml")
}
fn default_prefix() -> String {
    "coi_".into()
}
/// The bot localpart `generate-registration` writes when `bot_localpart` is not set.
pub const DEFAULT_BOT: &str = "coibot";
fn default_max_file() -> u64 {
    50 * 1024 * 1024
}

impl MatrixConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.homeserver.starts_with("https://") || self.homeserver.starts_with("http://")) {
            return Err(format!("bridge {:?}: homeserver {:?} is not an http(s) URL", self.id, self.homeserver));
        }
        if self.server_name.is_empty() || self.server_name.contains(['/', '@', ' ']) {
            return Err(format!("bridge {:?}: server_name {:?} is not a homeserver name", self.id, self.server_name));
        }
        for a in &self.admins {
            let ok = (a.starts_with('@') || a.starts_with("*:")) && a.contains(':');
            if !ok {
                return Err(format!(
                    "bridge {:?}: admins entry {a:?} is neither an MXID (@user:server) nor \"*:server\"",
                    self.id
                ));
            }
        }
        if self.mode == Mode::Bot {
            match &self.user {
                Some(u) if u.starts_with('@') && u.contains(':') => {}
                Some(u) => {
                    return Err(format!("bridge {:?}: user {u:?} is not an MXID (@user:server)", self.id));
                }
                None => return Err(format!("bridge {:?}: mode = \"bot\" needs user = \"@name:server\"", self.id)),
            }
            if self.password_file.is_none() {
                return Err(format!(
                    "bridge {:?}: mode = \"bot\" needs password_file, a file holding the account's password",
                    self.id
                ));
            }
        }
        if let Some(o) = self.owners.iter().find(|o| !(o.starts_with('@') && o.contains(':'))) {
            return Err(format!("bridge {:?}: owners entry {o:?} is not an MXID (@user:server)", self.id));
        }
        if let Some(bot) = &self.bot_localpart
            && (bot.is_empty()
                || !bot.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/".contains(&c)))
        {
            // No `=`: every ghost's localpart has one, so a bot is never a ghost.
            return Err(format!(
                "bridge {:?}: bot_localpart {bot:?} must be lower-case letters, digits, `.`, `_`, `-` or `/`",
                self.id
            ));
        }
        if self.ghost_prefix.is_empty()
            || !self.ghost_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "bridge {:?}: ghost_prefix {:?} must be lower-case letters, digits or _",
                self.id, self.ghost_prefix
            ));
        }
        Ok(())
    }

    /// The people this bridge speaks for: `owners`, else the MXIDs among `admins`.
    pub fn owner_list(&self) -> Vec<String> {
        if self.owners.is_empty() {
            return self.admins.iter().filter(|a| a.starts_with('@')).cloned().collect();
        }
        self.owners.clone()
    }

    /// Whether `mxid` is one of the people this bridge speaks for.
    pub fn is_owner(&self, mxid: &str) -> bool {
        if self.owners.is_empty() {
            return self.admins.iter().any(|a| a == mxid);
        }
        self.owners.iter().any(|o| o == mxid)
    }

    /// Whether `mxid` may command the bridge.
    pub fn is_admin(&self, mxid: &str) -> bool {
        let server = mxid.split_once(':').map(|(_, s)| s);
        self.admins.iter().any(|a| a == mxid || a.strip_prefix("*:").is_some_and(|s| Some(s) == server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(admins: &[&str]) -> MatrixConfig {
        MatrixConfig {
            id: "matrix".into(),
            homeserver: "https://matrix.example.org".into(),
            server_name: "example.org".into(),
            mode: Mode::Appservice,
            registration: default_registration(),
            appservice_url: None,
            admins: admins.iter().map(|s| s.to_string()).collect(),
            owners: Vec::new(),
            user: None,
            password_file: None,
            ghost_prefix: default_prefix(),
            bot_localpart: None,
            max_file_bytes: default_max_file(),
        }
    }

    #[test]
    fn admins_by_mxid_or_server() {
        let c = cfg(&["@alice:example.org", "*:trusted.org"]);
        assert!(c.is_admin("@alice:example.org"));
        assert!(c.is_admin("@bob:trusted.org"));
        assert!(!c.is_admin("@bob:example.org"));
        assert!(!c.is_admin("@mallory:trusted.org.evil"));
        assert!(c.validate().is_ok());
        assert!(cfg(&["alice"]).validate().unwrap_err().contains("admins"));
    }

    #[test]
    fn owners_default_to_the_admin_mxids() {
        let mut c = cfg(&["@alice:example.org", "*:trusted.org"]);
        assert!(c.is_owner("@alice:example.org"));
        assert!(!c.is_owner("@bob:trusted.org"), "a whole server is not an owner");
        c.owners = vec!["@carol:example.org".into()];
        assert!(c.is_owner("@carol:example.org") && !c.is_owner("@alice:example.org"));
        c.owners = vec!["carol".into()];
        assert!(c.validate().unwrap_err().contains("owners"));
    }

    #[test]
    fn a_bot_localpart_can_never_be_a_ghost() {
        let mut c = cfg(&[]);
        c.bot_localpart = Some("coibot_shop".into());
        assert!(c.validate().is_ok());
        c.bot_localpart = Some("coi_alice=example.org".into());
        assert!(c.validate().unwrap_err().contains("bot_localpart"));
        c.bot_localpart = Some("CoiBot".into());
        assert!(c.validate().unwrap_err().contains("bot_localpart"));
    }
}
