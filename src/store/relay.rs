//! The appservice event relay on PostgreSQL: events a daemon's shared Matrix endpoint took for rooms none of its bridges has, kept in `public.coi_appservice_relay` for the daemon that has them (see `coi_bridge_api::relay`).
//!
//! One shared table next to the leases, made by [`PgRelay::open`]:
//! `(id BIGSERIAL, registration TEXT, room_id TEXT, state_key TEXT, event TEXT, received_at TIMESTAMPTZ)`.
//! `registration` is a digest of the registration's `hs_token`, never the token; `event` is
//! the event's JSON as the homeserver sent it (bounded by the transaction size cap);
//! `state_key` is kept so an invitation of a bot finds the daemon of that bot's bridge.
//! Times are the database's clock.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use coi_bridge_api::{EventRelay, Relayed};
use serde_json::Value;
use sqlx::{PgPool, Row as _};

use super::postgres::cluster_pool;

/// The advisory lock the relay table is made under: "coi-rela" in ASCII.
const RELAY_LOCK: i64 = 0x636f_692d_7265_6c61;

/// Connections of the relay: the endpoints (one transaction at a time each) and the drain
/// round.
const MAX_CONNECTIONS: u32 = 4;

/// The relay table of one PostgreSQL database.
pub struct PgRelay {
    pool: PgPool,
    /// `appservice_relayed_events_total{step}`: written, drained, pruned.
    counts: Option<prometheus::IntCounterVec>,
}

impl PgRelay {
    /// Connects to the database at `url` (the daemons' shared `store.url`) and makes the
    /// relay table if it is missing.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let (pool, at) = cluster_pool(url, "coi-bridge-relay", MAX_CONNECTIONS, "event relay", &[]).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(RELAY_LOCK).execute(&mut *tx).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS public.coi_appservice_relay (
                 id           BIGSERIAL   PRIMARY KEY,
                 registration TEXT        NOT NULL,
                 room_id      TEXT        NOT NULL,
                 state_key    TEXT,
                 event        TEXT        NOT NULL,
                 received_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
             );
             CREATE INDEX IF NOT EXISTS coi_appservice_relay_room
                 ON public.coi_appservice_relay (registration, room_id, id);
             CREATE INDEX IF NOT EXISTS coi_appservice_relay_age ON public.coi_appservice_relay (received_at);",
        )
        .execute(&mut *tx)
        .await
        .with_context(|| format!("event relay: making public.coi_appservice_relay in {at}"))?;
        tx.commit().await?;
        Ok(Self { pool, counts: None })
    }

    /// Counts what the relay does in `metrics`: `appservice_relayed_events_total{step}`
    /// (`written`, `drained`, `pruned`).
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        let opts = prometheus::Opts::new(
            "appservice_relayed_events_total",
            "Appservice events relayed between daemons: written for another daemon, drained to a bridge here, pruned unclaimed",
        );
        match prometheus::IntCounterVec::new(opts, &["step"]) {
            Ok(c) => {
                if let Err(e) = metrics.registry.register(Box::new(c.clone())) {
                    tracing::warn!(error = %e, "the relayed-events metric is not exported");
                }
                for step in ["written", "drained", "pruned"] {
                    c.with_label_values(&[step]).inc_by(0);
                }
                self.counts = Some(c);
            }
            Err(e) => tracing::warn!(error = %e, "the relayed-events metric could not be made"),
        }
        self
    }

    fn count(&self, step: &str, n: u64) {
        if let Some(c) = &self.counts {
            c.with_label_values(&[step]).inc_by(n);
        }
    }
}

fn text(e: sqlx::Error) -> String {
    super::postgres::err(e).to_string()
}

#[async_trait]
impl EventRelay for PgRelay {
    async fn put(&self, registration: &str, events: &[Value]) -> Result<(), String> {
        let mut rooms = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        for ev in events {
            let Some(room) = ev["room_id"].as_str() else { continue };
            rooms.push(room.to_owned());
            keys.push(ev["state_key"].as_str().map(str::to_owned));
            bodies.push(ev.to_string());
        }
        // One statement: all of the transaction's relayed events, or none.
        sqlx::query(
            "INSERT INTO public.coi_appservice_relay (registration, room_id, state_key, event)
             SELECT $1, r, k, e FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) WITH ORDINALITY AS t(r, k, e, n)
             ORDER BY n",
        )
        .bind(registration)
        .bind(&rooms)
        .bind(&keys)
        .bind(&bodies)
        .execute(&self.pool)
        .await
        .map_err(text)?;
        self.count("written", bodies.len() as u64);
        Ok(())
    }

    async fn take(
        &self,
        registration: &str,
        rooms: &[String],
        bots: &[String],
        limit: usize,
    ) -> Result<Vec<Relayed>, String> {
        let rows = sqlx::query(
            "SELECT id, event FROM public.coi_appservice_relay
             WHERE registration = $1 AND (room_id = ANY($2::TEXT[]) OR state_key = ANY($3::TEXT[]))
             ORDER BY id LIMIT $4",
        )
        .bind(registration)
        .bind(rooms)
        .bind(bots)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(text)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0);
            let body: String = r.get(1);
            match serde_json::from_str(&body) {
                Ok(event) => out.push(Relayed { id, event }),
                // Written by us as JSON: only a hand-edited row gets here. It stays until pruned.
                Err(e) => tracing::warn!(id, error = %e, "a relayed event that is not JSON; left to be pruned"),
            }
        }
        Ok(out)
    }

    async fn done(&self, ids: &[i64]) -> Result<(), String> {
        let r = sqlx::query("DELETE FROM public.coi_appservice_relay WHERE id = ANY($1::BIGINT[])")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(text)?;
        self.count("drained", r.rows_affected());
        Ok(())
    }

    async fn prune(&self, ttl: Duration) -> Result<u64, String> {
        let r = sqlx::query(
            "DELETE FROM public.coi_appservice_relay WHERE received_at < clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(text)?;
        self.count("pruned", r.rows_affected());
        Ok(r.rows_affected())
    }
}
