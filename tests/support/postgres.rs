//! A private PostgreSQL server for the store tests: Debian's `postgresql`, a cluster under /tmp, on a free loopback port.
//!
//! `tests/servers/postgres.sh init` makes the cluster (as the `postgres` user when run as
//! root: root cannot run PostgreSQL); the server runs as our child and is stopped by its
//! PID. [`PgServer::shared`] is the one server of a test binary, stopped when the binary
//! exits; [`PgServer::database`] gives each test a fresh database on it. Under `CI=true` a
//! missing PostgreSQL is a failure, never a skip.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One running PostgreSQL cluster.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/servers/postgres.sh")
}

/// The newest installed server's bin dir, or None (a panic under CI=true).
fn bindir() -> Option<PathBuf> {
    let out = Command::new("bash").arg(script()).arg("bindir").stderr(Stdio::null()).output().ok();
    match out.filter(|o| o.status.success()) {
        Some(o) => Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        None => {
            let msg = "PostgreSQL not installed: run `bash tests/servers/install.sh` (Debian's postgresql)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// The uid and gid of the `postgres` user (from /etc/passwd).
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line =
        passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres user (Debian's package makes it)");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().expect("uid"), f[3].parse().expect("gid"))
}

unsafe extern "C" {
    fn geteuid() -> u32;
    fn prctl(option: i32, ...) -> i32;
    fn atexit(f: extern "C" fn()) -> i32;
}

impl PgServer {
    /// Inits a cluster and starts it; None when PostgreSQL is missing outside CI. The server
    /// is killed if the thread that started it ends first (PR_SET_PDEATHSIG), so no server
    /// outlives a test binary that was killed.
    pub fn start() -> Option<Self> {
        let bin = bindir()?;
        let tmp = tempfile::Builder::new().prefix("coi-pg-").tempdir_in("/tmp").expect("tempdir");
        let dir = tmp.keep();
        let out = Command::new("bash").arg(script()).arg("init").arg(&dir).output().expect("run postgres.sh init");
        assert!(out.status.success(), "postgres.sh init failed: {}", String::from_utf8_lossy(&out.stderr));
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(&bin, &dir, port);
            if wait_ready(&bin, port, &mut child) {
                return Some(Self { port, bin, dir, child: Mutex::new(Some(child)) });
            }
            // Most likely the port was taken between our probe and the server's bind.
            stop_child(child);
        }
        panic!("PostgreSQL did not start; see {}", dir.join("log/postgres.log").display());
    }

    /// The one server of this test binary, started on first use and stopped at exit.
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Some(s)) = SHARED.get() {
                s.stop();
            }
        }
        SHARED
            .get_or_init(|| {
                // Started from a thread that lives as long as the process (see `start`).
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("postgres-parent".into())
                    .spawn(move || {
                        let _ = tx.send(std::panic::catch_unwind(Self::start));
                        loop {
                            std::thread::park();
                        }
                    })
                    .expect("spawn the postgres parent thread");
                let server =
                    rx.recv().expect("postgres parent thread").unwrap_or_else(|p| std::panic::resume_unwind(p));
                if server.is_some() {
                    // SAFETY: registers a plain function to run at exit.
                    unsafe { atexit(stop_shared) };
                }
                server
            })
            .as_ref()
    }

    /// The server's superuser connection to its `postgres` database.
    pub fn url(&self) -> String {
        // The test cluster has no certificate: plaintext, said so (TLS is the default).
        format!("postgres://coi@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// A new, empty database on this server; its URL. It collates text as a production
    /// database usually does (ICU, en-US: punctuation does not sort by code point), not as
    /// the test cluster's "C", so SQL that silently relies on byte order fails here.
    pub fn database(&self) -> String {
        let name = format!("coi_test_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
        self.psql(
            &self.url(),
            &format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ),
        );
        format!("postgres://coi@127.0.0.1:{}/{name}?sslmode=disable", self.port)
    }

    /// Runs SQL on the database at `url` as the superuser; its output, unaligned, without
    /// headers (panics on failure).
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown: clients are cut off) and keeps its cluster, for
    /// [`PgServer::resume`]: an outage of the database.
    pub fn pause(&self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            stop_child(child);
        }
    }

    /// Starts the paused server again, on its port.
    pub fn resume(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(slot.is_none(), "the server is running");
        let mut child = spawn(&self.bin, &self.dir, self.port);
        assert!(wait_ready(&self.bin, self.port, &mut child), "PostgreSQL did not come back");
        *slot = Some(child);
    }

    /// Stops the server by its PID and removes its cluster.
    pub fn stop(&self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port in 61 000..65 000: above the mail servers' ranges (10 000 + 1 000·k,
/// k < 50) and the kernel's ephemeral ports (to 60 999), so neither takes it meanwhile.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() + NEXT.fetch_add(1, Ordering::SeqCst);
    (0..4000)
        .map(|i| 61_000 + (start.wrapping_add(i) % 4000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 61000..65000")
}

/// Starts the server of the cluster in `dir` on `port`, as the `postgres` user when we are
/// root. It is killed if the thread that started it ends first (PR_SET_PDEATHSIG).
fn spawn(bin: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log/postgres.log")).expect("log");
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir.join("run"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "fsync=off", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    // SAFETY: geteuid only reads our credentials.
    if unsafe { geteuid() } == 0 {
        let (uid, gid) = postgres_user();
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it runs in the child after the uid change (which
    // would clear it). 1 = PR_SET_PDEATHSIG, 3 = SIGQUIT (immediate shutdown).
    unsafe {
        cmd.pre_exec(|| {
            prctl(1, 3 as std::ffi::c_ulong);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn postgres")
}

/// Polls until the server on `port` accepts connections; false if it exits or 30 s pass.
fn wait_ready(bin: &Path, port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "coi", "-d", "postgres"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// SIGINT (fast shutdown) to the server's PID, then SIGKILL after 10 s.
fn stop_child(mut child: Child) {
    // SAFETY: kill(2) on our own child's PID.
    unsafe { super::libc_kill(child.id() as i32, 2) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
