-- 0004 (SQLite 0004_avatars.sql): contacts' avatars from Chat-User-Avatar (only honoured from
-- verified mail), so bridges can show them on ghosts.
CREATE TABLE contact_avatar (
    addr        TEXT    PRIMARY KEY,
    data        BYTEA   NOT NULL,
    updated_at  BIGINT  NOT NULL
);
