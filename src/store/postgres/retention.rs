//! PostgreSQL: [`RetentionStore`]: rejected mail, unverified chats and dead letters listed, released, dropped and pruned.
//!
//! A released rejected mail keeps its row, with its digest moved aside
//! (`released:ID:DIGEST`): if ingest sets it apart again, the new row (real digest) does
//! not collide with it, and the old row goes once ingest is done with it.

use async_trait::async_trait;
use sqlx::Row as _;

use super::{PgStore, err};
use crate::store::StoreResult;
use crate::store::retention::{Caps, Pruned, Release, Released, RetentionStore, SetApart, UnverifiedChat};

/// The digest prefix of a released row; `;` sorts right after `:` in the "C" collation
/// (every comparison here names it: a database's own collation may ignore punctuation), so
/// released rows are one range of digests.
const RELEASED_FROM: &str = "released:";
const RELEASED_TO: &str = "released;";

/// How much of a raw copy the listing reads (for its From and Subject).
const HEAD_BYTES: i64 = 8192;

/// The chats pruning may touch: unverified 1:1 chats that no portal shows and that have
/// nothing waiting in an outbox.
const UNVERIFIED: &str = "SELECT c.id FROM chat c WHERE c.kind = 'single' AND c.key LIKE 'unverified:%'
     AND NOT EXISTS (SELECT 1 FROM portal p WHERE p.chat_id = c.id)
     AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.chat_id = c.id AND o.state = 'pending')";

/// What the caps weigh: every prunable item with its time and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Rejected(i64),
    Message(i64),
    DeadLetter(i64),
}

#[async_trait]
impl RetentionStore for PgStore {
    async fn set_apart(&self) -> StoreResult<Vec<SetApart>> {
        let rows = sqlx::query(
            "SELECT id, recorded_at, reason, octet_length(raw)::BIGINT AS bytes, substr(raw, 1, $1::INT) AS head,
                    digest COLLATE \"C\" >= $2 AND digest COLLATE \"C\" < $3 AS released
             FROM rejected ORDER BY recorded_at, id",
        )
        .bind(HEAD_BYTES)
        .bind(RELEASED_FROM)
        .bind(RELEASED_TO)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| SetApart {
                id: r.get("id"),
                recorded_at: r.get("recorded_at"),
                reason: r.get("reason"),
                bytes: r.get::<i64, _>("bytes").max(0) as u64,
                head: r.get("head"),
                released: r.get("released"),
            })
            .collect())
    }

    async fn unverified_chats(&self) -> StoreResult<Vec<UnverifiedChat>> {
        let rows = sqlx::query(
            "SELECT c.id, c.key, COUNT(m.id) AS messages, MAX(m.recorded_at) AS last_at,
                    SUM(length(m.text) + COALESCE((SELECT SUM(octet_length(a.data)) FROM attachment a
                                                   WHERE a.message_row = m.id), 0))::BIGINT AS bytes
             FROM chat c JOIN message m ON m.chat_id = c.id
             WHERE c.kind = 'single' AND c.key LIKE 'unverified:%'
             GROUP BY c.id ORDER BY last_at, c.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let key: String = r.get("key");
                UnverifiedChat {
                    chat_id: r.get("id"),
                    addr: key.strip_prefix("unverified:").unwrap_or(&key).to_owned(),
                    messages: r.get::<i64, _>("messages").max(0) as u64,
                    bytes: r.get::<Option<i64>, _>("bytes").unwrap_or(0).max(0) as u64,
                    last_at: r.get::<Option<i64>, _>("last_at").unwrap_or(0),
                }
            })
            .collect())
    }

    async fn dead_letter_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letter").fetch_one(&self.pool).await.map_err(err)?.get(0);
        Ok(n.max(0) as u64)
    }

    async fn release_rejected(&self, id: i64) -> StoreResult<Release> {
        let Some(row) = sqlx::query("SELECT digest, octet_length(raw)::BIGINT FROM rejected WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(Release::NotFound);
        };
        let digest: String = row.get(0);
        if digest.starts_with(RELEASED_FROM) {
            return Ok(Release::AlreadyReleased);
        }
        if row.get::<i64, _>(1) == 0 {
            return Ok(Release::NoCopy);
        }
        sqlx::query("UPDATE rejected SET digest = $1 || id::TEXT || ':' || digest WHERE id = $2 AND digest = $3")
            .bind(RELEASED_FROM)
            .bind(id)
            .bind(&digest)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(Release::Released)
    }

    async fn drop_rejected(&self, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM rejected WHERE id = $1").bind(id).execute(&self.pool).await.map_err(err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn released(&self, limit: u32) -> StoreResult<Vec<Released>> {
        let rows = sqlx::query(
            "SELECT id, uid, raw FROM rejected WHERE digest COLLATE \"C\" >= $1 AND digest COLLATE \"C\" < $2
                 ORDER BY id LIMIT $3",
        )
        .bind(RELEASED_FROM)
        .bind(RELEASED_TO)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| Released {
                id: r.get(0),
                uid: r.get::<i64, _>(1).clamp(0, i64::from(u32::MAX)) as u32,
                raw: r.get(2),
            })
            .collect())
    }

    async fn forget_released(&self, id: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM rejected WHERE id = $1 AND digest COLLATE \"C\" >= $2 AND digest COLLATE \"C\" < $3")
            .bind(id)
            .bind(RELEASED_FROM)
            .bind(RELEASED_TO)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn prune(&self, caps: Caps) -> StoreResult<Pruned> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Every prunable item, newest first. Released mail waits for ingest and is not
        // weighed.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 0::BIGINT AS kind, id, recorded_at AS at, (octet_length(raw) + length(reason))::BIGINT AS bytes
               FROM rejected WHERE NOT (digest COLLATE \"C\" >= '{RELEASED_FROM}' AND digest COLLATE \"C\" < '{RELEASED_TO}')
             UNION ALL
             SELECT 1, m.id, m.recorded_at, (length(m.text)
                    + COALESCE((SELECT SUM(octet_length(a.data)) FROM attachment a WHERE a.message_row = m.id), 0))::BIGINT
               FROM message m WHERE m.chat_id IN ({UNVERIFIED})
             UNION ALL
             SELECT 2, id, created_at, (length(payload) + length(reason))::BIGINT FROM dead_letter
             ORDER BY at DESC, id DESC"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let mut kept_bytes = 0u64;
        let mut pruned = Pruned::default();
        let mut doomed = Vec::new();
        for r in rows {
            let (kind, id, at, bytes): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let bytes = bytes.max(0) as u64;
            let item = match kind {
                0 => Item::Rejected(id),
                1 => Item::Message(id),
                _ => Item::DeadLetter(id),
            };
            if at < caps.older_than || kept_bytes.saturating_add(bytes) > caps.max_bytes {
                pruned.bytes += bytes;
                doomed.push(item);
            } else {
                kept_bytes += bytes;
            }
        }
        for item in doomed {
            let (sql, counter) = match item {
                Item::Rejected(_) => ("DELETE FROM rejected WHERE id = $1", &mut pruned.rejected),
                // Its attachments go with it (ON DELETE CASCADE).
                Item::Message(_) => ("DELETE FROM message WHERE id = $1", &mut pruned.messages),
                Item::DeadLetter(_) => ("DELETE FROM dead_letter WHERE id = $1", &mut pruned.dead_letters),
            };
            let (Item::Rejected(id) | Item::Message(id) | Item::DeadLetter(id)) = item;
            let done = sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(err)?;
            *counter += done.rows_affected();
        }
        // Unverified chats left empty go too (with their member rows).
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM chat WHERE id IN ({UNVERIFIED})
               AND NOT EXISTS (SELECT 1 FROM message m WHERE m.chat_id = chat.id)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.chat_id = chat.id)"
        )))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        pruned.chats = done.rows_affected();
        tx.commit().await.map_err(err)?;
        Ok(pruned)
    }
}
