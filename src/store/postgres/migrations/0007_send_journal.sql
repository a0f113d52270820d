-- 0007 (SQLite 0007_send_journal.sql): each post to a remote side, by its delivery key,
-- written before the post goes and completed with the remote ids once the side took it.
-- `remote_ids` NULL: the post started and never finished (the process died during it).
CREATE TABLE send_journal (
    bridge      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    remote_ids  TEXT,
    started_at  BIGINT  NOT NULL,
    PRIMARY KEY (bridge, key)
);
CREATE INDEX send_journal_age ON send_journal (started_at);
