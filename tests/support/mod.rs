//! Test support: a private Dovecot + Postfix per test (real servers, loopback only), the daemon as a subprocess, and mail helpers.
//!
//! Every test gets its own mail instance on its own ports, so tests can stop and start
//! servers without disturbing each other. Under `CI=true` a missing server is a failure,
//! never a skip.

pub mod bridged;
pub mod deltachat;
pub mod forward;
pub mod postgres;
pub mod synapse;
pub mod telegram;

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use lettre::AsyncTransport as _;

pub const DOMAIN: &str = "example.org";
pub const BRIDGE: &str = "bridge@example.org";
pub const BRIDGE_PASSWORD: &str = "bridge-secret";

/// Mail servers take the ports B+24 … B+993 of B = 10 000 + 1 000·k, k < RANGES (B+993 < 65 536).
const RANGES: u16 = 50;
static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const POSTFIX_MASTER: &str = "/usr/lib/postfix/sbin/master";

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} || test -x {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Panics under CI=true (a missing server is a failure there), else returns false so
/// the caller can skip with a message.
pub fn servers_available() -> bool {
    if have("dovecot") && have(POSTFIX_MASTER) {
        return true;
    }
    let msg = "Dovecot/Postfix not installed: run `bash tests/servers/install.sh` (or `bash tests/run`)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Returns early from a test when the mail servers are missing outside CI.
#[macro_export]
macro_rules! mail_server {
    () => {
        match $crate::support::MailServer::start() {
            Some(s) => s,
            None => return,
        }
    };
}

/// One private Dovecot + Postfix instance.
pub struct MailServer {
    pub dir: PathBuf,
    pub base: u16,
    dovecot: Option<Child>,
    postfix: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

fn wait_port(p: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl MailServer {
    pub fn start() -> Option<Self> {
        if !servers_available() {
            return None;
        }
        // One test binary starts more servers than there are ranges: a range is taken again
        // once the server that had it is gone (its ports free).
        let base = (0..RANGES)
            .find_map(|_| {
                let base = 10_000 + 1_000 * (NEXT_BASE.fetch_add(1, Ordering::SeqCst) % RANGES);
                [24, 25, 26, 143, 587, 993].iter().all(|o| port_free(base + o)).then_some(base)
            })
            .expect("no free port range for a mail server");
        // Under the system temp dir: the mail and postfix users must be able to traverse it.
        let tmp = tempfile::Builder::new().prefix("coi-mail-").tempdir_in("/tmp").expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let out = Command::new("bash")
            .arg(repo().join("tests/servers/mail-config.sh"))
            .arg(&dir)
            .arg(base.to_string())
            .output()
            .expect("run mail-config.sh");
        assert!(out.status.success(), "mail-config.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut s = Self { dir, base, dovecot: None, postfix: None, _tmp: tmp };
        s.start_dovecot();
        s.start_postfix();
        Some(s)
    }

    pub fn imap_port(&self) -> u16 {
        self.base + 143
    }
    pub fn imaps_port(&self) -> u16 {
        self.base + 993
    }
    pub fn smtp_port(&self) -> u16 {
        self.base + 25
    }
    pub fn submission_port(&self) -> u16 {
        self.base + 587
    }
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("log").join(name)).expect("log file")
    }

    pub fn start_dovecot(&mut self) {
        assert!(self.dovecot.is_none(), "dovecot already running");
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(self.log("dovecot.stdout"))
            .stderr(self.log("dovecot.stdout"))
            .spawn()
            .expect("spawn dovecot");
        self.dovecot = Some(child);
        assert!(
            wait_port(self.imap_port()) && wait_port(self.base + 24),
            "dovecot did not come up; see {}/log",
            self.dir.display()
        );
    }

    pub fn stop_dovecot(&mut self) {
        if let Some(child) = self.dovecot.take() {
            stop_child(child);
        }
        // Dovecot leaves its master.pid behind when killed; a restart refuses to start
        // while the file names a live process, so remove it once the process is gone.
        let _ = std::fs::remove_file(self.dir.join("run/master.pid"));
    }

    pub fn start_postfix(&mut self) {
        assert!(self.postfix.is_none(), "postfix already running");
        let child = Command::new(POSTFIX_MASTER)
            .arg("-d")
            .arg("-c")
            .arg(self.dir.join("postfix"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(self.log("postfix.stdout"))
            .stderr(self.log("postfix.stdout"))
            .spawn()
            .expect("spawn postfix master");
        self.postfix = Some(child);
        assert!(
            wait_port(self.smtp_port()) && wait_port(self.submission_port()),
            "postfix did not come up; see {}/log",
            self.dir.display()
        );
    }

    pub fn stop_postfix(&mut self) {
        if let Some(child) = self.postfix.take() {
            stop_child(child);
        }
        let _ = std::fs::remove_file(self.dir.join("spool/pid/master.pid"));
    }

    /// The Maildir of a local user.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(DOMAIN).join(user)
    }

    /// Plain SMTP (port B+25, no auth, as an MX would see it).
    pub async fn deliver(&self, from: &str, to: &[&str], raw: &[u8]) {
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.smtp_port())
            .tls(lettre::transport::smtp::client::Tls::None)
            .build();
        let env = lettre::address::Envelope::new(
            Some(from.parse().expect("from")),
            to.iter().map(|t| t.parse().expect("to")).collect(),
        )
        .expect("envelope");
        transport.send_raw(&env, raw).await.expect("SMTP delivery to the test server");
    }

    /// Logs in over plain IMAP as `user@example.org` (password `user-secret`).
    pub async fn imap(&self, user: &str) -> async_imap::Session<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.imap_port())).await.expect("imap connect");
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.expect("greeting");
        client
            .login(format!("{user}@{DOMAIN}"), format!("{user}-secret"))
            .await
            .map_err(|(e, _)| e)
            .expect("imap login")
    }

    /// Puts a mail straight into a user's INBOX (IMAP APPEND), bypassing Postfix, which
    /// would rewrite or refuse hostile input.
    pub async fn append(&self, user: &str, raw: &[u8]) {
        let mut s = self.imap(user).await;
        s.append("INBOX", None, None, raw).await.expect("APPEND");
        s.logout().await.ok();
    }

    /// Every mail in a user's INBOX, in UID order.
    pub async fn fetch_all(&self, user: &str) -> Vec<Vec<u8>> {
        let mut s = self.imap(user).await;
        let mb = s.select("INBOX").await.expect("select");
        if mb.exists == 0 {
            return Vec::new();
        }
        let mut fetched: Vec<_> = s
            .uid_fetch("1:*", "(UID BODY.PEEK[])")
            .await
            .expect("fetch")
            .try_collect::<Vec<_>>()
            .await
            .expect("fetch stream");
        fetched.sort_by_key(|f| f.uid);
        let out = fetched.iter().filter_map(|f| f.body().map(<[u8]>::to_vec)).collect();
        drop(fetched);
        s.logout().await.ok();
        out
    }

    /// Waits until a user's INBOX holds at least `n` mails.
    pub async fn wait_for_mails(&self, user: &str, n: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.fetch_all(user).await;
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop_postfix();
        self.stop_dovecot();
    }
}

/// SIGTERM to the child's whole process group (the server and its workers, so IDLE
/// clients see the connection close at once), then wait (bounded), then SIGKILL.
fn stop_child(mut child: Child) {
    let pgid = child.id() as i32;
    // SAFETY: kill(2) on the process group of a child we spawned with process_group(0).
    unsafe { libc_kill(-pgid, 15) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc_kill(-pgid, 9) };
    let _ = child.wait();
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// How the daemon reaches its mail servers.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    /// IMAP without TLS on B+143, open relay SMTP on B+25 (explicit `plain`).
    Plain,
    /// IMAPS on B+993 and submission with STARTTLS + AUTH on B+587, trusting the test CA.
    Tls,
}

/// The daemon as a real subprocess.
pub struct Daemon {
    child: Option<Child>,
    /// More environment for the process (NOTIFY_SOCKET, say).
    pub env: Vec<(String, String)>,
    pub state: PathBuf,
    pub config: PathBuf,
    pub http_port: u16,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Writes a config for the bridge account on `server`; `extra` is appended to `[imap]`.
pub fn write_config(server: &MailServer, state: &Path, link: Link, imap_extra: &str, http_port: u16) -> PathBuf {
    write_config_with(server, state, link, imap_extra, http_port, "opportunistic")
}

/// [`write_config`] with an explicit `[account] encryption` policy.
pub fn write_config_with(
    server: &MailServer,
    state: &Path,
    link: Link,
    imap_extra: &str,
    http_port: u16,
    encryption: &str,
) -> PathBuf {
    let (imap, smtp) = match link {
        Link::Plain => (
            format!("port = {}\nsecurity = \"plain\"", server.imap_port()),
            format!("port = {}\nsecurity = \"plain\"\nauth = false", server.smtp_port()),
        ),
        Link::Tls => (
            format!("port = {}\nsecurity = \"tls\"\nca_file = \"{}\"", server.imaps_port(), server.ca_file().display()),
            format!(
                "port = {}\nsecurity = \"starttls\"\nca_file = \"{}\"",
                server.submission_port(),
                server.ca_file().display()
            ),
        ),
    };
    let host = match link {
        Link::Plain => "127.0.0.1",
        Link::Tls => "localhost",
    };
    let text = format!(
        "[account]\naddress = \"{BRIDGE}\"\nencryption = \"{encryption}\"\n\n[imap]\nhost = \"{host}\"\n{imap}\nidle_timeout_secs = 60\n{imap_extra}\n\n\
         [smtp]\nhost = \"{host}\"\n{smtp}\nretry_max_delay_secs = 2\n\n[store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        state.display()
    );
    let path = state.join("coi-bridge.toml");
    std::fs::create_dir_all(state).expect("state dir");
    // The password also sits in a file, so in-process tests can load the config without
    // touching the environment; the daemon subprocess gets the env variable, which wins.
    std::fs::write(state.join("mail-password"), BRIDGE_PASSWORD).expect("password file");
    let text = text.replacen(
        "[account]\n",
        &format!("[account]\npassword_file = \"{}\"\n", state.join("mail-password").display()),
        1,
    );
    std::fs::write(&path, text).expect("write config");
    path
}

impl Daemon {
    /// The built `coi-bridge`: cargo names it for tests and benches; the demo (an
    /// example, in target/*/examples/) finds it one folder up. `COI_TEST_DAEMON` names
    /// another build (the benchmarks run the release binary this way).
    pub fn bin() -> PathBuf {
        if let Some(p) = std::env::var_os("COI_TEST_DAEMON") {
            return PathBuf::from(p);
        }
        match option_env!("CARGO_BIN_EXE_coi-bridge") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().expect("current_exe");
                let dir = exe.parent().and_then(Path::parent).expect("target dir");
                dir.join("coi-bridge")
            }
        }
    }

    pub fn start(server: &MailServer, state: &Path, link: Link, imap_extra: &str) -> Self {
        let http_port = free_port();
        let config = write_config(server, state, link, imap_extra, http_port);
        Self::with_config(state, config, http_port)
    }

    /// Runs `coi-bridge run --config CONFIG`; the config's `[http] listen` is on `http_port`.
    pub fn with_config(state: &Path, config: PathBuf, http_port: u16) -> Self {
        Self::with_env(state, config, http_port, &[])
    }

    /// [`Daemon::with_config`] with more environment variables.
    pub fn with_env(state: &Path, config: PathBuf, http_port: u16, env: &[(&str, &str)]) -> Self {
        let mut d = Self {
            child: None,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            state: state.to_path_buf(),
            config,
            http_port,
            log: state.join("daemon.log"),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        let child = Command::new(Self::bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("COI_BRIDGE__ACCOUNT__PASSWORD", BRIDGE_PASSWORD)
            .env("RUST_LOG", "info,coi_bridge=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn coi-bridge");
        self.child = Some(child);
    }

    /// Starts it again after [`Daemon::stop`] or [`Daemon::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc_kill(child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("daemon did not stop within 40 s after SIGTERM; log: {}", self.log_text());
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on the daemon's HTTP listener.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    }

    /// Waits until IMAP is logged in (GET /ready is 200).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            assert!(self.is_running(), "daemon exited; log:\n{}", self.log_text());
            if let Some((200, _)) = self.http_get("/ready").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("daemon not ready within 60 s; log:\n{}", self.log_text());
    }

    /// The value of one metric sample line, e.g. `coi_bridge_inbound_recorded_total`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub async fn store(&self) -> coi_bridge::store::sqlite::SqliteStore {
        coi_bridge::store::sqlite::SqliteStore::open(&self.state.join("bridge.db"))
            .await
            .expect("open the daemon's store")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small valid PNG (1x1, checksums right: Delta Chat decodes avatars).
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d,
    0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The STATUS (`ok` or `FAIL`) of `item`'s row in `coi-bridge check`'s table.
pub fn check_row<'a>(table: &'a str, item: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let rest = l.strip_prefix(item)?;
        // The item column is padded with spaces; a longer item name does not match.
        rest.starts_with("  ").then(|| rest.split_whitespace().next()).flatten()
    })
}

/// Polls `f` until it returns Some, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Delta-Chat-style chat mail.
pub fn chat_mail(from: &str, to: &str, message_id: &str, text: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Message from {from}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{message_id}>\r\nChat-Version: 1.0\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    )
    .into_bytes()
}
