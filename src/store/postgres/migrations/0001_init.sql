-- 0001 (SQLite 0001_init.sql): chats, messages, the outbox and the IMAP cursor.
-- PostgreSQL's version of each SQLite migration has the same number, so a store's schema
-- version means the same on both backends. Types: INTEGER -> BIGINT, BLOB -> BYTEA,
-- INTEGER PRIMARY KEY -> BIGINT GENERATED ALWAYS AS IDENTITY, 0/1 flags -> BOOLEAN.

CREATE TABLE chat (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('single', 'group')),
    key         TEXT    NOT NULL,           -- peer address (single) or Chat-Group-ID (group)
    name        TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    UNIQUE (kind, key)
);

CREATE TABLE chat_member (
    chat_id  BIGINT NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
    addr     TEXT   NOT NULL,
    PRIMARY KEY (chat_id, addr)
);

-- Every COI message the bridge has recorded or sent, by Message-ID.
CREATE TABLE message (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   TEXT    NOT NULL UNIQUE,
    chat_id      BIGINT  NOT NULL REFERENCES chat (id),
    direction    TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    kind         TEXT    NOT NULL,
    from_addr    TEXT    NOT NULL,
    from_name    TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    in_reply_to  TEXT,
    target       TEXT,                      -- the message a reaction/edit/delete/receipt is about
    sent_at      BIGINT,
    recorded_at  BIGINT  NOT NULL
);
CREATE INDEX message_chat ON message (chat_id, id);

CREATE TABLE attachment (
    message_row  BIGINT  NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    idx          BIGINT  NOT NULL,
    name         TEXT    NOT NULL,
    mime         TEXT    NOT NULL,
    data         BYTEA   NOT NULL,
    PRIMARY KEY (message_row, idx)
);

-- A COI message and its copies on each bridge (filled by the bridges).
CREATE TABLE message_map (
    message_id   TEXT    NOT NULL,
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT    NOT NULL,
    remote_id    TEXT    NOT NULL,
    part         BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (bridge, remote_chat, remote_id, part)
);
CREATE INDEX message_map_coi ON message_map (message_id, bridge);

-- Deliveries still to make, one row per target ('smtp' or a bridge id).
CREATE TABLE outbox (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target           TEXT    NOT NULL,
    chat_id          BIGINT  NOT NULL REFERENCES chat (id),
    message_id       TEXT    NOT NULL,
    payload          BYTEA   NOT NULL,
    envelope         TEXT,                  -- JSON {from, to} for smtp
    state            TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    UNIQUE (target, message_id)
);
CREATE INDEX outbox_pending ON outbox (target, chat_id, id) WHERE state = 'pending';

CREATE TABLE imap_cursor (
    folder        TEXT    PRIMARY KEY,
    uid_validity  BIGINT  NOT NULL,
    last_uid      BIGINT  NOT NULL
);

-- Mail that could not be parsed, kept for the operator instead of blocking the queue.
CREATE TABLE rejected (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest       TEXT    NOT NULL UNIQUE,   -- sha256 of raw, so a re-fetch is not kept twice
    folder       TEXT    NOT NULL,
    uid          BIGINT  NOT NULL,
    reason       TEXT    NOT NULL,
    raw          BYTEA   NOT NULL,
    recorded_at  BIGINT  NOT NULL
);

-- Per-bridge key/value state (cursors, tokens).
CREATE TABLE bridge_state (
    bridge  TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (bridge, key)
);
