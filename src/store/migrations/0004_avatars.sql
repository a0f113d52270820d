-- Contacts' avatars from Chat-User-Avatar (only honoured from verified mail), so bridges
-- can show them on ghosts.
CREATE TABLE contact_avatar (
    addr        TEXT    PRIMARY KEY,
    data        BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
