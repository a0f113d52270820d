-- 0006 (SQLite 0006_dead_letters.sql): remote events a bridge set aside, with the reason.
-- One row per bridge and event: setting the same event aside again updates it.
CREATE TABLE dead_letter (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT,
    event        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    UNIQUE (bridge, event)
);
