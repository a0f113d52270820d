-- Migration visibility (#13): what shows who has moved from a remote chat to COI. Small
-- rows and the history the migration report draws: retention prunes none of them.
--
-- The people a bridge has seen in each remote chat (the Bot API cannot list a group's
-- members): first seen, latest post, and when they left (NULL while they are there).
CREATE TABLE remote_person (
    bridge        TEXT    NOT NULL,
    remote_chat   TEXT    NOT NULL,
    remote_user   TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    first_seen    INTEGER NOT NULL,
    last_posted   INTEGER,
    left_at       INTEGER,
    PRIMARY KEY (bridge, remote_chat, remote_user)
) STRICT;
-- "This remote user of this bridge is this COI address": one per (bridge, remote user);
-- `via` is `invite` (SecureJoin through a personal invite) or `admin`.
CREATE TABLE pairing (
    bridge       TEXT    NOT NULL,
    remote_user  TEXT    NOT NULL,
    address      TEXT    NOT NULL,
    via          TEXT    NOT NULL,
    paired_at    INTEGER NOT NULL,
    PRIMARY KEY (bridge, remote_user)
) STRICT;
CREATE INDEX pairing_address ON pairing (bridge, address);
-- Personal invites: the auth secret of a securejoin_invite row handed to one remote user.
CREATE TABLE personal_invite (
    auth         TEXT    NOT NULL PRIMARY KEY,
    bridge       TEXT    NOT NULL,
    remote_user  TEXT    NOT NULL,
    remote_chat  TEXT,
    created_at   INTEGER NOT NULL
) STRICT;
-- Both sides of a portal over time, for the report's chart.
CREATE TABLE migration_sample (
    bridge          TEXT    NOT NULL,
    remote_chat     TEXT    NOT NULL,
    at              INTEGER NOT NULL,
    remote_members  INTEGER NOT NULL,
    coi_members     INTEGER NOT NULL,
    moved           INTEGER NOT NULL,
    PRIMARY KEY (bridge, remote_chat, at)
) STRICT;
-- Announcements made once per remote chat (`closable`); a row means it was made.
CREATE TABLE announcement (
    bridge       TEXT    NOT NULL,
    remote_chat  TEXT    NOT NULL,
    what         TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (bridge, remote_chat, what)
) STRICT;
