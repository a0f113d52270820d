//! `coi-bridge backup`: a consistent online copy of the SQLite store, page by page with SQLite's backup API while the daemon keeps writing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rusqlite::{Connection, OpenFlags};

/// Pages copied per step; progress is reported after each.
const PAGES_PER_STEP: std::ffi::c_int = 64;

/// How far a backup has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub copied: u64,
    pub total: u64,
}

/// What a finished backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub pages: u64,
    pub bytes: u64,
    pub messages: u64,
    pub schema_version: i64,
}

/// Where `store.url` keeps the SQLite database.
pub fn sqlite_path(url: &str, state_dir: &Path) -> anyhow::Result<PathBuf> {
    super::sqlite_path(url, state_dir).with_context(|| {
        format!("store.url: {:?} is not a SQLite store; `backup` copies SQLite databases only", super::redact_url(url))
    })
}

/// Copies the database at `src` to `dest` (which must not exist) while other processes
/// may write to it. The copy is one snapshot: a read transaction held on the source for
/// the whole copy pins it (WAL lets writers go on meanwhile). It is checked with
/// `PRAGMA integrity_check`, written under a temporary name, made private (0600: it
/// holds the bridge's secret key) and renamed into place.
pub fn backup(src: &Path, dest: &Path, mut progress: impl FnMut(Progress)) -> anyhow::Result<Summary> {
    if !src.exists() {
        bail!("the store {} does not exist; check store.url and store.state_dir in the config", src.display());
    }
    if dest.exists() {
        bail!("{} already exists; name a new file (a backup never overwrites)", dest.display());
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        bail!("{} exists: another backup is running, or one was cut off (then remove it)", tmp.display());
    }
    let result = copy(src, &tmp, &mut progress);
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, dest)
                .with_context(|| format!("cannot move the backup into place at {}", dest.display()))?;
            Ok(summary)
        }
        Err(e) => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut f = tmp.as_os_str().to_owned();
                f.push(suffix);
                let _ = std::fs::remove_file(f);
            }
            Err(e)
        }
    }
}

fn copy(src: &Path, tmp: &Path, progress: &mut impl FnMut(Progress)) -> anyhow::Result<Summary> {
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open the store {}", src.display()))?;
    from.busy_timeout(Duration::from_secs(10))?;
    // The snapshot: sqlite3_backup_step keeps a read transaction it finds open, so
    // writes by the daemon during the copy neither restart it nor end up half in it.
    from.execute_batch("BEGIN DEFERRED; SELECT COUNT(*) FROM sqlite_schema;").context("opening a read snapshot")?;
    // Made 0600 before SQLite opens it: SQLite would create it 0644 less the umask, and
    // gives its journal the file's own mode.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
    }
    restrict(tmp)?;
    let mut to = Connection::open(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).context("starting the SQLite backup")?;
        loop {
            let step = backup.step(PAGES_PER_STEP).context("copying pages")?;
            let p = backup.progress();
            progress(Progress { copied: (p.pagecount - p.remaining).max(0) as u64, total: p.pagecount.max(0) as u64 });
            match step {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                // Busy or locked: the destination is ours alone, so this is the source
                // briefly locked by a checkpoint; wait and go on.
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    from.execute_batch("COMMIT;")?;
    // The copy took the source's WAL flag; a backup is one self-contained file.
    to.execute_batch("PRAGMA journal_mode = DELETE;")?;
    let check: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the copy failed its integrity check: {check}");
    }
    let pages: i64 = to.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = to.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let schema_version: i64 = to.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let messages: i64 = to.query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0)).unwrap_or(0);
    drop(to);
    Ok(Summary { pages: pages as u64, bytes: (pages * page_size) as u64, messages: messages as u64, schema_version })
}

fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_database_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.db");
        let c = Connection::open(&src).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE message (id INTEGER PRIMARY KEY, text TEXT);
             PRAGMA user_version = 7;",
        )
        .expect("schema");
        for i in 0..2000 {
            c.execute("INSERT INTO message (text) VALUES (?1)", [format!("message {i} {}", "x".repeat(200))])
                .expect("insert");
        }
        let dest = dir.path().join("copy.db");
        let mut steps = Vec::new();
        let s = backup(&src, &dest, |p| steps.push(p)).expect("backup");
        assert_eq!((s.messages, s.schema_version), (2000, 7));
        assert!(steps.len() > 1, "several steps for {} pages", s.pages);
        assert_eq!(steps.last().map(|p| p.copied), steps.last().map(|p| p.total));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&dest).expect("meta").permissions().mode() & 0o777, 0o600);
        let err = backup(&src, &dest, |_| {}).expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
        for leftover in ["copy.db.partial", "copy.db-wal", "copy.db-shm"] {
            assert!(!dir.path().join(leftover).exists(), "{leftover} left behind");
        }
        assert!(!dir.path().join("copy.db.partial").exists());
    }

    #[test]
    fn the_copy_is_the_snapshot_from_its_start_while_another_connection_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.db");
        let c = Connection::open(&src).expect("open");
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE message (id INTEGER PRIMARY KEY, text TEXT);")
            .expect("schema");
        for i in 0..2000 {
            c.execute("INSERT INTO message (text) VALUES (?1)", [format!("before {i} {}", "x".repeat(1500))])
                .expect("insert");
        }
        // Another connection (the daemon) writes between every step of the copy.
        let writer = Connection::open(&src).expect("writer");
        let mut copied = Vec::new();
        let summary = backup(&src, &dir.path().join("copy.db"), |p| {
            copied.push(p.copied);
            // (Bounded, so that a copy without its snapshot ends, restarted, and fails
            // the asserts below instead of restarting for ever.)
            if copied.len() <= 50 {
                writer
                    .execute("INSERT INTO message (text) VALUES (?1)", [format!("during {}", "y".repeat(300))])
                    .expect("write during the backup");
            }
        })
        .expect("backup");
        assert!(copied.len() > 3, "several steps: {copied:?}");
        assert!(copied.windows(2).all(|w| w[0] <= w[1]), "the copy never restarted: {copied:?}");
        assert_eq!(summary.messages, 2000, "exactly the rows committed when it began");
        let live: i64 = c.query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0)).expect("count");
        assert_eq!(live as usize, 2000 + copied.len().min(50), "the writes went on meanwhile");
    }

    #[test]
    fn names_the_store_when_it_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = backup(&dir.path().join("none.db"), &dir.path().join("b.db"), |_| {}).expect_err("missing");
        assert!(err.to_string().contains("store.url"), "{err}");
        assert_eq!(sqlite_path("sqlite://x.db", Path::new("/s")).expect("path"), PathBuf::from("/s/x.db"));
        assert!(sqlite_path("postgres://h/db", Path::new("/s")).is_err());
    }
}
