//! The SQLite side of [`MigrationStore`]: remote people, pairings, personal invites, migration samples and announcements (migration 0008).

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, err};
use crate::store::migration::{
    MigrationSample, MigrationStore, PairedVia, PairingRow, PersonalInviteRow, RemotePersonRow, Seen, clip_display_name,
};
use crate::store::{StoreError, StoreResult};

fn person(r: &SqliteRow) -> RemotePersonRow {
    RemotePersonRow {
        bridge: r.get("bridge"),
        remote_chat: r.get("remote_chat"),
        remote_user: r.get("remote_user"),
        display_name: r.get("display_name"),
        first_seen: r.get("first_seen"),
        last_posted: r.get("last_posted"),
        left_at: r.get("left_at"),
    }
}

fn pairing(r: &SqliteRow) -> PairingRow {
    PairingRow {
        bridge: r.get("bridge"),
        remote_user: r.get("remote_user"),
        address: r.get("address"),
        via: PairedVia::parse(r.get("via")),
        paired_at: r.get("paired_at"),
    }
}

fn invite(r: &SqliteRow) -> PersonalInviteRow {
    PersonalInviteRow {
        auth: r.get("auth"),
        bridge: r.get("bridge"),
        remote_user: r.get("remote_user"),
        remote_chat: r.get("remote_chat"),
        created_at: r.get("created_at"),
    }
}

fn sample(r: &SqliteRow) -> MigrationSample {
    MigrationSample {
        bridge: r.get("bridge"),
        remote_chat: r.get("remote_chat"),
        at: r.get("at"),
        remote_members: r.get("remote_members"),
        coi_members: r.get("coi_members"),
        moved: r.get("moved"),
    }
}

#[async_trait]
impl MigrationStore for SqliteStore {
    async fn note_remote_person(
        &self,
        bridge: &str,
        remote_chat: &str,
        remote_user: &str,
        display_name: &str,
        seen: Seen,
        at: i64,
    ) -> StoreResult<()> {
        // The new row says what this sighting is: `last_posted` set for a post, `left_at`
        // for a leave, neither for a join; the update merges it into an existing row.
        let posted = (seen == Seen::Posted).then_some(at);
        let left = (seen == Seen::Left).then_some(at);
        sqlx::query(
            "INSERT INTO remote_person
                 (bridge, remote_chat, remote_user, display_name, first_seen, last_posted, left_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (bridge, remote_chat, remote_user) DO UPDATE SET
                 display_name = excluded.display_name,
                 first_seen = MIN(remote_person.first_seen, excluded.first_seen),
                 last_posted = CASE WHEN excluded.last_posted IS NULL THEN remote_person.last_posted
                     ELSE MAX(COALESCE(remote_person.last_posted, excluded.last_posted), excluded.last_posted) END,
                 left_at = CASE WHEN excluded.left_at IS NOT NULL THEN excluded.left_at
                     WHEN remote_person.left_at > excluded.first_seen THEN remote_person.left_at
                     ELSE NULL END",
        )
        .bind(bridge)
        .bind(remote_chat)
        .bind(remote_user)
        .bind(clip_display_name(display_name))
        .bind(at)
        .bind(posted)
        .bind(left)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn remote_people(&self, bridge: &str, remote_chat: &str) -> StoreResult<Vec<RemotePersonRow>> {
        let rows = sqlx::query(
            "SELECT * FROM remote_person WHERE bridge = ? AND remote_chat = ? ORDER BY first_seen, remote_user",
        )
        .bind(bridge)
        .bind(remote_chat)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(rows.iter().map(person).collect())
    }

    async fn move_remote_people(&self, bridge: &str, from_chat: &str, to_chat: &str) -> StoreResult<()> {
        if from_chat == to_chat {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(err)?;
        // (SQLite reads an upsert's ON CONFLICT after INSERT … SELECT only when the SELECT
        // has a WHERE, which each has.) The DELETEs take bridge and from_chat only.
        let statements = [
            "INSERT INTO remote_person
                 (bridge, remote_chat, remote_user, display_name, first_seen, last_posted, left_at)
             SELECT bridge, ?3, remote_user, display_name, first_seen, last_posted, left_at
             FROM remote_person WHERE bridge = ?1 AND remote_chat = ?2
             ON CONFLICT (bridge, remote_chat, remote_user) DO UPDATE SET
                 first_seen = MIN(remote_person.first_seen, excluded.first_seen),
                 last_posted = CASE WHEN remote_person.last_posted IS NULL THEN excluded.last_posted
                     WHEN excluded.last_posted IS NULL THEN remote_person.last_posted
                     ELSE MAX(remote_person.last_posted, excluded.last_posted) END",
            "DELETE FROM remote_person WHERE bridge = ?1 AND remote_chat = ?2",
            "INSERT INTO migration_sample (bridge, remote_chat, at, remote_members, coi_members, moved)
             SELECT bridge, ?3, at, remote_members, coi_members, moved
             FROM migration_sample WHERE bridge = ?1 AND remote_chat = ?2
             ON CONFLICT DO NOTHING",
            "DELETE FROM migration_sample WHERE bridge = ?1 AND remote_chat = ?2",
            "INSERT INTO announcement (bridge, remote_chat, what, at)
             SELECT bridge, ?3, what, at FROM announcement WHERE bridge = ?1 AND remote_chat = ?2
             ON CONFLICT DO NOTHING",
            "DELETE FROM announcement WHERE bridge = ?1 AND remote_chat = ?2",
            "UPDATE personal_invite SET remote_chat = ?3 WHERE bridge = ?1 AND remote_chat = ?2",
        ];
        for sql in statements {
            let q = sqlx::query(sql).bind(bridge).bind(from_chat);
            let q = if sql.contains("?3") { q.bind(to_chat) } else { q };
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn pair(&self, row: &PairingRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pairing (bridge, remote_user, address, via, paired_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (bridge, remote_user) DO UPDATE SET
                 address = excluded.address, via = excluded.via, paired_at = excluded.paired_at",
        )
        .bind(&row.bridge)
        .bind(&row.remote_user)
        .bind(row.address.to_lowercase())
        .bind(row.via.as_str())
        .bind(row.paired_at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn unpair(&self, bridge: &str, remote_user: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM pairing WHERE bridge = ? AND remote_user = ?")
            .bind(bridge)
            .bind(remote_user)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn pairing(&self, bridge: &str, remote_user: &str) -> StoreResult<Option<PairingRow>> {
        let row = sqlx::query("SELECT * FROM pairing WHERE bridge = ? AND remote_user = ?")
            .bind(bridge)
            .bind(remote_user)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(pairing))
    }

    async fn pairings_of_address(&self, bridge: &str, address: &str) -> StoreResult<Vec<PairingRow>> {
        let rows =
            sqlx::query("SELECT * FROM pairing WHERE bridge = ? AND address = ? ORDER BY paired_at, remote_user")
                .bind(bridge)
                .bind(address.to_lowercase())
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
        Ok(rows.iter().map(pairing).collect())
    }

    async fn pairings(&self, bridge: &str) -> StoreResult<Vec<PairingRow>> {
        let rows = sqlx::query("SELECT * FROM pairing WHERE bridge = ? ORDER BY paired_at, remote_user")
            .bind(bridge)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(pairing).collect())
    }

    async fn add_personal_invite(&self, row: &PersonalInviteRow) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO personal_invite (auth, bridge, remote_user, remote_chat, created_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (auth) DO NOTHING",
        )
        .bind(&row.auth)
        .bind(&row.bridge)
        .bind(&row.remote_user)
        .bind(&row.remote_chat)
        .bind(row.created_at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        if done.rows_affected() == 0 {
            let have = self.personal_invite(&row.auth).await?;
            if have.as_ref().is_some_and(|h| h.bridge != row.bridge || h.remote_user != row.remote_user) {
                return Err(StoreError::Fatal(format!(
                    "personal invite: this auth secret is already {}'s on {}, not {}'s",
                    have.map_or_else(String::new, |h| h.remote_user),
                    row.bridge,
                    row.remote_user
                )));
            }
        }
        Ok(())
    }

    async fn personal_invite(&self, auth: &str) -> StoreResult<Option<PersonalInviteRow>> {
        let row = sqlx::query("SELECT * FROM personal_invite WHERE auth = ?")
            .bind(auth)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(invite))
    }

    async fn record_migration_sample(&self, s: &MigrationSample) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO migration_sample (bridge, remote_chat, at, remote_members, coi_members, moved)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (bridge, remote_chat, at) DO UPDATE SET remote_members = excluded.remote_members,
                 coi_members = excluded.coi_members, moved = excluded.moved",
        )
        .bind(&s.bridge)
        .bind(&s.remote_chat)
        .bind(s.at)
        .bind(s.remote_members)
        .bind(s.coi_members)
        .bind(s.moved)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn migration_samples(&self, bridge: &str, remote_chat: &str) -> StoreResult<Vec<MigrationSample>> {
        let rows = sqlx::query("SELECT * FROM migration_sample WHERE bridge = ? AND remote_chat = ? ORDER BY at")
            .bind(bridge)
            .bind(remote_chat)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.iter().map(sample).collect())
    }

    async fn announce_once(&self, bridge: &str, remote_chat: &str, what: &str, at: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO announcement (bridge, remote_chat, what, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(bridge)
        .bind(remote_chat)
        .bind(what)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_announcement(&self, bridge: &str, remote_chat: &str, what: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM announcement WHERE bridge = ? AND remote_chat = ? AND what = ?")
            .bind(bridge)
            .bind(remote_chat)
            .bind(what)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }
}
