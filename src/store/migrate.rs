//! `coi-bridge migrate-store`: copies one account's SQLite store (its daemon stopped) into an empty PostgreSQL store in the account's schema, every table in one PostgreSQL transaction with its ids, then counts each table on both sides.
//!
//! The SQLite file is locked twice for the whole copy: exclusively with `flock`, which
//! every process that opens the store holds shared for as long as it has it open (a
//! running daemon holds it even while its idle accounts have no connection open: that is
//! how "the daemon is running" is told, and no daemon can start on the store meanwhile),
//! and in SQLite's exclusive locking mode with `BEGIN EXCLUSIVE` (nothing else that opens
//! the file can write to it until the copy is over). The copy is one PostgreSQL transaction: a copy cut
//! off (a lost connection, a full disk, a mismatch in the counts) leaves the target as
//! empty as it was, so the command can simply be run again; an empty target is the one
//! thing it asks for. Rows are streamed in batches of at most [`BATCH_ROWS`] rows or
//! [`BATCH_BYTES`] bytes, so memory stays bounded whatever the store's size.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, Postgres};

use super::postgres::describe;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteLockingMode};
use sqlx::{AssertSqlSafe, Connection as _, QueryBuilder, Row as _};

use super::postgres::PgStore;

/// Every table of the store, parents before children (foreign keys: `chat` before
/// `chat_member`, `message`, `outbox` and `portal`; `message` before `attachment`).
/// A table the SQLite schema has and this list lacks stops the copy before it starts.
pub const TABLES: &[&str] = &[
    "chat",
    "chat_member",
    "message",
    "attachment",
    "message_map",
    "outbox",
    "imap_cursor",
    "rejected",
    "bridge_state",
    "account_key",
    "contact_key",
    "key_change",
    "securejoin_invite",
    "securejoin_join",
    "portal",
    "contact_avatar",
    "dead_letter",
    "send_journal",
    "remote_person",
    "pairing",
    "personal_invite",
    "migration_sample",
    "announcement",
];

/// Rows per INSERT (PostgreSQL allows 65535 parameters: 500 rows of up to 14 columns).
pub const BATCH_ROWS: usize = 500;

/// A batch is sent early once its values reach this many bytes (attachments, raw mail).
pub const BATCH_BYTES: usize = 8 << 20;

/// How long to wait for the SQLite lock before deciding someone holds it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Columns PostgreSQL has that SQLite keeps implicitly: `securejoin_invite.seq` stands in
/// for SQLite's rowid (invites are read in the order made).
const IMPLICIT: &[(&str, &str, &str)] = &[("securejoin_invite", "seq", "rowid")];

/// How far the copy of one table has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    pub table: &'a str,
    pub copied: u64,
    pub total: u64,
}

/// One table's rows on both sides after the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    pub sqlite: u64,
    pub postgres: u64,
}

/// What a migration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub schema_version: i64,
    pub tables: Vec<TableCount>,
    /// False when the counts differed: the transaction was rolled back, the target is empty.
    pub committed: bool,
}

impl Report {
    pub fn mismatches(&self) -> impl Iterator<Item = &TableCount> {
        self.tables.iter().filter(|t| t.sqlite != t.postgres)
    }
}

/// One value in flight, typed by the PostgreSQL column it goes to.
enum Value {
    Int(Option<i64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn size(&self) -> usize {
        match self {
            Value::Int(_) | Value::Bool(_) => 8,
            Value::Text(t) => t.as_ref().map_or(0, String::len),
            Value::Bytes(b) => b.as_ref().map_or(0, Vec::len),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Bool,
    Text,
    Bytes,
}

struct Column {
    name: String,
    kind: Kind,
    identity: bool,
    /// What to select on the SQLite side.
    source: String,
}

/// Opens the SQLite store for the copy, exclusively; an error that says who holds it.
/// Both locks last as long as the returned file and connection.
async fn lock_sqlite(path: &Path) -> anyhow::Result<(SqliteConnection, std::fs::File)> {
    let held = super::sqlite::lock_exclusive(path)?;
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .locking_mode(SqliteLockingMode::Exclusive)
        .busy_timeout(LOCK_WAIT);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
    if let Err(e) = sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut conn).await {
        let busy =
            matches!(&e, sqlx::Error::Database(db) if db.message().contains("locked") || db.message().contains("busy"));
        if busy {
            bail!(
                "the SQLite store {} {} (its SQLite lock is held). Stop the daemon first (systemctl stop \
                 coi-bridge), then migrate",
                path.display(),
                super::sqlite::IN_USE
            );
        }
        return Err(e).with_context(|| format!("cannot lock the SQLite store {}", path.display()));
    }
    Ok((conn, held))
}

async fn sqlite_count(conn: &mut SqliteConnection, table: &str) -> anyhow::Result<u64> {
    let n: i64 =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\""))).fetch_one(&mut *conn).await?;
    Ok(n.max(0) as u64)
}

async fn pg_count(conn: &mut PgConnection, table: &str) -> anyhow::Result<u64> {
    let n: i64 =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\""))).fetch_one(&mut *conn).await?;
    Ok(n.max(0) as u64)
}

/// The tables of the SQLite schema (sqlite_master), without SQLite's own.
pub async fn sqlite_tables(conn: &mut SqliteConnection) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// The target's columns of `table`, each with where its value comes from in SQLite.
async fn columns(sqlite: &mut SqliteConnection, pg: &mut PgConnection, table: &str) -> anyhow::Result<Vec<Column>> {
    let have: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
        .fetch_all(&mut *sqlite)
        .await?;
    let rows = sqlx::query(
        "SELECT column_name::TEXT, data_type::TEXT, is_identity::TEXT FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *pg)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.try_get(0)?;
        let data_type: String = row.try_get(1)?;
        let identity: String = row.try_get(2)?;
        let kind = match data_type.as_str() {
            "bigint" | "integer" | "smallint" => Kind::Int,
            "boolean" => Kind::Bool,
            "text" => Kind::Text,
            "bytea" => Kind::Bytes,
            other => bail!("{table}.{name}: PostgreSQL type {other} has no SQLite counterpart here"),
        };
        let source = if have.contains(&name) {
            format!("\"{name}\"")
        } else if let Some((_, _, expr)) = IMPLICIT.iter().find(|(t, c, _)| *t == table && *c == name) {
            (*expr).to_owned()
        } else {
            bail!("{table}.{name}: the PostgreSQL column has no SQLite counterpart (are both at the same schema?)");
        };
        out.push(Column { name, kind, identity: identity == "YES", source });
    }
    if let Some(missing) = have.iter().find(|h| !out.iter().any(|c| &c.name == *h)) {
        bail!("{table}.{missing}: the SQLite column has no PostgreSQL counterpart (are both at the same schema?)");
    }
    Ok(out)
}

fn read(row: &sqlx::sqlite::SqliteRow, i: usize, kind: Kind) -> Result<Value, sqlx::Error> {
    Ok(match kind {
        Kind::Int => Value::Int(row.try_get(i)?),
        Kind::Bool => Value::Bool(row.try_get::<Option<i64>, _>(i)?.map(|v| v != 0)),
        Kind::Text => Value::Text(row.try_get(i)?),
        Kind::Bytes => Value::Bytes(row.try_get(i)?),
    })
}

async fn insert(pg: &mut PgConnection, table: &str, cols: &[Column], batch: Vec<Vec<Value>>) -> anyhow::Result<()> {
    let names: Vec<String> = cols.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let overriding = if cols.iter().any(|c| c.identity) { " OVERRIDING SYSTEM VALUE" } else { "" };
    let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO \"{table}\" ({}){overriding} ", names.join(", ")));
    q.push_values(batch, |mut b, row| {
        for v in row {
            match v {
                Value::Int(x) => b.push_bind(x),
                Value::Bool(x) => b.push_bind(x),
                Value::Text(x) => b.push_bind(x),
                Value::Bytes(x) => b.push_bind(x),
            };
        }
    });
    q.build().execute(&mut *pg).await.with_context(|| format!("inserting into {table}"))?;
    Ok(())
}

/// Streams one table from SQLite into the PostgreSQL transaction; the rows copied.
async fn copy_table(
    sqlite: &mut SqliteConnection,
    pg: &mut PgConnection,
    table: &'static str,
    progress: &mut impl FnMut(Progress<'_>),
) -> anyhow::Result<u64> {
    let cols = columns(sqlite, pg, table).await?;
    let total = sqlite_count(sqlite, table).await?;
    progress(Progress { table, copied: 0, total });
    let select: Vec<&str> = cols.iter().map(|c| c.source.as_str()).collect();
    let sql = format!("SELECT {} FROM \"{table}\" ORDER BY rowid", select.join(", "));
    let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *sqlite);
    let (mut batch, mut bytes, mut copied) = (Vec::with_capacity(BATCH_ROWS), 0usize, 0u64);
    loop {
        let row = rows.try_next().await.with_context(|| format!("reading {table} from SQLite"))?;
        if let Some(row) = &row {
            let values = cols
                .iter()
                .enumerate()
                .map(|(i, c)| read(row, i, c.kind))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading a row of {table}"))?;
            bytes += values.iter().map(Value::size).sum::<usize>();
            batch.push(values);
        }
        let full = batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES;
        if !batch.is_empty() && (full || row.is_none()) {
            copied += batch.len() as u64;
            insert(pg, table, &cols, std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS))).await?;
            bytes = 0;
            progress(Progress { table, copied, total });
        }
        if row.is_none() {
            break;
        }
    }
    // New rows made by the daemon on PostgreSQL get ids past the copied ones.
    for c in cols.iter().filter(|c| c.identity) {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{col}'), \
             (SELECT COALESCE(MAX(\"{col}\"), 0) + 1 FROM \"{table}\"), false)",
            col = c.name
        )))
        .execute(&mut *pg)
        .await
        .with_context(|| format!("moving {table}.{} past the copied ids", c.name))?;
    }
    Ok(copied)
}

/// Copies the SQLite store at `sqlite` into the PostgreSQL store at `pg_url`, in `schema`
/// (a directory account's, [`super::account_schema`]; made if missing) or the URL's default
/// one (`None`, the main account's): where the daemon opens the account's store. The
/// target is made or migrated to this coi-bridge's schema first and must hold no row.
/// `progress` is called before each table and after each batch.
pub async fn migrate(
    sqlite: &Path,
    pg_url: &str,
    schema: Option<&str>,
    mut progress: impl FnMut(Progress<'_>),
) -> anyhow::Result<Report> {
    let opts = PgConnectOptions::from_str(pg_url)
        .map_err(|e| anyhow::anyhow!("--to: not a usable PostgreSQL URL ({e})"))?
        .application_name("coi-bridge migrate-store");
    // The backend's TLS rule: over TCP without `sslmode` in the URL, verify-full.
    let opts = super::postgres::tls_by_default(pg_url, opts);
    let target = match schema {
        Some(s) => format!("{} schema {s}", describe(&opts)),
        None => describe(&opts),
    };
    // Every statement of the copy in the account's schema, as the daemon's store has it
    // (PgStore::open_in checks the name before the copy connects).
    let opts = match schema {
        Some(s) => opts.options([("search_path", s)]),
        None => opts,
    };
    let (mut lite, _held) = lock_sqlite(sqlite).await?;
    let source_version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut lite).await?;
    let tables = sqlite_tables(&mut lite).await?;
    if let Some(t) = tables.iter().find(|t| !TABLES.contains(&t.as_str())) {
        bail!(
            "the SQLite store has a table {t} that migrate-store does not know: use the coi-bridge that made the store"
        );
    }
    if let Some(t) = TABLES.iter().find(|t| !tables.iter().any(|have| have == *t)) {
        bail!(
            "the SQLite store {} has no table {t} (schema version {source_version}): start the daemon of this \
             coi-bridge on it once (it migrates the store), stop it, then migrate",
            sqlite.display()
        );
    }

    // The target at this coi-bridge's schema (made if new), then the same version on both.
    let where_ = super::OpenOptions { schema: schema.map(str::to_owned), ..Default::default() };
    let pg_version =
        PgStore::open_in(pg_url, &where_).await.with_context(|| format!("--to {target}"))?.schema_version().await?;
    if pg_version != source_version {
        bail!(
            "the SQLite store {} is at schema version {source_version}, the PostgreSQL store {target} at \
             {pg_version}: start this coi-bridge's daemon on the SQLite store once (it migrates it), stop it, then \
             migrate",
            sqlite.display()
        );
    }

    let mut pg =
        PgConnection::connect_with(&opts).await.with_context(|| format!("cannot connect to PostgreSQL at {target}"))?;
    let mut tx = pg.begin().await?;
    for table in TABLES {
        let any: bool = sqlx::query_scalar(AssertSqlSafe(format!("SELECT EXISTS (SELECT 1 FROM \"{table}\")")))
            .fetch_one(&mut *tx)
            .await?;
        if any {
            bail!(
                "the PostgreSQL store {target} is not empty: table {table} has rows. migrate-store copies into an \
                 empty store only (create a new database for it)"
            );
        }
    }
    for table in TABLES {
        copy_table(&mut lite, &mut tx, table, &mut progress).await?;
    }
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        counts.push(TableCount {
            table,
            sqlite: sqlite_count(&mut lite, table).await?,
            postgres: pg_count(&mut tx, table).await?,
        });
    }
    let mut report = Report { schema_version: source_version, tables: counts, committed: false };
    if report.mismatches().next().is_none() {
        tx.commit().await.with_context(|| format!("committing the copy into {target}"))?;
        report.committed = true;
    } else {
        tx.rollback().await?;
    }
    // Read-only: nothing to keep; closing the connection lets go of the lock.
    sqlx::raw_sql("ROLLBACK").execute(&mut lite).await?;
    lite.close().await?;
    Ok(report)
}
