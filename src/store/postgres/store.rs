//! PostgreSQL: the [`Store`] trait itself: the inbound batch with its IMAP cursor, the outbox, and reading back.

use async_trait::async_trait;
use sha2::Digest as _;
use sqlx::Row as _;

use super::{PgStore, err, now, now_ms};
use crate::store::{
    BatchOutcome, Chat, ChatKind, ChatRef, Direction, Envelope, ImapCursor, InboundMessage, OutboundMail, OutboxItem,
    OutboxState, OutboxStats, Rejected, SMTP_TARGET, Store, StoreError, StoreResult, StoredMessage,
};

fn envelope_json(e: &Envelope) -> StoreResult<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Fatal(e.to_string()))
}

#[async_trait]
impl Store for PgStore {
    async fn imap_cursor(&self, folder: &str) -> StoreResult<Option<ImapCursor>> {
        let row = sqlx::query("SELECT uid_validity, last_uid FROM imap_cursor WHERE folder = $1")
            .bind(folder)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| ImapCursor { uid_validity: r.get::<i64, _>(0) as u32, last_uid: r.get::<i64, _>(1) as u32 }))
    }

    async fn record_inbound(
        &self,
        folder: &str,
        cursor: ImapCursor,
        messages: &[InboundMessage],
        rejected: &[Rejected],
    ) -> StoreResult<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut tx = self.pool.begin().await.map_err(err)?;
        for m in messages {
            let chat_id = Self::ensure_chat_tx(&mut tx, &m.chat).await?;
            if Self::insert_message(&mut tx, chat_id, Direction::In, &m.message, m.security).await? {
                out.recorded += 1;
                Self::update_members_tx(&mut tx, chat_id, &m.members_added, &m.members_removed).await?;
                Self::queue_for_tx(&mut tx, chat_id, &m.message.message_id, &m.targets).await?;
            } else {
                out.duplicates += 1;
            }
        }
        for r in rejected {
            let basis = if r.raw.is_empty() { r.reason.as_bytes() } else { r.raw.as_slice() };
            let digest: String = sha2::Sha256::digest(basis).iter().map(|b| format!("{b:02x}")).collect();
            let res = sqlx::query(
                "INSERT INTO rejected (digest, folder, uid, reason, raw, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (digest) DO NOTHING",
            )
            .bind(digest)
            .bind(folder)
            .bind(i64::from(r.uid))
            .bind(&r.reason)
            .bind(&r.raw)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            out.rejected += res.rows_affected() as usize;
        }
        sqlx::query(
            "INSERT INTO imap_cursor (folder, uid_validity, last_uid) VALUES ($1, $2, $3)
             ON CONFLICT (folder) DO UPDATE SET uid_validity = excluded.uid_validity, last_uid = excluded.last_uid",
        )
        .bind(folder)
        .bind(i64::from(cursor.uid_validity))
        .bind(i64::from(cursor.last_uid))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(out)
    }

    async fn chat_of_any(&self, message_ids: &[String]) -> StoreResult<Option<ChatRef>> {
        for id in message_ids {
            let row = sqlx::query(
                "SELECT c.kind, c.key, c.name FROM message m JOIN chat c ON c.id = m.chat_id WHERE m.message_id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
            if let Some(row) = row {
                return Ok(Some(Self::chat_ref(&row)));
            }
        }
        Ok(None)
    }

    async fn queue_outbound(&self, mail: &OutboundMail) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let chat_id = Self::ensure_chat_tx(&mut tx, &mail.chat).await?;
        if Self::insert_message(&mut tx, chat_id, Direction::Out, &mail.message, "sent").await? {
            if let crate::store::Origin::Bridge { bridge, copy: Some(copy) } = &mail.origin {
                sqlx::query(
                    "INSERT INTO message_map (message_id, bridge, remote_chat, remote_id, part)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&mail.message.message_id)
                .bind(bridge)
                .bind(&copy.remote_chat)
                .bind(&copy.remote_id)
                .bind(copy.part)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            Self::queue_for_tx(&mut tx, chat_id, &mail.message.message_id, &mail.targets).await?;
            let ts = now();
            let copies = std::iter::once((&mail.envelope, &mail.raw, mail.message.message_id.clone()))
                .chain(mail.also.iter().map(|(e, r)| (e, r, format!("{}#plain", mail.message.message_id))));
            for (envelope, raw, label) in copies {
                sqlx::query(
                    "INSERT INTO outbox (target, chat_id, message_id, payload, envelope, next_attempt_at, created_at,
                                         queued_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(SMTP_TARGET)
                .bind(chat_id)
                .bind(label)
                .bind(raw)
                .bind(envelope_json(envelope)?)
                .bind(ts)
                .bind(ts)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn due_outbox(&self, target: &str, now: i64, limit: u32) -> StoreResult<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT o.id, o.target, o.chat_id, o.message_id, o.payload, o.envelope, o.attempts,
                    COALESCE(o.queued_at_ms, o.created_at * 1000) AS queued_at_ms
             FROM outbox o
             WHERE o.target = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
               AND o.id = (SELECT MIN(h.id) FROM outbox h
                           WHERE h.target = o.target AND h.chat_id = o.chat_id AND h.state = 'pending')
             ORDER BY o.id LIMIT $3",
        )
        .bind(target)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.into_iter()
            .map(|r| {
                let envelope: Option<String> = r.get("envelope");
                let envelope = envelope
                    .map(|e| serde_json::from_str::<Envelope>(&e))
                    .transpose()
                    .map_err(|e| StoreError::Fatal(format!("outbox envelope: {e}")))?;
                Ok(OutboxItem {
                    id: r.get("id"),
                    target: r.get("target"),
                    chat_id: r.get("chat_id"),
                    message_id: r.get("message_id"),
                    payload: r.get("payload"),
                    envelope,
                    attempts: r.get::<i64, _>("attempts").clamp(0, i64::from(u32::MAX)) as u32,
                    queued_at_ms: r.get("queued_at_ms"),
                })
            })
            .collect()
    }

    async fn next_outbox_due(&self, target: &str) -> StoreResult<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(o.next_attempt_at) FROM outbox o
             WHERE o.target = $1 AND o.state = 'pending'
               AND o.id = (SELECT MIN(h.id) FROM outbox h
                           WHERE h.target = o.target AND h.chat_id = o.chat_id AND h.state = 'pending')",
        )
        .bind(target)
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(row.get(0))
    }

    async fn outbox_done(&self, id: i64) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET state = 'done', payload = ''::bytea, attempts = attempts + 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3")
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_failed(&self, id: i64, reason: &str) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = $1 WHERE id = $2")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_stats(&self) -> StoreResult<Vec<OutboxStats>> {
        let rows = sqlx::query(
            "SELECT target, COUNT(*) AS depth, MIN(COALESCE(queued_at_ms, created_at * 1000)) AS oldest
             FROM outbox WHERE state = 'pending' GROUP BY target ORDER BY target COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxStats {
                target: r.get("target"),
                depth: r.get::<i64, _>("depth").max(0) as u64,
                oldest_queued_ms: r.get::<Option<i64>, _>("oldest").unwrap_or(0),
            })
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err)?;
        Ok(())
    }

    async fn outbox_depth(&self, target: &str) -> StoreResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM outbox WHERE target = $1 AND state = 'pending'")
            .bind(target)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?
            .get(0);
        Ok(n.max(0) as u64)
    }

    async fn outbox_set_recipients(&self, id: i64, envelope: &Envelope) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET envelope = $1 WHERE id = $2")
            .bind(envelope_json(envelope)?)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn outbox_state(&self, target: &str, message_id: &str) -> StoreResult<Option<OutboxState>> {
        let row = sqlx::query("SELECT state, attempts, last_error FROM outbox WHERE target = $1 AND message_id = $2")
            .bind(target)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| {
            let state: String = r.get(0);
            let last_error: Option<String> = r.get(2);
            match state.as_str() {
                "done" => OutboxState::Done,
                "failed" => OutboxState::Failed { reason: last_error.unwrap_or_default() },
                _ => OutboxState::Pending {
                    attempts: r.get::<i64, _>(1).clamp(0, i64::from(u32::MAX)) as u32,
                    last_error,
                },
            }
        }))
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<StoredMessage>> {
        let row = sqlx::query("SELECT * FROM message WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        match row {
            Some(row) => Ok(Some(self.load_message(row).await?)),
            None => Ok(None),
        }
    }

    async fn chat(&self, id: i64) -> StoreResult<Option<Chat>> {
        let Some(row) = sqlx::query("SELECT id, kind, key, name FROM chat WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let rows = sqlx::query("SELECT addr, added_at FROM chat_member WHERE chat_id = $1 ORDER BY addr COLLATE \"C\"")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let members: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let member_since: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        let r = Self::chat_ref(&row);
        Ok(Some(Chat { id, kind: r.kind, key: r.key, name: r.name, members, member_since }))
    }

    async fn chats(&self) -> StoreResult<Vec<Chat>> {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM chat ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.chat(id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    async fn find_chat(&self, kind: ChatKind, key: &str) -> StoreResult<Option<Chat>> {
        let id: Option<i64> = sqlx::query("SELECT id FROM chat WHERE kind = $1 AND key = $2")
            .bind(kind.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        match id {
            Some(id) => self.chat(id).await,
            None => Ok(None),
        }
    }

    async fn ensure_chat(&self, chat: &ChatRef) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        let id = Self::ensure_chat_tx(&mut tx, chat).await?;
        tx.commit().await.map_err(err)?;
        Ok(id)
    }

    async fn update_members(&self, chat_id: i64, add: &[String], remove: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        Self::update_members_tx(&mut tx, chat_id, add, remove).await?;
        tx.commit().await.map_err(err)
    }

    async fn messages(&self, direction: Direction) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query("SELECT * FROM message WHERE direction = $1 ORDER BY id")
            .bind(direction.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load_message(row).await?);
        }
        Ok(out)
    }

    async fn rejected_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM rejected").fetch_one(&self.pool).await.map_err(err)?.get(0);
        Ok(n.max(0) as u64)
    }
}
