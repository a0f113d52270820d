-- 0002: the bridge's own key, its contacts' keys, and SecureJoin invites.

-- One row: the bridge identity's OpenPGP key.
CREATE TABLE account_key (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint  TEXT    NOT NULL,
    public_key   BLOB    NOT NULL,          -- binary transferable public key
    secret_key   BLOB    NOT NULL,          -- binary secret key, locked with the passphrase if one is set
    protected    INTEGER NOT NULL,          -- 1 when secret_key needs the passphrase
    created_at   INTEGER NOT NULL
) STRICT;

-- The key each contact address signs and receives with.
CREATE TABLE contact_key (
    addr         TEXT    PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,
    public_key   BLOB    NOT NULL,
    verified     INTEGER NOT NULL DEFAULT 0,  -- confirmed through SecureJoin: never replaced silently
    source       TEXT    NOT NULL,            -- autocrypt | gossip | vcard | securejoin
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL
) STRICT;
CREATE INDEX contact_key_fpr ON contact_key (fingerprint);

-- A verified contact showed up with another key: kept for the operator, not applied.
CREATE TABLE key_change (
    id               INTEGER PRIMARY KEY,
    addr             TEXT    NOT NULL,
    old_fingerprint  TEXT    NOT NULL,
    new_fingerprint  TEXT    NOT NULL,
    new_key          BLOB    NOT NULL,
    seen_at          INTEGER NOT NULL,
    UNIQUE (addr, new_fingerprint)
) STRICT;

-- Invites the bridge handed out (1:1 when group_id is NULL).
CREATE TABLE securejoin_invite (
    invite_number  TEXT    PRIMARY KEY,
    auth           TEXT    NOT NULL,
    group_id       TEXT,
    created_at     INTEGER NOT NULL
) STRICT;

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
    id             INTEGER PRIMARY KEY,
    inviter_addr   TEXT    NOT NULL,
    inviter_fpr    TEXT    NOT NULL,
    invite_number  TEXT    NOT NULL,
    auth           TEXT    NOT NULL,
    group_id       TEXT,
    group_name     TEXT,
    state          TEXT    NOT NULL CHECK (state IN ('requested', 'auth-sent', 'done')),
    created_at     INTEGER NOT NULL,
    UNIQUE (inviter_fpr, auth)
) STRICT;
