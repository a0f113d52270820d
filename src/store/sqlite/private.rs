//! The store file is private whatever the umask: it holds the bridge's unprotected secret key.
//!
//! SQLite creates a new database file with mode 0644 less the umask, but gives its `-wal`,
//! `-shm` and `-journal` files the database file's own mode. So the database file is made
//! here, 0600, before SQLite opens it, and the companions follow.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;

/// Creates `path` empty with mode 0600 unless it exists (SQLite takes an empty file as a
/// new database).
pub(super) fn create(path: &Path) -> anyhow::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("store: cannot create {}", path.display())),
    }
}

/// Makes an existing store (and its companions) 0600 if an older version or a hand copy
/// left it readable by others.
pub(super) fn tighten(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let Ok(meta) = std::fs::metadata(file) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {
                tracing::warn!(file = %file.display(), old_mode = format!("{mode:o}"), "store file was readable by others; made it 0600")
            }
            Err(e) => {
                tracing::error!(file = %file.display(), mode = format!("{mode:o}"), error = %e, "store file is readable by others and cannot be made private")
            }
        }
    }
}
