//! The bridge's mailbox is public: hostile mail crafted here (with rPGP) goes through real Postfix and Dovecot to the daemon process, which must set it apart without harm while real Delta Chat mail keeps flowing to Synapse.

use crate::support;

use coi_bridge::coi::autocrypt::AutocryptHeader;
use coi_bridge::coi::securejoin_link::Invite;
use coi_bridge::coi::{ChatMessage, Group, GroupChange, Mailbox, crypto, pgpmime};
use coi_bridge::store::keys::KeyStore as _;
use coi_bridge::store::{ChatKind, Store as _};
use pgp::composed::{RawSessionKey, SignedPublicKey, SignedSecretKey};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{PacketTrait as _, PublicKeyEncryptedSessionKey, SymEncryptedProtectedData};
use pgp::types::KeyDetails as _;
use rand_08::Rng as _;
use serde_json::{Value, json};
use support::BRIDGE;
use support::bridged::{Stack, WAIT};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// An OpenPGP packet with a new-format header.
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xC0 | tag];
    let n = body.len();
    if n < 192 {
        out.push(n as u8);
    } else if n < 8384 {
        let m = n - 192;
        out.push(((m >> 8) + 192) as u8);
        out.push((m & 0xff) as u8);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&u32::try_from(n).expect("packet under 4 GiB").to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// `inner` (raw OpenPGP packets) encrypted (SEIPDv1, AES-128) to `to`, or, without `to`,
/// to a session key nobody holds.
fn encrypted(to: Option<&SignedPublicKey>, inner: &[u8]) -> Vec<u8> {
    let mut rng = rand_08::thread_rng();
    let mut key = vec![0u8; 16];
    rng.fill(&mut key[..]);
    let mut out = Vec::new();
    if let Some(to) = to {
        let sub = to.public_subkeys.iter().find(|s| s.algorithm().can_encrypt()).expect("an encryption subkey");
        let pkesk = PublicKeyEncryptedSessionKey::from_session_key_v3(
            &mut rng,
            &RawSessionKey::from(key.clone()),
            SymmetricKeyAlgorithm::AES128,
            sub,
        )
        .expect("pkesk");
        pkesk.to_writer_with_header(&mut out).expect("write pkesk");
    }
    let seipd = SymEncryptedProtectedData::encrypt_seipdv1(&mut rng, SymmetricKeyAlgorithm::AES128, &key, inner)
        .expect("seipd");
    seipd.to_writer_with_header(&mut out).expect("write seipd");
    out
}

fn armor(binary: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(binary);
    let mut out = String::from("-----BEGIN PGP MESSAGE-----\n\n");
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END PGP MESSAGE-----\n");
    out
}

/// A compressed-data packet (ZIP) holding a literal packet of almost 4 GiB of zeros, in
/// about 4 MB: a full-flush deflate segment for 1 MiB of zeros, repeated.
fn compression_bomb() -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const MIB: usize = 1 << 20;
    const SEGMENTS: usize = 4094;
    let literal_body_len = 6 + (MIB - 12) + SEGMENTS * MIB;
    let mut head = vec![0xCB, 0xFF];
    head.extend_from_slice(&u32::try_from(literal_body_len).expect("under 4 GiB").to_be_bytes());
    head.extend_from_slice(&[b'b', 0, 0, 0, 0, 0]);
    let mut c = Compress::new(Compression::best(), false);
    let mut seg = |input: &[u8], flush| {
        let mut out = Vec::with_capacity(input.len() / 64 + 4096);
        c.compress_vec(input, &mut out, flush).expect("deflate");
        out
    };
    let mut first = head;
    first.resize(MIB, 0);
    let mut deflated = vec![1u8]; // algorithm 1: ZIP (raw deflate)
    deflated.extend(seg(&first, FlushCompress::Full));
    let zeros = seg(&vec![0u8; MIB], FlushCompress::Full);
    for _ in 0..SEGMENTS {
        deflated.extend_from_slice(&zeros);
    }
    deflated.extend(seg(&[], FlushCompress::Finish));
    packet(8, &deflated)
}

/// A v4 symmetric-key packet whose Argon2 string-to-key asks 2^`m_enc` KiB.
fn argon2_skesk(m_enc: u8) -> Vec<u8> {
    let mut body = vec![4, 7, 4]; // v4, AES-128, S2K type 4 (Argon2)
    body.extend_from_slice(&rand_08::thread_rng().r#gen::<[u8; 16]>());
    body.extend_from_slice(&[1, 1, m_enc]);
    packet(3, &body)
}

/// A chat message from `from` with the rest default.
fn message(from: &str, name: &str, id: &str, text: &str) -> ChatMessage {
    ChatMessage {
        message_id: id.into(),
        is_chat: true,
        from: Mailbox::new(from, Some(name)),
        to: vec![Mailbox::new(BRIDGE, None)],
        date: Some(chrono::Utc::now().timestamp()),
        text: text.into(),
        ..ChatMessage::default()
    }
}

/// `msg` signed by `signer` (whose key it also carries in its Autocrypt header, as a
/// forger would) and encrypted to the bridge, as PGP/MIME.
fn sealed(mut msg: ChatMessage, signer: &SignedSecretKey, bridge: &SignedPublicKey) -> Vec<u8> {
    let public = crypto::public(signer);
    msg.autocrypt = Some(AutocryptHeader {
        addr: msg.from.addr.clone(),
        prefer_mutual: true,
        keydata: crypto::public_to_bytes(&public),
    });
    let armored =
        crypto::encrypt(&pgpmime::inner_part(&msg, 0), &[bridge.clone(), public], signer, None).expect("encrypt");
    pgpmime::outer_mail(&msg, 0, &armored)
}

/// Runs a `coi-bridge` command against the daemon's config; its stdout.
fn cli(state: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(support::Daemon::bin())
        .args(args)
        .arg("--config")
        .arg(state.join("coi-bridge.toml"))
        .output()
        .expect("run coi-bridge");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reasons of the set-apart (rejected) mail, from the daemon's store file.
fn rejected_reasons(state: &std::path::Path) -> Vec<String> {
    let db = rusqlite::Connection::open(state.join("bridge.db")).expect("store");
    let mut q = db.prepare("SELECT reason FROM rejected ORDER BY id").expect("query");
    q.query_map([], |r| r.get::<_, String>(0)).expect("rows").map(|r| r.expect("row")).collect()
}

/// Waits until a set-apart reason containing `needle` is recorded.
async fn set_apart(state: &std::path::Path, needle: &str) -> String {
    support::eventually(WAIT, &format!("a mail set apart for {needle:?}"), || async {
        rejected_reasons(state).into_iter().find(|r| r.contains(needle))
    })
    .await
}

/// The daemon's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

fn room_bodies(events: &[Value]) -> Vec<String> {
    events.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

/// The bridge's public key, as its store has it.
async fn bridge_key(store: &coi_bridge::store::sqlite::SqliteStore) -> SignedPublicKey {
    let row = store.account_key().await.expect("read").expect("the bridge key");
    crypto::public_from_bytes(&row.public_key).expect("key")
}

/// The members of the group `id` as the daemon's store has them.
async fn group_members(s: &Stack, id: &str) -> Vec<String> {
    let store = s.daemon.store().await;
    store.find_chat(ChatKind::Group, id).await.expect("read").expect("the group").members
}

/// Bob joins the bridged group the ordinary way: Alice (who has his key) adds him, so
/// the bridge knows Bob's key only from Alice's gossip.
async fn alice_adds_bob(s: &Stack) -> u64 {
    let bob = s.dc.account(&s.mail, "bob", "Bob").await;
    let bob_vcf = s.dc.call("make_vcard", json!([bob, [1]])).await;
    let ids = s.dc.call("import_vcard_contents", json!([s.alice, bob_vcf])).await;
    let alice_vcf = s.dc.call("make_vcard", json!([s.alice, [1]])).await;
    s.dc.call("import_vcard_contents", json!([bob, alice_vcf])).await;
    s.dc.call("add_contact_to_chat", json!([s.alice, s.group, ids[0]])).await;
    let store = s.daemon.store().await;
    support::eventually(WAIT, "the bridge knows Bob as a member", || async {
        let chat = store.chats().await.expect("chats").into_iter().find(|c| c.kind == ChatKind::Group)?;
        chat.members.iter().any(|m| m == BOB).then_some(())
    })
    .await;
    bob
}

/// Forgeries of every kind the trust model names: none reaches the room, changes a key
/// or changes the group; real mail keeps flowing past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_hostile_mail_reaches_no_portal_and_changes_nothing() {
    coi_bridge::init_crypto();
    let Some(s) = Stack::new().await else { return };
    let store = s.daemon.store().await;
    let bridge_key = bridge_key(&store).await;
    let invite = Invite::parse(&s.link).expect("the room's invite link");
    let group = invite.group.clone().expect("a group link");
    let group_msg = |from: &str, name: &str, id: &str, text: &str| ChatMessage {
        group: Some(Group { id: group.id.clone(), name: group.name.clone(), change: None }),
        ..message(from, name, id, text)
    };
    s.alice_says("before the attacks").await;
    s.body("before the attacks").await;
    alice_adds_bob(&s).await;
    let bob_key = store.contact_key(BOB).await.expect("read").expect("gossiped key");
    assert_eq!(bob_key.source, "gossip");
    let alice_key = store.contact_key(ALICE).await.expect("read").expect("alice's key");
    let mallory = crypto::generate(ALICE, None).expect("key");
    let mallory_fpr = crypto::fingerprint(&crypto::public(&mallory));
    let members = |store: coi_bridge::store::sqlite::SqliteStore| async move {
        store
            .find_chat(ChatKind::Group, &invite.group.clone().expect("group").id)
            .await
            .expect("read")
            .expect("group")
            .members
    };
    let members_before = members(s.daemon.store().await).await;

    // 1. Mail "from the bridge itself", signed by a fresh key: it must not speak as the bot.
    let forged_bridge = group_msg(BRIDGE, "COI Bridge", "forged-bridge@localhost", "forged: the bridge speaks");
    s.mail.deliver(BRIDGE, &[BRIDGE], &sealed(forged_bridge, &mallory, &bridge_key)).await;
    // 2. A stranger with a valid key of her own posts into the group and adds an address
    //    without a key.
    let eve = crypto::generate("eve@example.org", None).expect("key");
    let mut stranger = group_msg("eve@example.org", "Eve", "stranger@localhost", "forged: a stranger posts");
    stranger.to.push(Mailbox::new("nokey@example.org", None));
    stranger.group.as_mut().expect("group").change = Some(GroupChange::MemberAdded("nokey@example.org".into()));
    s.mail.deliver("eve@example.org", &[BRIDGE], &sealed(stranger, &eve, &bridge_key)).await;
    // 3. Bob's address, a new key: his key must not be replaced, nor the mail be his.
    let new_key_mail = group_msg(BOB, "Bob", "new-key@localhost", "forged: Bob with a new key");
    s.mail.deliver(BOB, &[BRIDGE], &sealed(new_key_mail, &mallory, &bridge_key)).await;
    // 4. SecureJoin takeover: the group link's auth secret (public in the room) plus a
    //    forged From tries to verify the attacker's key for Bob, an existing member.
    let mut takeover = message(BOB, "Bob", "takeover@localhost", "Secure-Join: vg-request-with-auth");
    takeover.secure_join = vec![
        ("Secure-Join".into(), "vg-request-with-auth".into()),
        ("Secure-Join-Auth".into(), invite.auth.clone()),
        ("Secure-Join-Fingerprint".into(), mallory_fpr.clone()),
        ("Secure-Join-Group".into(), group.id.clone()),
    ];
    s.mail.deliver(BOB, &[BRIDGE], &sealed(takeover, &mallory, &bridge_key)).await;

    set_apart(s.state.path(), "not_a_member: eve@example.org").await;
    s.alice_says("after the forgeries").await;
    s.body("after the forgeries").await;
    let bodies = room_bodies(&support::synapse::timeline(&s.hs, &s.mara, &s.room).await);
    for forged in ["forged: the bridge speaks", "forged: a stranger posts", "forged: Bob with a new key"] {
        assert!(!bodies.iter().any(|b| b.contains(forged)), "{forged:?} reached the room: {bodies:?}");
    }
    assert!(!s.alice_texts().await.iter().any(|t| t.contains("forged")), "nothing forged reached Delta Chat");
    // Keys: Alice's and Bob's stay, the attacker's are kept aside for the operator.
    let store = s.daemon.store().await;
    assert_eq!(store.contact_key(ALICE).await.expect("read").expect("key").fingerprint, alice_key.fingerprint);
    let bob_now = store.contact_key(BOB).await.expect("read").expect("key");
    assert_eq!((bob_now.fingerprint.as_str(), bob_now.verified), (bob_key.fingerprint.as_str(), false));
    assert!(store.contact_key(BRIDGE).await.expect("read").is_none(), "no contact key for our own address");
    assert!(store.key_changes(BOB).await.expect("read").iter().any(|(_, new)| *new == mallory_fpr));
    assert!(s.daemon.metric("coi_bridge_key_changes_flagged_total").await.unwrap_or(0.0) >= 1.0, "the flag is counted");
    assert_eq!(group_members(&s, &group.id).await, members_before, "the group's members did not change");
    assert!(!members_before.contains(&"nokey@example.org".to_owned()));
    // The forgeries were recorded apart, as unattributed mail, or not at all.
    for id in ["forged-bridge@localhost", "new-key@localhost"] {
        if let Some(m) = store.message(id).await.expect("read") {
            let chat = store.chat(m.chat_id).await.expect("read").expect("chat");
            assert!(chat.key.starts_with("unverified:"), "{id} recorded in {}", chat.key);
        }
    }
    // The operator reviews the kept-aside key.
    let changes = cli(s.state.path(), &["key", "changes"]);
    assert!(changes.contains(BOB) && changes.contains(&mallory_fpr), "{changes}");
    // Only the operator's decision applies it (here: as if Bob had confirmed the new key).
    let accepted = cli(s.state.path(), &["key", "accept", BOB, &mallory_fpr]);
    assert!(accepted.starts_with("accepted"), "{accepted}");
    let bob_now = s.daemon.store().await.contact_key(BOB).await.expect("read").expect("key");
    assert_eq!((bob_now.fingerprint.as_str(), bob_now.verified), (mallory_fpr.as_str(), true));
    assert!(!cli(s.state.path(), &["key", "changes"]).contains(&mallory_fpr), "the flag is gone");
}

/// Mail built to cost: a compression bomb, a flood of expensive symmetric-key packets and
/// adversarial HTML. Each is set apart or handled within budget, the daemon's memory
/// stays small, and a real message sent right after still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_mail_is_set_apart_within_budget_and_legit_mail_flows() {
    coi_bridge::init_crypto();
    let Some(s) = Stack::new().await else { return };
    let store = s.daemon.store().await;
    let bridge_key = bridge_key(&store).await;
    let outer = message(ALICE, "Alice", "bomb@localhost", "");

    // A compression bomb: ~4 MB of mail that inflates to almost 4 GiB.
    let bomb = armor(&encrypted(Some(&bridge_key), &compression_bomb()));
    assert!(bomb.len() < 8 * 1024 * 1024, "the bomb is small: {} bytes", bomb.len());
    s.mail.deliver(ALICE, &[BRIDGE], &pgpmime::outer_mail(&outer, 0, &bomb)).await;
    let reason = set_apart(s.state.path(), "over budget").await;
    assert!(reason.contains("bytes"), "{reason}");
    s.alice_says("after the bomb").await;
    s.body("after the bomb").await;
    let peak = peak_rss(s.daemon.pid());
    assert!(peak < 300 * 1024 * 1024, "the daemon peaked at {} MB", peak / (1024 * 1024));

    // 1000 symmetric-key packets, each asking Argon2 for 1 GiB; no key for us, so every
    // live invite's secret would be tried against each.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend(argon2_skesk(20));
    }
    flood.extend(encrypted(None, &packet(11, b"b\0\0\0\0\0hello")));
    let flood_mail = pgpmime::outer_mail(&message(ALICE, "Alice", "flood@localhost", ""), 0, &armor(&flood));
    s.mail.deliver(ALICE, &[BRIDGE], &flood_mail).await;
    s.alice_says("after the flood").await;
    s.body("after the flood").await;
    let reason = set_apart(s.state.path(), "symmetric-key packets").await;
    assert!(reason.contains("1000"), "{reason}");

    // 10 MB of adversarial HTML (entities and unclosed script tags), straight into the
    // mailbox.
    let mut html = String::with_capacity(10 << 20);
    html.push_str("<html><body>");
    while html.len() < 5 << 20 {
        html.push_str("&amp&&lt;&");
    }
    while html.len() < 10 << 20 {
        html.push_str("<script>");
    }
    let raw = format!(
        "From: Alice <{ALICE}>\r\nTo: {BRIDGE}\r\nSubject: html\r\nMessage-ID: <html-bomb@localhost>\r\n\
         Chat-Version: 1.0\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
    );
    s.mail.append("bridge", raw.as_bytes()).await;
    s.alice_says("after the html").await;
    s.body("after the html").await;
    let texts = s.alice_texts().await;
    assert!(!texts.iter().any(|t| t.contains("hello")), "the flood's content went nowhere");
    assert!(peak_rss(s.daemon.pid()) < 300 * 1024 * 1024);
    assert!(
        s.daemon.metric("coi_bridge_inbound_rejected_total{reason=\"over_budget\"}").await.unwrap_or(0.0) >= 2.0,
        "set-apart mail is counted"
    );
}

/// A Matrix message that some COI members cannot get still reaches the others, and the
/// room is told who did not get it: a member without a key (an older store's), and a
/// member whose server refuses the mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_coi_members_do_not_get_is_told_in_the_room() {
    coi_bridge::init_crypto();
    let Some(s) = Stack::new().await else { return };
    let invite = Invite::parse(&s.link).expect("the room's invite link");
    let group = invite.group.expect("a group link");
    let store = s.daemon.store().await;
    let chat = store.find_chat(ChatKind::Group, &group.id).await.expect("read").expect("the group");
    let refused = crypto::public(&crypto::generate("nobody@elsewhere.invalid", None).expect("key"));
    store
        .learn_contact_key(
            "nobody@elsewhere.invalid",
            &crypto::fingerprint(&refused),
            &crypto::public_to_bytes(&refused),
            coi_bridge::store::keys::KeySource::Vcard,
            true,
        )
        .await
        .expect("key");
    store
        .update_members(chat.id, &["keyless@example.org".into(), "nobody@elsewhere.invalid".into()], &[])
        .await
        .expect("members");

    s.send("to-everyone", json!({"msgtype": "m.text", "body": "hello everyone on COI"})).await;
    s.at_alice("hello everyone on COI").await;
    let notice = |who: &'static str| {
        move |e: &Value| {
            e["sender"] == support::bridged::BOT
                && e["content"]["body"].as_str().is_some_and(|b| b.contains("Not delivered on COI") && b.contains(who))
        }
    };
    let keyless = s.event("a notice naming the member without a key", notice("keyless@example.org")).await;
    assert!(keyless["content"]["body"].as_str().expect("body").contains("hello everyone on COI"), "{keyless}");
    let refused = s.event("a notice naming the refused member", notice("nobody@elsewhere.invalid")).await;
    assert!(refused["content"]["body"].as_str().expect("body").contains("hello everyone"), "{refused}");
}
