//! The SQLite side of [`RetentionStore`]: rejected mail, unverified chats and dead letters listed, released, dropped and pruned.
//!
//! A released rejected mail keeps its row, with its digest moved aside
//! (`released:ID:DIGEST`): if ingest sets it apart again, the new row (real digest) does
//! not collide with it, and the old row goes once ingest is done with it.

use async_trait::async_trait;
use sqlx::Row as _;

use super::{SqliteStore, err};
use crate::store::StoreResult;
use crate::store::retention::{Caps, Pruned, Release, Released, RetentionStore, SetApart, UnverifiedChat};

/// The digest prefix of a released row; `;` sorts right after `:`, so released rows are
/// one range of the digest index.
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
impl RetentionStore for SqliteStore {
    async fn set_apart(&self) -> StoreResult<Vec<SetApart>> {
        let rows = sqlx::query(
            "SELECT id, recorded_at, reason, length(raw) AS bytes, substr(raw, 1, ?) AS head,
                    digest >= ? AND digest < ? AS released
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
                released: r.get::<i64, _>("released") != 0,
            })
            .collect())
    }

    async fn unverified_chats(&self) -> StoreResult<Vec<UnverifiedChat>> {
        let rows = sqlx::query(
            "SELECT c.id, c.key, COUNT(m.id) AS messages, MAX(m.recorded_at) AS last_at,
                    SUM(length(m.text) + COALESCE((SELECT SUM(length(a.data)) FROM attachment a
                                                   WHERE a.message_row = m.id), 0)) AS bytes
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
        let Some(row) = sqlx::query("SELECT digest, length(raw) FROM rejected WHERE id = ?")
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
        sqlx::query("UPDATE rejected SET digest = ? || id || ':' || digest WHERE id = ? AND digest = ?")
            .bind(RELEASED_FROM)
            .bind(id)
            .bind(&digest)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(Release::Released)
    }

    async fn drop_rejected(&self, id: i64) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM rejected WHERE id = ?").bind(id).execute(&self.pool).await.map_err(err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn released(&self, limit: u32) -> StoreResult<Vec<Released>> {
        // An idle path's look: it leaves no connection open behind it.
        let mut look = super::pool::Look::open(&self.pool, &self.opts).await.map_err(err)?;
        let rows =
            sqlx::query("SELECT id, uid, raw FROM rejected WHERE digest >= ? AND digest < ? ORDER BY id LIMIT ?")
                .bind(RELEASED_FROM)
                .bind(RELEASED_TO)
                .bind(i64::from(limit))
                .fetch_all(&mut *look)
                .await;
        look.done().await;
        let rows = rows.map_err(err)?;
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
        sqlx::query("DELETE FROM rejected WHERE id = ? AND digest >= ? AND digest < ?")
            .bind(id)
            .bind(RELEASED_FROM)
            .bind(RELEASED_TO)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn prune(&self, caps: Caps) -> StoreResult<Pruned> {
        // IMMEDIATE: it reads, then deletes. A deferred transaction would ask for the write
        // lock only at its first DELETE, and under WAL that fails at once ("database is
        // locked", busy_timeout not asked) if another connection writes meanwhile, as the
        // account's other workers do at start (#12); this one waits for the lock instead.
        let mut tx = self.pool.begin_with(super::WRITE).await.map_err(err)?;
        // Every prunable item, newest first. Released mail waits for ingest and is not
        // weighed.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 0 AS kind, id, recorded_at AS at, length(raw) + length(reason) AS bytes FROM rejected
               WHERE NOT (digest >= '{RELEASED_FROM}' AND digest < '{RELEASED_TO}')
             UNION ALL
             SELECT 1, m.id, m.recorded_at, length(m.text)
                    + COALESCE((SELECT SUM(length(a.data)) FROM attachment a WHERE a.message_row = m.id), 0)
               FROM message m WHERE m.chat_id IN ({UNVERIFIED})
             UNION ALL
             SELECT 2, id, created_at, length(payload) + length(reason) FROM dead_letter
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
                Item::Rejected(_) => ("DELETE FROM rejected WHERE id = ?", &mut pruned.rejected),
                // Its attachments go with it (ON DELETE CASCADE).
                Item::Message(_) => ("DELETE FROM message WHERE id = ?", &mut pruned.messages),
                Item::DeadLetter(_) => ("DELETE FROM dead_letter WHERE id = ?", &mut pruned.dead_letters),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::{ChatMessage, Mailbox};
    use crate::store::portals::PortalStore as _;
    use crate::store::{ChatKind, ChatRef, ImapCursor, InboundMessage, Rejected, Store};

    const DAY: i64 = 86_400;

    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("s.db")).await.expect("open");
        (dir, s)
    }

    fn mail(id: &str, chat_key: &str, text: &str, attachment: usize) -> InboundMessage {
        let mut m = ChatMessage {
            message_id: id.into(),
            from: Mailbox::new("mallory@example.org", None),
            text: text.into(),
            ..ChatMessage::default()
        };
        if attachment > 0 {
            m.attachments.push(coi_bridge_api::Attachment {
                name: "a.bin".into(),
                mime: "application/octet-stream".into(),
                data: vec![7; attachment],
            });
        }
        InboundMessage {
            uid: 1,
            chat: ChatRef { kind: ChatKind::Single, key: chat_key.into(), name: String::new() },
            message: m,
            members_added: vec![],
            members_removed: vec![],
            security: "plain",
            targets: vec![],
        }
    }

    async fn record(s: &SqliteStore, messages: &[InboundMessage], rejected: &[Rejected]) {
        let cursor = ImapCursor { uid_validity: 1, last_uid: 1 };
        s.record_inbound("INBOX", cursor, messages, rejected).await.expect("record");
    }

    fn rejected(n: u8, bytes: usize) -> Rejected {
        Rejected { uid: u32::from(n), reason: format!("test {n}"), raw: vec![n; bytes] }
    }

    /// Makes every row recorded so far `days` days old.
    async fn age(s: &SqliteStore, days: i64) {
        for t in
            ["UPDATE rejected SET recorded_at = recorded_at - ?", "UPDATE message SET recorded_at = recorded_at - ?"]
        {
            sqlx::query(t).bind(days * DAY).execute(&s.pool).await.expect("age");
        }
    }

    fn caps(days: i64, max_bytes: u64) -> Caps {
        Caps { older_than: chrono::Utc::now().timestamp() - days * DAY, max_bytes }
    }

    #[tokio::test]
    async fn the_age_cap_prunes_old_set_apart_mail_and_unverified_chats_only() {
        let (_d, s) = fresh().await;
        record(
            &s,
            &[
                mail("<old-u@x>", "unverified:mallory@example.org", "old", 1000),
                mail("<old-v@x>", "alice@x", "keep", 1000),
            ],
            &[rejected(1, 5000)],
        )
        .await;
        // An unverified chat a portal shows (an operator linked it) is left alone.
        record(&s, &[mail("<old-p@x>", "unverified:linked@example.org", "linked", 0)], &[]).await;
        let linked = s.find_chat(ChatKind::Single, "unverified:linked@example.org").await.expect("read").expect("chat");
        s.create_portal(linked.id, "matrix", "!room").await.expect("portal");
        age(&s, 40).await;
        record(&s, &[mail("<new-u@x>", "unverified:eve@example.org", "new", 10)], &[rejected(2, 5000)]).await;
        let pruned = s.prune(caps(30, u64::MAX)).await.expect("prune");
        assert_eq!((pruned.rejected, pruned.messages, pruned.chats), (1, 1, 1), "{pruned:?}");
        assert!(pruned.bytes >= 6000, "{pruned:?}");
        let left: Vec<i64> = s.set_apart().await.expect("list").iter().map(|r| r.bytes as i64).collect();
        assert_eq!(left, vec![5000]);
        assert!(s.message("<old-u@x>").await.expect("read").is_none());
        assert!(s.message("<new-u@x>").await.expect("read").is_some(), "younger than the cap");
        assert!(s.message("<old-v@x>").await.expect("read").is_some(), "an attributed chat is never pruned");
        assert!(s.message("<old-p@x>").await.expect("read").is_some(), "nor one a portal shows");
        assert!(s.find_chat(ChatKind::Single, "unverified:mallory@example.org").await.expect("read").is_none());
        let attachments: i64 =
            sqlx::query("SELECT COUNT(*) FROM attachment").fetch_one(&s.pool).await.expect("count").get(0);
        assert_eq!(attachments, 2, "the pruned message's file went with it (of 3)");
        // A second pass finds nothing.
        assert!(s.prune(caps(30, u64::MAX)).await.expect("prune").is_empty());
    }

    #[tokio::test]
    async fn the_size_cap_keeps_the_newest_that_fit() {
        let (_d, s) = fresh().await;
        for n in 1..=5u8 {
            record(&s, &[], &[rejected(n, 10_000)]).await;
            // Each one a day older than the next.
            age(&s, 1).await;
        }
        record(&s, &[mail("<u@x>", "unverified:mallory@example.org", "", 10_000)], &[]).await;
        let pruned = s.prune(caps(30, 35_000)).await.expect("prune");
        assert_eq!((pruned.rejected, pruned.messages), (3, 0), "{pruned:?}");
        let left: Vec<String> = s.set_apart().await.expect("list").into_iter().map(|r| r.reason).collect();
        assert_eq!(left, vec!["test 4", "test 5"], "the newest two and the message fit in 35 kB");
        assert!(s.message("<u@x>").await.expect("read").is_some());
    }
}
