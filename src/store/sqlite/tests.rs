//! The SQLite backend: the store conformance suite (`crate::store::conformance`, the contract every backend keeps) instantiated for SQLite, and what only SQLite has: migrations from every older schema, the pool, the write lock taken before a read that a write follows.

use std::sync::Arc;

use super::*;
use crate::store::conformance::{Backend, POISON};

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("s.db")).await.expect("open");
    (dir, store)
}

/// A fresh SQLite store in a temporary directory (removed when the case ends).
struct Sqlite {
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl Backend for Sqlite {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn poison(&self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER poison BEFORE INSERT ON message WHEN NEW.message_id = '{POISON}'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        )))
        .execute(&self.store.pool)
        .await
        .expect("trigger");
    }
}

async fn make() -> Box<dyn Backend> {
    let (dir, store) = fresh().await;
    Box::new(Sqlite { store: Arc::new(store), _dir: dir })
}

mod conformance {
    crate::store_conformance_tests!(super::make);
}

#[tokio::test]
async fn migrations_are_applied_once_and_newer_schemas_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).await.expect("open");
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    assert_eq!(s.schema_version().await.expect("version"), latest);
    drop(s);
    // Reopening applies nothing and keeps the data.
    let s = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(s.schema_version().await.expect("version"), latest);
    sqlx::raw_sql("PRAGMA user_version = 999").execute(&s.pool).await.expect("bump");
    drop(s);
    let err = SqliteStore::open(&path).await.err().expect("newer schema refused");
    assert!(format!("{err:#}").contains("newer than this coi-bridge knows"), "{err:#}");
}

#[tokio::test]
async fn store_errors_on_a_closed_pool_are_retryable() {
    let (_d, s) = fresh().await;
    s.pool.close().await;
    let err = s.imap_cursor("INBOX").await.expect_err("closed pool fails");
    assert!(err.is_retry(), "{err}");
}

#[tokio::test]
async fn every_older_schema_migrates_with_its_data() {
    // For each older version N: build a database at N, write a message, open it with the
    // current code, and read the message back.
    for n in 1..MIGRATIONS.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let opts =
                SqliteConnectOptions::from_str("sqlite://").expect("opts").filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.expect("pool");
            for (v, sql) in &MIGRATIONS[..n] {
                sqlx::raw_sql(*sql).execute(&pool).await.expect("old migration");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {v}")))
                    .execute(&pool)
                    .await
                    .expect("version");
            }
            sqlx::raw_sql(
                "INSERT INTO chat (id, kind, key, name, created_at) VALUES (1, 'single', 'p@x.org', 'P', 0);
                 INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, recorded_at)
                 VALUES ('old@x', 1, 'in', 'text', 'p@x.org', 'P', 'from before', 0);",
            )
            .execute(&pool)
            .await
            .expect("old data");
            pool.close().await;
        }
        let s = SqliteStore::open(&path).await.expect("migrates");
        assert_eq!(s.schema_version().await.expect("version"), MIGRATIONS.last().map(|m| m.0).unwrap_or(0));
        assert_eq!(s.message("old@x").await.expect("read").map(|m| m.text), Some("from before".into()), "from v{n}");
    }
}

/// A database left at schema `version` by an older coi-bridge, with a chat, a message
/// and a pending outbox row written the way that version wrote them.
fn database_at(path: &std::path::Path, version: i64) {
    let c = rusqlite::Connection::open(path).expect("open");
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
        c.execute_batch(sql).unwrap_or_else(|e| panic!("migration {v}: {e}"));
    }
    c.execute_batch(&format!("PRAGMA user_version = {version}")).expect("version");
    c.execute_batch(
        "INSERT INTO chat (id, kind, key, name, created_at) VALUES (1, 'group', 'grp1', 'Garden', 1700000000);
         INSERT INTO chat_member (chat_id, addr) VALUES (1, 'alice@example.org');
         INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, recorded_at)
           VALUES ('old@example.org', 1, 'in', 'text', 'alice@example.org', 'Alice', 'from the old days', 1700000001);
         INSERT INTO outbox (target, chat_id, message_id, payload, next_attempt_at, created_at)
           VALUES ('matrix', 1, 'old@example.org', x'', 0, 1700000002);",
    )
    .expect("seed");
}

#[tokio::test]
async fn upgrades_from_every_earlier_schema_keeping_the_data() {
    let latest = MIGRATIONS.last().expect("migrations").0;
    for version in 1..latest {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        database_at(&path, version);
        let store = SqliteStore::open(&path).await.unwrap_or_else(|e| panic!("upgrade from {version}: {e:#}"));
        assert_eq!(store.schema_version().await.expect("version"), latest, "from {version}");
        let m = store.message("old@example.org").await.expect("read").expect("the old message survives");
        assert_eq!(m.text, "from the old days", "from {version}");
        let chat = store.chat(m.chat_id).await.expect("chat").expect("the chat survives");
        assert_eq!((chat.name.as_str(), chat.members.as_slice()), ("Garden", &["alice@example.org".to_owned()][..]));
        // The pending row is still delivered, and its latency starts at its created_at.
        let due = store.due_outbox("matrix", i64::MAX, 10).await.expect("due");
        assert_eq!(due.len(), 1, "from {version}");
        assert_eq!(due[0].queued_at_ms, 1_700_000_002_000, "from {version}");
        // New features work on the upgraded database.
        crate::store::keys::KeyStore::set_contact_avatar(&store, "alice@example.org", &[1, 2, 3])
            .await
            .expect("0004 table");
        let stats = store.outbox_stats().await.expect("stats");
        assert_eq!((stats[0].target.as_str(), stats[0].depth), ("matrix", 1));
        drop(store);
        // Opening again applies nothing twice.
        let again = SqliteStore::open(&path).await.expect("reopen");
        assert_eq!(again.schema_version().await.expect("version"), latest);
    }
}

/// A shipped migration never changes: databases out there ran the old text, and the
/// upgrade test above builds old schemas from these same files. Add a new file instead.
#[test]
fn shipped_migrations_are_frozen() {
    use sha2::{Digest as _, Sha256};
    const SHIPPED: &[(i64, &str)] = &[
        (1, "bc541b27ef4ab054ae008773a49c270127c2f28d0b1d2f49506c366a59b44753"),
        (2, "a302c9d7eac8d1dd2e2d404116cbac9d0f6d5252e15b9a2395da5287ab70605d"),
        (3, "e5330dc11a2f690a13ba71b17e3b05ab564ad1a6e20ded57b4edbbc6eb998e17"),
        (4, "718580991b1707b53f923de204a8e4936ca99b8dad18c3c583374d81b03c14d3"),
        (5, "3f96cd197923fbe9e1e8cd9d5bc0a6ef6c38ad69e103c8bafdd7cab25f7cc5fa"),
        (6, "8265fef40015061b79e270803827494c130526c374e2877e1862d6c4ac048055"),
        (7, "c61cde0096f41dcd600abfaa472fcae13c4189cdcf8ed5962fa71ac74e15dea9"),
        (8, "a0a53aaa14357a39ad7e53dcafc6a8f92f55b27f871b1d80f0e63de2da92bb50"),
    ];
    assert_eq!(MIGRATIONS.len(), SHIPPED.len(), "a new migration: add its hash here once it ships");
    for ((version, sql), (v, hash)) in MIGRATIONS.iter().zip(SHIPPED) {
        assert_eq!(version, v);
        let got: String = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&got, hash, "migration {version:04} was edited after it shipped");
    }
}

/// An idle store closes every connection a burst opened (each is an OS thread with its
/// schema, page cache and glibc thread cache: one kept per account made 1,000 idle
/// accounts hold 1,000 threads and some 700 MB), the idle path's reads open one only for a
/// moment (no connection stays open after one), and the store's lock stays held all along, so `migrate-store` still sees the
/// daemon running.
#[tokio::test]
async fn an_idle_store_holds_no_connection_and_keeps_its_lock() {
    use crate::store::retention::RetentionStore as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open_tuned(&path, true, Duration::from_millis(100)).await.expect("open");
    let idle = || async {
        let mut waited = 0;
        while s.pool.size() > 0 {
            assert!(waited < 600, "{} connections still open", s.pool.size());
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
    };
    // A burst: three transactions at once, on three connections.
    let (a, b, c) = (s.pool.begin().await, s.pool.begin().await, s.pool.begin().await);
    assert!(s.pool.size() >= 3, "the burst opened {} connections", s.pool.size());
    drop((a, b, c));
    idle().await;
    // What the idle workers read (the outbox, its next due time, released mail).
    assert!(s.due_outbox(crate::store::SMTP_TARGET, now(), 64).await.expect("due").is_empty());
    assert_eq!(s.next_outbox_due("telegram").await.expect("next"), None);
    assert!(s.released(10).await.expect("released").is_empty());
    assert_eq!(s.pool.size(), 0, "an idle store's look left a connection open");
    // What migrate-store does to tell a running daemon: the lock cannot be had.
    let err = super::lock_exclusive(&path).expect_err("the store is open");
    assert!(format!("{err:#}").contains(super::IN_USE), "{err:#}");
    // Writes still work after the connections were closed.
    let cursor = ImapCursor { uid_validity: 1, last_uid: 2 };
    s.record_inbound("INBOX", cursor, &[], &[]).await.expect("write");
    assert_eq!(s.imap_cursor("INBOX").await.expect("read").map(|c| c.last_uid), Some(2));
    s.pool.close().await;
    drop(s);
    let held = super::lock_exclusive(&path).expect("the store, closed, leaves its lock");
    let refused = SqliteStore::open_existing(&path).await.err().expect("opened while migrate-store holds it");
    assert!(format!("{refused:#}").contains("migrate-store"), "{refused:#}");
    drop(held);
    SqliteStore::open_existing(&path).await.expect("opens once migrate-store is done");
}

/// Tells the test of a connection's first wait for a lock, then waits as `busy_timeout`
/// would (1 ms at a time, up to 10 s). `arg` is the test's [`tokio::sync::Notify`].
unsafe extern "C" fn busy_signal(arg: *mut std::ffi::c_void, waited: std::ffi::c_int) -> std::ffi::c_int {
    // SAFETY: `arg` is the leaked, never freed Notify of `signalling`.
    let busy = unsafe { &*(arg as *const tokio::sync::Notify) };
    if waited == 0 {
        busy.notify_one();
    }
    if waited >= 10_000 {
        return 0;
    }
    std::thread::sleep(Duration::from_millis(1));
    1
}

/// A second store on `path` whose connections signal `busy` when they first wait for a
/// lock (SQLite asks the busy handler), instead of waiting silently.
async fn signalling(path: &Path, opts: &SqliteConnectOptions) -> (SqliteStore, &'static tokio::sync::Notify) {
    let busy: &'static tokio::sync::Notify = Box::leak(Box::new(tokio::sync::Notify::new()));
    let arg = busy as *const tokio::sync::Notify as usize;
    let pool = pool::options(4, pool::IDLE_CLOSE)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                // SAFETY: the handle is locked for us; the handler and its argument live
                // as long as the process.
                unsafe {
                    rusqlite::ffi::sqlite3_busy_handler(
                        handle.as_raw_handle().as_ptr(),
                        Some(busy_signal),
                        arg as *mut std::ffi::c_void,
                    )
                };
                Ok(())
            })
        })
        .connect_with(opts.clone())
        .await
        .expect("pool");
    (SqliteStore { pool, opts: opts.clone(), _lock: super::lock_shared(path).expect("lock") }, busy)
}

/// Runs `op` while another connection holds the write lock with a write of its own, and
/// commits that write once `op` waits for the lock. `op` must wait and then succeed: a
/// transaction that reads, then asks for the write lock, fails at once instead, with
/// "database is locked" (WAL does not ask the busy handler there).
async fn while_another_writes<T: std::fmt::Debug>(
    s: &SqliteStore,
    busy: &tokio::sync::Notify,
    op: impl std::future::Future<Output = StoreResult<T>>,
) -> T {
    use sqlx::Connection as _;
    let mut other = sqlx::sqlite::SqliteConnection::connect_with(&s.opts).await.expect("another connection");
    sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO imap_cursor (folder, uid_validity, last_uid) VALUES ('other', 1, 1)")
        .execute(&mut other)
        .await
        .expect("the other write");
    let mut op = std::pin::pin!(op);
    tokio::select! {
        biased;
        r = &mut op => panic!("ended without waiting for the other connection's write lock: {r:?}"),
        () = busy.notified() => {}
    }
    sqlx::raw_sql("COMMIT").execute(&mut other).await.expect("commit the other write");
    let out = op.await.expect("once the other write is committed");
    let kept: i64 = sqlx::query("SELECT COUNT(*) FROM imap_cursor WHERE folder = 'other'")
        .fetch_one(&s.pool)
        .await
        .expect("read")
        .get(0);
    assert_eq!(kept, 1, "the other write is there too");
    out
}

/// Pruning reads what is set apart, then deletes: at a many-account start it met the
/// account's other writers and failed with "database is locked" (#12). It takes the write
/// lock first, waiting for another writer as busy_timeout says; so do the key writes that
/// read first.
#[tokio::test]
async fn transactions_that_read_before_they_write_wait_for_another_writer() {
    use crate::store::keys::{KeySource, KeyStore as _};
    use crate::store::retention::{Caps, RetentionStore as _};
    let (dir, plain) = fresh().await;
    let path = dir.path().join("s.db");
    // A store of its own for each call, so that no wait of an earlier one is taken for its.
    let (s, busy) = signalling(&path, &plain.opts).await;
    let rejected = [
        Rejected { uid: 1, reason: "old".into(), raw: vec![1; 100] },
        Rejected { uid: 2, reason: "new".into(), raw: vec![2; 100] },
    ];
    s.record_inbound("INBOX", ImapCursor { uid_validity: 1, last_uid: 2 }, &[], &rejected).await.expect("record");
    sqlx::query("UPDATE rejected SET recorded_at = recorded_at - 40 * 86400 WHERE reason = 'old'")
        .execute(&s.pool)
        .await
        .expect("age");
    let caps = Caps { older_than: now() - 30 * 86_400, max_bytes: u64::MAX };
    let pruned = while_another_writes(&s, busy, s.prune(caps)).await;
    assert_eq!(pruned.rejected, 1, "{pruned:?}");
    assert_eq!(s.rejected_count().await.expect("count"), 1);
    sqlx::query("DELETE FROM imap_cursor WHERE folder = 'other'").execute(&s.pool).await.expect("reset");

    let (s, busy) = signalling(&path, &plain.opts).await;
    let learn = s.learn_contact_key("a@x.org", "F1", b"k1", KeySource::Autocrypt, false);
    assert_eq!(while_another_writes(&s, busy, learn).await, crate::store::keys::KeyLearned::New);
    s.learn_contact_key("a@x.org", "F2", b"k2", KeySource::Gossip, false).await.expect("a change");
    sqlx::query("DELETE FROM imap_cursor WHERE folder = 'other'").execute(&s.pool).await.expect("reset");

    let (s, busy) = signalling(&path, &plain.opts).await;
    assert!(while_another_writes(&s, busy, s.accept_key_change("a@x.org", "F2")).await, "the change was there");
    let key = s.contact_key("a@x.org").await.expect("read").expect("a key");
    assert_eq!((key.fingerprint.as_str(), key.public_key.as_slice()), ("F2", b"k2".as_slice()));
}
