-- 0008 (SQLite 0008_migration.sql): migration visibility (#13), who has moved from a remote
-- chat to COI. Small rows and the history the migration report draws: retention prunes none.
CREATE TABLE remote_person (
    bridge        TEXT    NOT NULL,
    remote_chat   TEXT    NOT NULL,
    remote_user   TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    first_seen    BIGINT  NOT NULL,
    last_posted   BIGINT,
    left_at       BIGINT,
    PRIMARY KEY (bridge, remote_chat, remote_user)
);
-- "This remote user of this bridge is this COI address": one per (bridge, remote user);
-- `via` is `invite` (SecureJoin through a personal invite) or `admin`.
CREATE TABLE pairing (
    bridge       TEXT    NOT NULL,
    remote_user  TEXT    NOT NULL,
    address      TEXT    NOT NULL,
    via          TEXT    NOT NULL,
    paired_at    BIGINT  NOT NULL,
    PRIMARY KEY (bridge, remote_user)
);
CREATE INDEX pairing_address ON pairing (bridge, address);
-- Personal invites: the auth secret of a securejoin_invite row handed to one remote user.
CREATE TABLE personal_invite (
    auth         TEXT    NOT NULL PRIMARY KEY,
    bridge       TEXT    NOT NULL,
    remote_user  TEXT    NOT NULL,
    remote_chat  TEXT,
    created_at   BIGINT  NOT NULL
);
-- Both sides of a portal over time, for the report's chart.
CREATE TABLE migration_sample (
    bridge          TEXT    NOT NULL,
    remote_chat     TEXT    NOT NULL,
    at              BIGINT  NOT NULL,
    remote_members  BIGINT  NOT NULL,
    coi_members     BIGINT  NOT NULL,
    moved           BIGINT  NOT NULL,
    PRIMARY KEY (bridge, remote_chat, at)
);
-- Announcements made once per remote chat (`closable`); a row means it was made.
CREATE TABLE announcement (
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT    NOT NULL,
    what         TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    PRIMARY KEY (bridge, remote_chat, what)
);
