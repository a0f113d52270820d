-- Each post to a remote side, by its delivery key, written before the post goes and
-- completed with the remote ids once the side took it. A side with no idempotency key of
-- its own (Telegram) would show a message twice if a daemon killed between the post and
-- the outbox mark sent it again; with the journal a completed post is never repeated, and
-- nothing is posted while the store cannot record it (a full disk).
-- `remote_ids` NULL: the post started and never finished (the process died during it).
CREATE TABLE send_journal (
    bridge      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    remote_ids  TEXT,
    started_at  INTEGER NOT NULL,
    PRIMARY KEY (bridge, key)
) STRICT;
CREATE INDEX send_journal_age ON send_journal (started_at);
