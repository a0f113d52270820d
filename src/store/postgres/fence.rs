//! PostgreSQL: the lease fence in the database, a statement-level trigger on every table of a store's schema that refuses writes under a lease that passed on.
//!
//! A session opened with a [`Fence`](crate::store::lease::Fence) carries `coi.account`,
//! `coi.holder` and `coi.epoch` as settings. Before a transaction's first write the trigger
//! reads that account's row of `public.coi_lease` `FOR KEY SHARE` and raises SQLSTATE
//! `CB001` unless the holder and epoch match and the lease has not expired by the database's
//! clock. The row lock lasts until the transaction ends, so a takeover (which locks the row
//! `FOR UPDATE`) waits for it; later writes of the same transaction skip the check
//! (`coi.fence_checked`, local to the transaction). A session without `coi.account` (the CLI,
//! migrate-store, a single daemon without leases) is let through.
//!
//! [`install`] runs after the migrations on every open: it refreshes the function when its
//! body changed and puts the trigger on each table that lacks it, so tables added by later
//! migrations are fenced too.

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, Postgres, Row as _, Transaction};

/// The body of `coi_fence()`; compared with the installed one, so a change here is applied
/// to existing stores on their next open.
const BODY: &str = r#"
DECLARE
    acct TEXT := current_setting('coi.account', true);
    lease RECORD;
BEGIN
    IF acct IS NULL OR acct = '' OR current_setting('coi.fence_checked', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT holder, epoch, expires_at > clock_timestamp() AS live INTO lease
    FROM public.coi_lease WHERE account = acct FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease lost: account % has no lease (this store is fenced as % epoch %)',
            acct, current_setting('coi.holder', true), current_setting('coi.epoch', true)
            USING ERRCODE = 'CB001';
    END IF;
    IF lease.holder IS DISTINCT FROM current_setting('coi.holder', true)
       OR lease.epoch::TEXT IS DISTINCT FROM current_setting('coi.epoch', true)
       OR NOT lease.live THEN
        RAISE EXCEPTION 'lease lost: account % is held by % at epoch % (%), this store is fenced as % epoch %',
            acct, lease.holder, lease.epoch, CASE WHEN lease.live THEN 'live' ELSE 'expired' END,
            current_setting('coi.holder', true), current_setting('coi.epoch', true)
            USING ERRCODE = 'CB001';
    END IF;
    PERFORM set_config('coi.fence_checked', 'on', true);
    RETURN NULL;
END
"#;

/// The trigger's name on every table.
const TRIGGER: &str = "coi_fence";

/// `"name"`, with inner quotes doubled.
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Installs or refreshes the fence function in `schema` and puts the trigger on every table
/// there that lacks it (the lease table itself excepted, when it shares the schema).
pub(super) async fn install(tx: &mut Transaction<'_, Postgres>, schema: &str) -> anyhow::Result<()> {
    let installed: Option<String> = sqlx::query(
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = $1 AND p.proname = 'coi_fence'",
    )
    .bind(schema)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.get(0));
    if installed.as_deref() != Some(BODY) {
        let sql = format!(
            "CREATE OR REPLACE FUNCTION {}.coi_fence() RETURNS trigger LANGUAGE plpgsql AS $fence${BODY}$fence$",
            quote(schema)
        );
        // The schema passed check_schema and is quoted; BODY is ours.
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await.context("installing the lease fence function")?;
    }
    let unfenced: Vec<String> = sqlx::query(
        "SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> 'coi_lease'
           AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $2)
         ORDER BY c.relname",
    )
    .bind(schema)
    .bind(TRIGGER)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    for table in unfenced {
        let sql = format!(
            "CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {s}.{t}
             FOR EACH STATEMENT EXECUTE FUNCTION {s}.coi_fence()",
            s = quote(schema),
            t = quote(&table),
        );
        // Both names are quoted identifiers.
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await.with_context(|| format!("fencing table {table}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("acct_a"), "\"acct_a\"");
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }
}
