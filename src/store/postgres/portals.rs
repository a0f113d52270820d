//! PostgreSQL: [`PortalStore`], and the outbox rows of a message for the bridges the hub routed it to, inside a write transaction.

use async_trait::async_trait;
use sqlx::{Row, Transaction};

use super::{PgStore, err, now};
use crate::store::StoreResult;
use crate::store::portals::{Portal, PortalStore, RemoteCopy, SendRecord};

fn portal_row(r: &sqlx::postgres::PgRow) -> Portal {
    Portal { id: r.get("id"), chat_id: r.get("chat_id"), bridge: r.get("bridge"), remote_chat: r.get("remote_chat") }
}

impl PgStore {
    /// Queues a message for these bridges (once per bridge).
    pub(super) async fn queue_for_tx(
        tx: &mut Transaction<'_, sqlx::Postgres>,
        chat_id: i64,
        message_id: &str,
        bridges: &[String],
    ) -> StoreResult<()> {
        let ts = now();
        for bridge in bridges {
            sqlx::query(
                "INSERT INTO outbox (target, chat_id, message_id, payload, next_attempt_at, created_at, queued_at_ms)
                 VALUES ($1, $2, $3, ''::bytea, $4, $5, $6) ON CONFLICT (target, message_id) DO NOTHING",
            )
            .bind(bridge)
            .bind(chat_id)
            .bind(message_id)
            .bind(ts)
            .bind(ts)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut **tx)
            .await
            .map_err(err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl PortalStore for PgStore {
    async fn queue_portal_notice(
        &self,
        chat_id: i64,
        notice_id: &str,
        from_addr: &str,
        text: &str,
        targets: &[String],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let inserted = sqlx::query(
            "INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, recorded_at, security)
             VALUES ($1, $2, 'out', $3, $4, '', $5, $6, 'sent') ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(notice_id)
        .bind(chat_id)
        .bind(crate::store::MessageKind::Notice.as_str())
        .bind(from_addr)
        .bind(text)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        if inserted > 0 {
            Self::queue_for_tx(&mut tx, chat_id, notice_id, targets).await?;
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn create_portal(&self, chat_id: i64, bridge: &str, remote_chat: &str) -> StoreResult<Portal> {
        sqlx::query(
            "INSERT INTO portal (chat_id, bridge, remote_chat, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(chat_id)
        .bind(bridge)
        .bind(remote_chat)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(err)?;
        let row = sqlx::query("SELECT * FROM portal WHERE bridge = $1 AND remote_chat = $2")
            .bind(bridge)
            .bind(remote_chat)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(portal_row(&row))
    }

    async fn delete_portal(&self, bridge: &str, remote_chat: &str) -> StoreResult<bool> {
        let res = sqlx::query("DELETE FROM portal WHERE bridge = $1 AND remote_chat = $2")
            .bind(bridge)
            .bind(remote_chat)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(res.rows_affected() > 0)
    }

    async fn move_portal(&self, bridge: &str, from: &str, to: &str) -> StoreResult<bool> {
        let res = sqlx::query("UPDATE portal SET remote_chat = $1 WHERE bridge = $2 AND remote_chat = $3")
            .bind(to)
            .bind(bridge)
            .bind(from)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(res.rows_affected() > 0)
    }

    async fn portals(&self) -> StoreResult<Vec<Portal>> {
        let rows = sqlx::query("SELECT * FROM portal ORDER BY id").fetch_all(&self.pool).await.map_err(err)?;
        Ok(rows.iter().map(portal_row).collect())
    }

    async fn portals_of_chat(&self, chat_id: i64) -> StoreResult<Vec<Portal>> {
        let rows = sqlx::query("SELECT * FROM portal WHERE chat_id = $1 ORDER BY id")
            .bind(chat_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(portal_row).collect())
    }

    async fn portal_by_remote(&self, bridge: &str, remote_chat: &str) -> StoreResult<Option<Portal>> {
        let row = sqlx::query("SELECT * FROM portal WHERE bridge = $1 AND remote_chat = $2")
            .bind(bridge)
            .bind(remote_chat)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(portal_row))
    }

    async fn map_remote(&self, message_id: &str, bridge: &str, c: &RemoteCopy) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO message_map (message_id, bridge, remote_chat, remote_id, part) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(message_id)
        .bind(bridge)
        .bind(&c.remote_chat)
        .bind(&c.remote_id)
        .bind(c.part)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn unmap_remote(&self, message_id: &str, bridge: &str, remote_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM message_map WHERE message_id = $1 AND bridge = $2 AND remote_id = $3")
            .bind(message_id)
            .bind(bridge)
            .bind(remote_id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn remote_copies(&self, message_id: &str, bridge: &str) -> StoreResult<Vec<RemoteCopy>> {
        let rows = sqlx::query(
            "SELECT remote_chat, remote_id, part FROM message_map WHERE message_id = $1 AND bridge = $2 ORDER BY part",
        )
        .bind(message_id)
        .bind(bridge)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| RemoteCopy { remote_chat: r.get(0), remote_id: r.get(1), part: r.get(2) })
            .collect())
    }

    async fn coi_id_of_remote(&self, bridge: &str, remote_chat: &str, remote_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "SELECT message_id FROM message_map WHERE bridge = $1 AND remote_chat = $2 AND remote_id = $3 LIMIT 1",
        )
        .bind(bridge)
        .bind(remote_chat)
        .bind(remote_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn begin_send(&self, bridge: &str, key: &str) -> StoreResult<SendRecord> {
        let inserted = sqlx::query(
            "INSERT INTO send_journal (bridge, key, started_at) VALUES ($1, $2, $3)
             ON CONFLICT (bridge, key) DO NOTHING",
        )
        .bind(bridge)
        .bind(key)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        if inserted == 1 {
            return Ok(SendRecord::New);
        }
        let row = sqlx::query("SELECT remote_ids, started_at FROM send_journal WHERE bridge = $1 AND key = $2")
            .bind(bridge)
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(match row.get::<Option<String>, _>(0) {
            Some(ids) => SendRecord::Done(ids.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect()),
            None => SendRecord::Unfinished(row.get(1)),
        })
    }

    async fn finish_send(&self, bridge: &str, key: &str, remote_ids: &[String]) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO send_journal (bridge, key, remote_ids, started_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (bridge, key) DO UPDATE SET remote_ids = excluded.remote_ids",
        )
        .bind(bridge)
        .bind(key)
        .bind(remote_ids.join("\n"))
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn abandon_send(&self, bridge: &str, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM send_journal WHERE bridge = $1 AND key = $2 AND remote_ids IS NULL")
            .bind(bridge)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn prune_send_journal(&self, before: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM send_journal WHERE started_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(done.rows_affected())
    }

    async fn bridge_state(&self, bridge: &str, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM bridge_state WHERE bridge = $1 AND key = $2")
            .bind(bridge)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_bridge_state(&self, bridge: &str, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO bridge_state (bridge, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (bridge, key) DO UPDATE SET value = excluded.value",
        )
        .bind(bridge)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }
}
