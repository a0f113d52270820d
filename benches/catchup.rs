//! Catch-up throughput of the daemon after a stop: thousands of encrypted Delta Chat messages waiting in its mailbox go to Matrix, and thousands of Matrix messages held by Synapse go out through SMTP; timed, with nothing lost, nothing duplicated and each chat's order kept (asserted).
//!
//! Run: `bash tests/servers/install.sh && cargo bench --bench catchup` (release build of
//! everything), or a debug harness against the release daemon:
//! `cargo test --bench catchup -- --bench` (it runs `target/release/coi-bridge` when that
//! exists, else the debug build, and says which). Quick tries: `-- --bench --messages 200
//! --chats 5`. Options: `--messages N` (2000), `--chats C` (20), `--senders S` (4),
//! `--phase both|coi|matrix`, `--dc-live`, `--daemon PATH`, `--out FILE` (also write the Markdown
//! there). Under `cargo test` without `--bench` it only says how to run it.
//!
//! Setup, all on loopback (tests/support's Stack: Dovecot + Postfix, Synapse, one Delta Chat
//! core, the daemon): C rooms of Mara, each bridged with `!coi bridge` to its own COI group;
//! S sender accounts (`sender0@` …, bot accounts so Delta Chat core does not pace their
//! sends) on the same core; chat c is joined through its invite link by sender c mod S. One
//! warm-up message each way per chat (ghosts, keys, connections).
//!
//! - **COI → Matrix.** SIGTERM to the daemon (it waits for the exit); the senders send N
//!   messages `c{chat}-{n}`, N/C per chat, each chat in order; the harness waits until
//!   Dovecot holds all N in the bridge's INBOX, then starts the daemon and times until its
//!   `delivery_latency_seconds_count{target="matrix"}` reaches N, then reads every room
//!   (`/messages`) as Mara: each message once, in order.
//! - **Matrix → COI.** Daemon stopped; Mara posts N messages `m{chat}-{n}` across the rooms
//!   (Synapse holds the appservice transactions); the receiving Delta Chat accounts' IO is
//!   paused (they would share the 2 cores with the bridge; `--dc-live` keeps them on); the
//!   daemon starts and the clock runs until `delivery_latency_seconds_count{target="smtp"}`
//!   reaches N (Postfix accepted them all); then the harness reads each receiver's INBOX
//!   in UID order, Delta Chat's IO starts, and it waits until each sender's Delta Chat shows
//!   every message of its chats once. Order, hop by hop: Postfix's log must show each
//!   chat's mails taken in the order sent (the bridge's part), no message shown before an
//!   earlier one may carry an earlier Date, and each pair Delta Chat shows swapped must lie
//!   swapped in the INBOX (Postfix hands mails to Dovecot several at once, and Delta Chat
//!   sorts same-second mails by arrival: that order is the mail system's, not the bridge's).
//!
//! Per phase: msg/s, the daemon's CPU time per message (utime + stime of the new process
//! from its start to the clock's end, divided by N: start-up included), RSS idle before the
//! phase (35 s at rest, split by kind of mapping) and VmRSS/VmHWM after. It asserts correctness only, never time.

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use support::bridged::{BOT, Stack, WAIT, bridge_room_as, create_room};
use support::synapse::{send_as, timeline};

const USAGE: &str = "usage: catchup [--messages N] [--chats C] [--senders S] [--phase both|coi|matrix] [--dc-live] \
                     [--daemon PATH] [--out FILE]";
/// How long the daemon rests before its idle RSS is read: past one look of its heap
/// trimmer (`src/heap.rs`, every 30 s), so "idle" is a daemon at rest, not one 5 s after
/// the warm-up's burst.
const SETTLE: Duration = Duration::from_secs(35);
/// How long any one wait of a phase may take before the harness gives up.
const PATIENCE: Duration = Duration::from_secs(1200);

struct Opts {
    messages: usize,
    chats: usize,
    senders: usize,
    coi: bool,
    matrix: bool,
    /// Delta Chat receives while the Matrix → COI clock runs (else its IO is paused).
    dc_live: bool,
    daemon: Option<PathBuf>,
    out: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            messages: 2000,
            chats: 20,
            senders: 4,
            coi: true,
            matrix: true,
            dc_live: false,
            daemon: None,
            out: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
            let num = |v: String| v.parse::<usize>().map_err(|e| format!("{a} {v}: {e}"));
            match a.as_str() {
                "--bench" => {}
                "--messages" => o.messages = num(val()?)?,
                "--chats" => o.chats = num(val()?)?,
                "--senders" => o.senders = num(val()?)?,
                "--phase" => match val()?.as_str() {
                    "both" => (o.coi, o.matrix) = (true, true),
                    "coi" => (o.coi, o.matrix) = (true, false),
                    "matrix" => (o.coi, o.matrix) = (false, true),
                    other => return Err(format!("--phase {other}: both, coi or matrix")),
                },
                "--dc-live" => o.dc_live = true,
                "--daemon" => o.daemon = Some(PathBuf::from(val()?)),
                "--out" => o.out = Some(PathBuf::from(val()?)),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if o.chats == 0 || o.senders == 0 || o.messages == 0 || !o.messages.is_multiple_of(o.chats) {
            return Err(format!("--chats, --senders >= 1, --messages a multiple of --chats\n{USAGE}"));
        }
        Ok(o)
    }

    fn per_chat(&self) -> usize {
        self.messages / self.chats
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("catchup: a catch-up harness; run it with `cargo bench --bench catchup` (see its doc comment)");
        return;
    }
    let mut opts = Opts::parse(&args).unwrap_or_else(|e| {
        eprintln!("catchup: {e}");
        std::process::exit(2)
    });
    let daemon = common::choose_daemon(opts.daemon.take());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(opts, daemon));
}

/// One bridged chat: Mara's room, and the sender account in it with its chat id.
struct Chat {
    room: String,
    sender: u64,
    chat: Value,
}

/// The numbers `n` of the texts `{prefix}{n}` in `texts`, in the order given.
fn numbers(texts: &[String], prefix: &str) -> Vec<usize> {
    texts.iter().filter_map(|t| t.strip_prefix(prefix)?.parse().ok()).collect()
}

/// The numbers sorted.
fn sorted(v: &[usize]) -> Vec<usize> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// Checks a chat's messages: each of 0..n once, in order. Returns what is wrong.
fn check(where_: &str, got: &[usize], n: usize) -> Result<(), String> {
    let mut seen = vec![0u32; n];
    for &k in got {
        if k < n {
            seen[k] += 1;
        }
    }
    let lost: Vec<usize> = (0..n).filter(|&k| seen[k] == 0).collect();
    let dup: Vec<usize> = (0..n).filter(|&k| seen[k] > 1).collect();
    let out_of_order = got.windows(2).filter(|w| w[1] <= w[0]).count();
    if lost.is_empty() && dup.is_empty() && out_of_order == 0 && got.len() == n {
        return Ok(());
    }
    Err(format!(
        "{where_}: {} of {n} there, lost {:?}, duplicated {:?}, {out_of_order} out of order",
        got.len(),
        &lost[..lost.len().min(10)],
        &dup[..dup.len().min(10)]
    ))
}

/// The texts of a Delta Chat chat in the order Delta Chat shows them.
async fn shown_texts(s: &Stack, acc: u64, chat: &Value) -> Vec<String> {
    let ids = s.dc.call("get_message_ids", json!([acc, chat, false, false])).await;
    let msgs = s.dc.call("get_messages", json!([acc, ids])).await;
    ids.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| msgs[id.to_string()]["text"].as_str().map(str::to_owned))
        .collect()
}

/// The bodies of a room's timeline as Mara reads it, oldest first.
async fn room_bodies(s: &Stack, room: &str) -> Vec<String> {
    timeline(&s.hs, &s.mara, room)
        .await
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Mails in the bridge's INBOX.
async fn inbox_count(s: &Stack) -> u32 {
    let mut imap = s.mail.imap("bridge").await;
    let mb = imap.examine("INBOX").await.expect("EXAMINE");
    imap.logout().await.ok();
    mb.exists
}

/// The UID the next mail into `user`'s INBOX will get.
async fn next_uid(s: &Stack, user: &str) -> u32 {
    let mut imap = s.mail.imap(user).await;
    let mb = imap.examine("INBOX").await.expect("EXAMINE");
    imap.logout().await.ok();
    mb.uid_next.expect("UIDNEXT")
}

/// The Message-IDs of `user`'s mails in `folder` with a UID of `from_uid` or more, in UID
/// order: the order Dovecot put them in the mailbox (empty without such a folder).
async fn mailbox_order(s: &Stack, user: &str, folder: &str, from_uid: u32) -> Vec<String> {
    use futures::TryStreamExt as _;
    let mut imap = s.mail.imap(user).await;
    if imap.examine(folder).await.is_err() {
        imap.logout().await.ok();
        return Vec::new(); // no such folder
    }
    let mut fetched: Vec<_> = imap
        .uid_fetch(format!("{from_uid}:*"), "(UID BODY.PEEK[HEADER])")
        .await
        .expect("UID FETCH")
        .try_collect::<Vec<_>>()
        .await
        .expect("fetch stream");
    fetched.sort_by_key(|f| f.uid);
    let out = fetched
        .iter()
        .filter(|f| f.uid.is_some_and(|u| u >= from_uid))
        .filter_map(|f| {
            let m = mail_parser::MessageParser::default().parse_headers(f.header()?)?;
            Some(m.message_id()?.to_owned())
        })
        .collect();
    drop(fetched);
    imap.logout().await.ok();
    out
}

/// Chat and number of each message `{prefix}{chat}-{n}` the chats' Delta Chat accounts
/// hold, by the Message-ID Delta Chat's message info names (without `<>`).
async fn message_ids(s: &Stack, chats: &[Chat], prefix: char) -> HashMap<String, (usize, usize)> {
    let mut by_mid = HashMap::new();
    for (c, ch) in chats.iter().enumerate() {
        let ids = s.dc.call("get_message_ids", json!([ch.sender, ch.chat, false, false])).await;
        let msgs = s.dc.call("get_messages", json!([ch.sender, ids])).await;
        for m in msgs.as_object().into_iter().flat_map(|m| m.values()) {
            let n = m["text"].as_str().and_then(|t| t.strip_prefix(&format!("{prefix}{c}-"))?.parse::<usize>().ok());
            let Some(n) = n else { continue };
            let info = s.dc.call("get_message_info", json!([ch.sender, m["id"]])).await;
            let mid = info.as_str().and_then(|i| i.lines().find_map(|l| l.strip_prefix("Message-ID: ")));
            if let Some(mid) = mid {
                by_mid.insert(mid.trim_matches(['<', '>']).to_owned(), (c, n));
            }
        }
    }
    by_mid
}

/// The lines of one of the mail server's logs (`postfix.log`) from byte `from` on.
fn log_from(s: &Stack, name: &str, from: u64) -> Vec<String> {
    let raw = std::fs::read(s.mail.dir.join("log").join(name)).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(raw.len());
    String::from_utf8_lossy(&raw[from..]).lines().map(str::to_owned).collect()
}

fn log_len(s: &Stack, name: &str) -> u64 {
    std::fs::metadata(s.mail.dir.join("log").join(name)).map(|m| m.len()).unwrap_or(0)
}

/// The Message-IDs Postfix's cleanup logged in `lines` (`cleanup[…]: QID: message-id=<…>`,
/// written as it takes a mail in, before it answers 250), in log order.
fn accepted_ids(lines: &[String]) -> Vec<String> {
    const MARK: &str = "message-id=<";
    lines
        .iter()
        .filter(|l| l.contains("/cleanup["))
        .filter_map(|l| {
            let rest = &l[l.find(MARK)? + MARK.len()..];
            Some(rest[..rest.find('>')?].to_owned())
        })
        .collect()
}

/// Each chat's numbers in the order `ids` (Message-IDs) names them.
fn per_chat(ids: &[String], by_mid: &HashMap<String, (usize, usize)>, chats: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); chats];
    for id in ids {
        if let Some(&(c, n)) = by_mid.get(id) {
            out[c].push(n);
        }
    }
    out
}

/// Each chat's message numbers in the order the mailbox holds them, found through the
/// Message-ID the sender's Delta Chat gave each (its message info names it; the outer
/// Date header of an encrypted Delta Chat mail is no use: core puts a random time there).
async fn mailbox_numbers(s: &Stack, chats: &[Chat], from_uid: u32) -> Vec<Vec<usize>> {
    let by_mid = message_ids(s, chats, 'c').await;
    let order = mailbox_order(s, "bridge", "INBOX", from_uid).await;
    if std::env::var_os("CATCHUP_DEBUG").is_some() {
        eprintln!("mailbox: {:?}\nsent: {:?}", &order[..order.len().min(5)], by_mid.keys().take(5).collect::<Vec<_>>());
    }
    per_chat(&order, &by_mid, chats.len())
}

async fn metric(s: &Stack, sample: &str) -> f64 {
    s.daemon.metric(sample).await.unwrap_or(0.0)
}

/// Polls the daemon's metric `sample` until it reaches `n`; the time from `t0`.
async fn until_metric(s: &Stack, sample: &str, n: usize, t0: Instant) -> Duration {
    loop {
        if metric(s, sample).await >= n as f64 {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < PATIENCE, "{sample} stayed below {n} for {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Senders, rooms, portals, joins and a warm-up each way.
async fn setup(s: &Stack, o: &Opts) -> Vec<Chat> {
    let mut senders = Vec::new();
    for k in 0..o.senders {
        let user = format!("sender{k}");
        let st = std::process::Command::new("bash")
            .arg(s.mail.dir.join("add-user.sh"))
            .args([&user, &format!("{user}-secret")])
            .status()
            .expect("add-user.sh");
        assert!(st.success(), "add-user.sh {user}");
        let acc = s.dc.account(&s.mail, &user, &format!("Sender {k}")).await;
        s.dc.call("set_config", json!([acc, "bot", "1"])).await;
        senders.push(acc);
    }
    let mut rooms = Vec::new();
    for c in 0..o.chats {
        let room = create_room(
            &s.hs,
            &s.mara,
            json!({"name": format!("Catch-up {c}"), "invite": [BOT], "power_level_content_override": {"users": {BOT: 50}}}),
        )
        .await;
        rooms.push(room);
    }
    // The bot joins each room on its invitation; then each room is bridged.
    let links = join_all(rooms.iter().map(|room| async move {
        support::eventually(WAIT, "the bot joins", || async {
            timeline(&s.hs, &s.mara, room)
                .await
                .into_iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == BOT && e["content"]["membership"] == "join")
        })
        .await;
        bridge_room_as(&s.hs, &s.mara, room).await
    }))
    .await;
    let chats: Vec<Value> =
        join_all(links.iter().enumerate().map(|(c, link)| s.join(senders[c % o.senders], link))).await;
    let chats: Vec<Chat> = rooms
        .into_iter()
        .zip(chats)
        .enumerate()
        .map(|(c, (room, chat))| Chat { room, sender: senders[c % o.senders], chat })
        .collect();
    for (c, ch) in chats.iter().enumerate() {
        s.dc.call("misc_send_text_message", json!([ch.sender, ch.chat, format!("warm-up {c}")])).await;
        send_as(
            &s.hs,
            &s.mara,
            &ch.room,
            "m.room.message",
            "warm",
            json!({"msgtype": "m.text", "body": format!("warm-up from Matrix {c}")}),
        )
        .await;
    }
    for (c, ch) in chats.iter().enumerate() {
        let body = format!("warm-up {c}");
        s.event_in(&ch.room, &format!("{body:?} in Matrix"), |e| e["content"]["body"] == body.as_str()).await;
        let body = format!("warm-up from Matrix {c}");
        support::eventually(WAIT, &format!("{body:?} at the sender"), || async {
            shown_texts(s, ch.sender, &ch.chat).await.contains(&body).then_some(())
        })
        .await;
    }
    chats
}

/// What a phase measured.
struct Phase {
    took: Duration,
    /// Until the far side showed everything (the Delta Chat side of Matrix → COI).
    shown: Option<Duration>,
    cpu_per_msg_ms: f64,
    rss_idle: f64,
    /// What the idle RSS is made of.
    idle_kinds: String,
    rss_after: f64,
    hwm_after: f64,
    prepare: Duration,
    /// How each chat's order was kept (COI → Matrix).
    order: String,
    /// What was lost, duplicated or out of order: the run fails after its report.
    problems: Vec<String>,
    /// Where the machine's CPU went while the clock ran.
    split: String,
}

fn rss(s: &mut Stack) -> f64 {
    common::status_mb(s.daemon.pid(), "VmRSS")
}

/// What the idle daemon's RSS is made of: malloc's heap and arenas, thread stacks, the
/// binary's and libraries' file pages, and its thread count.
fn rss_kinds(s: &mut Stack) -> String {
    let pid = s.daemon.pid();
    let (stacks, heap, files) = common::rss_split(pid);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    let mb = |kb: u64| kb as f64 / 1024.0;
    // The file pages by mapping: the daemon's own code (r-xp), its read-only data (r--p:
    // constants, unwind tables), and everything else (libc, the loader, ...).
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let (mut code, mut rodata) = (0u64, 0u64);
    for m in common::mappings(pid).iter().filter(|m| m.file.as_deref().is_some_and(|f| std::path::Path::new(f) == exe))
    {
        match m.perms.as_str() {
            "r-xp" => code += m.rss_kb,
            _ => rodata += m.rss_kb,
        }
    }
    format!(
        "heap {:.1} MB, stacks {:.1} MB, file pages {:.1} MB (the daemon's code {:.1}, its other sections {:.1}, \
         libraries {:.1}), {threads} threads",
        mb(heap),
        mb(stacks),
        mb(files),
        mb(code),
        mb(rodata),
        mb(files.saturating_sub(code + rodata))
    )
}

/// Stopped daemon, N Delta Chat messages in its INBOX, start, until all are in Matrix.
async fn coi_to_matrix(s: &mut Stack, o: &Opts, chats: &[Chat]) -> Phase {
    tokio::time::sleep(SETTLE).await;
    let rss_idle = rss(s);
    let idle_kinds = rss_kinds(s);
    s.daemon.stop();
    let base = inbox_count(s).await;
    let first_uid = {
        let mut imap = s.mail.imap("bridge").await;
        let mb = imap.examine("INBOX").await.expect("EXAMINE");
        imap.logout().await.ok();
        mb.uid_next.expect("UIDNEXT")
    };
    let t_send = Instant::now();
    // Each sender sends its chats' messages, chat by chat interleaved, each chat in order.
    let dc = &s.dc;
    join_all((0..o.senders).map(|k| async move {
        for n in 0..o.per_chat() {
            for (c, ch) in chats.iter().enumerate().filter(|(c, _)| c % o.senders == k) {
                dc.call("misc_send_text_message", json!([ch.sender, &ch.chat, format!("c{c}-{n}")])).await;
            }
        }
    }))
    .await;
    loop {
        let have = inbox_count(s).await;
        if have >= base + o.messages as u32 {
            break;
        }
        assert!(t_send.elapsed() < PATIENCE, "the bridge's INBOX has {} of {} new mails", have - base, o.messages);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let prepare = t_send.elapsed();

    let (kinds0, busy0) = (common::cpu_by_kind(&s.hs.dir.path().display().to_string()), common::machine_busy_secs());
    let t0 = Instant::now();
    s.daemon.restart();
    let pid = s.daemon.pid();
    let took = until_metric(s, "coi_bridge_delivery_latency_seconds_count{target=\"matrix\"}", o.messages, t0).await;
    let cpu = common::cpu_secs(pid);
    let split = common::cpu_split(
        &kinds0,
        &common::cpu_by_kind(&s.hs.dir.path().display().to_string()),
        common::machine_busy_secs() - busy0,
        took.as_secs_f64(),
    );
    let (rss_after, hwm_after) = (common::status_mb(pid, "VmRSS"), common::status_mb(pid, "VmHWM"));
    // Every room as Mara reads it: each message once, in order. Postfix delivers several
    // mails at once, so the mailbox may hold a chat's mails out of the order they were
    // sent: a room in either order counts as kept (the bridge is given the mailbox's).
    let in_mailbox = mailbox_numbers(s, chats, first_uid).await;
    let mut wrong = Vec::new();
    let mut orders = [0usize; 2];
    for (c, ch) in chats.iter().enumerate() {
        let got = numbers(&room_bodies(s, &ch.room).await, &format!("c{c}-"));
        match check(&format!("room {c} ({})", ch.room), &got, o.per_chat()) {
            Ok(()) => orders[0] += 1,
            Err(_) if got == in_mailbox[c] && check("", &sorted(&got), o.per_chat()).is_ok() => orders[1] += 1,
            Err(e) => wrong.push(format!("{e}; the mailbox's order: {:?}", in_mailbox[c])),
        }
    }
    let problems = wrong.into_iter().map(|w| format!("COI → Matrix: {w}")).collect();
    let swapped: usize = in_mailbox.iter().map(|v| v.windows(2).filter(|w| w[1] <= w[0]).count()).sum();
    let mapped: usize = in_mailbox.iter().map(Vec::len).sum();
    let order = format!(
        "{} rooms in the order sent, {} in the mailbox's order; the mailbox held {swapped} of the chats' mails \
         right after a later one of the same chat ({mapped} of {} mails matched to their chat by Message-ID)",
        orders[0], orders[1], o.messages
    );
    Phase {
        took,
        shown: None,
        cpu_per_msg_ms: cpu * 1000.0 / o.messages as f64,
        rss_idle,
        idle_kinds,
        rss_after,
        hwm_after,
        prepare,
        order,
        problems,
        split,
    }
}

/// The order of Matrix → COI, hop by hop: the order Postfix took each chat's mails in
/// (its cleanup log, from byte `postfix_log` on; a chat's next mail goes out only after the
/// 250 for the one before, so this is the bridge's order), and how Delta Chat shows them.
/// Delta Chat sorts by the Date's second, then by arrival; Postfix hands a chat's mails
/// to Dovecot several at once, so two of the same second can arrive swapped (`filed`:
/// each receiver's INBOX in UID order, Message-IDs, read before Delta Chat fetched; empty
/// with `--dc-live`). Asserted: Postfix
/// took every chat in order, and every neighbour pair Delta Chat shows swapped shares its
/// Date second (the bridge's Dates never go back). Returns the evidence and the problems.
async fn matrix_order(
    s: &Stack,
    chats: &[Chat],
    per: usize,
    filed: &[Vec<String>],
    postfix_log: u64,
) -> (String, Vec<String>) {
    let by_mid = message_ids(s, chats, 'm').await;
    let accepted = accepted_ids(&log_from(s, "postfix.log", postfix_log));
    // Where each mail landed in its receiver's INBOX (read before Delta Chat fetched).
    let mut filed_at = HashMap::new();
    for (i, id) in filed.iter().flatten().enumerate() {
        if let Some(&key) = by_mid.get(id) {
            filed_at.entry(key).or_insert(i);
        }
    }
    let mut problems = Vec::new();
    for (c, got) in per_chat(&accepted, &by_mid, chats.len()).iter().enumerate() {
        if let Err(e) = check(&format!("chat {c}, the order Postfix took the bridge's mails in"), got, per) {
            problems.push(e);
        }
    }
    let (mut pairs, mut same, mut swaps, mut by_filing, mut in_order) = (0, 0, 0, 0, 0);
    for (c, ch) in chats.iter().enumerate() {
        let ids = s.dc.call("get_message_ids", json!([ch.sender, ch.chat, false, false])).await;
        let msgs = s.dc.call("get_messages", json!([ch.sender, ids])).await;
        // (number, the mail's Date, Delta Chat's sort second: the Date, but never later than
        // the moment it arrived) in the order shown.
        let shown: Vec<(usize, i64, i64)> = ids
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|id| {
                let m = &msgs[id.to_string()];
                let n = m["text"].as_str()?.strip_prefix(&format!("m{c}-"))?.parse().ok()?;
                Some((n, m["timestamp"].as_i64()?, m["sortTimestamp"].as_i64()?))
            })
            .collect();
        let mut sent = shown.clone();
        sent.sort_unstable();
        pairs += sent.len().saturating_sub(1);
        same += sent.windows(2).filter(|w| w[0].1 == w[1].1).count();
        in_order += usize::from(shown == sent);
        for w in shown.windows(2).filter(|w| w[1].0 < w[0].0) {
            swaps += 1;
            let ((later, date_later, _), (earlier, date_earlier, _)) = (w[0], w[1]);
            if date_later < date_earlier {
                problems.push(format!(
                    "chat {c} at Delta Chat: m{c}-{later} (Date {date_later}) shown before m{c}-{earlier} (Date \
                     {date_earlier}): the bridge's Dates went back"
                ));
            }
            let at = |n: usize| filed_at.get(&(c, n)).copied();
            let swapped_in_mailbox = matches!((at(later), at(earlier)), (Some(x), Some(y)) if x < y);
            by_filing += usize::from(swapped_in_mailbox);
            if !filed.is_empty() && !swapped_in_mailbox {
                problems.push(format!(
                    "chat {c} at Delta Chat: m{c}-{later} shown before m{c}-{earlier}, though the mailbox holds them \
                     in order and the Dates do not go back"
                ));
            }
        }
    }
    let evidence = format!(
        "Postfix took {} of {} chats' mails in the order sent (its cleanup log); Delta Chat showed {in_order} of \
         them in the order sent; {swaps} neighbours shown swapped, none with the later one's Date before the \
         earlier one's, {by_filing} of them in the swapped order in the receiver's INBOX (UIDs{}); {same} of \
         {pairs} messages had the same Date second as the one sent before them in their chat",
        chats.len() - problems.iter().filter(|p| p.contains("Postfix")).count(),
        chats.len(),
        if filed.is_empty() { ": not read with --dc-live" } else { "" }
    );
    (evidence, problems)
}

/// Stopped daemon, N Matrix messages held by Synapse, start, until Postfix took them all;
/// then until Delta Chat shows them all.
async fn matrix_to_coi(s: &mut Stack, o: &Opts, chats: &[Chat]) -> Phase {
    tokio::time::sleep(SETTLE).await;
    let rss_idle = rss(s);
    let idle_kinds = rss_kinds(s);
    s.daemon.stop();
    let t_send = Instant::now();
    // Rooms in parallel, each room's messages in order.
    let hs = &s.hs;
    let mara = &s.mara;
    join_all(chats.iter().enumerate().map(|(c, ch)| async move {
        for n in 0..o.per_chat() {
            let body = format!("m{c}-{n}");
            send_as(
                hs,
                mara,
                &ch.room,
                "m.room.message",
                &format!("cu-{c}-{n}"),
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        }
    }))
    .await;
    let prepare = t_send.elapsed();

    // The receivers' cores are paused while the clock runs: on this 2-core machine four
    // Delta Chat accounts decrypting 2,000 mails took most of the CPU (38 of 60 CPU-s in
    // a run with them on), which measured them, not the bridge's way out through SMTP.
    if !o.dc_live {
        s.dc.call("stop_io_for_all_accounts", json!([])).await;
    }
    let postfix_log = log_len(s, "postfix.log");
    let mut uid_next = Vec::new();
    for k in 0..o.senders {
        uid_next.push(next_uid(s, &format!("sender{k}")).await);
    }
    let (kinds0, busy0) = (common::cpu_by_kind(&s.hs.dir.path().display().to_string()), common::machine_busy_secs());
    let t0 = Instant::now();
    s.daemon.restart();
    let pid = s.daemon.pid();
    let took = until_metric(s, "coi_bridge_delivery_latency_seconds_count{target=\"smtp\"}", o.messages, t0).await;
    let cpu = common::cpu_secs(pid);
    let split = common::cpu_split(
        &kinds0,
        &common::cpu_by_kind(&s.hs.dir.path().display().to_string()),
        common::machine_busy_secs() - busy0,
        took.as_secs_f64(),
    );
    let (rss_after, hwm_after) = (common::status_mb(pid, "VmRSS"), common::status_mb(pid, "VmHWM"));
    // Each receiver's INBOX in the order Dovecot filed the mails, once all are there (Delta
    // Chat fetches by UID); not knowable once a live Delta Chat fetched them.
    let mut filed = Vec::new();
    if !o.dc_live {
        for (k, from_uid) in uid_next.iter().enumerate() {
            let want = chats.iter().enumerate().filter(|(c, _)| c % o.senders == k).count() * o.per_chat();
            let user = format!("sender{k}");
            loop {
                let got = mailbox_order(s, &user, "INBOX", *from_uid).await;
                if got.len() >= want || t0.elapsed() > PATIENCE {
                    filed.push(got);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        s.dc.call("start_io_for_all_accounts", json!([])).await;
    }
    // Each sender's Delta Chat: every message once, in the order shown.
    let mut last = Vec::new();
    let shown = loop {
        let mut wrong = Vec::new();
        let mut complete = true;
        for (c, ch) in chats.iter().enumerate() {
            let got = numbers(&shown_texts(s, ch.sender, &ch.chat).await, &format!("m{c}-"));
            complete &= got.len() >= o.per_chat();
            // Every message once here; the order is judged below, hop by hop.
            if let Err(e) = check(&format!("chat {c} at account {}", ch.sender), &sorted(&got), o.per_chat()) {
                wrong.push(e);
            }
        }
        if complete || t0.elapsed() > PATIENCE {
            last = wrong;
            break t0.elapsed();
        }
        last.clear();
        last.extend(wrong);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut problems: Vec<String> =
        last.into_iter().map(|w| format!("Matrix → COI, at Delta Chat after {shown:?}: {w}")).collect();
    let (order, wrong) = matrix_order(s, chats, o.per_chat(), &filed, postfix_log).await;
    problems.extend(wrong.into_iter().map(|w| format!("Matrix → COI: {w}")));
    Phase {
        took,
        shown: Some(shown),
        cpu_per_msg_ms: cpu * 1000.0 / o.messages as f64,
        rss_idle,
        idle_kinds,
        rss_after,
        hwm_after,
        prepare,
        order,
        problems,
        split,
    }
}

async fn run(o: Opts, daemon: String) {
    let Some(mut s) = Stack::new().await else {
        eprintln!("catchup: the test servers are not installed; run `bash tests/servers/install.sh`");
        std::process::exit(1);
    };
    let core =
        s.dc.call("get_system_info", json!([])).await["deltachat_core_version"].as_str().unwrap_or("?").to_owned();
    let t = Instant::now();
    let chats = setup(&s, &o).await;
    eprintln!("catchup: {} chats bridged and warm in {:.0} s", chats.len(), t.elapsed().as_secs_f64());
    let coi = if o.coi { Some(coi_to_matrix(&mut s, &o, &chats).await) } else { None };
    let matrix = if o.matrix { Some(matrix_to_coi(&mut s, &o, &chats).await) } else { None };

    let mut md = String::new();
    let mut line = |l: &str| {
        println!("{l}");
        md.push_str(l);
        md.push('\n');
    };
    line(&common::facts(&core));
    line(&format!("- {daemon}"));
    line(&format!(
        "- {} messages over {} chats ({} each), {} Delta Chat sender accounts (bots)",
        o.messages,
        o.chats,
        o.per_chat(),
        o.senders
    ));
    line(
        "- asserted: 0 lost, 0 duplicated, each chat's order kept by the bridge (COI → Matrix: each room in the \
         order sent or the mailbox's; Matrix → COI: Postfix took each chat's mails in the order sent, their Dates \
         never go back, and a pair Delta Chat shows swapped arrived swapped)",
    );
    line(if o.dc_live {
        "- Matrix → COI: the receiving Delta Chat accounts run while the clock runs (--dc-live)"
    } else {
        "- Matrix → COI: the receiving Delta Chat accounts' IO is paused until Postfix took all (they share the 2 cores)"
    });
    line("");
    line("| phase | messages | time s | msg/s | CPU ms/msg | RSS idle MB | RSS after MB | peak (VmHWM) MB |");
    line("|---|---|---|---|---|---|---|---|");
    for (name, p) in
        [("COI → Matrix (start → all posted)", &coi), ("Matrix → COI (start → Postfix accepted all)", &matrix)]
    {
        let Some(p) = p else { continue };
        line(&format!(
            "| {name} | {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} |",
            o.messages,
            p.took.as_secs_f64(),
            o.messages as f64 / p.took.as_secs_f64(),
            p.cpu_per_msg_ms,
            p.rss_idle,
            p.rss_after,
            p.hwm_after
        ));
    }
    line("");
    if let Some(p) = &coi {
        line(&format!(
            "COI → Matrix: the senders' {} mails took {:.1} s to be all in the bridge's INBOX (daemon stopped). \
             Order: {}.",
            o.messages,
            p.prepare.as_secs_f64(),
            p.order
        ));
    }
    if let (Some(c), Some(m)) = (&coi, &matrix) {
        // Mara's posts (20 rooms at once, each in order, the daemon stopped) are the same
        // load a catch-up into Matrix puts on Synapse: its own ceiling, in the same run.
        let ceiling = o.messages as f64 / m.prepare.as_secs_f64();
        let bridged = o.messages as f64 / c.took.as_secs_f64();
        line(&format!(
            "Synapse's own ceiling in this run: Mara's {} posts, rooms at once, {ceiling:.0} msg/s; the catch-up \
             into Matrix reached {bridged:.0} msg/s, {:.2} × that ceiling.",
            o.messages,
            bridged / ceiling
        ));
    }
    if let Some(p) = &matrix {
        let shown = p.shown.unwrap_or_default().as_secs_f64();
        line(&format!(
            "Matrix → COI: posting the {} Matrix messages took {:.1} s (daemon stopped); from the start, Delta Chat \
             showed them all after {shown:.1} s ({:.0} msg/s end to end). Order: {}.",
            o.messages,
            p.prepare.as_secs_f64(),
            o.messages as f64 / shown,
            p.order
        ));
    }
    for (name, p) in [("COI → Matrix", &coi), ("Matrix → COI", &matrix)] {
        if let Some(p) = p {
            line(&format!("RSS idle before {name}: {}.", p.idle_kinds));
            line(&format!("CPU while {name}'s clock ran: {}.", p.split));
        }
    }
    let problems: Vec<&String> = coi.iter().chain(&matrix).flat_map(|p| &p.problems).collect();
    line("");
    if problems.is_empty() {
        line("Correctness: every message once, each chat in order (asserted).");
    } else {
        line(&format!("**Correctness FAILED** ({} chats):", problems.len()));
        for p in &problems {
            line(&format!("- {p}"));
        }
    }
    if let Some(out) = &o.out {
        std::fs::write(out, md).expect("write --out");
    }
    assert!(problems.is_empty(), "catch-up lost, duplicated or reordered messages (see above)");
}
