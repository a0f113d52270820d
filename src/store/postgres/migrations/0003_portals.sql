-- 0003 (SQLite 0003_portals.sql): portals (a COI chat linked to a remote room on one bridge instance).

CREATE TABLE portal (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id      BIGINT  NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    UNIQUE (bridge, remote_chat),
    UNIQUE (chat_id, bridge)
);

-- When each member joined (unix seconds): Delta Chat's Chat-Group-Member-Timestamps.
ALTER TABLE chat_member ADD COLUMN added_at BIGINT NOT NULL DEFAULT 0;
