//! The many-accounts benchmark (#12): N mail accounts on a private Dovecot, each with one Telegram portal, in one daemon; it measures RSS, CPU while idle, the time until every account idles and one message's latency while the rest idle.
//!
//! Run (release, 1,000 accounts, 5 minutes idle): `bash tests/servers/install.sh && cargo bench --bench accounts`.
//! Shorter tries: `cargo bench --bench accounts -- --accounts 20 --idle-secs 30`. A debug
//! harness against any daemon build: `cargo test --bench accounts -- --bench --daemon
//! target/release/coi-bridge`. It prints a Markdown block for docs/BENCHMARKS.md
//! (`--out FILE` writes it too). It measures; it asserts nothing about time.
//!
//! What it sets up, all on loopback:
//! - a private Dovecot + Postfix (tests/support), with N users `bench0000@example.org` …
//!   appended to its passwd-file, and the limits 1,000 IDLE connections from one address
//!   need (this instance's config only);
//! - the Bot API double (tests/support/telegram.rs), each account a bot with its own token;
//! - one daemon config with `[accounts] dir = "accounts.d"`, one file per account
//!   (`--main-only`: one account in the main file's `[account]`, for N = 1);
//! - each account's store created beforehand through the library's store API
//!   (`coi_bridge::store::open`), holding the 1:1 chat with carol@example.org and its portal
//!   to the account's Telegram group.
//!
//! "Idling" is Dovecot's view: the account's imap process shows `IDLE` in its process
//! title (`verbose_proctitle`), read from /proc.

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coi_bridge::store::{ChatKind, ChatRef};
use futures::StreamExt as _;
use support::MailServer;
use support::telegram::FakeTelegram;

/// Who writes to the accounts (a plain chat mail; the accounts run `encryption = "opportunistic"`).
const PEER: &str = "carol@example.org";
const USAGE: &str = "usage: accounts [--accounts N] [--idle-secs S] [--settle-secs S] [--samples K] \
                     [--link tls|plain] [--daemon PATH] [--log FILTER] [--main-only] [--out FILE]";

struct Opts {
    accounts: usize,
    idle_secs: u64,
    settle_secs: u64,
    samples: usize,
    tls: bool,
    daemon: PathBuf,
    log: String,
    main_only: bool,
    out: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            accounts: 1000,
            idle_secs: 300,
            settle_secs: 10,
            samples: 10,
            tls: true,
            daemon: PathBuf::from(env!("CARGO_BIN_EXE_coi-bridge")),
            log: "info".into(),
            main_only: false,
            out: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
            match a.as_str() {
                "--bench" => {}
                "--accounts" => o.accounts = num(val()?)?.try_into().map_err(|_| "--accounts: too large")?,
                "--idle-secs" => o.idle_secs = num(val()?)?,
                "--settle-secs" => o.settle_secs = num(val()?)?,
                "--samples" => o.samples = num(val()?)?.try_into().map_err(|_| "--samples: too large")?,
                "--link" => {
                    o.tls = match val()?.as_str() {
                        "tls" => true,
                        "plain" => false,
                        other => return Err(format!("--link {other}: tls or plain")),
                    }
                }
                "--daemon" => o.daemon = PathBuf::from(val()?),
                "--log" => o.log = val()?,
                "--main-only" => o.main_only = true,
                "--out" => o.out = Some(PathBuf::from(val()?)),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if o.accounts == 0 || o.accounts > 9999 || (o.main_only && o.accounts != 1) || o.samples == 0 {
            return Err(format!("--accounts 1..=9999 (exactly 1 with --main-only), --samples >= 1\n{USAGE}"));
        }
        Ok(o)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("accounts: a many-accounts harness; run it with `cargo bench --bench accounts` (see its doc comment)");
        return;
    }
    let opts = Opts::parse(&args).unwrap_or_else(|e| {
        eprintln!("accounts: {e}");
        std::process::exit(2)
    });
    let nofile = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(opts, nofile));
}

fn user(i: usize) -> String {
    format!("bench{i:04}")
}
fn address(i: usize) -> String {
    format!("{}@{}", user(i), support::DOMAIN)
}
/// The account's Telegram group (a supergroup id).
fn chat_id(i: usize) -> i64 {
    -1_002_000_000_000 - i as i64
}
fn token(i: usize) -> String {
    format!("{}:fake-token", 7_100_000 + i)
}

// --- the process side: limits, /proc -----------------------------------------------

#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}
unsafe extern "C" {
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    fn sysconf(name: i32) -> i64;
}
const RLIMIT_NOFILE: i32 = 7;
const SC_CLK_TCK: i32 = 2;

/// Raises this process's open-file limit to its hard limit; Dovecot and the daemon inherit it.
fn raise_nofile() -> u64 {
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a struct of the C layout.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let want = Rlimit { cur: r.max, max: r.max };
        if setrlimit(RLIMIT_NOFILE, &want) == 0 {
            r.cur = r.max;
        }
    }
    r.cur
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, pgrp, utime + stime in ticks) of a process.
fn proc_stat(pid: i32) -> Option<(i32, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s.rsplit_once(") ")?.1.split_whitespace().collect();
    // After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime.
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((num(1)? as i32, num(2)? as i32, num(11)? + num(12)?))
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in kB; `Threads` as a count.
fn proc_status(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::to_owned))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The bench users whose imap process (a child of Dovecot's master) is in IDLE.
fn idling(master: i32) -> HashSet<String> {
    let mut out = HashSet::new();
    for pid in pids() {
        if proc_stat(pid).is_none_or(|(ppid, _, _)| ppid != master) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let title = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // "dovecot/imap [bench0042@example.org 127.0.0.1 IDLE]"
        let Some(inner) = title.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(i, _)| i) else {
            continue;
        };
        let words: Vec<&str> = inner.split_whitespace().collect();
        if words.last() == Some(&"IDLE")
            && let Some(u) = words.first().filter(|u| u.starts_with("bench"))
        {
            out.insert((*u).to_owned());
        }
    }
    out
}

/// CPU ticks and summed VmRSS (kB) of every process in a process group.
fn group_usage(pgrp: i32) -> (u64, u64, usize) {
    let (mut ticks, mut rss, mut n) = (0, 0, 0);
    for pid in pids() {
        if let Some((_, g, t)) = proc_stat(pid)
            && g == pgrp
        {
            ticks += t;
            rss += proc_status(pid, "VmRSS");
            n += 1;
        }
    }
    (ticks, rss, n)
}

/// "name × count" of the process's threads, most first.
fn thread_names(pid: i32) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *counts.entry(name.trim().to_owned()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter().map(|(n, c)| format!("{n} × {c}")).collect::<Vec<_>>().join(", ")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// --- setup ---------------------------------------------------------------------------

/// Limits for N IDLE connections from 127.0.0.1, appended to this instance's dovecot.conf
/// (later settings win; service blocks merge).
fn dovecot_limits(n: usize) -> String {
    format!(
        "\n# benches/accounts.rs: {n} accounts, one IDLE connection each, all from 127.0.0.1.\n\
         default_process_limit = {procs}\ndefault_client_limit = {clients}\nverbose_proctitle = yes\n\
         service imap {{\n  process_limit = {procs}\n}}\n\
         # TLS proxies for every connection in a few processes (high-performance mode), not one each.\n\
         service imap-login {{\n  service_count = 0\n  process_min_avail = 2\n  client_limit = {clients}\n}}\n",
        procs = n + 200,
        clients = 4 * n + 1000,
    )
}

/// Appends the bench users to the passwd-file and waits for the next wall-clock second
/// (Dovecot re-reads the file at most once a second).
fn add_users(mail: &MailServer, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        let u = user(i);
        let _ =
            writeln!(lines, "{u}@example.org:{{PLAIN}}{u}-secret:8:8::{}/mail/example.org/{u}::", mail.dir.display());
    }
    let path = mail.dir.join("users");
    let mut text = std::fs::read_to_string(&path).expect("users file");
    text.push_str(&lines);
    std::fs::write(&path, text).expect("write users");
    let s = chrono::Utc::now().timestamp();
    while chrono::Utc::now().timestamp() == s {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_sections(mail: &MailServer, tls: bool) -> String {
    if tls {
        let ca = mail.ca_file();
        format!(
            "[imap]\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\nca_file = \"{}\"\n\n\
             [smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nca_file = \"{}\"\n",
            mail.imaps_port(),
            ca.display(),
            mail.submission_port(),
            ca.display()
        )
    } else {
        format!(
            "[imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nauth = false\n",
            mail.imap_port(),
            mail.smtp_port()
        )
    }
}

/// One account's `[account]`, `[imap]`, `[smtp]` and `[[bridge]]` (a Telegram bot of its own).
fn account_sections(state: &Path, mail: &MailServer, tg: &FakeTelegram, i: usize, tls: bool) -> String {
    let secrets = state.join("secrets");
    let password = secrets.join(format!("{}.password", user(i)));
    let token_file = secrets.join(format!("{}.token", user(i)));
    std::fs::write(&password, format!("{}-secret", user(i))).expect("password file");
    std::fs::write(&token_file, token(i)).expect("token file");
    format!(
        "[account]\naddress = \"{}\"\npassword_file = \"{}\"\nencryption = \"opportunistic\"\n\n{}\n\
         [[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"{}\"\ntoken_file = \"{}\"\nallowed_chats = [{}]\n",
        address(i),
        password.display(),
        server_sections(mail, tls),
        tg.url(),
        token_file.display(),
        chat_id(i)
    )
}

/// Writes the main config (and accounts.d); returns its path.
fn write_configs(state: &Path, mail: &MailServer, tg: &FakeTelegram, o: &Opts, http_port: u16) -> PathBuf {
    std::fs::create_dir_all(state.join("secrets")).expect("secrets dir");
    let mut main = format!(
        "[store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n",
        state.display()
    );
    if o.main_only {
        main.push_str(&account_sections(state, mail, tg, 0, o.tls));
    } else {
        main.push_str("[accounts]\ndir = \"accounts.d\"\n");
        let dir = state.join("accounts.d");
        std::fs::create_dir_all(&dir).expect("accounts.d");
        for i in 0..o.accounts {
            let text = account_sections(state, mail, tg, i, o.tls);
            std::fs::write(dir.join(format!("{}.toml", user(i))), text).expect("account file");
        }
    }
    let path = state.join("coi-bridge.toml");
    std::fs::write(&path, main).expect("main config");
    path
}

/// Where the daemon keeps account `i`'s store (the contract of #12: a directory account's
/// SQLite store is `<state_dir>/accounts/<address>/store.sqlite`).
fn store_path(state: &Path, o: &Opts, i: usize) -> PathBuf {
    if o.main_only { state.join("bridge.db") } else { state.join("accounts").join(address(i)).join("store.sqlite") }
}

/// Creates each account's store with the 1:1 chat with [`PEER`] linked to its Telegram group.
async fn create_portals(state: &Path, o: &Opts) {
    futures::stream::iter(0..o.accounts)
        .map(|i| async move {
            let url = format!("sqlite://{}", store_path(state, o, i).display());
            let store = coi_bridge::store::open(&url, state).await.expect("create the account's store");
            let peer = ChatRef { kind: ChatKind::Single, key: PEER.into(), name: "Carol".into() };
            let chat = store.ensure_chat(&peer).await.expect("the chat with carol");
            store.create_portal(chat, "telegram", &chat_id(i).to_string()).await.expect("the portal");
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

// --- the daemon --------------------------------------------------------------------------

struct DaemonProc {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

impl DaemonProc {
    fn spawn(o: &Opts, config: &Path, state: &Path, http_port: u16) -> Self {
        let log = state.join("daemon.log");
        let f = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new(&o.daemon)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", &o.log)
            .env_remove("COI_BRIDGE__ACCOUNT__PASSWORD")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", o.daemon.display()));
        Self { child, http_port, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("the daemon exited ({status}); the end of {}:\n{}", self.log.display(), tail.join("\n"));
        }
    }

    /// GET `path`; `None` if it fails or takes over 5 s (a daemon starting 1,000 accounts
    /// in a debug build left /ready unanswered for minutes, and the start figure waited).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        tokio::time::timeout(Duration::from_secs(5), self.get_inner(path)).await.ok().flatten()
    }

    async fn get_inner(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// The sum of every sample of a metric (over its labels).
    async fn metric_sum(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// SIGTERM; how long until it exited (SIGKILL after 120 s).
    fn stop(mut self) -> Option<Duration> {
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { support::libc_kill(self.pid(), 15) };
        while t0.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- measuring -------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "p50 (p90, min … max, n)" in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let pick = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "{:.0} ms (p90 {:.0}, min {:.0}, max {:.0}; n = {})",
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

/// Delivers a chat mail from [`PEER`] to account `i` by SMTP; the time until the double
/// recorded the bot's sendMessage carrying it (the double's own timestamp).
async fn one_message(mail: &MailServer, tg: &FakeTelegram, i: usize, tag: &str) -> Duration {
    let body = format!("bench {tag} {}", uuid::Uuid::new_v4().simple());
    let raw = support::chat_mail(PEER, &address(i), &format!("{}@bench.example.org", uuid::Uuid::new_v4()), &body);
    let t0 = Instant::now();
    mail.deliver(PEER, &[&address(i)], &raw).await;
    let call =
        support::eventually(Duration::from_secs(120), &format!("{tag}: the message at account {i}'s portal"), || {
            let body = body.clone();
            async move {
                tg.sent("sendMessage", chat_id(i))
                    .into_iter()
                    .find(|c| c.params["text"].as_str().is_some_and(|t| t.contains(&body)))
            }
        })
        .await;
    call.at.saturating_duration_since(t0)
}

/// Floor: an SMTP delivery until a raw IMAP client IDLEing on the same server hears of it.
async fn idle_floor(mail: &MailServer, n: usize) -> Vec<Duration> {
    let mut session = mail.imap("carol").await;
    session.select("INBOX").await.expect("select");
    let mut out = Vec::new();
    for i in 0..n {
        let mut idle = session.idle();
        idle.init().await.expect("IDLE");
        let raw =
            support::chat_mail("bob@example.org", PEER, &format!("floor-{i}-{}@bench", uuid::Uuid::new_v4()), "floor");
        let t0 = Instant::now();
        {
            let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(60));
            let (woke, ()) = tokio::join!(wait, mail.deliver("bob@example.org", &[PEER], &raw));
            woke.expect("IDLE wakes");
        }
        out.push(t0.elapsed());
        session = idle.done().await.expect("DONE");
    }
    out
}

async fn run(o: Opts, nofile: u64) {
    coi_bridge::init_crypto();
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let mut mail = MailServer::start().unwrap_or_else(|| {
        eprintln!("accounts: Dovecot/Postfix are not installed; run `bash tests/servers/install.sh`");
        std::process::exit(1)
    });
    let conf = mail.dir.join("dovecot.conf");
    let text = std::fs::read_to_string(&conf).expect("dovecot.conf") + dovecot_limits(o.accounts).as_str();
    std::fs::write(&conf, text).expect("dovecot.conf");
    mail.stop_dovecot();
    mail.start_dovecot();
    add_users(&mail, o.accounts);
    let master: i32 = std::fs::read_to_string(mail.dir.join("run/master.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("Dovecot's master.pid");

    let tg = FakeTelegram::start().await;
    for i in 0..o.accounts {
        tg.set_chat(chat_id(i), &format!("Bench {i}"), &[]);
    }
    let state = tempfile::Builder::new().prefix("coi-accounts-").tempdir_in("/tmp").expect("state dir");
    let http_port = support::free_port();
    let config = write_configs(state.path(), &mail, &tg, &o, http_port);
    let t = Instant::now();
    create_portals(state.path(), &o).await;
    eprintln!("accounts: {} stores with a portal each in {:.1} s", o.accounts, t.elapsed().as_secs_f64());

    // Start: from spawn until Dovecot shows every account in IDLE.
    let mut d = DaemonProc::spawn(&o, &config, state.path(), http_port);
    let t0 = Instant::now();
    let (mut first_idle, mut ready_at, mut last_report) = (None, None, Instant::now());
    let all_idle = loop {
        d.check_running();
        let n = idling(master).len();
        if n > 0 && first_idle.is_none() {
            first_idle = Some(t0.elapsed());
        }
        if ready_at.is_none() && matches!(d.get("/ready").await, Some((200, _))) {
            ready_at = Some(t0.elapsed());
        }
        if n == o.accounts {
            break t0.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("accounts: {n}/{} idling after {:.0} s", o.accounts, t0.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "not every account idles after 30 minutes ({n}/{})",
            o.accounts
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("accounts: all {} idling after {:.1} s", o.accounts, all_idle.as_secs_f64());
    let ready_body = d.get("/ready").await.map(|(s, b)| format!("{s} {}", b.trim())).unwrap_or_default();
    let rss_started = proc_status(d.pid(), "VmRSS");

    // Idle: nothing talks to the daemon (no scrape) while the window runs.
    tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
    let tick = clk_tck();
    let pid = d.pid();
    let cpu0 = proc_stat(pid).map_or(0, |s| s.2);
    let (dove0, _, _) = group_usage(master);
    let own0 = proc_stat(std::process::id() as i32).map_or(0, |s| s.2);
    let w0 = Instant::now();
    let (mut rss_min, mut rss_max) = (u64::MAX, 0);
    // Every sample (seconds into the window, kB), to say how long the window sat above the
    // 300 MB target and not only that it did.
    let mut rss_series = Vec::new();
    while w0.elapsed() < Duration::from_secs(o.idle_secs) {
        d.check_running();
        let rss = proc_status(pid, "VmRSS");
        rss_min = rss_min.min(rss);
        rss_max = rss_max.max(rss);
        rss_series.push((w0.elapsed().as_secs(), rss));
        let left = Duration::from_secs(o.idle_secs).saturating_sub(w0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
    }
    let wall = w0.elapsed().as_secs_f64();
    const TARGET_KB: u64 = 300 * 1024;
    let over: Vec<u64> = rss_series.iter().filter(|(_, kb)| *kb > TARGET_KB).map(|(t, _)| *t).collect();
    let series: Vec<String> = rss_series.iter().map(|(t, kb)| format!("{t}:{}", kb / 1024)).collect();
    eprintln!("accounts: RSS over the window (s:MB): {}", series.join(" "));
    let cpu = proc_stat(pid).map_or(0, |s| s.2).saturating_sub(cpu0) as f64 / tick;
    let (dove1, dove_rss, dove_procs) = group_usage(master);
    let own = proc_stat(std::process::id() as i32).map_or(0, |s| s.2).saturating_sub(own0) as f64 / tick;
    let rss = proc_status(pid, "VmRSS");
    let hwm = proc_status(pid, "VmHWM");
    let (stacks, heap, files) = common::rss_split(pid.unsigned_abs());
    let names = thread_names(pid);
    let threads = proc_status(pid, "Threads");
    let fds = open_fds(pid);
    let still_idle = idling(master).len();
    // Said at once too: a run of 1,000 accounts is long to lose to a later failure.
    eprintln!(
        "accounts: idle window over: {:.2} % of one core; RSS {rss} kB (HWM {hwm}; malloc {heap}, stacks {stacks}, \
         files {files}); threads {threads} ({names}); fds {fds}; {still_idle} still idle",
        cpu / wall * 100.0
    );

    // One message in one account while the others idle.
    let warm = o.accounts / 2;
    one_message(&mail, &tg, warm, "warm-up").await;
    let mut warm_series = Vec::new();
    for k in 0..o.samples {
        // The bot posts at most once a second into one chat (`chat_interval_ms`): a gap
        // keeps that limit out of the figure.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        warm_series.push(one_message(&mail, &tg, warm, &format!("sample {k}")).await);
    }
    let mut first_series = Vec::new();
    for k in 0..o.samples.min(o.accounts) {
        let i = (k * o.accounts / o.samples.min(o.accounts) + 1) % o.accounts;
        if i != warm {
            first_series.push(one_message(&mail, &tg, i, &format!("first {k}")).await);
        }
    }
    let mut floor = idle_floor(&mail, o.samples).await;
    let held = d.metric_sum("coi_bridge_accounts_held").await;
    let connected = d.metric_sum("coi_bridge_imap_connected").await;
    let reconnects = d.metric_sum("coi_bridge_imap_reconnects_total").await;
    let failures = d.metric_sum("coi_bridge_failures_total").await;
    let shutdown = d.stop();

    // The report.
    let profile = if o.daemon.components().any(|c| c.as_os_str() == "release") { "release" } else { "debug" };
    let mb = |kb: u64| kb as f64 / 1024.0;
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut r = String::new();
    let _ = writeln!(
        r,
        "### Run {} UTC, commit {}{}, {} accounts ({profile} daemon)\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        sh("git rev-parse --short HEAD"),
        if sh("git status --porcelain -- src bridges Cargo.lock").is_empty() { "" } else { " + uncommitted" },
        o.accounts
    );
    let _ = writeln!(
        r,
        "Machine: {} cores ({}), {} MB RAM; load average before: {load_before}, after: {}. {}, {}, {}. \
         Open-file limit {nofile}. {} to Dovecot {}; one Telegram portal per account (the Bot API double, \
         a bot and token each, 50 s long polls). Stores: SQLite, one per account. RUST_LOG={}.\n",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'"),
        sh("awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh(&format!("{} --version", o.daemon.display())),
        sh("rustc -V | cut -d' ' -f1-2"),
        sh("dovecot --version | sed 's/^/Dovecot /; s/ (.*//'"),
        if o.tls { "IMAPS + submission (STARTTLS)" } else { "Plain IMAP + SMTP" },
        if o.main_only { "(main-file [account])" } else { "(accounts.d, one file each)" },
        o.log
    );
    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let _ = writeln!(r, "| accounts, each with one portal | {} |", o.accounts);
    let _ = writeln!(
        r,
        "| start → every account in IDLE (Dovecot's view) | {:.1} s (the first after {:.1} s; /ready 200 after {}) |",
        all_idle.as_secs_f64(),
        first_idle.unwrap_or_default().as_secs_f64(),
        ready_at.map_or("-".into(), |t| format!("{:.1} s", t.as_secs_f64()))
    );
    let _ = writeln!(
        r,
        "| RSS idle (VmRSS, over the window) | {:.0} MB (min {:.0}, max {:.0}; {:.0} MB when all idled; {} of {} samples over 300 MB{}) |",
        mb(rss),
        mb(rss_min),
        mb(rss_max),
        mb(rss_started),
        over.len(),
        rss_series.len(),
        over.last().map_or(String::new(), |t| format!(", the last {t} s into the window"))
    );
    let _ = writeln!(
        r,
        "| of which malloc (heap, arenas) / thread stacks / files (binary, SQLite -shm) | {:.0} / {:.0} / {:.0} MB |",
        mb(heap),
        mb(stacks),
        mb(files)
    );
    let _ = writeln!(r, "| RSS peak (VmHWM, start included) | {:.0} MB |", mb(hwm));
    let _ = writeln!(r, "| RSS per account | {:.0} kB |", rss as f64 / o.accounts as f64);
    let _ = writeln!(
        r,
        "| CPU while idle ({:.0} s after a {} s settle) | {:.2} % of one core ({:.2} s CPU) |",
        wall,
        o.settle_secs,
        cpu / wall * 100.0,
        cpu
    );
    let _ = writeln!(r, "| threads / open files | {threads} ({names}) / {fds} |");
    let _ = writeln!(r, "| accounts still in IDLE at the window's end | {still_idle} |");
    let _ = writeln!(r, "| one message → its Telegram portal, warm account | {} |", summary(&mut warm_series));
    if !first_series.is_empty() {
        let _ = writeln!(r, "| first message in an account → its portal | {} |", summary(&mut first_series));
    }
    let _ = writeln!(r, "| floor: SMTP → a raw IMAP IDLE wake-up, same server | {} |", summary(&mut floor));
    let _ = writeln!(
        r,
        "| context: Dovecot ({dove_procs} processes) over the window | {:.2} % of one core, {:.0} MB summed VmRSS |",
        dove1.saturating_sub(dove0) as f64 / tick / wall * 100.0,
        mb(dove_rss)
    );
    let _ = writeln!(
        r,
        "| context: the harness (Bot API double) over the window | {:.2} % of one core |",
        own / wall * 100.0
    );
    let _ = writeln!(
        r,
        "| the daemon's metrics at the end: accounts held / IMAP sessions logged in | {} / {} |",
        opt(held),
        opt(connected)
    );
    let _ =
        writeln!(r, "| IMAP reconnects / failures (metrics, whole run) | {} / {} |", opt(reconnects), opt(failures));
    let _ = writeln!(
        r,
        "| shutdown (SIGTERM → exit) | {} |",
        shutdown.map_or("over 120 s (killed)".into(), |t| format!("{:.1} s", t.as_secs_f64()))
    );
    let _ = writeln!(r, "\n/ready when all idled: `{}`", ready_body.chars().take(300).collect::<String>());
    println!("{r}");
    if let Some(out) = &o.out {
        std::fs::write(out, &r).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    }
}
