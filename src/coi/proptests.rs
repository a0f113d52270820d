//! Property tests of the codec: whatever names, subjects, group names and file names a
//! Matrix or Telegram user picks, `parse(render(m))` gives the message back.

use coi_bridge_api::Attachment;
use proptest::prelude::*;

use super::message::{ChatMessage, Group, Mailbox};
use super::parse::{Limits, parse};
use super::render::render;
use super::vcard::{self, VcardContact};

/// Any text up to `max` characters, control characters and odd Unicode included.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Text that looks like what people type, with the characters headers find hard.
fn tricky_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("=?utf-8?b?".to_owned()),
        Just("?=".to_owned()),
        Just(", ".to_owned()),
        Just("<a@b.c>".to_owned()),
        Just(";".to_owned()),
        Just("  ".to_owned()),
        Just("(x)".to_owned()),
        Just("ä".to_owned()),
        Just("🚀".to_owned()),
        Just("\u{200b}".to_owned()),
        "[a-zA-Z0-9 ]{1,12}",
        any_text(4),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|p| p.concat())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any_text(80), tricky_text(12)]
}

/// What the parser keeps of a display name or header text: trimmed, `None` when empty.
fn kept(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// What the parser keeps of a file name: the last path segment, no control characters, at
/// most 200 characters, trimmed.
fn kept_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    kept(&base.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
}

fn message(from_name: String, to_name: String, subject: String, group_name: String, files: Vec<String>) -> ChatMessage {
    ChatMessage {
        message_id: "prop@localhost".into(),
        is_chat: true,
        from: Mailbox { addr: "bridge@example.org".into(), name: Some(from_name) },
        to: vec![Mailbox { addr: "alice@example.org".into(), name: Some(to_name) }],
        date: Some(1_790_000_000),
        subject: Some(subject),
        group: Some(Group { id: "Xk3_mQ9-pL2vR8tY".into(), name: group_name, change: None }),
        text: "hello".into(),
        attachments: files
            .into_iter()
            .enumerate()
            .map(|(i, name)| Attachment { name, mime: "application/octet-stream".into(), data: vec![i as u8; 3] })
            .collect(),
        ..ChatMessage::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_of_render_keeps_names_subjects_and_file_names(
        from_name in text(),
        to_name in text(),
        subject in text(),
        group_name in text(),
        files in prop::collection::vec(text(), 0..3),
    ) {
        let msg = message(from_name.clone(), to_name.clone(), subject.clone(), group_name.clone(), files.clone());
        let raw = render(&msg);
        let parsed = parse(&raw, &Limits::default()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let back = parsed.message;
        prop_assert_eq!(back.from.name, kept(&from_name));
        prop_assert_eq!(&back.to[0].name, &kept(&to_name));
        prop_assert_eq!(back.subject, kept(&subject));
        prop_assert_eq!(back.group.map(|g| g.name), Some(kept(&group_name).unwrap_or_default()));
        prop_assert_eq!(back.attachments.len(), files.len());
        for (i, (got, sent)) in back.attachments.iter().zip(&files).enumerate() {
            let name = kept_filename(sent).unwrap_or_else(|| format!("attachment-{}.bin", i + 1));
            prop_assert_eq!(&got.name, &name);
            prop_assert_eq!(&got.data, &vec![i as u8; 3]);
        }
        prop_assert_eq!(back.text, "hello");
    }
}

proptest! {
    /// A contact card the bridge writes reads back the same, whatever the name (a backslash
    /// before an `n` came back as a line break).
    #[test]
    fn vcard_parse_of_render_keeps_the_name(name in text(), key in prop::collection::vec(any::<u8>(), 1..64)) {
        let contact = VcardContact { addr: "alice@example.org".into(), name: Some(name.clone()), key: Some(key) };
        let back = vcard::parse(&vcard::render(&contact));
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(&back[0].name, &kept(&name));
        prop_assert_eq!(&back[0].key, &contact.key);
    }
}
