//! Criterion benchmarks of the COI codec: parse and render per message (plain text, group message, 100 KB attachment), OpenPGP, and the three steps of a 2 KB text message.

use std::hint::black_box;

use coi_bridge::coi::{self, ChatMessage, Group, GroupChange, Limits, Mailbox};
use coi_bridge_api::Attachment;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn plain() -> ChatMessage {
    ChatMessage {
        message_id: "0f6c2b0a-8d2e-4e57-9d2f-3a0d1c9b7e11@localhost".into(),
        is_chat: true,
        from: Mailbox::new("alice@example.org", Some("Alice")),
        to: vec![Mailbox::new("bridge@example.org", None)],
        date: Some(1_795_000_000),
        subject: Some("Message from Alice".into()),
        text: "Hello bridge, how are things on the other side? 👋".into(),
        disposition_notification_to: Some("alice@example.org".into()),
        ..ChatMessage::default()
    }
}

fn group() -> ChatMessage {
    ChatMessage {
        to: (0..8).map(|i| Mailbox::new(&format!("member{i}@example.org"), Some(&format!("Member {i}")))).collect(),
        in_reply_to: Some("parent@localhost".into()),
        references: vec!["root@localhost".into(), "parent@localhost".into()],
        group: Some(Group {
            id: "Xk3_mQ9-pL2vR8tY".into(),
            name: "Team 🚀".into(),
            change: Some(GroupChange::MemberAdded("member7@example.org".into())),
        }),
        quote: Some("the earlier message\nover two lines".into()),
        ..plain()
    }
}

fn attachment() -> ChatMessage {
    ChatMessage {
        attachments: vec![Attachment {
            name: "photo.jpg".into(),
            mime: "image/jpeg".into(),
            data: (0..100 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        }],
        ..plain()
    }
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, msg) in [("plain", plain()), ("group", group()), ("attachment_100k", attachment())] {
        let raw = coi::render(&msg);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function("render", |b| b.iter(|| coi::render(black_box(&msg))));
        g.bench_function("parse", |b| b.iter(|| coi::parse(black_box(&raw), &limits).expect("parses")));
        g.finish();
    }
}

/// Sign+encrypt and decrypt+verify of the inner part of a plain chat message, 1:1 (one
/// recipient key plus our own) and to a group of 8.
fn bench_crypto(c: &mut Criterion) {
    use coi_bridge::coi::crypto::{self, Unlock};
    use coi_bridge::coi::pgpmime;
    let me = crypto::generate("bridge@example.org", None).expect("key");
    let peers: Vec<_> = (0..8).map(|i| crypto::generate(&format!("m{i}@example.org"), None).expect("key")).collect();
    let inner = pgpmime::inner_part(&plain(), 1_795_000_000);
    let mut g = c.benchmark_group("crypto");
    for (name, n) in [("1to1", 1), ("group8", 8)] {
        let mut keys: Vec<_> = peers[..n].iter().map(crypto::public).collect();
        keys.push(crypto::public(&me));
        g.bench_function(format!("sign_encrypt_{name}"), |b| {
            b.iter(|| crypto::encrypt(black_box(&inner), &keys, &me, None).expect("encrypt"))
        });
        let armored = crypto::encrypt(&inner, &keys, &me, None).expect("encrypt");
        let signer = [crypto::public(&me)];
        g.bench_function(format!("decrypt_verify_{name}"), |b| {
            b.iter(|| {
                crypto::decrypt(black_box(armored.as_bytes()), Unlock::Key(&peers[0], None), &signer).expect("decrypt")
            })
        });
    }
    g.finish();
}

/// The three steps a 2 KB text message costs the bridge (#14 asks each ≤ 300 µs on one
/// core), 1:1 as Delta Chat sends it: inbound, the encrypted mail's payload is decrypted and
/// verified, then its inner MIME parsed; outbound, the message is rendered, signed,
/// encrypted and wrapped in its PGP/MIME mail.
fn bench_text_2k(c: &mut Criterion) {
    use coi_bridge::coi::crypto::{self, Unlock};
    use coi_bridge::coi::pgpmime;
    let me = crypto::generate("bridge@example.org", None).expect("key");
    let alice = crypto::generate("alice@example.org", None).expect("key");
    let keys = [crypto::public(&alice), crypto::public(&me)];
    let text: String = "Two kilobytes of chat, the size of a long message. ".repeat(50);
    let msg = ChatMessage { text: text[..2048].to_owned(), ..plain() };
    let date = 1_795_000_000;
    let inner = pgpmime::inner_part(&msg, date);
    let mail = pgpmime::outer_mail(&msg, date, &crypto::encrypt(&inner, &keys, &alice, None).expect("encrypt"));
    let limits = Limits::default();
    let mut g = c.benchmark_group("text_2k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| b.iter(|| coi::parse(black_box(&inner), &limits).expect("parses")));
    let signer = [crypto::public(&alice)];
    g.bench_function("decrypt_verify", |b| {
        b.iter(|| {
            let payload = pgpmime::encrypted_payload(black_box(&mail)).expect("PGP/MIME");
            crypto::decrypt(&payload, Unlock::Key(&me, None), &signer).expect("decrypt")
        })
    });
    g.bench_function("render_sign_encrypt", |b| {
        b.iter(|| {
            let inner = pgpmime::inner_part(black_box(&msg), date);
            pgpmime::outer_mail(&msg, date, &crypto::encrypt(&inner, &keys, &me, None).expect("encrypt"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_crypto, bench_text_2k);
criterion_main!(benches);
