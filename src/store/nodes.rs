//! Which daemons share a PostgreSQL store right now: each announces itself in `public.coi_node` with an expiry, so every daemon can work out its fair share of the accounts.
//!
//! A daemon renews its row on each lease tick ([`Nodes::heartbeat`], which also answers how
//! many daemons are live by the database's clock) and deletes it on a clean stop
//! ([`Nodes::leave`]); a killed daemon's row expires after `cluster.lease_secs`, as its
//! leases do. The rows decide nothing about who may write (the leases and their fence do);
//! they only spread the accounts: a daemon takes free accounts up to
//! [`fair_share`] and hands over what it holds beyond it.

use std::time::Duration;

use sqlx::{PgPool, Row as _};

use super::StoreResult;
use super::postgres::err;

/// The advisory lock the node table is made under: "coi-node" in ASCII.
const NODE_LOCK: i64 = 0x636f_692d_6e6f_6465;

/// The live daemons of one PostgreSQL store.
pub struct Nodes {
    pool: PgPool,
}

impl Nodes {
    /// The node table of the database `pool` reaches (the leases' pool), made if missing.
    pub async fn open(pool: PgPool) -> StoreResult<Self> {
        let mut tx = pool.begin().await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(NODE_LOCK).execute(&mut *tx).await.map_err(err)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS public.coi_node (
                 node       TEXT        PRIMARY KEY,
                 expires_at TIMESTAMPTZ NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Self { pool })
    }

    /// Says `node` is live for `ttl` more, drops rows long expired, and returns how many
    /// daemons are live now (this one included).
    pub async fn heartbeat(&self, node: &str, ttl: Duration) -> StoreResult<usize> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query(
            "INSERT INTO public.coi_node (node, expires_at) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (node) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // A node dead for a day is gone for good; its row only clutters the table.
        sqlx::query("DELETE FROM public.coi_node WHERE expires_at < clock_timestamp() - interval '1 day'")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let live: i64 = sqlx::query("SELECT count(*) FROM public.coi_node WHERE expires_at > clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?
            .get(0);
        tx.commit().await.map_err(err)?;
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    /// Takes `node` out at once (a clean stop): the others count one daemon fewer on
    /// their next tick and take its accounts.
    pub async fn leave(&self, node: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM public.coi_node WHERE node = $1").bind(node).execute(&self.pool).await.map_err(err)?;
        Ok(())
    }
}

/// How many of `accounts` one of `nodes` live daemons should run: the accounts spread as
/// evenly as they go, rounded up, so together the daemons always cover all of them.
pub fn fair_share(accounts: usize, nodes: usize) -> usize {
    accounts.div_ceil(nodes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_cover_every_account() {
        assert_eq!(fair_share(0, 2), 0);
        assert_eq!(fair_share(1, 2), 1, "one account, two daemons: either may run it");
        assert_eq!(fair_share(4, 2), 2);
        assert_eq!(fair_share(5, 2), 3);
        assert_eq!(fair_share(5, 0), 5, "no node counted (cannot happen): this one runs all");
        for accounts in 0..50 {
            for nodes in 1..7 {
                assert!(fair_share(accounts, nodes) * nodes >= accounts);
            }
        }
    }
}
