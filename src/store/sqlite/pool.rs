//! The SQLite connection pool, with a guard that never lets a connection left inside a transaction go back into it.
//!
//! When SQLite rolls a transaction back by itself (it may, on SQLITE_FULL, IOERR, BUSY
//! or NOMEM), sqlx does not know: its ROLLBACK then fails and it keeps counting the
//! connection as one level deep. The next `begin` on that connection becomes a
//! `SAVEPOINT` (which opens a real transaction), and if that one fails its rollback is
//! `ROLLBACK TO SAVEPOINT`, which leaves the transaction open. From then on every write
//! on the connection, "committed" or not, sits in a transaction that is never committed
//! while it holds the write lock: other connections get "database is locked", and a
//! crash loses all of it (the soak saw a full disk and a SIGKILL lose minutes of
//! recorded messages, cursors and delivery states this way). A connection that comes
//! back to the pool inside a transaction is closed instead (SQLite rolls back what is
//! open), so the next user gets a clean one.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};

/// True while SQLite has a transaction open on `conn` (its autocommit mode is off).
async fn in_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle();
    // SAFETY: the handle is locked for us (no other thread uses it meanwhile) and valid
    // for the connection's life; sqlite3_get_autocommit only reads a flag.
    let autocommit = unsafe { rusqlite::ffi::sqlite3_get_autocommit(raw.as_ptr()) };
    Ok(autocommit == 0)
}

/// How long a connection may sit unused before it is closed (checked as often). An idle
/// account holds no connection at all: each is an OS thread (`sqlx-sqlite-worker`) with
/// its own schema copy, page cache and, through glibc, a thread cache of freed memory
/// (about 235 KiB when full), which made 1,000 idle accounts with one kept connection
/// each hold some 700 MB (#12). Work comes in bursts (a mail, its copies, their
/// delivery); a connection outlives the burst by this much, and the idle path's looks
/// (every [`crate::hub::delivery::SAFETY_POLL`]) open one for a moment.
pub(super) const IDLE_CLOSE: Duration = Duration::from_secs(10);

/// The store's pool: at most `max` connections, each closed after `idle_close` unused,
/// and none handed back into the pool inside a transaction. It shrinks to none while
/// the account idles; the store's file lock (see `SqliteStore`) tells `migrate-store`
/// that the daemon runs.
pub(super) fn options(max: u32, idle_close: Duration) -> SqlitePoolOptions {
    guarded(SqlitePoolOptions::new().max_connections(max).min_connections(0).idle_timeout(Some(idle_close)))
}

fn guarded(options: SqlitePoolOptions) -> SqlitePoolOptions {
    options.max_lifetime(None).after_release(|conn, _| {
        Box::pin(async move {
            if in_transaction(conn).await? {
                tracing::error!(
                    "store: a connection came back inside a transaction that SQLite or a failed rollback left open; closing it"
                );
                return Ok(false);
            }
            Ok(true)
        })
    })
}

/// The connection for one of the idle path's looks (what is due, released mail): the
/// pool's while it has connections open (the account is busy), else one of its own,
/// closed as soon as the look is over ([`Look::done`]), so that an idle account's look
/// leaves no connection behind for [`IDLE_CLOSE`].
pub(super) enum Look {
    Pooled(PoolConnection<Sqlite>),
    Own(SqliteConnection),
}

impl Look {
    pub(super) async fn open(pool: &sqlx::SqlitePool, opts: &SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        if pool.size() > 0 {
            return Ok(Self::Pooled(pool.acquire().await?));
        }
        Ok(Self::Own(SqliteConnection::connect_with(opts).await?))
    }

    /// Ends the look: the pool's connection goes back, its own is closed.
    pub(super) async fn done(self) {
        if let Self::Own(conn) = self
            && let Err(e) = conn.close().await
        {
            tracing::debug!(error = %e, "store: closing a look's connection failed");
        }
    }
}

impl std::ops::Deref for Look {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Own(c) => c,
        }
    }
}

impl std::ops::DerefMut for Look {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Own(c) => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

    use super::*;

    /// SQLite ends a transaction by itself (as on a full disk), then a later transaction
    /// on the same connection fails: a write after that must still be committed.
    #[tokio::test]
    async fn a_write_after_a_transaction_sqlite_ended_itself_is_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .expect("options")
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = options(1, IDLE_CLOSE).connect_with(opts.clone()).await.expect("pool");
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)").execute(&pool).await.expect("create");

        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.expect("insert");
        // What SQLite does on SQLITE_FULL & co.: the transaction is gone, sqlx still counts it.
        sqlx::query("ROLLBACK").execute(&mut *tx).await.expect("SQLite ends the transaction");
        drop(tx);
        // A later transaction fails (a constraint, say) and is rolled back.
        let mut tx = pool.begin().await.expect("begin again");
        sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *tx).await.expect("insert 2");
        assert!(sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *tx).await.is_err(), "a duplicate key");
        drop(tx);

        // A plain write afterwards, then what another connection (a restart) sees.
        sqlx::query("INSERT INTO t VALUES (3)").execute(&pool).await.expect("insert 3");
        let mut other = sqlx::ConnectOptions::connect(&opts).await.expect("another connection");
        let seen: Vec<i64> = sqlx::query_scalar("SELECT x FROM t").fetch_all(&mut other).await.expect("select");
        assert_eq!(seen, vec![3], "the write is committed, nothing else is");
    }
}
