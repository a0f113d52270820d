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

criterion_group!(benches, bench);
criterion_main!(benches);
