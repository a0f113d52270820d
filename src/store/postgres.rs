//! The PostgreSQL store backend (sqlx): SQLite's tables and guarantees on a server several daemons can share.
//!
//! Migrations (`postgres/migrations/`) carry SQLite's numbers: schema version N is the
//! same tables on both backends (INTEGER → BIGINT, BLOB → BYTEA, 0/1 flags → BOOLEAN).
//! They are applied at open in one transaction under an advisory lock, so two daemons
//! starting at once never apply one twice; `coi_schema` records each version applied.
//! Every write that acknowledges something (a fetched UID, a queued message) commits in
//! one transaction with what it acknowledges, as on SQLite.
//!
//! **One schema per account.** Opened with [`OpenOptions::schema`], the store lives in that
//! schema (made if missing; its connections' `search_path`), so many accounts share one
//! database. Migrations then run under an advisory lock of that schema's own: a thousand
//! accounts starting at once migrate side by side instead of one after another, and two
//! daemons opening the same account still apply each migration once. An account's pool is
//! small and lets idle connections go (see [`ACCOUNT_MAX_CONNECTIONS`]), because a thousand
//! accounts share the server's `max_connections`.
//!
//! **Fencing.** Opened with [`OpenOptions::fence`], every write checks the account's lease
//! in the database (`postgres/fence.rs`, [`super::lease`]) and fails as
//! [`StoreError::Fenced`] once the lease has passed on or expired.

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Row as _};

use super::lease::{FENCED_SQLSTATE, Fence};
use super::{OpenOptions, StoreError};

mod deadletter;
mod fence;
mod keys;
mod messages;
mod migration;
mod portals;
mod retention;
mod store;

/// Numbered migrations, as SQLite's (`super::sqlite`): the same number, the same schema.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("postgres/migrations/0001_init.sql")),
    (2, include_str!("postgres/migrations/0002_keys.sql")),
    (3, include_str!("postgres/migrations/0003_portals.sql")),
    (4, include_str!("postgres/migrations/0004_avatars.sql")),
    (5, include_str!("postgres/migrations/0005_outbox_queued_ms.sql")),
    (6, include_str!("postgres/migrations/0006_dead_letters.sql")),
    (7, include_str!("postgres/migrations/0007_send_journal.sql")),
    (8, include_str!("postgres/migrations/0008_migration.sql")),
];

/// The advisory lock migrations of the default namespace run under: "coi-brdg" in ASCII.
/// (A named schema's lock is derived from its name: [`migration_lock`].)
const MIGRATION_LOCK: i64 = 0x636f_692d_6272_6467;

/// Connections of the store in the URL's default namespace (one account per daemon):
/// enough for the IMAP transport, SMTP and each bridge's worker.
const MAX_CONNECTIONS: u32 = 8;

/// Connections of one account's store in its own schema: 1,000 accounts share one server
/// (PostgreSQL's default `max_connections` is 100), so each keeps few, opens them on demand
/// and closes them after [`ACCOUNT_IDLE_TIMEOUT`] unused. Its store calls are short
/// statements; a burst waits for a connection rather than opening more.
pub const ACCOUNT_MAX_CONNECTIONS: u32 = 3;

/// How long an account's idle connection stays open.
const ACCOUNT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A fenced session's transaction left idle this long is ended by the server: a daemon
/// paused mid-transaction (SIGSTOP, a VM freeze) holds its lease row locked and would keep
/// a takeover waiting; this lets the next holder in. Store transactions never wait on
/// anything but the database between statements.
const FENCED_IDLE_IN_TRANSACTION: &str = "20s";

/// How long a caller waits for a free connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether a SQLSTATE passes once the server or the machine recovers: connection trouble
/// (class 08), insufficient resources (53: disk full, out of memory, too many
/// connections), a server shutting down or starting (57P0x), system I/O errors (58),
/// serialization failures and deadlocks (40001, 40P01), a lock not available (55P03).
/// A constraint or bad data (23, 22, …) does not.
fn retryable(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "58"))
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55P03")
}

pub(crate) fn err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c == FENCED_SQLSTATE) => {
            StoreError::Fenced(db.message().to_owned())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| retryable(&c)) => StoreError::Retry(e.to_string()),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            StoreError::Retry(e.to_string())
        }
        _ => StoreError::Fatal(e.to_string()),
    }
}

/// TLS by default: over TCP, a URL without `sslmode` gets `verify-full` (TLS, the
/// certificate checked against the web PKI or `sslrootcert`); plaintext only when the URL
/// says so (`sslmode=disable`, `prefer`, …). A Unix socket needs none.
pub(crate) fn tls_by_default(url: &str, opts: PgConnectOptions) -> PgConnectOptions {
    let configured = url.to_ascii_lowercase().contains("sslmode=");
    if configured || opts.get_socket().is_some() { opts } else { opts.ssl_mode(PgSslMode::VerifyFull) }
}

/// `postgres://user@host:port/db` without the password, for messages.
pub(crate) fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

/// A schema name the store can use as is: lower-case ASCII letters, digits and `_`, not
/// starting with a digit or `pg_`, at most 63 bytes (PostgreSQL's limit).
fn check_schema(schema: &str) -> anyhow::Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with("pg_")
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        anyhow::bail!("store: {schema:?} is not a usable schema name (store::account_schema makes one)")
    }
}

/// The advisory lock the migrations of `schema` run under: the default namespace keeps the
/// lock older versions take; a named schema gets one of its own (from its name's SHA-256).
/// Public so that a test can hold an account's migrations (and with them its start).
pub fn migration_lock(schema: Option<&str>) -> i64 {
    use sha2::Digest as _;
    match schema {
        None => MIGRATION_LOCK,
        Some(s) => {
            let digest = sha2::Sha256::digest(format!("coi-bridge migrate {s}").as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            i64::from_be_bytes(first)
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`) and applies
    /// pending migrations.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::connect(url, &OpenOptions::default(), true).await
    }

    /// Opens the database at `url` only if the daemon has made its tables there: a command
    /// beside the daemon never sets up a store (and then a new key) in a mistyped database.
    pub async fn open_existing(url: &str) -> anyhow::Result<Self> {
        Self::connect(url, &OpenOptions::default(), false).await
    }

    /// [`PgStore::open`] in `options.schema` (made if missing) and under `options.fence`.
    pub async fn open_in(url: &str, options: &OpenOptions) -> anyhow::Result<Self> {
        Self::connect(url, options, true).await
    }

    /// [`PgStore::open_existing`] in `options.schema` and under `options.fence`.
    pub async fn open_existing_in(url: &str, options: &OpenOptions) -> anyhow::Result<Self> {
        Self::connect(url, options, false).await
    }

    /// The connection pool, for tests that hold a transaction open as a store call would.
    #[doc(hidden)]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn connect(url: &str, options: &OpenOptions, create: bool) -> anyhow::Result<Self> {
        let schema = options.schema.as_deref();
        if let Some(s) = schema {
            check_schema(s)?;
        }
        let mut settings: Vec<(&str, String)> = Vec::new();
        if let Some(s) = schema {
            settings.push(("search_path", s.to_owned()));
        }
        if let Some(Fence { account, holder, epoch }) = &options.fence {
            settings.push(("coi.account", account.clone()));
            settings.push(("coi.holder", holder.clone()));
            settings.push(("coi.epoch", epoch.to_string()));
            settings.push(("idle_in_transaction_session_timeout", FENCED_IDLE_IN_TRANSACTION.to_owned()));
        }
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("store.url: not a usable PostgreSQL URL ({e})"))?
            .application_name("coi-bridge");
        if !settings.is_empty() {
            opts = opts.options(settings);
        }
        let opts = tls_by_default(url, opts);
        let pool = if schema.is_some() {
            PgPoolOptions::new()
                .max_connections(ACCOUNT_MAX_CONNECTIONS)
                .min_connections(0)
                .idle_timeout(ACCOUNT_IDLE_TIMEOUT)
        } else {
            PgPoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let where_ = match schema {
            Some(s) => format!("{} schema {s}", describe(&opts)),
            None => describe(&opts),
        };
        let pool = pool.acquire_timeout(ACQUIRE_TIMEOUT).connect_with(opts.clone()).await.with_context(|| {
            format!(
                "store: cannot connect to PostgreSQL at {} (store.url){}",
                describe(&opts),
                if matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull) {
                    "; TLS with a verified certificate is the default over TCP: give the server a \
                     certificate (add sslrootcert=FILE to the URL for a private CA), use the Unix socket \
                     (?host=/run/postgresql), or add sslmode=disable for a network you trust"
                } else {
                    ""
                }
            )
        })?;
        let store = Self { pool };
        if !create {
            let made: bool = sqlx::query("SELECT to_regclass('coi_schema') IS NOT NULL")
                .fetch_one(&store.pool)
                .await
                .with_context(|| format!("store: reading {where_}"))?
                .get(0);
            if !made {
                anyhow::bail!(
                    "store.url: the database {where_} has no coi-bridge store yet: the daemon makes it on its first \
                     start (coi-bridge run), or fix store.url"
                );
            }
        }
        store.migrate(schema).await.with_context(|| format!("store: migrating {where_}"))?;
        Ok(store)
    }

    /// The schema version applied.
    pub async fn schema_version(&self) -> anyhow::Result<i64> {
        let v: Option<i64> = sqlx::query("SELECT MAX(version) FROM coi_schema").fetch_one(&self.pool).await?.get(0);
        Ok(v.unwrap_or(0))
    }

    /// Applies pending migrations in one transaction. The advisory lock is taken before the
    /// version is read, so a second daemon waits for the first and then finds nothing to do;
    /// PostgreSQL's DDL is transactional, so a failed migration leaves no half schema.
    async fn migrate(&self, schema: Option<&str>) -> anyhow::Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(migration_lock(schema)).execute(&mut *tx).await?;
        if let Some(s) = schema {
            // `s` passed check_schema: a plain identifier.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {s}"))).execute(&mut *tx).await?;
        }
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS coi_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) FROM coi_schema").fetch_one(&mut *tx).await?.get(0);
        let current = current.unwrap_or(0);
        if current > latest {
            anyhow::bail!(
                "the database has schema version {current}, newer than this coi-bridge knows ({latest}); \
                 run the newer coi-bridge or restore a backup"
            );
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await.with_context(|| format!("migration {version:04}"))?;
            sqlx::query("INSERT INTO coi_schema (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, schema = schema.unwrap_or("(default)"), "store migration applied");
        }
        let fenced: Option<String> = match schema {
            Some(s) => Some(s.to_owned()),
            None => sqlx::query("SELECT current_schema()::TEXT").fetch_one(&mut *tx).await?.get(0),
        };
        let fenced = fenced.context("no schema to make the store in (search_path names none that exists)")?;
        fence::install(&mut tx, &fenced).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A small pool on the shared database for a daemon-wide table beside the account stores
/// (the leases, the appservice relay): `store.url` with TLS by default, connections opened
/// on demand and closed after a minute idle. `what` names the user in errors; `options`
/// are session settings. Also returns where it connected, for later errors.
pub(crate) async fn cluster_pool(
    url: &str,
    application: &str,
    max: u32,
    what: &str,
    options: &[(&str, &str)],
) -> anyhow::Result<(sqlx::PgPool, String)> {
    use anyhow::Context as _;
    use std::str::FromStr as _;
    let opts = tls_by_default(
        url,
        sqlx::postgres::PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("store.url: not a usable PostgreSQL URL ({e})"))?
            .application_name(application)
            .options(options.iter().copied()),
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .idle_timeout(std::time::Duration::from_secs(60))
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts.clone())
        .await
        .with_context(|| format!("{what}: cannot connect to PostgreSQL at {} (store.url)", describe(&opts)))?;
    Ok((pool, describe(&opts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_sqlstates_are_retried_and_broken_constraints_are_not() {
        for code in ["08006", "53100", "53300", "57P01", "57P03", "58030", "40001", "40P01", "55P03"] {
            assert!(retryable(code), "{code}");
        }
        for code in ["23505", "23503", "22P02", "42P01", "57014", ""] {
            assert!(!retryable(code), "{code}");
        }
    }

    #[test]
    fn every_sqlite_migration_has_its_postgres_twin() {
        let sqlite = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations"))
            .expect("sqlite migrations")
            .count();
        assert_eq!(MIGRATIONS.len(), sqlite);
        assert!(MIGRATIONS.iter().enumerate().all(|(i, (v, _))| *v == i as i64 + 1));
    }
}
