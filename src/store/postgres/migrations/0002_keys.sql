-- 0002 (SQLite 0002_keys.sql): the bridge's own key, its contacts' keys, and SecureJoin invites.

-- One row: the bridge identity's OpenPGP key.
CREATE TABLE account_key (
    id           BIGINT  PRIMARY KEY CHECK (id = 1),
    fingerprint  TEXT    NOT NULL,
    public_key   BYTEA   NOT NULL,          -- binary transferable public key
    secret_key   BYTEA   NOT NULL,          -- binary secret key, locked with the passphrase if one is set
    protected    BOOLEAN NOT NULL,          -- secret_key needs the passphrase
    created_at   BIGINT  NOT NULL
);

-- The key each contact address signs and receives with.
CREATE TABLE contact_key (
    addr         TEXT    PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,
    public_key   BYTEA   NOT NULL,
    verified     BOOLEAN NOT NULL DEFAULT FALSE,  -- confirmed through SecureJoin: never replaced silently
    source       TEXT    NOT NULL,                -- autocrypt | gossip | vcard | securejoin
    first_seen   BIGINT  NOT NULL,
    last_seen    BIGINT  NOT NULL
);
CREATE INDEX contact_key_fpr ON contact_key (fingerprint);

-- A verified contact showed up with another key: kept for the operator, not applied.
CREATE TABLE key_change (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    addr             TEXT    NOT NULL,
    old_fingerprint  TEXT    NOT NULL,
    new_fingerprint  TEXT    NOT NULL,
    new_key          BYTEA   NOT NULL,
    seen_at          BIGINT  NOT NULL,
    UNIQUE (addr, new_fingerprint)
);

-- Invites the bridge handed out (1:1 when group_id is NULL). `seq` stands in for SQLite's
-- rowid, the tie-break of invites made in the same second.
CREATE TABLE securejoin_invite (
    invite_number  TEXT    PRIMARY KEY,
    auth           TEXT    NOT NULL,
    group_id       TEXT,
    created_at     BIGINT  NOT NULL,
    seq            BIGINT  GENERATED ALWAYS AS IDENTITY
);

-- How far each recorded message could be trusted: plain (not encrypted), unverified
-- (encrypted, not signed by the sender's key), verified, invite (SecureJoin step).
ALTER TABLE message ADD COLUMN security TEXT NOT NULL DEFAULT 'plain'
    CHECK (security IN ('plain', 'unverified', 'verified', 'invite', 'sent'));

-- Delta Chat splits a message with a large file into a pre-message (text, names the
-- post-message) and a post-message (the file); the bridge merges them into the pre row.
ALTER TABLE message ADD COLUMN post_message_id TEXT;
CREATE INDEX message_post ON message (post_message_id) WHERE post_message_id IS NOT NULL;

-- Invite links of others the bridge is joining through (the joiner's side of SecureJoin).
CREATE TABLE securejoin_join (
    id             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inviter_addr   TEXT    NOT NULL,
    inviter_fpr    TEXT    NOT NULL,
    invite_number  TEXT    NOT NULL,
    auth           TEXT    NOT NULL,
    group_id       TEXT,
    group_name     TEXT,
    state          TEXT    NOT NULL CHECK (state IN ('requested', 'auth-sent', 'done')),
    created_at     BIGINT  NOT NULL,
    UNIQUE (inviter_fpr, auth)
);
