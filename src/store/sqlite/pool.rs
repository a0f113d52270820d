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

use sqlx::sqlite::{SqliteConnection, SqlitePoolOptions};

/// True while SQLite has a transaction open on `conn` (its autocommit mode is off).
async fn in_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle();
    // SAFETY: the handle is locked for us (no other thread uses it meanwhile) and valid
    // for the connection's life; sqlite3_get_autocommit only reads a flag.
    let autocommit = unsafe { rusqlite::ffi::sqlite3_get_autocommit(raw.as_ptr()) };
    Ok(autocommit == 0)
}

/// How long a working connection may sit idle before it is closed (checked as often):
/// an idle account keeps only its [`keeper`] connection, not the up to four connections
/// (four `sqlx-sqlite-worker` threads, four page caches) a burst of work opened.
pub(super) const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// The page cache of the kept connection, in KiB: it only answers the idle path's small
/// reads (what is due in the outbox, released mail), so it never needs SQLite's 2 MB default.
pub(super) const KEEPER_CACHE_KIB: i64 = 256;

/// The store's working pool: at most `max` connections, each closed after `idle_close`
/// unused, and none handed back into the pool inside a transaction. It may shrink to
/// none: the [`keeper`] holds the file open meanwhile.
pub(super) fn options(max: u32, idle_close: Duration) -> SqlitePoolOptions {
    guarded(SqlitePoolOptions::new().max_connections(max).min_connections(0).idle_timeout(Some(idle_close)))
}

/// One connection kept open for the store's life (never reaped when idle): the open file
/// is how `migrate-store` tells that the daemon runs, and the workers' idle-path reads
/// (what is due next) go through it, so an idle account opens no working connection.
pub(super) fn keeper() -> SqlitePoolOptions {
    guarded(SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None))
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
