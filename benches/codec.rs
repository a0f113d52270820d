//! Criterion benchmarks of the COI codec: parse and render per message, for a plain text, a group message and a message with a 100 KB attachment.

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

criterion_group!(benches, bench, bench_crypto);
criterion_main!(benches);
