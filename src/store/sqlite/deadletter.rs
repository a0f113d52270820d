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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_letters_are_kept_once_per_event_with_the_latest_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).await.expect("open");
        let mut row = DeadLetterRow {
            bridge: "matrix".into(),
            remote_chat: Some("!room".into()),
            event: "$e".into(),
            kind: "gave_up".into(),
            reason: "store busy".into(),
            payload: "{}".into(),
            created_at: 1,
        };
        store.record_dead_letter(&row).await.expect("record");
        row.kind = "failed".into();
        row.reason = "403".into();
        store.record_dead_letter(&row).await.expect("again");
        let other = DeadLetterRow { bridge: "telegram".into(), remote_chat: None, ..row.clone() };
        store.record_dead_letter(&other).await.expect("other bridge");
        assert_eq!(store.dead_letters("matrix").await.expect("read"), vec![row]);
        assert_eq!(store.dead_letters("telegram").await.expect("read"), vec![other]);
    }
}
