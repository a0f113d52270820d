//! The SQLite side of [`DeadLetterStore`]: the `dead_letter` table (migration 0007).

use async_trait::async_trait;
use sqlx::Row as _;

use super::{SqliteStore, err};
use crate::store::StoreResult;
use crate::store::deadletter::{DeadLetterRow, DeadLetterStore};

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn record_dead_letter(&self, row: &DeadLetterRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO dead_letter (bridge, remote_chat, event, kind, reason, payload, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (bridge, event) DO UPDATE SET kind = excluded.kind, reason = excluded.reason",
        )
        .bind(&row.bridge)
        .bind(&row.remote_chat)
        .bind(&row.event)
        .bind(&row.kind)
        .bind(&row.reason)
        .bind(&row.payload)
        .bind(row.created_at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn dead_letters(&self, bridge: &str) -> StoreResult<Vec<DeadLetterRow>> {
        let rows = sqlx::query("SELECT * FROM dead_letter WHERE bridge = ? ORDER BY id")
            .bind(bridge)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterRow {
                bridge: r.get("bridge"),
                remote_chat: r.get("remote_chat"),
                event: r.get("event"),
                kind: r.get("kind"),
                reason: r.get("reason"),
                payload: r.get("payload"),
                created_at: r.get("created_at"),
            })
            .collect())
    }
}
