//! Golden tests: every `tests/fixtures/eml/NAME.eml` parses to the result pinned in `NAME.json`.
//!
//! `UPDATE_GOLDEN=1 cargo test golden` rewrites the `.json` files; review the diff before
//! committing it.
//!
//! `dc265-*.eml` are real Delta Chat 2.65 mail: what `deltachat-rpc-server` sent the bridge
//! in tests/it/replies.rs, opened with the bridge's key (the protected inner message, as the
//! daemon parses it). `CAPTURE_DC_FIXTURES=1 CI=true cargo test --test it
//! replies::a_delta_chat_follow_up` captures them again; every run of that test checks
//! that fresh mail still parses as these pin.

use std::path::Path;

use serde_json::{Value, json};
use sha2::Digest as _;

use super::message::{GroupChange, Kind, Mailbox};
use super::parse::{Limits, parse};

fn mailbox(m: &Mailbox) -> Value {
    match &m.name {
        Some(n) => json!(format!("{n} <{}>", m.addr)),
        None => json!(m.addr),
    }
}

fn summary(raw: &[u8]) -> Value {
    let parsed = match parse(raw, &Limits::default()) {
        Ok(p) => p,
        Err(e) => return json!({ "error": e.label() }),
    };
    let m = parsed.message;
    let kind = match &m.kind {
        Kind::Text => json!("text"),
        Kind::Reaction { emoji } => json!({ "reaction": emoji }),
        Kind::Edit { target } => json!({ "edit": target }),
        Kind::Delete { targets } => json!({ "delete": targets }),
        Kind::ReadReceipt { original, additional } => json!({ "receipt": original, "additional": additional }),
        Kind::Report => json!("report"),
    };
    let group = m.group.as_ref().map(|g| {
        let change = match &g.change {
            None => Value::Null,
            Some(GroupChange::MemberAdded(a)) => json!({ "added": a }),
            Some(GroupChange::MemberRemoved(a)) => json!({ "removed": a }),
            Some(GroupChange::NameChanged { old }) => json!({ "renamed_from": old }),
            Some(GroupChange::DescriptionChanged { text }) => json!({ "description": text }),
            Some(GroupChange::AvatarChanged(image)) => json!({ "avatar_bytes": image.as_ref().map(Vec::len) }),
        };
        json!({ "id": g.id, "name": g.name, "change": change })
    });
    let attachments: Vec<Value> = m
        .attachments
        .iter()
        .map(|a| {
            let digest: String = sha2::Sha256::digest(&a.data).iter().take(8).map(|b| format!("{b:02x}")).collect();
            json!({ "name": a.name, "mime": a.mime, "size": a.data.len(), "sha256": digest })
        })
        .collect();
    let references = if m.references.len() > 4 {
        json!(format!(
            "{} ids, first {}, last {}",
            m.references.len(),
            m.references[0],
            m.references[m.references.len() - 1]
        ))
    } else {
        json!(m.references)
    };
    let subject = m
        .subject
        .as_ref()
        .map(|s| if s.len() > 80 { format!("{}… ({} chars)", &s[..60], s.chars().count()) } else { s.clone() });
    json!({
        "message_id": m.message_id,
        "is_chat": m.is_chat,
        "from": mailbox(&m.from),
        "sender": m.sender.as_ref().map(mailbox),
        "to": m.to.iter().map(mailbox).collect::<Vec<_>>(),
        "cc": m.cc.iter().map(mailbox).collect::<Vec<_>>(),
        "date": m.date,
        "subject": subject,
        "in_reply_to": m.in_reply_to,
        "references": references,
        "group": group,
        "kind": kind,
        "text": m.text,
        "quote": m.quote,
        "attachments": attachments,
        "read_receipt_to": m.disposition_notification_to,
        "from_html": m.from_html,
        "problems": parsed.problems.iter().map(|p| p.label()).collect::<Vec<_>>(),
    })
}

#[test]
fn golden_fixtures_parse_as_pinned() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/eml exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "fixtures missing: {}", names.len());
    let mut failures = Vec::new();
    for eml in &names {
        let raw = std::fs::read(eml).expect("fixture readable");
        let got = summary(&raw);
        let expected_path = eml.with_extension("json");
        if update {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write golden");
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("{} has no pinned result; run with UPDATE_GOLDEN=1", eml.display())),
        )
        .expect("pinned json parses");
        if got != expected {
            failures.push(format!(
                "{}:\n  expected {}\n  got      {}",
                eml.display(),
                serde_json::to_string(&expected).unwrap_or_default(),
                serde_json::to_string(&got).unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{} fixtures differ:\n{}", failures.len(), failures.join("\n"));
}

/// Real Delta Chat 2.65 mail: every message names the chat's last message in In-Reply-To,
/// but only a quote makes a reply (Delta Chat core's `quoted_message` rule).
#[test]
fn real_delta_chat_follow_ups_answer_nothing_and_quotes_answer_what_they_quote() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eml");
    let read = |name: &str| {
        let raw = std::fs::read(dir.join(name)).expect("fixture");
        parse(&raw, &Limits::default()).expect("parses").message
    };
    let first = read("dc265-first.eml");
    let follow = read("dc265-follow-up.eml");
    let reply = read("dc265-quoted-reply.eml");
    let raw_follow =
        String::from_utf8(std::fs::read(dir.join("dc265-follow-up.eml")).expect("fixture")).expect("utf-8");
    assert!(raw_follow.contains(&format!("In-Reply-To: <{}>", first.message_id)), "Delta Chat threads every message");

    assert_eq!((follow.target(), follow.in_reply_to.as_deref(), follow.quote.as_deref()), (None, None, None));
    assert_eq!(follow.references.last(), Some(&first.message_id), "the parent still threads");

    assert_eq!(reply.target(), Some(first.message_id.as_str()), "answers the quoted message");
    assert_eq!((reply.quote.as_deref(), reply.text.as_str()), (Some("first words"), "a quoted reply"));
    assert_eq!(reply.references.last(), Some(&follow.message_id), "threaded under the chat's last message");
}
