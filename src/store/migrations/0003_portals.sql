-- 0003: portals (a COI chat linked to a remote room on one bridge instance).

CREATE TABLE portal (
    id           INTEGER PRIMARY KEY,
    chat_id      INTEGER NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (bridge, remote_chat),
    UNIQUE (chat_id, bridge)
) STRICT;

-- When each member joined (unix seconds): Delta Chat's Chat-Group-Member-Timestamps.
-- A later list that names a removed member again only wins if it is newer than the
-- removal, so re-sending "now" for everyone would undo removals.
ALTER TABLE chat_member ADD COLUMN added_at INTEGER NOT NULL DEFAULT 0;
