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
