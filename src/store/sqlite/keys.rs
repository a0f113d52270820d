//! The SQLite side of [`KeyStore`].

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, err, now};
use crate::store::StoreResult;
use crate::store::keys::{AccountKeyRow, ContactKeyRow, InviteRow, JoinRow, KeyLearned, KeySource, KeyStore};

fn account_row(r: &sqlx::sqlite::SqliteRow) -> AccountKeyRow {
    AccountKeyRow {
        fingerprint: r.get("fingerprint"),
        public_key: r.get("public_key"),
        secret_key: r.get("secret_key"),
        protected: r.get::<i64, _>("protected") != 0,
        created_at: r.get("created_at"),
    }
}

fn join_row(r: &sqlx::sqlite::SqliteRow) -> JoinRow {
    JoinRow {
        id: r.get("id"),
        inviter_addr: r.get("inviter_addr"),
        inviter_fpr: r.get("inviter_fpr"),
        invite_number: r.get("invite_number"),
        auth: r.get("auth"),
        group_id: r.get("group_id"),
        group_name: r.get("group_name"),
        state: r.get("state"),
    }
}

fn invite_row(r: &sqlx::sqlite::SqliteRow) -> InviteRow {
    InviteRow { invite_number: r.get("invite_number"), auth: r.get("auth"), group_id: r.get("group_id") }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn account_key(&self) -> StoreResult<Option<AccountKeyRow>> {
        let row =
            sqlx::query("SELECT * FROM account_key WHERE id = 1").fetch_optional(&self.pool).await.map_err(err)?;
        Ok(row.as_ref().map(account_row))
    }

    async fn init_account_key(&self, k: &AccountKeyRow) -> StoreResult<AccountKeyRow> {
        sqlx::query(
            "INSERT INTO account_key (id, fingerprint, public_key, secret_key, protected, created_at)
             VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&k.fingerprint)
        .bind(&k.public_key)
        .bind(&k.secret_key)
        .bind(i64::from(k.protected))
        .bind(k.created_at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        let row = sqlx::query("SELECT * FROM account_key WHERE id = 1").fetch_one(&self.pool).await.map_err(err)?;
        Ok(account_row(&row))
    }

    async fn set_contact_avatar(&self, addr: &str, data: &[u8]) -> StoreResult<()> {
        let addr = addr.to_lowercase();
        if data.is_empty() {
            sqlx::query("DELETE FROM contact_avatar WHERE addr = ?")
                .bind(addr)
                .execute(&self.pool)
                .await
                .map_err(err)?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO contact_avatar (addr, data, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (addr) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(addr)
        .bind(data)
        .bind(chrono::Utc::now().timestamp())
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn contact_avatar(&self, addr: &str) -> StoreResult<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM contact_avatar WHERE addr = ?")
            .bind(addr.to_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn contact_key(&self, addr: &str) -> StoreResult<Option<ContactKeyRow>> {
        let row = sqlx::query("SELECT addr, fingerprint, public_key, verified, source FROM contact_key WHERE addr = ?")
            .bind(addr.to_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.map(|r| ContactKeyRow {
            addr: r.get(0),
            fingerprint: r.get(1),
            public_key: r.get(2),
            verified: r.get::<i64, _>(3) != 0,
            source: r.get(4),
        }))
    }

    async fn learn_contact_key(
        &self,
        addr: &str,
        fingerprint: &str,
        public_key: &[u8],
        source: KeySource,
        verified: bool,
    ) -> StoreResult<KeyLearned> {
        let addr = addr.to_lowercase();
        let ts = now();
        // Reads the key on record, then writes: the write lock first (see super::WRITE).
        let mut tx = self.pool.begin_with(super::WRITE).await.map_err(err)?;
        let existing = sqlx::query("SELECT fingerprint FROM contact_key WHERE addr = ?")
            .bind(&addr)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let outcome = match existing {
            None => {
                sqlx::query(
                    "INSERT INTO contact_key (addr, fingerprint, public_key, verified, source, first_seen, last_seen)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&addr)
                .bind(fingerprint)
                .bind(public_key)
                .bind(i64::from(verified))
                .bind(source.as_str())
                .bind(ts)
                .bind(ts)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                KeyLearned::New
            }
            Some(r) => {
                let old: String = r.get(0);
                // Key continuity: a key on record is never replaced by another one, however
                // it arrives (Autocrypt, gossip, SecureJoin): the change is flagged and
                // only the operator's `key accept` applies it. A verification of the same
                // key is recorded.
                if old == fingerprint {
                    sqlx::query("UPDATE contact_key SET last_seen = ?, verified = MAX(verified, ?) WHERE addr = ?")
                        .bind(ts)
                        .bind(i64::from(verified))
                        .bind(&addr)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    KeyLearned::Same
                } else {
                    sqlx::query(
                        "INSERT INTO key_change (addr, old_fingerprint, new_fingerprint, new_key, seen_at)
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (addr, new_fingerprint) DO UPDATE SET seen_at = excluded.seen_at",
                    )
                    .bind(&addr)
                    .bind(&old)
                    .bind(fingerprint)
                    .bind(public_key)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                    KeyLearned::Flagged { old_fingerprint: old }
                }
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(outcome)
    }

    async fn key_changes(&self, addr: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT old_fingerprint, new_fingerprint FROM key_change WHERE addr = ? ORDER BY seen_at DESC, id DESC",
        )
        .bind(addr.to_lowercase())
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn all_key_changes(&self) -> StoreResult<Vec<(String, String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT addr, old_fingerprint, new_fingerprint, seen_at FROM key_change ORDER BY seen_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    async fn accept_key_change(&self, addr: &str, new_fingerprint: &str) -> StoreResult<bool> {
        let addr = addr.to_lowercase();
        let new_fingerprint = new_fingerprint.to_ascii_uppercase();
        // Reads the change, then writes: the write lock first (see super::WRITE).
        let mut tx = self.pool.begin_with(super::WRITE).await.map_err(err)?;
        let row = sqlx::query("SELECT new_key FROM key_change WHERE addr = ? AND new_fingerprint = ?")
            .bind(&addr)
            .bind(&new_fingerprint)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let Some(row) = row else { return Ok(false) };
        let key: Vec<u8> = row.get(0);
        let ts = now();
        sqlx::query(
            "INSERT INTO contact_key (addr, fingerprint, public_key, verified, source, first_seen, last_seen)
             VALUES (?, ?, ?, 1, 'vcard', ?, ?)
             ON CONFLICT (addr) DO UPDATE SET fingerprint = excluded.fingerprint, public_key = excluded.public_key,
                 verified = 1, source = 'vcard', last_seen = excluded.last_seen",
        )
        .bind(&addr)
        .bind(&new_fingerprint)
        .bind(&key)
        .bind(ts)
        .bind(ts)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM key_change WHERE addr = ?").bind(&addr).execute(&mut *tx).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(true)
    }

    async fn live_invites(&self, since: i64) -> StoreResult<Vec<InviteRow>> {
        let rows =
            sqlx::query("SELECT * FROM securejoin_invite WHERE created_at >= ? ORDER BY created_at DESC, rowid DESC")
                .bind(since)
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
        Ok(rows.iter().map(invite_row).collect())
    }

    async fn add_invite(&self, i: &InviteRow) -> StoreResult<()> {
        sqlx::query("INSERT INTO securejoin_invite (invite_number, auth, group_id, created_at) VALUES (?, ?, ?, ?)")
            .bind(&i.invite_number)
            .bind(&i.auth)
            .bind(&i.group_id)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn invite(&self, invite_number: &str) -> StoreResult<Option<InviteRow>> {
        let row = sqlx::query("SELECT * FROM securejoin_invite WHERE invite_number = ?")
            .bind(invite_number)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(invite_row))
    }

    async fn invites(&self) -> StoreResult<Vec<InviteRow>> {
        let rows = sqlx::query("SELECT * FROM securejoin_invite ORDER BY created_at DESC, rowid DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(invite_row).collect())
    }

    async fn add_join(&self, j: &JoinRow) -> StoreResult<JoinRow> {
        sqlx::query(
            "INSERT INTO securejoin_join (inviter_addr, inviter_fpr, invite_number, auth, group_id, group_name, state, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (inviter_fpr, auth) DO NOTHING",
        )
        .bind(&j.inviter_addr)
        .bind(&j.inviter_fpr)
        .bind(&j.invite_number)
        .bind(&j.auth)
        .bind(&j.group_id)
        .bind(&j.group_name)
        .bind(&j.state)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(err)?;
        let row = sqlx::query("SELECT * FROM securejoin_join WHERE inviter_fpr = ? AND auth = ?")
            .bind(&j.inviter_fpr)
            .bind(&j.auth)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        Ok(join_row(&row))
    }

    async fn joins_of_group(&self, group_id: &str) -> StoreResult<Vec<JoinRow>> {
        let rows = sqlx::query("SELECT * FROM securejoin_join WHERE group_id = ? ORDER BY id DESC")
            .bind(group_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(join_row).collect())
    }

    async fn open_joins(&self) -> StoreResult<Vec<JoinRow>> {
        let rows = sqlx::query("SELECT * FROM securejoin_join WHERE state != 'done' ORDER BY id DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(join_row).collect())
    }

    async fn set_join_state(&self, id: i64, state: &str) -> StoreResult<()> {
        sqlx::query("UPDATE securejoin_join SET state = ? WHERE id = ?")
            .bind(state)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn invite_by_auth(&self, auth: &str) -> StoreResult<Option<InviteRow>> {
        let row = sqlx::query("SELECT * FROM securejoin_invite WHERE auth = ?")
            .bind(auth)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(invite_row))
    }
}
