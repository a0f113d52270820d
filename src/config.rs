//! The daemon's configuration: a strict TOML file, `COI_BRIDGE__SECTION__KEY` env overrides, and secrets from `*_file` or env.
//!
//! Every error names the key, the file or the env variable, and says how to fix it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use serde::Deserialize;

/// The env prefix; `__` separates levels: `COI_BRIDGE__IMAP__PORT=1143`.
pub const ENV_PREFIX: &str = "COI_BRIDGE__";

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is handed to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

mod accounts;
mod push;
pub use accounts::{AccountsConfig, ClusterConfig, Daemon, StoreNamespace, load_daemon};

/// One account's configuration: the main file's `[account]`, `[imap]`, `[smtp]` and
/// `[[bridge]]`, or an account file's (`[accounts] dir`), with the daemon-wide sections
/// (`[store]`, `[http]`, `[retention]`, `[accounts]`, `[cluster]`) of the main file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The bridge identity: the mail account the daemon logs into.
    pub account: AccountConfig,
    /// The IMAP server of the account.
    pub imap: ImapConfig,
    /// The SMTP server of the account.
    pub smtp: SmtpConfig,
    /// Where the mapping store lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// The HTTP listener for /metrics and /health.
    #[serde(default)]
    pub http: HttpConfig,
    /// Bridge instances (`[[bridge]]`), checked against the kinds this build has.
    #[serde(default)]
    pub bridge: Vec<BridgeConfig>,
    /// How long what is set apart (rejected mail, unverified chats, dead letters) is kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// More accounts, one file each.
    #[serde(default)]
    pub accounts: AccountsConfig,
    /// Several daemons on one PostgreSQL store.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[retention]`: the caps on what is set apart. Anyone can write to the bridge's address,
/// so rejected mail, the 1:1 chats of mail not signed by its sender's key, and bridge
/// events set aside as dead letters are pruned: first by age, then the oldest until the
/// rest fits the size cap. Pruning runs within 10 s of the start (at a random moment, so
/// many accounts do not prune at once) and every `prune_interval_secs`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Items older than this many days are pruned (1 to 3650).
    #[serde(default = "default_quarantine_days")]
    pub quarantine_max_age_days: u32,
    /// All of them together are kept under this many bytes, the newest first (at least 1 MiB).
    #[serde(default = "default_quarantine_bytes")]
    pub quarantine_max_bytes: u64,
    /// Seconds between two pruning passes (60 to 86400).
    #[serde(default = "default_prune_interval")]
    pub prune_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            quarantine_max_age_days: default_quarantine_days(),
            quarantine_max_bytes: default_quarantine_bytes(),
            prune_interval_secs: default_prune_interval(),
        }
    }
}

fn default_quarantine_days() -> u32 {
    30
}
fn default_quarantine_bytes() -> u64 {
    50 * 1024 * 1024
}
fn default_prune_interval() -> u64 {
    3600
}

/// `[account]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The bridge's mail address, e.g. `bridge@example.org`.
    pub address: String,
    /// The name COI users see for the bridge itself.
    #[serde(default = "default_display_name")]
    pub display_name: String,
    /// The login name for IMAP and SMTP; defaults to `address`.
    #[serde(default)]
    pub login: Option<String>,
    /// A file holding the mail password (systemd credentials, Docker secrets).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password itself; only from env `COI_BRIDGE__ACCOUNT__PASSWORD`, never the file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `required` (default): every chat message is signed and encrypted; contacts without
    /// a key cannot be written to. `opportunistic`: plaintext to addresses without a key.
    #[serde(default)]
    pub encryption: EncryptionPolicy,
    /// A file holding the passphrase that protects the bridge's secret key in the store.
    #[serde(default)]
    pub key_passphrase_file: Option<PathBuf>,
    /// The passphrase itself; only from env `COI_BRIDGE__ACCOUNT__KEY_PASSPHRASE`.
    #[serde(default)]
    pub key_passphrase: Option<Secret>,
    /// Invite links (`!coi bridge`, `/coi_bridge`, `coi-bridge invite`) older than this many
    /// days stop working: their secrets are no longer tried on incoming mail. Make a new
    /// link with the same command.
    #[serde(default = "default_invite_max_age_days")]
    pub invite_max_age_days: u32,
}

fn default_invite_max_age_days() -> u32 {
    365
}

/// `[account] encryption`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionPolicy {
    #[default]
    Required,
    Opportunistic,
}

impl AccountConfig {
    pub fn login(&self) -> &str {
        self.login.as_deref().unwrap_or(&self.address)
    }
}

fn default_display_name() -> String {
    "COI Bridge".into()
}

/// How a mail connection is secured.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Tls,
    /// Plain connect, then STARTTLS before login; refused if the server does not offer it.
    Starttls,
    /// No encryption at all. Only for loopback test servers; must be chosen explicitly.
    Plain,
}

/// `[imap]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub host: String,
    /// Defaults to 993 for `tls`, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    /// An extra CA certificate (PEM) to trust, for self-signed servers.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The folder to watch.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// IDLE is refreshed after at most this many seconds (RFC 2177 asks for under 29
    /// minutes); each time after a random half to all of it, so accounts spread out.
    #[serde(default = "default_idle_secs")]
    pub idle_timeout_secs: u64,
    /// Mails fetched and recorded per transaction.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Mails larger than this (bytes) are kept aside unparsed.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u64,
    /// Take the mail server's push events (Dovecot's push_notification plugin, OX driver):
    /// `PUT /push/dovecot` on `[http] listen` fetches new mail at once; IDLE stays on.
    #[serde(default)]
    pub push: bool,
    /// A file (mode 0600) holding the shared secret Dovecot sends as the password of its
    /// push URL (`http://coi:SECRET@127.0.0.1:9187/push/dovecot`); needed with `push = true`.
    #[serde(default)]
    pub push_secret_file: Option<PathBuf>,
    /// The secret itself; only from env `COI_BRIDGE__IMAP__PUSH_SECRET`, never the file.
    #[serde(default)]
    pub push_secret: Option<Secret>,
}

impl ImapConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.security == Security::Tls { 993 } else { 143 })
    }
}

/// `[smtp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to 465 for `tls`, 587 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    /// An extra CA certificate (PEM) to trust, for self-signed servers.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Log in with the account's credentials (turn off only for an open loopback relay).
    #[serde(default = "yes")]
    pub auth: bool,
    /// Attempts before a message counts as failed and its origin is told.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The longest wait between two attempts, in seconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_delay_secs: u64,
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.security == Security::Tls { 465 } else { 587 })
    }
}

fn default_security() -> Security {
    Security::Tls
}
fn default_folder() -> String {
    "INBOX".into()
}
fn default_idle_secs() -> u64 {
    300
}
fn default_batch() -> u32 {
    50
}
fn default_max_message() -> u64 {
    64 * 1024 * 1024
}
fn yes() -> bool {
    true
}
fn default_attempts() -> u32 {
    30
}
fn default_retry_max() -> u64 {
    300
}

/// `[store]`. `Debug` shows the URL without its password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative to the state dir) or `postgres://USER@HOST:PORT/DATABASE`.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// The state dir; defaults to `$STATE_DIRECTORY` (systemd) or the working directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::store::redact_url(&self.url))
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: default_store_url(), state_dir: None }
    }
}

impl StoreConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

fn default_store_url() -> String {
    "sqlite://coi-bridge.db".into()
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where /metrics, /health and /ready are served; keep it on loopback or behind a proxy.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A client must send a request's whole head (request line and headers) within this
    /// many seconds, or the connection is closed (slowloris).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_secs: u64,
    /// A request body that sends nothing for this many seconds is cut off.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            header_read_timeout_secs: default_header_timeout(),
            body_read_timeout_secs: default_body_timeout(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    30
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

/// One `[[bridge]]` entry: `kind` picks a bridge crate's factory in the registry
/// ([`crate::bridges::REGISTRY`]), whose own config type reads and checks the other keys.
pub use crate::bridges::BridgeConfig;

/// The loaded configuration with its secrets resolved.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The mail password, or why there is none: only commands that log in to the mail
    /// server need it ([`Loaded::password`]); `backup`, `portals` and the like do not.
    password: Result<Secret, String>,
    /// Unlocks the bridge's secret key, if it is protected.
    pub key_passphrase: Option<Secret>,
    /// What Dovecot's push events must carry (`[imap] push = true` only).
    pub push_secret: Option<Secret>,
    /// The file the account was read from (the main file, or its account file).
    pub source: PathBuf,
    /// Where the account's rows live in the store.
    pub namespace: StoreNamespace,
}

/// Reads, merges and validates the configuration, for the main file's `[account]`.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    load_for(path, None)
}

/// The configuration of one account: `address` names an account of the main file or of
/// its `[accounts] dir`; `None` is the main file's `[account]`.
pub fn load_for(path: &Path, address: Option<&str>) -> anyhow::Result<Loaded> {
    let daemon = load_daemon(path)?;
    daemon.account(address)
}

/// Reads one TOML file as `T` (the main file with env overrides, an account file
/// without): secrets written in the file itself are refused, naming the key to use.
fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path, with_env: bool) -> anyhow::Result<T> {
    read_toml_env(path, with_env, true)
}

/// [`read_toml`]; `account_env = false` leaves out the `COI_BRIDGE__ACCOUNT__*` variables
/// (a main file without `[account]`: a password for a unit's old single account must not
/// make up half an account).
fn read_toml_env<T: for<'de> Deserialize<'de>>(path: &Path, with_env: bool, account_env: bool) -> anyhow::Result<T> {
    if !path.is_file() {
        bail!(
            "config file {} does not exist or is not a file; pass --config with the path of your coi-bridge.toml \
             (config/coi-bridge.example.toml documents every option)",
            path.display()
        );
    }
    let mut figment = Figment::new().merge(Toml::file_exact(path));
    if with_env {
        let env = Env::prefixed(ENV_PREFIX);
        let env = if account_env { env } else { env.filter(|k| !k.as_str().to_lowercase().starts_with("account__")) };
        figment = figment.merge(env.split("__"));
    }
    for (key, file_key, env) in [
        ("account.password", "account.password_file", "ACCOUNT__PASSWORD"),
        ("account.key_passphrase", "account.key_passphrase_file", "ACCOUNT__KEY_PASSPHRASE"),
        ("imap.push_secret", "imap.push_secret_file", "IMAP__PUSH_SECRET"),
    ] {
        if let Some(meta) = figment.find_metadata(key)
            && !meta.name.to_lowercase().contains("env")
        {
            let or_env = if with_env { format!(", or in env {ENV_PREFIX}{env}") } else { String::new() };
            bail!(
                "{}: {key} must not be written in the config file; put it in a file named by {file_key}{or_env}",
                path.display()
            );
        }
    }
    figment.extract().map_err(|e| {
        let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        let env = if with_env { format!(" (env {ENV_PREFIX}* overrides included)") } else { String::new() };
        anyhow::anyhow!("invalid config {}{env}: {}", path.display(), all.join("; "))
    })
}

impl Loaded {
    /// Checks one account's configuration and reads its secrets.
    fn new(config: Config, source: &Path, namespace: StoreNamespace) -> anyhow::Result<Self> {
        validate(&config).with_context(|| format!("invalid config {}", source.display()))?;
        let password = resolve_password(&config.account).map_err(|e| format!("{e:#}"));
        let key_passphrase = match (&config.account.key_passphrase, &config.account.key_passphrase_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(file)) => Some(read_secret_file("account.key_passphrase_file", file)?),
            (None, None) => None,
        };
        let push_secret = if config.imap.push { Some(push::resolve_secret(&config.imap)?) } else { None };
        Ok(Loaded { config, password, key_passphrase, push_secret, source: source.to_path_buf(), namespace })
    }

    /// Where this account's rows are, besides `store.url`: a directory account's own schema
    /// on PostgreSQL (its SQLite file is already its `store.url`). Unfenced: the daemon adds
    /// its lease's fence.
    pub fn store_options(&self) -> crate::store::OpenOptions {
        let postgres = crate::store::sqlite_path(&self.config.store.url, &self.config.store.state_dir()).is_none();
        let schema = match (&self.namespace, postgres) {
            (StoreNamespace::Account(key), true) => Some(crate::store::account_schema(key)),
            _ => None,
        };
        crate::store::OpenOptions { schema, ..Default::default() }
    }

    /// The account's key: its address, lower-cased (leases, store namespaces, `/ready`).
    pub fn key(&self) -> String {
        self.config.account.address.to_lowercase()
    }
}

impl Loaded {
    /// The mail password; the error names the config keys and env variable to set.
    pub fn password(&self) -> anyhow::Result<&Secret> {
        self.password.as_ref().map_err(|e| anyhow::anyhow!("invalid config {}: {e}", self.source.display()))
    }
}

fn resolve_password(account: &AccountConfig) -> anyhow::Result<Secret> {
    match (&account.password, &account.password_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(file)) => read_secret_file("account.password_file", file),
        (None, None) => bail!("account: no password; set account.password_file, or env {ENV_PREFIX}ACCOUNT__PASSWORD"),
    }
}

/// A secret from a file: one line, trailing newline dropped, never empty.
fn read_secret_file(key: &str, file: &Path) -> anyhow::Result<Secret> {
    let raw = std::fs::read_to_string(file).with_context(|| {
        format!("{key}: cannot read {}; make it a readable file holding the secret", file.display())
    })?;
    let secret = raw.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!("{key}: {} is empty; write the secret into it", file.display());
    }
    Ok(Secret::new(secret))
}

fn validate(c: &Config) -> anyhow::Result<()> {
    let addr = &c.account.address;
    let ok_addr = addr.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') || d == "localhost");
    if !ok_addr || addr.chars().any(char::is_whitespace) {
        bail!("account.address: {addr:?} is not a mail address like bridge@example.org");
    }
    for (key, host, port) in [("imap", &c.imap.host, c.imap.port), ("smtp", &c.smtp.host, c.smtp.port)] {
        if host.trim().is_empty() {
            bail!("{key}.host: empty; set the {key} server's host name");
        }
        if port == Some(0) {
            bail!("{key}.port: 0 is not a port; use 1 to 65535 or leave it out for the default");
        }
    }
    if c.imap.idle_timeout_secs < 10 || c.imap.idle_timeout_secs > 29 * 60 {
        bail!("imap.idle_timeout_secs: {} is out of range; use 10 to 1740 (default 300)", c.imap.idle_timeout_secs);
    }
    if c.imap.batch_size == 0 || c.imap.batch_size > 1000 {
        bail!("imap.batch_size: {} is out of range; use 1 to 1000 (default 50)", c.imap.batch_size);
    }
    for (key, secs, default) in [
        ("http.header_read_timeout_secs", c.http.header_read_timeout_secs, default_header_timeout()),
        ("http.body_read_timeout_secs", c.http.body_read_timeout_secs, default_body_timeout()),
    ] {
        if !(1..=600).contains(&secs) {
            bail!("{key}: {secs} is out of range; use 1 to 600 seconds (default {default})");
        }
    }
    let r = &c.retention;
    if !(1..=3650).contains(&r.quarantine_max_age_days) {
        bail!(
            "retention.quarantine_max_age_days: {} is out of range; use 1 to 3650 (default 30)",
            r.quarantine_max_age_days
        );
    }
    if r.quarantine_max_bytes < 1024 * 1024 {
        bail!(
            "retention.quarantine_max_bytes: {} is below 1 MiB; use at least 1048576 (default 52428800, 50 MiB)",
            r.quarantine_max_bytes
        );
    }
    if !(60..=86_400).contains(&r.prune_interval_secs) {
        bail!(
            "retention.prune_interval_secs: {} is out of range; use 60 to 86400 (default 3600)",
            r.prune_interval_secs
        );
    }
    if c.smtp.max_attempts == 0 {
        bail!("smtp.max_attempts: must be at least 1 (default 30)");
    }
    for (key, file) in [("imap.ca_file", &c.imap.ca_file), ("smtp.ca_file", &c.smtp.ca_file)] {
        if let Some(f) = file
            && !f.is_file()
        {
            bail!("{key}: {} is not a readable file; point it at a PEM CA certificate or remove the key", f.display());
        }
    }
    let mut ids = std::collections::HashSet::new();
    for b in &c.bridge {
        let id = b.id();
        if id.is_empty() || id == crate::store::SMTP_TARGET {
            bail!("bridge: the id {id:?} is reserved or empty; give the [[bridge]] another id");
        }
        if !ids.insert(id) {
            bail!("bridge: the id {id:?} is used twice; give every [[bridge]] its own id");
        }
        b.section().validate().map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_config_dir_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("config/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let figment = Figment::new().merge(Toml::file_exact(&path));
                let config: Config = figment.extract().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                validate(&config).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the example and the minimal config, found {n}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let a = AccountConfig {
            address: "a@b.c".into(),
            display_name: "x".into(),
            login: None,
            password_file: None,
            password: Some(s),
            encryption: EncryptionPolicy::Required,
            key_passphrase_file: None,
            key_passphrase: None,
            invite_max_age_days: 365,
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        // A PostgreSQL URL may carry the password, in the user part or as a parameter.
        for url in ["postgres://coi:hunter2@db:5432/coi", "postgres://coi@db/coi?sslmode=require&password=hunter2"] {
            let store = StoreConfig { url: url.into(), state_dir: None };
            let shown = format!("{store:?}");
            assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        }
        assert_eq!(crate::store::redact_url("postgres://coi:p%40ss@db/coi"), "postgres://coi:***@db/coi");
        assert_eq!(crate::store::redact_url("postgres://coi@db/coi"), "postgres://coi@db/coi");
        assert_eq!(crate::store::redact_url("sqlite://coi-bridge.db"), "sqlite://coi-bridge.db");
    }

    #[test]
    fn default_ports_follow_security() {
        let imap: ImapConfig = toml_like(
            r#"host = "h"
security = "starttls""#,
        );
        assert_eq!(imap.port(), 143);
        let imap: ImapConfig = toml_like(r#"host = "h""#);
        assert_eq!(imap.port(), 993);
    }

    fn toml_like<T: for<'de> Deserialize<'de>>(s: &str) -> T {
        Figment::new().merge(Toml::string(s)).extract().expect("parses")
    }
}
