//! The fault-matrix soak (`bash tests/soak/run`): a three-way portal (real Delta Chat ↔ real Synapse ↔ the Bot API double) through the real daemon, messages from every side, and SIGKILLs, server outages and a full disk injected mid-burst; reports per side lost, duplicated and reordered messages and per fault the time until traffic flows again.
//!
//! An example target, not a test: `cargo build --all-targets` compiles it, `cargo test`
//! never runs it. It needs root (it mounts a tmpfs for the store) and the servers of
//! `tests/servers/install.sh`. `--help` lists the knobs; the defaults are the full matrix.

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod faults;
mod mailbox;
mod proxy;
mod tally;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};

use faults::{Servers, Supervised, Tmpfs, kill_plan, outage_plan, secs};
use proxy::Relay;
use support::bridged::{add_matrix_bridge, bridge_room_as, new_room_as};
use support::deltachat::DeltaChat;
use support::synapse::{Synapse, free_port, seg, timeline};
use support::telegram::{FakeTelegram, TOKEN};
use support::{BRIDGE, BRIDGE_PASSWORD, Daemon, MailServer, eventually};
use tally::{Report, Shown, Side, parse_tag, tag_text};

const GROUP: i64 = -1_001_234_567_890;
const TOM: (i64, &str) = (4242, "Tom");
const MARA: &str = "@mara:localhost";
const WAIT: Duration = Duration::from_secs(120);

/// The fault matrix; the defaults are the full soak. A short one while developing:
/// `--messages 200 --kills 2 --outage-secs 10 --disk-secs 10 --gap-secs 10`.
#[derive(Parser, Debug)]
struct Args {
    /// Messages in all, shared evenly by Delta Chat, Matrix and Telegram.
    #[arg(long, default_value_t = 2000)]
    messages: u32,
    /// SIGKILLs of the daemon at random points (each restarted).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How long each of Dovecot, Postfix, Synapse and the Bot API double is down.
    #[arg(long, default_value_t = 60.0)]
    outage_secs: f64,
    /// How long the store's file system is full.
    #[arg(long, default_value_t = 30.0)]
    disk_secs: f64,
    /// Traffic without an outage after each one (and before the first: --warmup-secs).
    #[arg(long, default_value_t = 30.0)]
    gap_secs: f64,
    #[arg(long, default_value_t = 20.0)]
    warmup_secs: f64,
    /// After the last send, how long to wait for every message to arrive.
    #[arg(long, default_value_t = 600.0)]
    drain_secs: f64,
    /// The resume-time goal per fault, in seconds (the exit status checks it).
    #[arg(long, default_value_t = 5.0)]
    goal_secs: f64,
    /// The size of the tmpfs the store lives on.
    #[arg(long, default_value_t = 256)]
    tmpfs_mib: u64,
    /// Seed of the kill times (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the run keeps its config, the daemon's log and the report.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Mara's send, retried (same transaction id, so at most once) until Synapse takes it.
async fn mara_sends(http: &reqwest::Client, hs: &Synapse, token: &str, room: &str, txn: &str, body: &str) {
    let url = format!("{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", hs.url(), seg(room));
    loop {
        let r = http.put(&url).bearer_auth(token).json(&json!({"msgtype": "m.text", "body": body})).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What Alice's Delta Chat shows in the group, in its order, with when the poller first
/// saw each message.
async fn dc_shown(dc: &DeltaChat, alice: u64, group: &Value, first_seen: &HashMap<u64, f64>, now: f64) -> Vec<Shown> {
    let ids: Vec<u64> = dc
        .call("get_message_ids", json!([alice, group, false, false]))
        .await
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for chunk in ids.chunks(300) {
        let msgs = dc.call("get_messages", json!([alice, chunk])).await;
        for id in chunk {
            let m = &msgs[id.to_string()];
            // Alice's own messages are the originals, not something received.
            if m["fromId"].as_u64() == Some(1) {
                continue;
            }
            if let Some((origin, seq)) = m["text"].as_str().and_then(parse_tag) {
                out.push(Shown { origin, seq, at: first_seen.get(id).copied().unwrap_or(now) });
            }
        }
    }
    out
}

/// Alice's own soak messages: Message-ID → sequence (from Delta Chat's message info).
async fn dc_own_message_ids(dc: &DeltaChat, alice: u64, group: &Value) -> HashMap<String, u32> {
    let ids: Vec<u64> = dc
        .call("get_message_ids", json!([alice, group, false, false]))
        .await
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut out = HashMap::new();
    for chunk in ids.chunks(300) {
        let msgs = dc.call("get_messages", json!([alice, chunk])).await;
        for id in chunk {
            let m = &msgs[id.to_string()];
            if m["fromId"].as_u64() != Some(1) {
                continue;
            }
            let Some((Side::DeltaChat, seq)) = m["text"].as_str().and_then(parse_tag) else { continue };
            let info = dc.call("get_message_info", json!([alice, id])).await;
            if let Some(mid) = info.as_str().and_then(mailbox::message_id_in_info) {
                out.insert(mid, seq);
            }
        }
    }
    out
}

/// The bridge's own mails (Message-ID → the soak tag of their text), read from its store.
async fn bridge_sent_message_ids(db: &std::path::Path) -> HashMap<String, (Side, u32)> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
    let Ok(mut conn) = sqlx::ConnectOptions::connect(&opts).await else { return HashMap::new() };
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT message_id, text FROM message WHERE direction = 'out'")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    rows.into_iter().filter_map(|(id, text)| Some((id, parse_tag(&text)?))).collect()
}

/// What Mara's room shows (everything but her own messages), in timeline order.
async fn matrix_shown(hs: &Synapse, token: &str, room: &str, t0_ms: f64) -> Vec<Shown> {
    timeline(hs, token, room)
        .await
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["sender"] != MARA)
        .filter_map(|e| {
            let (origin, seq) = parse_tag(e["content"]["body"].as_str()?)?;
            let at = (e["origin_server_ts"].as_f64()? - t0_ms) / 1000.0;
            Some(Shown { origin, seq, at })
        })
        .collect()
}

/// What the Bot API double received for the group, in the order it received it.
fn telegram_shown(tg: &FakeTelegram, t0: Instant) -> Vec<Shown> {
    tg.calls()
        .iter()
        .filter(|c| c.method == "sendMessage" && c.params["chat_id"].as_i64() == Some(GROUP))
        .filter_map(|c| {
            let (origin, seq) = parse_tag(c.params["text"].as_str()?)?;
            let at = c.at.checked_duration_since(t0).map_or(-1.0, |d| d.as_secs_f64());
            Some(Shown { origin, seq, at })
        })
        .collect()
}

fn config_text(mail: &MailServer, state: &std::path::Path, store: &std::path::Path, http_port: u16) -> String {
    format!(
        "[account]\naddress = \"{BRIDGE}\"\npassword_file = \"{}\"\nencryption = \"required\"\n\n\
         [imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nauth = false\n\n\
         [store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        state.join("mail-password").display(),
        mail.imap_port(),
        mail.smtp_port(),
        store.display()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    coi_bridge::init_crypto();
    let seed = args.seed.unwrap_or_else(|| unix_ms() as u64);
    let out = args.out.join(format!("run-{}", unix_ms() as u64 / 1000));
    std::fs::create_dir_all(&out).expect("the run's folder");
    let out = out.canonicalize().expect("canonical run folder");
    eprintln!("soak: {args:?}, seed {seed}; logs and report in {}", out.display());

    // The servers.
    let mut mail = MailServer::start().expect("Dovecot and Postfix (bash tests/servers/install.sh)");
    // One LMTP delivery at a time: Postfix would otherwise hand two mails to Dovecot at once
    // and reorder them itself; the soak measures the bridge's order.
    let main_cf = mail.dir.join("postfix/main.cf");
    let cf = std::fs::read_to_string(&main_cf).expect("main.cf") + "lmtp_destination_concurrency_limit = 1\n";
    std::fs::write(&main_cf, cf).expect("main.cf");
    mail.stop_postfix();
    mail.start_postfix();
    let as_port = free_port();
    let hs = Arc::new(Synapse::start_with_as_port(as_port).expect("Synapse (bash tests/servers/install.sh)"));
    let tg = Arc::new(FakeTelegram::start().await);
    tg.set_chat(GROUP, "Soak", &[TOM.0]);
    let relay = Relay::start(tg.port).await;
    let dc = Arc::new(DeltaChat::start().await.expect("deltachat-rpc-server (bash tests/servers/install.sh)"));
    let alice = dc.account(&mail, "alice", "Alice").await;
    // A bot account: Delta Chat core rate-limits a person's sends (a burst, then a few a
    // minute), which would pace the whole soak; bots are exempt.
    dc.call("set_config", json!([alice, "bot", "1"])).await;
    let mara = hs.user("mara").await;

    // The daemon, its store on a tmpfs that the disk fault fills.
    let store = Tmpfs::mount(&out.join("store"), args.tmpfs_mib);
    let config = out.join("coi-bridge.toml");
    std::fs::write(out.join("mail-password"), BRIDGE_PASSWORD).expect("password file");
    std::fs::write(out.join("tg-token"), TOKEN).expect("token file");
    std::fs::write(&config, config_text(&mail, &out, &store.dir, as_port)).expect("config");
    // No pacing toward Telegram (chat_interval_ms 0): its 1 msg/s per chat would make the
    // Telegram side the bottleneck of a 2,000-message run; 429s are tested elsewhere.
    let tg_section = format!(
        "\n[[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\napi_url = \"http://127.0.0.1:{}\"\ntoken_file = \"tg-token\"\n\
         allowed_chats = [{GROUP}]\nchat_interval_ms = 0\n",
        relay.port
    );
    add_matrix_bridge(&config, &hs, as_port, MARA, &tg_section);
    let mut daemon = Daemon::with_config(&out, config, as_port);
    daemon.wait_ready().await;

    // The three-way portal: Mara bridges her room, Alice joins the COI group, Tom links
    // his Telegram group to it.
    let room = new_room_as(&hs, &mara, "Soak").await;
    let link = bridge_room_as(&hs, &mara, &room).await;
    let group = dc.join(alice, &link, WAIT).await;
    tg.user_says(GROUP, TOM, &format!("/coi_link {link}"), None);
    tg.wait_call("confirm the link", |c| {
        c.method == "sendMessage" && c.params["text"].as_str().is_some_and(|t| t.contains("Linked to the COI group"))
    })
    .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    // One message from each side, seen on both others, before the clock starts.
    dc.call("misc_send_text_message", json!([alice, group, "warm-up from Delta Chat"])).await;
    mara_sends(&http, &hs, &mara, &room, "warm-m", "warm-up from Matrix").await;
    tg.user_says(GROUP, TOM, "warm-up from Telegram", None);
    eventually(WAIT, "the warm-up on every side", || async {
        let texts = dc.chat_texts(alice, &group).await;
        let at_dc = ["warm-up from Matrix", "warm-up from Telegram"].iter().all(|w| texts.iter().any(|t| t == w));
        let sent: Vec<String> = tg.sent_texts(GROUP).into_iter().map(|(_, t)| t).collect();
        let at_tg =
            ["warm-up from Delta Chat", "warm-up from Matrix"].iter().all(|w| sent.iter().any(|t| t.contains(w)));
        let tl = timeline(&hs, &mara, &room).await;
        let at_m = ["warm-up from Delta Chat", "warm-up from Telegram"]
            .iter()
            .all(|w| tl.iter().any(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains(w))));
        (at_dc && at_tg && at_m).then_some(())
    })
    .await;
    eprintln!("soak: the three-way portal works; the burst begins");

    // The plan.
    let (outages, burst) = outage_plan(args.warmup_secs, args.outage_secs, args.disk_secs, args.gap_secs);
    let quiet = args.gap_secs.min(15.0);
    let kills = kill_plan(args.kills, burst, &outages, quiet, 8.0_f64.min(burst / (args.kills as f64 + 1.0)), seed);
    let per_side: Vec<u32> = (0..3).map(|k| args.messages / 3 + u32::from(k < args.messages % 3)).collect::<Vec<_>>();
    eprintln!("soak: burst of {burst:.0} s; outages {outages:?}; kills at {kills:.1?}");

    let t0 = Instant::now();
    let t0_ms = unix_ms();
    let stop = tokio_util::sync::CancellationToken::new();

    // Delta Chat's view, polled: when each message first showed.
    let first_seen: Arc<std::sync::Mutex<HashMap<u64, f64>>> = Arc::default();
    let poller = {
        let (dc, group, first_seen, stop) = (dc.clone(), group.clone(), first_seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let ids = dc.call("get_message_ids", json!([alice, group, false, false])).await;
                let now = secs(t0);
                {
                    let mut seen = first_seen.lock().expect("lock");
                    for id in ids.as_array().into_iter().flatten().filter_map(Value::as_u64) {
                        seen.entry(id).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The senders, each spreading its share evenly over the burst.
    let spacing = move |n: u32| burst / f64::from(n.max(1));
    let dc_sender = {
        let (dc, group, n) = (dc.clone(), group.clone(), per_side[0]);
        tokio::spawn(async move {
            for i in 1..=n {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(f64::from(i - 1) * spacing(n))).into()).await;
                dc.call("misc_send_text_message", json!([alice, group, tag_text(Side::DeltaChat, i)])).await;
            }
            (Side::DeltaChat, (1..=n).collect::<Vec<u32>>())
        })
    };
    let m_sender = {
        let (hs, mara, room, http, n) = (hs.clone(), mara.clone(), room.clone(), http.clone(), per_side[1]);
        tokio::spawn(async move {
            for i in 1..=n {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(f64::from(i - 1) * spacing(n))).into()).await;
                let text = tag_text(Side::Matrix, i);
                mara_sends(&http, &hs, &mara, &room, &text, &text).await;
            }
            (Side::Matrix, (1..=n).collect::<Vec<u32>>())
        })
    };
    let t_sender = {
        let (tg, n) = (tg.clone(), per_side[2]);
        tokio::spawn(async move {
            for i in 1..=n {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(f64::from(i - 1) * spacing(n))).into()).await;
                tg.user_says(GROUP, TOM, &tag_text(Side::Telegram, i), None);
            }
            (Side::Telegram, (1..=n).collect::<Vec<u32>>())
        })
    };

    // The faults.
    let sup = Arc::new(Supervised { daemon: tokio::sync::Mutex::new(daemon), unplanned_exits: Default::default() });
    let watcher = tokio::spawn(sup.clone().watch(t0, stop.clone()));
    let killer = tokio::spawn(sup.clone().kill_loop(t0, kills, seed));
    let mut servers = Servers { mail, hs: hs.clone(), relay, store_dir: store.dir.clone(), dc: dc.clone() };
    let mut faults = servers.outage_loop(t0, outages).await;
    // A kill inside an outage is measured on the paths that outage leaves open (during
    // Synapse's, say, a restarted daemon cannot show itself through Matrix).
    let mut kills = killer.await.expect("the kill loop");
    for k in &mut kills {
        for o in &faults {
            if o.down <= k.up && k.down <= o.up {
                k.paths.retain(|p| !o.paths.contains(p));
                k.name.push_str(&format!(" (during {})", o.name.split(' ').next().unwrap_or_default()));
            }
        }
    }
    faults.extend(kills);
    faults.sort_by(|a, b| a.down.total_cmp(&b.down));
    let mut sent = HashMap::new();
    for s in [dc_sender, m_sender, t_sender] {
        let (side, seqs) = s.await.expect("a sender");
        sent.insert(side, seqs);
    }
    eprintln!("soak: [{:7.1}] every message sent; waiting for them to arrive", secs(t0));

    // Drain: until every side shows every message from the others, or the time is up.
    let expected: usize = per_side.iter().map(|&n| n as usize).sum::<usize>() * 2;
    let drain_end = secs(t0) + args.drain_secs;
    loop {
        let seen = first_seen.lock().expect("lock").clone();
        let d = dc_shown(&dc, alice, &group, &seen, secs(t0)).await;
        let m = matrix_shown(&hs, &mara, &room, t0_ms).await;
        let t = telegram_shown(&tg, t0);
        let distinct =
            |v: &[Shown]| v.iter().map(|s| (s.origin, s.seq)).collect::<std::collections::HashSet<_>>().len();
        let have = distinct(&d) + distinct(&m) + distinct(&t);
        eprintln!(
            "soak: [{:7.1}] {have}/{expected} arrived (dc {} matrix {} telegram {})",
            secs(t0),
            d.len(),
            m.len(),
            t.len()
        );
        if have >= expected || secs(t0) > drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.cancel();
    let _ = watcher.await;
    let _ = poller.await;
    let seen = first_seen.lock().expect("lock").clone();
    let mut shown = HashMap::new();
    shown.insert(Side::DeltaChat, dc_shown(&dc, alice, &group, &seen, secs(t0)).await);
    shown.insert(Side::Matrix, matrix_shown(&hs, &mara, &room, t0_ms).await);
    shown.insert(Side::Telegram, telegram_shown(&tg, t0));
    let report = Report::new(&sent, &shown, &faults);
    // Delta Chat's mail passes Postfix and Dovecot before the bridge sees it: the order it
    // reached the bridge's mailbox in, and each side's order measured against that.
    let postfix_log = std::fs::read_to_string(servers.mail.dir.join("log/postfix.log")).unwrap_or_default();
    let own = dc_own_message_ids(&dc, alice, &group).await;
    let mailbox_seqs: Vec<u32> =
        mailbox::delivery_order(&postfix_log, BRIDGE).iter().filter_map(|m| own.get(m).copied()).collect();
    let rank: HashMap<u32, usize> = mailbox_seqs.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let against_mailbox = |side: Side| {
        let mut seen = std::collections::HashSet::new();
        let ranks = shown[&side]
            .iter()
            .filter(|s| s.origin == Side::DeltaChat && seen.insert(s.seq))
            .filter_map(|s| rank.get(&s.seq).copied());
        mailbox::reordered(ranks)
    };
    // The same for what the bridge sent Delta Chat: the order its mail reached Alice's
    // mailbox in (the bridge's Message-IDs from its store), and Delta Chat's against that.
    let sent_ids = bridge_sent_message_ids(&store.dir.join("bridge.db")).await;
    let alice_order: Vec<(Side, u32)> = mailbox::delivery_order(&postfix_log, "alice@example.org")
        .iter()
        .filter_map(|m| sent_ids.get(m).copied())
        .collect();
    let alice_rank: HashMap<(Side, u32), usize> = alice_order.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut dc_note = String::new();
    // Out of order by the bridge itself: against what it received (its mailbox for Delta
    // Chat's mail; Synapse and getUpdates hand it the others in order) and, toward Delta
    // Chat, in the order it handed its mail to Postfix.
    let raw = |to: Side, from: Side| report.counts[&(to, from)].reordered;
    // Toward Delta Chat the bridge's own order is the order it handed its mail to Postfix.
    // What Alice's Delta Chat shows after that is the transport's and Delta Chat's: mail
    // delivered late (after an outage) is sorted after her own newest message, in arrival
    // order (core's `calc_sort_timestamp`), as it would be between two Delta Chats.
    let handed: Vec<(Side, u32)> =
        mailbox::submission_order(&postfix_log).iter().filter_map(|m| sent_ids.get(m).copied()).collect();
    let handed_reordered =
        |origin: Side| mailbox::reordered(handed.iter().filter(|k| k.0 == origin).map(|k| k.1 as usize));
    let by_bridge = against_mailbox(Side::Matrix)
        + against_mailbox(Side::Telegram)
        + raw(Side::Telegram, Side::Matrix)
        + raw(Side::Matrix, Side::Telegram)
        + handed_reordered(Side::Matrix)
        + handed_reordered(Side::Telegram);
    for origin in [Side::Matrix, Side::Telegram] {
        let in_mailbox: Vec<usize> = alice_order.iter().filter(|k| k.0 == origin).map(|k| k.1 as usize).collect();
        let mut seen = std::collections::HashSet::new();
        let shown_ranks = shown[&Side::DeltaChat]
            .iter()
            .filter(|s| s.origin == origin && seen.insert(s.seq))
            .filter_map(|s| alice_rank.get(&(origin, s.seq)).copied());
        let shown_ranks: Vec<usize> = shown_ranks.collect();
        dc_note.push_str(&format!(
            "{}→Delta Chat: {} handed to Postfix with {} out of send order; {} matched in Alice's mailbox, {} out of send order there, {} as Delta Chat shows them against that order. ",
            origin.name(),
            handed.iter().filter(|k| k.0 == origin).count(),
            handed_reordered(origin),
            in_mailbox.len(),
            mailbox::reordered(in_mailbox.iter().copied()),
            mailbox::reordered(shown_ranks.iter().copied()),
        ));
    }
    let transport_note = format!(
        "Delta Chat's mail reached the bridge's mailbox (Postfix's log; {} of {} matched by Message-ID) with {} out of \
         send order; measured against the mailbox's order, Matrix shows {} and Telegram {} of them out of order.\n",
        mailbox_seqs.len(),
        per_side[0],
        mailbox::reordered(mailbox_seqs.iter().map(|&s| s as usize)),
        against_mailbox(Side::Matrix),
        against_mailbox(Side::Telegram),
    ) + dc_note.as_str()
        + format!("\nOut of order by the bridge itself (against the order it received Delta Chat's mail in; toward Delta Chat, the order it handed Postfix; the other paths as shown): {by_bridge}.\n")
            .as_str();
    let exits = sup.unplanned_exits.lock().await.clone();

    let mut text = format!(
        "Soak: {} messages ({} Delta Chat, {} Matrix, {} Telegram) over {burst:.0} s, {} SIGKILLs, outages of {:.0} s, \
         full disk {:.0} s, seed {seed}; unplanned daemon exits: {}\n\n",
        args.messages,
        per_side[0],
        per_side[1],
        per_side[2],
        args.kills,
        args.outage_secs,
        args.disk_secs,
        exits.len()
    );
    text.push_str(&report.markdown(args.goal_secs));
    text.push('\n');
    text.push_str(&transport_note);
    for (at, why) in &exits {
        text.push_str(&format!("\n- daemon exit at {at:.1} s: {why}"));
    }
    println!("{text}");
    std::fs::write(out.join("report.md"), &text).expect("report.md");
    let mut j = report.json();
    j["unplanned_exits"] = json!(exits.len());
    j["seed"] = json!(seed);
    j["mailbox_order"] = json!(transport_note.trim());
    j["reordered_by_bridge"] = json!(by_bridge);
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&j).expect("json")).expect("report.json");

    // The servers' logs go with the report (their folders are temporary).
    for (from, to) in [
        (servers.mail.dir.join("log/postfix.log"), "postfix.log"),
        (servers.mail.dir.join("log/dovecot.log"), "dovecot.log"),
        (dc.log_path(), "deltachat-rpc.log"),
    ] {
        let _ = std::fs::copy(from, out.join(to));
    }
    // Stop the daemon before the store's file system goes away.
    let mut d = sup.daemon.lock().await;
    d.stop();
    drop(d);
    drop(store);
    // Every server stops here, before any exit (process::exit runs no destructors).
    drop(servers);
    hs.stop();
    drop(dc);
    let met = report.goals_met(args.goal_secs, by_bridge);
    if !met {
        eprintln!("soak: goals NOT met (0 lost, 0 duplicated, 0 reordered, resume ≤ {} s)", args.goal_secs);
        std::process::exit(1);
    }
    eprintln!("soak: goals met");
}
