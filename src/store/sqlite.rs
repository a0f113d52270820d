//! The SQLite store backend (sqlx): WAL, STRICT tables, numbered migrations applied at open.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sha2::Digest as _;
#[cfg(test)]
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    BatchOutcome, Chat, ChatKind, ChatRef, Direction, Envelope, ImapCursor, InboundMessage, OutboundMail, OutboxItem,
    OutboxState, Rejected, Store, StoreError, StoreResult, StoredMessage,
};

/// Numbered migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_keys.sql")),
    (3, include_str!("migrations/0003_portals.sql")),
    (4, include_str!("migrations/0004_avatars.sql")),
    (5, include_str!("migrations/0005_outbox_queued_ms.sql")),
    (6, include_str!("migrations/0006_dead_letters.sql")),
    (7, include_str!("migrations/0007_send_journal.sql")),
    (8, include_str!("migrations/0008_migration.sql")),
];

pub struct SqliteStore {
    /// The connections: opened on demand, closed when idle (see [`pool::options`]).
    pool: SqlitePool,
    /// How a connection is opened: the pool's, and the idle path's own (see [`pool::Look`]).
    opts: SqliteConnectOptions,
    /// The store file, opened with a shared `flock` for the store's life: the pool may
    /// hold no connection, and `migrate-store` takes this lock exclusively to tell that
    /// nothing has the store open (see [`lock_shared`]).
    _lock: std::fs::File,
}

/// How a transaction that reads before it writes begins: with the write lock. A deferred
/// one (`BEGIN`) takes a read snapshot at its first SELECT and asks for the write lock at
/// its first write; under WAL, if another connection holds that lock or has committed
/// since the snapshot, SQLite fails the write at once with SQLITE_BUSY ("database is
/// locked"), without asking the busy handler (`busy_timeout` does not apply). A
/// transaction whose first statement writes needs none of this: it waits for the lock.
const WRITE: &str = "BEGIN IMMEDIATE";

/// What `migrate-store` reports when it cannot have the store to itself.
pub const IN_USE: &str = "is in use: the daemon is running, or another coi-bridge command has it open";

/// Opens `path` and takes a shared lock on it (`flock`, which SQLite's own `fcntl`
/// locks do not touch): any number of processes may use the store at once, except
/// `migrate-store`, which takes it exclusively for its copy.
fn lock_shared(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::open(path).with_context(|| format!("store: cannot open {}", path.display()))?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "store: {} is being copied by coi-bridge migrate-store (it holds the store's lock); wait until it \
             ends, then point store.url at the new store",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("store: cannot lock {}", path.display()))
        }
    }
}

/// Takes `path` exclusively for `migrate-store`: fails at once if any process has the
/// store open through [`SqliteStore`]. The lock lasts as long as the returned file.
pub fn lock_exclusive(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the SQLite store {} {IN_USE}. Stop the daemon first (systemctl stop coi-bridge), then migrate",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock the SQLite store {}", path.display()))
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn err(e: sqlx::Error) -> StoreError {
    match &e {
        // By primary result code: BUSY, LOCKED, IOERR, FULL (the disk), CANTOPEN pass
        // once the machine recovers; a constraint or corrupt data does not.
        sqlx::Error::Database(db)
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)) =>
        {
            StoreError::Retry(e.to_string())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => StoreError::Retry(e.to_string()),
        _ => StoreError::Fatal(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, true).await
    }

    /// Opens the database at `path` only if it exists: a command beside the daemon never
    /// makes a new, empty store (with a new key) out of a mistyped path.
    pub async fn open_existing(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, false).await
    }

    async fn open_with(path: &Path, create: bool) -> anyhow::Result<Self> {
        Self::open_tuned(path, create, pool::IDLE_CLOSE).await
    }

    /// As [`Self::open_with`], closing working connections after `idle_close` unused.
    async fn open_tuned(path: &Path, create: bool, idle_close: Duration) -> anyhow::Result<Self> {
        if create {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("store: cannot create the directory {}", dir.display()))?;
            }
            private::create(path)?;
        } else if !path.exists() {
            return Err(super::Uninitialized::NoStore { path: path.to_path_buf(), hint: String::new() }.into());
        }
        private::tighten(path);
        let lock = lock_shared(path)?;
        process::configure();
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .context("store: sqlite options")?
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = pool::options(4, idle_close)
            .connect_with(opts.clone())
            .await
            .with_context(|| format!("store: cannot open SQLite database {}", path.display()))?;
        let store = Self { pool, opts, _lock: lock };
        store.migrate().await.with_context(|| format!("store: migrating {}", path.display()))?;
        Ok(store)
    }

    /// The schema version applied.
    pub async fn schema_version(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query("PRAGMA user_version").fetch_one(&self.pool).await?.try_get(0)?)
    }

    /// Applies pending migrations. `BEGIN IMMEDIATE` takes the write lock before the
    /// version is read, so two processes opening one database (the daemon and `check`)
    /// cannot both apply the same migration.
    async fn migrate(&self) -> anyhow::Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let mut conn = self.pool.acquire().await?;
        sqlx::raw_sql(WRITE).execute(&mut *conn).await?;
        let result = async {
            let current: i64 = sqlx::query("PRAGMA user_version").fetch_one(&mut *conn).await?.try_get(0)?;
            if current > latest {
                anyhow::bail!(
                    "the database has schema version {current}, newer than this coi-bridge knows ({latest}); \
                     run the newer coi-bridge or restore a backup"
                );
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                sqlx::raw_sql(*sql).execute(&mut *conn).await.with_context(|| format!("migration {version:04}"))?;
                // PRAGMA takes no bind parameters; the version is our own constant.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {version}")))
                    .execute(&mut *conn)
                    .await?;
                tracing::info!(version, "store migration applied");
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                Ok(())
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn imap_cursor(&self, folder: &str) -> StoreResult<Option<ImapCursor>> {
        let row = sqlx::query("SELECT uid_validity, last_uid FROM imap_cursor WHERE folder = ?")
            .bind(folder)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| ImapCursor { uid_validity: r.get::<i64, _>(0) as u32, last_uid: r.get::<i64, _>(1) as u32 }))
    }

    async fn record_inbound(
        &self,
        folder: &str,
        cursor: ImapCursor,
        messages: &[InboundMessage],
        rejected: &[Rejected],
    ) -> StoreResult<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut tx = self.pool.begin().await.map_err(err)?;
        for m in messages {
            let chat_id = Self::ensure_chat_tx(&mut tx, &m.chat).await?;
            if Self::insert_message(&mut tx, chat_id, Direction::In, &m.message, m.security).await? {
                out.recorded += 1;
                Self::update_members_tx(&mut tx, chat_id, &m.members_added, &m.members_removed).await?;
                Self::queue_for_tx(&mut tx, chat_id, &m.message.message_id, &m.targets).await?;
            } else {
                out.duplicates += 1;
            }
        }
        for r in rejected {
            let basis = if r.raw.is_empty() { r.reason.as_bytes() } else { r.raw.as_slice() };
            let digest: String = sha2::Sha256::digest(basis).iter().map(|b| format!("{b:02x}")).collect();
            let res = sqlx::query(
                "INSERT INTO rejected (digest, folder, uid, reason, raw, recorded_at) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (digest) DO NOTHING",
            )
            .bind(digest)
            .bind(folder)
            .bind(i64::from(r.uid))
            .bind(&r.reason)
            .bind(&r.raw)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            out.rejected += res.rows_affected() as usize;
        }
        sqlx::query(
            "INSERT INTO imap_cursor (folder, uid_validity, last_uid) VALUES (?, ?, ?)
             ON CONFLICT (folder) DO UPDATE SET uid_validity = excluded.uid_validity, last_uid = excluded.last_uid",
        )
        .bind(folder)
        .bind(i64::from(cursor.uid_validity))
        .bind(i64::from(cursor.last_uid))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn chat_of_any(&self, message_ids: &[String]) -> StoreResult<Option<ChatRef>> {
        for id in message_ids {
            let row = sqlx::query(
                "SELECT c.kind, c.key, c.name FROM message m JOIN chat c ON c.id = m.chat_id WHERE m.message_id = ?",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
            if let Some(row) = row {
                return Ok(Some(Self::chat_ref(&row)));
            }
        }
        Ok(None)
    }

    async fn queue_outbound(&self, mail: &OutboundMail) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let chat_id = Self::ensure_chat_tx(&mut tx, &mail.chat).await?;
        if Self::insert_message(&mut tx, chat_id, Direction::Out, &mail.message, "sent").await? {
            if let super::Origin::Bridge { bridge, copy: Some(copy) } = &mail.origin {
                sqlx::query(
                    "INSERT INTO message_map (message_id, bridge, remote_chat, remote_id, part) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT DO NOTHING",
                )
                .bind(&mail.message.message_id)
                .bind(bridge)
                .bind(&copy.remote_chat)
                .bind(&copy.remote_id)
                .bind(copy.part)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            Self::queue_for_tx(&mut tx, chat_id, &mail.message.message_id, &mail.targets).await?;
            let ts = now();
            let copies = std::iter::once((&mail.envelope, &mail.raw, mail.message.message_id.clone()))
                .chain(mail.also.iter().map(|(e, r)| (e, r, format!("{}#plain", mail.message.message_id))));
            for (envelope, raw, label) in copies {
                let envelope = serde_json::to_string(envelope).map_err(|e| StoreError::Fatal(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO outbox (target, chat_id, message_id, payload, envelope, next_attempt_at, created_at,
                                         queued_at_ms)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(super::SMTP_TARGET)
                .bind(chat_id)
                .bind(label)
                .bind(raw)
                .bind(envelope)
                .bind(ts)
                .bind(ts)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn due_outbox(&self, target: &str, now: i64, limit: u32) -> StoreResult<Vec<OutboxItem>> {
        // The idle path's look (and the busy path's, through the pool): see pool::Look.
        let mut look = pool::Look::open(&self.pool, &self.opts).await.map_err(err)?;
        let rows = sqlx::query(
            "SELECT o.id, o.target, o.chat_id, o.message_id, o.payload, o.envelope, o.attempts,
                    COALESCE(o.queued_at_ms, o.created_at * 1000) AS queued_at_ms
             FROM outbox o
             WHERE o.target = ? AND o.state = 'pending' AND o.next_attempt_at <= ?
               AND o.id = (SELECT MIN(h.id) FROM outbox h
                           WHERE h.target = o.target AND h.chat_id = o.chat_id AND h.state = 'pending')
             ORDER BY o.id LIMIT ?",
        )
        .bind(target)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *look)
        .await;
        look.done().await;
        let rows = rows.map_err(err)?;
        rows.into_iter()
            .map(|r| {
                let envelope: Option<String> = r.get("envelope");
                let envelope = envelope
                    .map(|e| serde_json::from_str::<Envelope>(&e))
                    .transpose()
                    .map_err(|e| StoreError::Fatal(format!("outbox envelope: {e}")))?;
                Ok(OutboxItem {
                    id: r.get("id"),
                    target: r.get("target"),
                    chat_id: r.get("chat_id"),
                    message_id: r.get("message_id"),
                    payload: r.get("payload"),
                    envelope,
                    attempts: r.get::<i64, _>("attempts") as u32,
                    queued_at_ms: r.get("queued_at_ms"),
                })
            })
            .collect()
    }

    async fn next_outbox_due(&self, target: &str) -> StoreResult<Option<i64>> {
        // Chats' heads only: a row behind its chat's head is not due before the head is
        // done (and the worker looks again then), whatever its own time says.
        let mut look = pool::Look::open(&self.pool, &self.opts).await.map_err(err)?;
        let row = sqlx::query(
            "SELECT MIN(o.next_attempt_at) FROM outbox o
             WHERE o.target = ? AND o.state = 'pending'
               AND o.id = (SELECT MIN(h.id) FROM outbox h
                           WHERE h.target = o.target AND h.chat_id = o.chat_id AND h.state = 'pending')",
        )
        .bind(target)
        .fetch_one(&mut *look)
        .await;
        look.done().await;
        let row = row.map_err(err)?;
        Ok(row.get(0))
    }

    async fn outbox_done(&self, id: i64) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET state = 'done', payload = x'', attempts = attempts + 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_stats(&self) -> StoreResult<Vec<super::OutboxStats>> {
        let rows = sqlx::query(
            "SELECT target, COUNT(*) AS depth, MIN(COALESCE(queued_at_ms, created_at * 1000)) AS oldest
             FROM outbox WHERE state = 'pending' GROUP BY target ORDER BY target",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| super::OutboxStats {
                target: r.get("target"),
                depth: r.get::<i64, _>("depth") as u64,
                oldest_queued_ms: r.get("oldest"),
            })
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err)?;
        Ok(())
    }

    async fn outbox_depth(&self, target: &str) -> StoreResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM outbox WHERE target = ? AND state = 'pending'")
            .bind(target)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?
            .get(0);
        Ok(n as u64)
    }

    async fn outbox_set_recipients(&self, id: i64, envelope: &super::Envelope) -> StoreResult<()> {
        let json = serde_json::to_string(envelope).map_err(|e| StoreError::Fatal(e.to_string()))?;
        sqlx::query("UPDATE outbox SET envelope = ? WHERE id = ?")
            .bind(json)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_failed(&self, id: i64, reason: &str) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_state(&self, target: &str, message_id: &str) -> StoreResult<Option<OutboxState>> {
        let row = sqlx::query("SELECT state, attempts, last_error FROM outbox WHERE target = ? AND message_id = ?")
            .bind(target)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| {
            let state: String = r.get(0);
            let last_error: Option<String> = r.get(2);
            match state.as_str() {
                "done" => OutboxState::Done,
                "failed" => OutboxState::Failed { reason: last_error.unwrap_or_default() },
                _ => OutboxState::Pending { attempts: r.get::<i64, _>(1) as u32, last_error },
            }
        }))
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<StoredMessage>> {
        let row = sqlx::query("SELECT * FROM message WHERE message_id = ?")
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        match row {
            Some(row) => Ok(Some(self.load_message(row).await?)),
            None => Ok(None),
        }
    }

    async fn chat(&self, id: i64) -> StoreResult<Option<Chat>> {
        let Some(row) = sqlx::query("SELECT id, kind, key, name FROM chat WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let rows = sqlx::query("SELECT addr, added_at FROM chat_member WHERE chat_id = ? ORDER BY addr")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let members: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let member_since: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        let r = Self::chat_ref(&row);
        Ok(Some(Chat { id, kind: r.kind, key: r.key, name: r.name, members, member_since }))
    }

    async fn chats(&self) -> StoreResult<Vec<Chat>> {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM chat ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.chat(id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    async fn find_chat(&self, kind: ChatKind, key: &str) -> StoreResult<Option<Chat>> {
        let id: Option<i64> = sqlx::query("SELECT id FROM chat WHERE kind = ? AND key = ?")
            .bind(kind.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        match id {
            Some(id) => self.chat(id).await,
            None => Ok(None),
        }
    }

    async fn ensure_chat(&self, chat: &ChatRef) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let id = Self::ensure_chat_tx(&mut tx, chat).await?;
        tx.commit().await.map_err(err)?;
        Ok(id)
    }

    async fn update_members(&self, chat_id: i64, add: &[String], remove: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        Self::update_members_tx(&mut tx, chat_id, add, remove).await?;
        tx.commit().await.map_err(err)
    }

    async fn messages(&self, direction: Direction) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query("SELECT * FROM message WHERE direction = ? ORDER BY id")
            .bind(direction.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load_message(row).await?);
        }
        Ok(out)
    }

    async fn rejected_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM rejected").fetch_one(&self.pool).await.map_err(err)?.get(0);
        Ok(n as u64)
    }
}

mod deadletter;
mod keys;
mod messages;
mod migration;
mod portals;
mod private;
mod process;
mod retention;

mod pool;
#[cfg(test)]
mod tests;
