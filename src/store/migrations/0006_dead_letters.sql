-- Remote events a bridge set aside (it could not handle them, or gave up after its
-- retries), with the reason, so one bad event never blocks the ones behind it and the
-- operator can see what was not bridged. One row per bridge and event: setting the same
-- event aside again updates it.
CREATE TABLE dead_letter (
    id           INTEGER PRIMARY KEY,
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT,
    event        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (bridge, event)
) STRICT;
