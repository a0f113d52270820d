//! Account leases on PostgreSQL: which daemon runs which account, and the epoch that fences a store whose lease has passed on.
//!
//! One shared table, `public.coi_lease (account, holder, epoch, expires_at)`, made by
//! [`Leases::open`]. Every time is the database's clock (`clock_timestamp()`), never a
//! daemon's, so daemons whose clocks disagree still agree on who holds what.
//!
//! - [`Leases::try_acquire`] takes an account that is free, expired (or released), or already
//!   ours. Every change of holder, and taking back our own lease once it had expired, bumps
//!   `epoch`; extending a lease we still hold keeps it, so a store opened with its
//!   [`Fence`] stays usable.
//! - [`Leases::renew`] extends every lease a daemon still holds in one statement and returns
//!   which those are; an account missing from the answer is lost and must stop at once.
//!
//! **Fencing.** A PostgreSQL store opened with a [`Fence`] carries it in its session settings
//! (`coi.account`, `coi.holder`, `coi.epoch`); a statement-level trigger on every table of
//! the account's schema (`postgres/fence.rs`) checks it against this table before each
//! transaction's first write and refuses with SQLSTATE `CB001` ([`StoreError::Fenced`](super::StoreError::Fenced))
//! unless the lease is still that holder's, at that epoch, unexpired. The check takes the
//! lease row `FOR KEY SHARE` until the writing transaction ends, and a takeover locks the row
//! `FOR UPDATE` first, so it waits for the old holder's writes in flight: none of them commits
//! after the new epoch began. Renewals only update the row (no key change), so they never wait
//! for the holder's own writes.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::{PgPool, Row as _};

use super::StoreResult;
use super::postgres::{cluster_pool, err};

/// The SQLSTATE of a write refused because the store's lease is no longer current.
pub const FENCED_SQLSTATE: &str = "CB001";

/// The advisory lock the lease table is made under: "coi-leas" in ASCII.
const LEASE_LOCK: i64 = 0x636f_692d_6c65_6173;

/// A lease call waits at most this long for a row lock (a takeover waiting for the old
/// holder's write in flight) before it fails as [`StoreError::Retry`](super::StoreError::Retry): a stuck writer cannot
/// hold up the lease loop, and with it the renewal of every other account.
const LOCK_TIMEOUT: &str = "5s";

/// Connections of the lease handle: the lease loop is one task.
const MAX_CONNECTIONS: u32 = 2;

/// Who may write an account's store: the holder and epoch of the lease it was opened under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The account's key (its address, lower-cased).
    pub account: String,
    /// The daemon holding the lease (`[cluster] node`).
    pub holder: String,
    /// Bumped on every change of holder: a store fenced with an older epoch cannot write.
    pub epoch: i64,
}

/// One lease, as [`Leases::list`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub account: String,
    pub holder: String,
    pub epoch: i64,
    /// When it expires (unix milliseconds, the database's clock).
    pub expires_at_ms: i64,
    /// Not expired by the database's clock at the time of the read.
    pub live: bool,
}

/// The lease table of one PostgreSQL database.
pub struct Leases {
    pool: PgPool,
}

impl Leases {
    /// Connects to the database at `url` (the daemons' shared `store.url`) and makes the lease
    /// table if it is missing.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let (pool, at) =
            cluster_pool(url, "coi-bridge-lease", MAX_CONNECTIONS, "leases", &[("lock_timeout", LOCK_TIMEOUT)]).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LEASE_LOCK).execute(&mut *tx).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS public.coi_lease (
                 account     TEXT        PRIMARY KEY,
                 holder      TEXT        NOT NULL,
                 epoch       BIGINT      NOT NULL,
                 expires_at  TIMESTAMPTZ NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await
        .with_context(|| format!("leases: making public.coi_lease in {at}"))?;
        tx.commit().await?;
        Ok(Self { pool })
    }

    /// Takes the lease on `account` for `ttl` if it is free, expired or already `holder`'s;
    /// `None` while another daemon holds it. Taking it over waits for the old holder's
    /// writes in flight (up to the lock timeout, then [`StoreError::Retry`](super::StoreError::Retry)).
    pub async fn try_acquire(&self, account: &str, holder: &str, ttl: Duration) -> StoreResult<Option<Fence>> {
        let ttl = ttl.as_secs_f64();
        let fence = |epoch: i64| Fence { account: account.to_owned(), holder: holder.to_owned(), epoch };
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Still ours: extend it and keep the epoch (no wait for our own writes).
        let ours = sqlx::query(
            "UPDATE public.coi_lease SET expires_at = clock_timestamp() + make_interval(secs => $3)
             WHERE account = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING epoch",
        )
        .bind(account)
        .bind(holder)
        .bind(ttl)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if let Some(row) = ours {
            tx.commit().await.map_err(err)?;
            return Ok(Some(fence(row.get(0))));
        }
        // Never leased: the first holder, epoch 1.
        let new = sqlx::query(
            "INSERT INTO public.coi_lease (account, holder, epoch, expires_at)
             VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
             ON CONFLICT (account) DO NOTHING RETURNING epoch",
        )
        .bind(account)
        .bind(holder)
        .bind(ttl)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if let Some(row) = new {
            tx.commit().await.map_err(err)?;
            return Ok(Some(fence(row.get(0))));
        }
        // Expired or released: FOR UPDATE waits for the old holder's writes in flight (they
        // hold the row FOR KEY SHARE) and then checks again that it is still free.
        let free = sqlx::query(
            "SELECT epoch FROM public.coi_lease WHERE account = $1 AND expires_at <= clock_timestamp() FOR UPDATE",
        )
        .bind(account)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if free.is_none() {
            tx.rollback().await.map_err(err)?;
            return Ok(None);
        }
        let epoch: i64 = sqlx::query(
            "UPDATE public.coi_lease
             SET holder = $2, epoch = epoch + 1, expires_at = clock_timestamp() + make_interval(secs => $3)
             WHERE account = $1 RETURNING epoch",
        )
        .bind(account)
        .bind(holder)
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?
        .get(0);
        tx.commit().await.map_err(err)?;
        tracing::info!(account, holder, epoch, "lease taken");
        Ok(Some(fence(epoch)))
    }

    /// Extends, in one statement, every lease of `fences` that `holder` still holds at its
    /// epoch and that has not expired; returns the accounts so extended. Every other account
    /// of `fences` is lost: its workers must stop now (its store is already fenced).
    pub async fn renew(&self, holder: &str, fences: &[Fence], ttl: Duration) -> StoreResult<Vec<String>> {
        let (accounts, epochs): (Vec<&str>, Vec<i64>) =
            fences.iter().filter(|f| f.holder == holder).map(|f| (f.account.as_str(), f.epoch)).unzip();
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "UPDATE public.coi_lease AS l SET expires_at = clock_timestamp() + make_interval(secs => $2)
             FROM unnest($3::TEXT[], $4::BIGINT[]) AS f(account, epoch)
             WHERE l.account = f.account AND l.epoch = f.epoch AND l.holder = $1
               AND l.expires_at > clock_timestamp()
             RETURNING l.account",
        )
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .bind(&accounts)
        .bind(&epochs)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Gives the lease up (a clean stop): it expires now, so another daemon may take it at
    /// once, with the next epoch. A lease that already passed on is left alone.
    pub async fn release(&self, fence: &Fence) -> StoreResult<()> {
        sqlx::query(
            "UPDATE public.coi_lease SET expires_at = clock_timestamp()
             WHERE account = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()",
        )
        .bind(&fence.account)
        .bind(&fence.holder)
        .bind(fence.epoch)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    /// The lease handle's pool, for the node table beside it ([`super::nodes`]).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Every lease, by account.
    pub async fn list(&self) -> StoreResult<Vec<LeaseRow>> {
        let rows = sqlx::query(
            "SELECT account, holder, epoch, (extract(epoch FROM expires_at) * 1000)::BIGINT,
                    expires_at > clock_timestamp()
             FROM public.coi_lease ORDER BY account COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| LeaseRow {
                account: r.get(0),
                holder: r.get(1),
                epoch: r.get(2),
                expires_at_ms: r.get(3),
                live: r.get(4),
            })
            .collect())
    }
}

/// The PostgreSQL schema of the account with this address: `acct_`, the lower-cased
/// address with everything but ASCII letters and digits turned into `_` (cut to 44 bytes),
/// `_`, and 12 hex digits of the lower-cased address's SHA-256, so addresses that read
/// alike (`a.b@x`, `a_b@x`) or share a long prefix still get schemas of their own. At most
/// 62 bytes (PostgreSQL keeps 63); stable across versions: changing it loses every store.
pub fn account_schema(address: &str) -> String {
    use sha2::Digest as _;
    let address = address.to_lowercase();
    let mut readable: String =
        address.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '_' }).collect();
    readable.truncate(44);
    let digest = sha2::Sha256::digest(address.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("acct_{readable}_{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_schemas_are_stable_lower_case_identifiers_that_do_not_collide() {
        let s = account_schema("Bridge@Example.org");
        assert_eq!(s, account_schema("bridge@example.org"), "the account key is the lower-cased address");
        assert!(s.starts_with("acct_bridge_example_org_"), "{s}");
        for address in ["bridge@example.org", "a.b@x.org", "a_b@x.org", "ünïcode@bücher.example", &"x".repeat(300)] {
            let s = account_schema(address);
            assert!(s.len() <= 63, "{s}");
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{s}");
            assert!(s.starts_with("acct_"), "{s}");
        }
        // Addresses that read alike, or share their first 44 bytes, still differ.
        assert_ne!(account_schema("a.b@x.org"), account_schema("a_b@x.org"));
        let long = "y".repeat(60);
        assert_ne!(account_schema(&format!("{long}1@x.org")), account_schema(&format!("{long}2@x.org")));
        let many: std::collections::HashSet<String> =
            (0..10_000).map(|i| account_schema(&format!("user{i}@example.org"))).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn the_schema_name_of_an_account_never_changes() {
        // Pinned: another derivation would open every account in a new, empty schema.
        assert_eq!(account_schema("bridge@example.org"), "acct_bridge_example_org_e6e16ca810c6");
        let long = account_schema(&format!("{}@example.org", "a".repeat(100)));
        assert_eq!(long.len(), 5 + 44 + 1 + 12);
    }
}
