//! The PostgreSQL store backend (sqlx): SQLite's tables and guarantees on a server several daemons can share.
//!
//! Migrations (`postgres/migrations/`) carry SQLite's numbers: schema version N is the
//! same tables on both backends (INTEGER → BIGINT, BLOB → BYTEA, 0/1 flags → BOOLEAN).
//! They are applied at open in one transaction under an advisory lock, so two daemons
//! starting at once never apply one twice; `coi_schema` records each version applied.
//! Every write that acknowledges something (a fetched UID, a queued message) commits in
//! one transaction with what it acknowledges, as on SQLite.

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Row as _};

use super::StoreError;

mod deadletter;
mod keys;
mod messages;
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
];

/// The advisory lock migrations run under: "coi-brdg" in ASCII.
const MIGRATION_LOCK: i64 = 0x636f_692d_6272_6467;

/// Connections per daemon: enough for the IMAP transport, SMTP and each bridge's worker.
const MAX_CONNECTIONS: u32 = 8;

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

fn err(e: sqlx::Error) -> StoreError {
    match &e {
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

impl PgStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`) and applies
    /// pending migrations.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, true).await
    }

    /// Opens the database at `url` only if the daemon has made its tables there: a command
    /// beside the daemon never sets up a store (and then a new key) in a mistyped database.
    pub async fn open_existing(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> anyhow::Result<Self> {
        let opts = tls_by_default(
            url,
            PgConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("store.url: not a usable PostgreSQL URL ({e})"))?
                .application_name("coi-bridge"),
        );
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts.clone())
            .await
            .with_context(|| {
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
                .with_context(|| format!("store: reading {}", describe(&opts)))?
                .get(0);
            if !made {
                anyhow::bail!(
                    "store.url: the database {} has no coi-bridge store yet: the daemon makes it on its first start \
                     (coi-bridge run), or fix store.url",
                    describe(&opts)
                );
            }
        }
        store.migrate().await.with_context(|| format!("store: migrating {}", describe(&opts)))?;
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
    async fn migrate(&self) -> anyhow::Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
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
            tracing::info!(version, "store migration applied");
        }
        tx.commit().await?;
        Ok(())
    }
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
