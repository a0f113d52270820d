//! Many accounts: the main file's daemon-wide sections, its optional `[account]`, and one account file per `*.toml` in `[accounts] dir`.
//!
//! An account file holds `[account]`, `[imap]`, `[smtp]` and `[[bridge]]` with the same
//! keys as the main file; `[store]`, `[http]`, `[retention]`, `[accounts]` and `[cluster]`
//! are the main file's, for every account. Each account keeps its rows apart
//! ([`StoreNamespace`]): the main file's account in the store as configured (today's
//! stores keep working), a directory account in a SQLite file of its own under the state
//! dir, or in a PostgreSQL schema of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{
    AccountConfig, BridgeConfig, Config, HttpConfig, ImapConfig, Loaded, RetentionConfig, SmtpConfig, StoreConfig,
    read_toml, read_toml_env,
};
use figment::Figment;
use figment::providers::{Format as _, Toml};

/// `[accounts]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// A directory (relative to the main file) whose every `*.toml` is one more account.
    /// Read at start and again on SIGHUP: a new file starts its account, a removed one
    /// stops it, a changed one restarts it.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// `[cluster]`: several daemons on one PostgreSQL store. Each account is run by one daemon
/// at a time, under a lease in the database; the others take over an account whose
/// daemon stopped renewing. Ignored on SQLite (one daemon owns its files).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This daemon's name in the leases (`/ready`, logs); defaults to host name, PID and a
    /// random part (new at every start).
    /// Give every daemon its own.
    #[serde(default)]
    pub node: Option<String>,
    /// A lease lasts this many seconds and is renewed every third of it (5 to 120; default
    /// 15). Another daemon takes an account over at most this long after its holder died.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { node: None, lease_secs: default_lease_secs() }
    }
}

fn default_lease_secs() -> u64 {
    15
}

impl ClusterConfig {
    /// This daemon's holder name: `node`, or host name, PID and a random part. Call it once.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            // A random part too: a restarted container is often PID 1 again, and a holder
            // name that comes back would keep its old lease's epoch.
            format!("{host}:{}:{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
        })
    }
}

/// Where an account's rows live in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreNamespace {
    /// The main file's account: the store exactly as `store.url` names it.
    Main,
    /// A directory account, by its key (the lower-cased address): its own SQLite file
    /// (`<state_dir>/accounts/<key>/store.sqlite`) or PostgreSQL schema.
    Account(String),
}

/// The main file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MainFile {
    #[serde(default)]
    account: Option<AccountConfig>,
    #[serde(default)]
    imap: Option<ImapConfig>,
    #[serde(default)]
    smtp: Option<SmtpConfig>,
    #[serde(default)]
    store: StoreConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    bridge: Vec<BridgeConfig>,
    #[serde(default)]
    retention: RetentionConfig,
    #[serde(default)]
    accounts: AccountsConfig,
    #[serde(default)]
    cluster: ClusterConfig,
}

/// One file of `[accounts] dir`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountFile {
    account: AccountConfig,
    imap: ImapConfig,
    smtp: SmtpConfig,
    #[serde(default)]
    bridge: Vec<BridgeConfig>,
}

/// The daemon's configuration: the daemon-wide sections and where its accounts are.
#[derive(Debug)]
pub struct Daemon {
    /// The main file.
    pub source: PathBuf,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub retention: RetentionConfig,
    pub accounts: AccountsConfig,
    pub cluster: ClusterConfig,
    /// The main file's `[account]`, checked.
    pub main: Option<Loaded>,
}

/// Reads the main file; its `[account]` (if any) is checked at once, the directory's
/// accounts by [`Daemon::read_dir`].
pub fn load_daemon(path: &Path) -> anyhow::Result<Daemon> {
    // Without [account] in the file, the env's account variables have nothing to override.
    let has_account = Figment::from(Toml::file_exact(path)).find_value("account").is_ok();
    let f: MainFile = read_toml_env(path, true, has_account)?;
    if !(5..=120).contains(&f.cluster.lease_secs) {
        bail!(
            "invalid config {}: cluster.lease_secs: {} is out of range; use 5 to 120 seconds (default 15)",
            path.display(),
            f.cluster.lease_secs
        );
    }
    if let Some(node) = &f.cluster.node
        && (node.is_empty() || node.len() > 200 || node.chars().any(char::is_control))
    {
        bail!("invalid config {}: cluster.node: {node:?} must be 1 to 200 printable characters", path.display());
    }
    let main = match (f.account, f.imap, f.smtp) {
        (Some(account), Some(imap), Some(smtp)) => {
            let config = Config {
                account,
                imap,
                smtp,
                store: f.store.clone(),
                http: f.http.clone(),
                bridge: f.bridge,
                retention: f.retention,
                accounts: f.accounts.clone(),
                cluster: f.cluster.clone(),
            };
            Some(Loaded::new(config, path, StoreNamespace::Main)?)
        }
        (None, None, None) if f.bridge.is_empty() && f.accounts.dir.is_some() => None,
        (account, imap, smtp) => {
            let missing: Vec<&str> =
                [("[account]", account.is_none()), ("[imap]", imap.is_none()), ("[smtp]", smtp.is_none())]
                    .into_iter()
                    .filter_map(|(k, m)| m.then_some(k))
                    .collect();
            if f.accounts.dir.is_some() {
                bail!(
                    "invalid config {}: {} missing; the main file has either a whole account ([account], [imap], \
                     [smtp], [[bridge]]) or none (every account in [accounts] dir)",
                    path.display(),
                    missing.join(", ")
                );
            }
            bail!(
                "invalid config {}: {} missing; add the account's sections (config/coi-bridge.example.toml), \
                 or set [accounts] dir to a directory of account files",
                path.display(),
                missing.join(", ")
            );
        }
    };
    Ok(Daemon {
        source: path.to_path_buf(),
        store: f.store,
        http: f.http,
        retention: f.retention,
        accounts: f.accounts,
        cluster: f.cluster,
        main,
    })
}

/// One file of the accounts dir as read: its account, or why it cannot run.
pub struct AccountFileRead {
    pub path: PathBuf,
    /// A digest of the file's bytes: a changed file restarts its account on SIGHUP.
    pub digest: [u8; 32],
    pub loaded: anyhow::Result<Loaded>,
}

impl Daemon {
    /// The accounts dir, resolved against the main file's directory.
    pub fn accounts_dir(&self) -> Option<PathBuf> {
        let dir = self.accounts.dir.as_ref()?;
        Some(if dir.is_absolute() {
            dir.clone()
        } else {
            self.source.parent().unwrap_or_else(|| Path::new(".")).join(dir)
        })
    }

    /// Reads every `*.toml` of the accounts dir, in name order. A file that does not
    /// parse, or repeats another account's address, is returned with its error (the
    /// daemon runs the others and says why this one does not run).
    pub fn read_dir(&self) -> anyhow::Result<Vec<AccountFileRead>> {
        let Some(dir) = self.accounts_dir() else { return Ok(Vec::new()) };
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!("accounts.dir: cannot read {}; create the directory or fix the path", dir.display())
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        paths.sort();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        if let Some(main) = &self.main {
            seen.insert(main.key(), self.source.clone());
        }
        let mut out = Vec::new();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
            let loaded = self.read_account(&path).and_then(|l| match seen.get(&l.key()) {
                Some(other) => bail!(
                    "invalid config {}: account.address {:?} is already the account of {}; one file per account",
                    path.display(),
                    l.config.account.address,
                    other.display()
                ),
                None => {
                    seen.insert(l.key(), path.clone());
                    Ok(l)
                }
            });
            out.push(AccountFileRead { path, digest, loaded });
        }
        Ok(out)
    }

    /// One account file, with the main file's daemon-wide sections.
    pub fn read_account(&self, path: &Path) -> anyhow::Result<Loaded> {
        let f: AccountFile = read_toml(path, false)?;
        let key = f.account.address.to_lowercase();
        let mut store = self.store.clone();
        if crate::store::sqlite_path(&store.url, &store.state_dir()).is_some() {
            // Its own SQLite file, so an account's rows never meet another's.
            let file = store.state_dir().join("accounts").join(&key).join("store.sqlite");
            store.url = format!("sqlite://{}", file.display());
        }
        let config = Config {
            account: f.account,
            imap: f.imap,
            smtp: f.smtp,
            store,
            http: self.http.clone(),
            bridge: f.bridge,
            retention: self.retention,
            accounts: self.accounts.clone(),
            cluster: self.cluster.clone(),
        };
        Loaded::new(config, path, StoreNamespace::Account(key))
    }

    /// Every account of the daemon for a command that looks across them: the main
    /// file's `[account]` (if any), then the accounts dir's in name order. A file that
    /// does not parse is an error naming it.
    pub fn all_accounts(mut self) -> anyhow::Result<Vec<Loaded>> {
        let mut out: Vec<Loaded> = self.main.take().into_iter().collect();
        for f in self.read_dir()? {
            out.push(f.loaded?);
        }
        if out.is_empty() {
            bail!(
                "{}: no [account] in the main file and no account file in [accounts] dir; add one of them",
                self.source.display()
            );
        }
        Ok(out)
    }

    /// One account for a command: `address` names the main account or a directory
    /// account; `None` is the main file's `[account]`.
    pub fn account(mut self, address: Option<&str>) -> anyhow::Result<Loaded> {
        let Some(address) = address else {
            return self.main.take().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no [account] in the main file; name one of the accounts in [accounts] dir with --account ADDRESS",
                    self.source.display()
                )
            });
        };
        let want = address.to_lowercase();
        if let Some(main) = self.main.take_if(|m| m.key() == want) {
            return Ok(main);
        }
        for f in self.read_dir()? {
            if let Ok(l) = &f.loaded
                && l.key() == want
            {
                return f.loaded;
            }
        }
        bail!(
            "--account {address:?}: no such account in {} or its [accounts] dir; use the address of an [account] section",
            self.source.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVERS: &str =
        "[imap]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\n\n[smtp]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\n";

    fn account(dir: &Path, name: &str, address: &str) -> PathBuf {
        let pw = dir.join(format!("{name}.password"));
        std::fs::write(&pw, "secret").expect("password");
        let text = format!("[account]\naddress = \"{address}\"\npassword_file = \"{}\"\n\n{SERVERS}", pw.display());
        let path = dir.join("accounts.d").join(format!("{name}.toml"));
        std::fs::create_dir_all(path.parent().expect("dir")).expect("accounts.d");
        std::fs::write(&path, text).expect("account file");
        path
    }

    fn main_file(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("coi-bridge.toml");
        let text = format!("[store]\nstate_dir = \"{}\"\n\n{body}", dir.display());
        std::fs::write(&path, text).expect("main file");
        path
    }

    /// A main file without an account runs the directory's; each directory account has a
    /// SQLite file of its own, and commands pick one with --account.
    #[test]
    fn a_directory_of_accounts_without_a_main_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = main_file(dir.path(), "[accounts]\ndir = \"accounts.d\"\n");
        account(dir.path(), "a", "A@example.org");
        account(dir.path(), "b", "b@example.org");
        let daemon = load_daemon(&main).expect("loads");
        assert!(daemon.main.is_none());
        let files = daemon.read_dir().expect("reads the dir");
        let keys: Vec<String> = files.iter().map(|f| f.loaded.as_ref().expect("account").key()).collect();
        assert_eq!(keys, ["a@example.org", "b@example.org"]);
        let a = files[0].loaded.as_ref().expect("a");
        assert_eq!(a.namespace, StoreNamespace::Account("a@example.org".into()));
        let want = dir.path().join("accounts").join("a@example.org").join("store.sqlite");
        assert_eq!(a.config.store.url, format!("sqlite://{}", want.display()));
        let b = load_daemon(&main).expect("loads").account(Some("B@EXAMPLE.org")).expect("b by address");
        assert_eq!(b.key(), "b@example.org");
        let none = load_daemon(&main).expect("loads").account(None).expect_err("no main account");
        assert!(format!("{none:#}").contains("--account"), "{none:#}");
    }

    /// Two files with one address: the second does not run, and says which file has it.
    #[test]
    fn an_address_twice_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = main_file(dir.path(), "[accounts]\ndir = \"accounts.d\"\n");
        account(dir.path(), "a", "same@example.org");
        account(dir.path(), "b", "Same@example.org");
        let files = load_daemon(&main).expect("loads").read_dir().expect("reads");
        assert!(files[0].loaded.is_ok());
        let e = format!("{:#}", files[1].loaded.as_ref().expect_err("refused"));
        assert!(e.contains("b.toml") && e.contains("a.toml"), "{e}");
    }

    /// A main file with part of an account names what is missing; one with neither an
    /// account nor a dir says how to fix it.
    #[test]
    fn half_an_account_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main =
            main_file(dir.path(), "[accounts]\ndir = \"accounts.d\"\n\n[account]\naddress = \"x@example.org\"\n");
        let e = format!("{:#}", load_daemon(&main).expect_err("half an account"));
        assert!(e.contains("[imap], [smtp] missing"), "{e}");
        let main = main_file(dir.path(), "");
        let e = format!("{:#}", load_daemon(&main).expect_err("no account at all"));
        assert!(e.contains("[account], [imap], [smtp] missing") && e.contains("[accounts] dir"), "{e}");
    }

    /// Account files hold no secrets either, and know no daemon-wide sections.
    #[test]
    fn account_files_are_strict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = main_file(dir.path(), "[accounts]\ndir = \"accounts.d\"\n");
        let path = account(dir.path(), "a", "a@example.org");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("[account]\n", "[account]\npassword = \"hunter2\"\n")).expect("write");
        let files = load_daemon(&main).expect("loads").read_dir().expect("reads");
        let e = format!("{:#}", files[0].loaded.as_ref().expect_err("refused"));
        assert!(e.contains("account.password must not be written") && !e.contains("hunter2"), "{e}");
        std::fs::write(&path, format!("{text}\n[http]\nlisten = \"127.0.0.1:1\"\n")).expect("write");
        let files = load_daemon(&main).expect("loads").read_dir().expect("reads");
        assert!(files[0].loaded.is_err(), "[http] belongs to the main file");
    }

    /// On PostgreSQL a directory account's commands and daemon use its own schema; the
    /// main account the URL's.
    #[test]
    fn a_directory_account_on_postgres_has_its_own_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("coi-bridge.toml");
        let text = format!(
            "[store]\nurl = \"postgres://coi@db/coi\"\nstate_dir = \"{}\"\n\n[accounts]\ndir = \"accounts.d\"\n",
            dir.path().display()
        );
        std::fs::write(&main, text).expect("main file");
        account(dir.path(), "a", "A@example.org");
        let a = load_daemon(&main).expect("loads").account(Some("a@example.org")).expect("a");
        assert_eq!(a.config.store.url, "postgres://coi@db/coi", "the URL is the daemon's");
        assert_eq!(a.store_options().schema, Some(crate::store::account_schema("a@example.org")));
    }

    #[test]
    fn lease_secs_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = main_file(dir.path(), "[accounts]\ndir = \"accounts.d\"\n\n[cluster]\nlease_secs = 2\n");
        let e = format!("{:#}", load_daemon(&main).expect_err("too short"));
        assert!(e.contains("cluster.lease_secs"), "{e}");
    }
}
