//! The SQLite rows of chats, members and messages: written inside the caller's transaction (a message with its files, a pre-message joined with its post-message), and read back.

use sqlx::{Row, Transaction};

use super::{SqliteStore, err, now};
use crate::coi::ChatMessage;
use crate::store::{
    ChatKind, ChatRef, Direction, MessageKind, StoreError, StoreResult, StoredAttachment, StoredMessage,
};

impl SqliteStore {
    pub(super) async fn ensure_chat_tx(tx: &mut Transaction<'_, sqlx::Sqlite>, chat: &ChatRef) -> StoreResult<i64> {
        let id: i64 = sqlx::query(
            "INSERT INTO chat (kind, key, name, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (kind, key) DO UPDATE SET name = CASE WHEN excluded.name != '' THEN excluded.name ELSE chat.name END
             RETURNING id",
        )
        .bind(chat.kind.as_str())
        .bind(&chat.key)
        .bind(&chat.name)
        .bind(now())
        .fetch_one(&mut **tx)
        .await
        .map_err(err)?
        .get(0);
        Ok(id)
    }

    /// Inserts the message row and its attachments; `false` when the Message-ID is known.
    pub(super) async fn insert_message(
        tx: &mut Transaction<'_, sqlx::Sqlite>,
        chat_id: i64,
        direction: Direction,
        m: &ChatMessage,
        security: &str,
    ) -> StoreResult<bool> {
        let record = crate::store::kind::MessageRecord::of(m);
        let row = sqlx::query(
            "INSERT INTO message (message_id, chat_id, direction, kind, from_addr, from_name, text, in_reply_to, target, sent_at, recorded_at, security, post_message_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (message_id) DO NOTHING RETURNING id",
        )
        .bind(&m.message_id)
        .bind(chat_id)
        .bind(direction.as_str())
        .bind(record.kind.as_str())
        .bind(&m.from.addr)
        .bind(m.from.display())
        .bind(record.text)
        .bind(&m.in_reply_to)
        .bind(record.target)
        .bind(m.date)
        .bind(now())
        .bind(security)
        .bind(&m.post_message_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(err)?;
        let Some(row) = row else { return Ok(false) };
        let mut row_id: i64 = row.get(0);
        if m.post_message_id.is_some() || m.is_post_message {
            row_id = Self::merge_pre_post(tx, row_id, m).await?;
        }
        for (idx, a) in record.attachments().enumerate() {
            sqlx::query("INSERT INTO attachment (message_row, idx, name, mime, data) VALUES (?, ?, ?, ?, ?)")
                .bind(row_id)
                .bind(idx as i64)
                .bind(&a.name)
                .bind(&a.mime)
                .bind(&a.data)
                .execute(&mut **tx)
                .await
                .map_err(err)?;
        }
        Ok(true)
    }

    /// Joins a pre-message and its post-message: the file ends up on the pre-message's
    /// row, and the post row is marked `merged-post`. Either may arrive first. Returns the
    /// row the new message's attachments belong to.
    async fn merge_pre_post(tx: &mut Transaction<'_, sqlx::Sqlite>, row_id: i64, m: &ChatMessage) -> StoreResult<i64> {
        if let Some(post_id) = &m.post_message_id {
            // A pre-message: take over the file of a post that came first.
            let post_row: Option<i64> = sqlx::query("SELECT id FROM message WHERE message_id = ?")
                .bind(post_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(err)?
                .map(|r| r.get(0));
            if let Some(post_row) = post_row {
                sqlx::query("UPDATE attachment SET message_row = ? WHERE message_row = ?")
                    .bind(row_id)
                    .bind(post_row)
                    .execute(&mut **tx)
                    .await
                    .map_err(err)?;
                sqlx::query("UPDATE message SET kind = ? WHERE id = ?")
                    .bind(MessageKind::MergedPost.as_str())
                    .bind(post_row)
                    .execute(&mut **tx)
                    .await
                    .map_err(err)?;
            }
            return Ok(row_id);
        }
        // A post-message: its file goes to the pre-message, if that came first.
        let pre_row: Option<i64> = sqlx::query("SELECT id FROM message WHERE post_message_id = ?")
            .bind(&m.message_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        match pre_row {
            Some(pre_row) => {
                sqlx::query("UPDATE message SET kind = ? WHERE id = ?")
                    .bind(MessageKind::MergedPost.as_str())
                    .bind(row_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(err)?;
                Ok(pre_row)
            }
            None => Ok(row_id),
        }
    }

    /// Adds and removes chat members.
    pub(super) async fn update_members_tx(
        tx: &mut Transaction<'_, sqlx::Sqlite>,
        chat_id: i64,
        add: &[String],
        remove: &[String],
    ) -> StoreResult<()> {
        for addr in add {
            sqlx::query("INSERT INTO chat_member (chat_id, addr, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(chat_id)
                .bind(addr)
                .bind(now())
                .execute(&mut **tx)
                .await
                .map_err(err)?;
        }
        for addr in remove {
            sqlx::query("DELETE FROM chat_member WHERE chat_id = ? AND addr = ?")
                .bind(chat_id)
                .bind(addr)
                .execute(&mut **tx)
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    pub(super) async fn load_message(&self, row: sqlx::sqlite::SqliteRow) -> StoreResult<StoredMessage> {
        let row_id: i64 = row.get("id");
        let attachments: Vec<StoredAttachment> =
            sqlx::query("SELECT name, mime, data FROM attachment WHERE message_row = ? ORDER BY idx")
                .bind(row_id)
                .fetch_all(&self.pool)
                .await
                .map_err(err)?
                .into_iter()
                .map(|a| StoredAttachment { name: a.get(0), mime: a.get(1), data: a.get(2) })
                .collect();
        let direction: String = row.get("direction");
        let awaits_file =
            row.try_get::<Option<String>, _>("post_message_id").ok().flatten().is_some() && attachments.is_empty();
        Ok(StoredMessage {
            message_id: row.get("message_id"),
            chat_id: row.get("chat_id"),
            direction: if direction == "out" { Direction::Out } else { Direction::In },
            kind: row
                .get::<String, _>("kind")
                .parse()
                .map_err(|e: crate::store::kind::UnknownKind| StoreError::Fatal(e.to_string()))?,
            from_addr: row.get("from_addr"),
            from_name: row.get("from_name"),
            text: row.get("text"),
            in_reply_to: row.get("in_reply_to"),
            target: row.get("target"),
            attachments,
            security: row.get("security"),
            awaits_file,
        })
    }

    pub(super) fn chat_ref(row: &sqlx::sqlite::SqliteRow) -> ChatRef {
        let kind: String = row.get("kind");
        ChatRef {
            kind: if kind == "group" { ChatKind::Group } else { ChatKind::Single },
            key: row.get("key"),
            name: row.get("name"),
        }
    }
}
