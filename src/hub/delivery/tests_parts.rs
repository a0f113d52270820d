//! The hub degrading for a recording bridge that announces limits: long texts in parts (mapped per part, resumed after a failure, edited and deleted as a whole), text files for very long texts, and reactions in a form the side takes.

use std::sync::Arc;
use std::time::Duration;

use coi_bridge_api::{DeliverError, Outgoing, TextLimit, TextUnit};

use super::tests::{RecordingBridge, drive, from_coi, rig};
use crate::coi::{ChatMessage, Kind};
use crate::hub::degrade::{FULL_TEXT_NAME, FULL_TEXT_SLOT};

/// 100 bytes a message; Alice's name prefix takes 5 + 16 of them.
const LIMIT: TextLimit = TextLimit { max: 100, unit: TextUnit::Utf8 };

fn limited() -> Arc<RecordingBridge> {
    Arc::new(RecordingBridge { max_text: Some(LIMIT), reactions: true, ..RecordingBridge::default() })
}

/// Words `{tag}0 … {tag}{n-1}`, in paragraphs of five.
fn text(tag: &str, n: usize) -> String {
    let words: Vec<String> = (0..n).map(|i| format!("{tag}{i:02}")).collect();
    words.chunks(5).map(|c| c.join(" ")).collect::<Vec<_>>().join("\n\n")
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

fn texts(bridge: &RecordingBridge) -> Vec<String> {
    bridge
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(_, o)| match o {
            Outgoing::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn parts_of(copies: &[crate::store::portals::RemoteCopy]) -> Vec<(i64, &str)> {
    copies.iter().map(|c| (c.part, c.remote_id.as_str())).collect()
}

#[tokio::test]
async fn a_long_text_goes_in_parts_in_order_with_the_reply_first_and_the_files_last() {
    let r = rig().await;
    from_coi(&r, 1, "m0@x", ChatMessage { text: "short".into(), ..ChatMessage::default() }).await;
    let file = coi_bridge_api::Attachment { name: "a.png".into(), mime: "image/png".into(), data: vec![1] };
    let long = text("a", 45);
    let msg = ChatMessage {
        text: long.clone(),
        attachments: vec![file],
        in_reply_to: Some("m0@x".into()),
        ..ChatMessage::default()
    };
    from_coi(&r, 2, "m1@x", msg).await;
    let bridge = limited();
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 4).await;
    let got = bridge.got.lock().expect("lock").clone();
    let parts: Vec<(&str, usize, Option<&str>)> = got[1..]
        .iter()
        .map(|(_, o)| match o {
            Outgoing::Message { text, attachments, reply_to, .. } => {
                assert!(text.len() <= 100 - 21, "{} bytes", text.len());
                (text.as_str(), attachments.len(), reply_to.as_ref().map(|r| r.as_str()))
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(parts.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(), vec![(0, Some("$ev1")), (0, None), (1, None)]);
    let joined: Vec<&str> = parts.iter().flat_map(|p| words(p.0)).collect();
    assert_eq!(joined, words(&long), "complete and in order");
    let copies = r.store.remote_copies("m1@x", "matrix").await.expect("map");
    assert_eq!(parts_of(&copies), vec![(0, "$ev2"), (1, "$ev4-f0"), (1001, "$ev3"), (1002, "$ev4")]);
}

#[tokio::test]
async fn a_failure_half_way_resends_only_the_missing_parts() {
    let r = rig().await;
    let long = text("b", 45);
    from_coi(&r, 1, "m1@x", ChatMessage { text: long.clone(), ..ChatMessage::default() }).await;
    let bridge = limited();
    bridge
        .script
        .lock()
        .expect("lock")
        .extend([Ok(()), Err(DeliverError::Retry { reason: "503".into(), after: Some(Duration::from_millis(10)) })]);
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 3).await;
    let sent = texts(&bridge);
    assert_eq!(sent.iter().flat_map(|t| words(t)).collect::<Vec<_>>(), words(&long), "each part once, in order");
}

#[tokio::test]
async fn edits_act_on_every_part_and_a_delete_removes_them_all() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: text("c", 45), ..ChatMessage::default() }).await;
    let bridge = limited();
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 3).await;
    let edit = |id: &str, text: &str| ChatMessage {
        message_id: id.into(),
        kind: Kind::Edit { target: "m1@x".into() },
        text: text.into(),
        ..ChatMessage::default()
    };
    // Shorter: the first part edited, the other two deleted and forgotten.
    from_coi(&r, 2, "e1@x", edit("e1@x", "now short")).await;
    drive(&d, || bridge.got.lock().expect("lock").len() == 6).await;
    let got = bridge.got.lock().expect("lock")[3..].to_vec();
    let did: Vec<(&str, &str)> = got
        .iter()
        .map(|(_, o)| match o {
            Outgoing::Edit { target, new_text, .. } => (target.as_str(), new_text.as_str()),
            Outgoing::Delete { target, .. } => (target.as_str(), "deleted"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(did, vec![("$ev1", "now short"), ("$ev2", "deleted"), ("$ev3", "deleted")]);
    assert_eq!(parts_of(&r.store.remote_copies("m1@x", "matrix").await.expect("map")), vec![(0, "$ev1")]);

    // Longer again: the first part edited, two parts sent after it and kept with the message.
    let longer = text("d", 45);
    from_coi(&r, 3, "e2@x", edit("e2@x", &longer)).await;
    drive(&d, || bridge.got.lock().expect("lock").len() == 9).await;
    let got = bridge.got.lock().expect("lock")[6..].to_vec();
    let mut shown = Vec::new();
    for (_, o) in &got {
        match o {
            Outgoing::Edit { target, new_text, .. } => {
                assert_eq!(target.as_str(), "$ev1");
                shown.push(new_text.clone());
            }
            Outgoing::Message { text, reply_to: None, .. } => shown.push(text.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(shown.iter().flat_map(|t| words(t)).collect::<Vec<_>>(), words(&longer));
    let copies = r.store.remote_copies("m1@x", "matrix").await.expect("map");
    assert_eq!(parts_of(&copies), vec![(0, "$ev1"), (1001, "$ev8"), (1002, "$ev9")]);

    // Only the end changes: only the last part is edited.
    let end_changed = longer.replace("d44", "d44 and one more");
    from_coi(&r, 4, "e3@x", edit("e3@x", &end_changed)).await;
    drive(&d, || bridge.got.lock().expect("lock").len() == 10).await;
    match &bridge.got.lock().expect("lock")[9].1 {
        Outgoing::Edit { target, new_text, .. } => {
            assert_eq!(target.as_str(), "$ev9");
            assert!(new_text.ends_with("d44 and one more"), "{new_text}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // A delete removes every part.
    from_coi(
        &r,
        5,
        "x1@x",
        ChatMessage { kind: Kind::Delete { targets: vec!["m1@x".into()] }, ..ChatMessage::default() },
    )
    .await;
    drive(&d, || bridge.got.lock().expect("lock").len() == 13).await;
    let deleted: Vec<String> = bridge.got.lock().expect("lock")[10..]
        .iter()
        .map(|(_, o)| match o {
            Outgoing::Delete { target, .. } => target.0.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deleted, vec!["$ev1", "$ev8", "$ev9"]);
}

#[tokio::test]
async fn an_extremely_long_text_goes_as_a_file_with_its_start_as_text() {
    let r = rig().await;
    let long = text("e", 200);
    from_coi(&r, 1, "m1@x", ChatMessage { text: long.clone(), ..ChatMessage::default() }).await;
    let bridge = limited();
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 2).await;
    let got = bridge.got.lock().expect("lock").clone();
    match (&got[0].1, &got[1].1) {
        (Outgoing::Message { text: start, .. }, Outgoing::Message { text, attachments, .. }) => {
            assert!(start.starts_with("e00 e01") && start.contains(FULL_TEXT_NAME), "{start}");
            assert!(text.is_empty());
            assert_eq!(attachments[0].name, FULL_TEXT_NAME);
            assert_eq!(attachments[0].data, long.as_bytes(), "the whole text");
        }
        other => panic!("unexpected {other:?}"),
    }
    let copies = r.store.remote_copies("m1@x", "matrix").await.expect("map");
    assert_eq!(parts_of(&copies), vec![(0, "$ev1"), (FULL_TEXT_SLOT, "$ev2"), (FULL_TEXT_SLOT + 1, "$ev2-f0")]);
}

#[tokio::test]
async fn reactions_go_as_the_nearest_allowed_one_or_as_text() {
    let r = rig().await;
    from_coi(&r, 1, "m1@x", ChatMessage { text: "hello there".into(), ..ChatMessage::default() }).await;
    let react = |id: &str, emoji: &str| ChatMessage {
        message_id: id.into(),
        kind: Kind::Reaction { emoji: emoji.into() },
        in_reply_to: Some("m1@x".into()),
        ..ChatMessage::default()
    };
    from_coi(&r, 2, "r1@x", react("r1@x", "😂")).await;
    from_coi(&r, 3, "r2@x", react("r2@x", "🦆")).await;
    from_coi(&r, 4, "r3@x", react("r3@x", "👍")).await;
    let bridge = Arc::new(RecordingBridge {
        reactions: true,
        allowed_reactions: Some(&["👍", "🤣"]),
        ..RecordingBridge::default()
    });
    // The side refuses the third one although it is on its list (a chat may restrict them).
    bridge.script.lock().expect("lock").extend([
        Ok(()),
        Ok(()),
        Ok(()),
        Err(DeliverError::Permanent("REACTION_INVALID".into())),
    ]);
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 4).await;
    let got: Vec<String> = bridge.got.lock().expect("lock")[1..]
        .iter()
        .map(|(_, o)| match o {
            Outgoing::Reaction { emoji, target, .. } => format!("reaction {emoji} on {target}"),
            Outgoing::Message { text, reply_to, .. } => {
                format!("text {text} on {:?}", reply_to.as_ref().map(|r| r.as_str()))
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "reaction 🤣 on $ev1".to_string(),
            "text 🦆 to “hello there” on Some(\"$ev1\")".to_string(),
            "text 👍 to “hello there” on Some(\"$ev1\")".to_string(),
        ]
    );
    assert_eq!(r.metrics.outbox.with_label_values(&["matrix", "failed"]).get(), 0, "nothing given up");
}

#[tokio::test]
async fn a_part_is_left_alone_only_when_it_shows_the_same_text_already() {
    let r = rig().await;
    let first = text("f", 15);
    from_coi(&r, 1, "m1@x", ChatMessage { text: first.clone(), ..ChatMessage::default() }).await;
    let bridge = limited();
    let d = super::tests::delivery(&r, bridge.clone());
    drive(&d, || bridge.got.lock().expect("lock").len() == 1).await;
    let edit = |text: &str| ChatMessage {
        kind: Kind::Edit { target: "m1@x".into() },
        text: text.into(),
        ..ChatMessage::default()
    };
    // A one-part edit, then one that brings the first text back with more after it: the
    // copy shows "short" now, so its first part is edited back, not skipped as unchanged.
    from_coi(&r, 2, "e1@x", edit("short")).await;
    let longer = format!("{first}\n\n{}", text("g", 10));
    from_coi(&r, 3, "e2@x", edit(&longer)).await;
    // Until the new second part went out: it comes last, with or without the edit before it.
    drive(&d, || {
        let got = bridge.got.lock().expect("lock");
        got.len() >= 3 && matches!(got.last(), Some((_, Outgoing::Message { .. })))
    })
    .await;
    let got = bridge.got.lock().expect("lock")[2..].to_vec();
    match (&got[0].1, &got[1].1) {
        (Outgoing::Edit { target, new_text, .. }, Outgoing::Message { text, .. }) => {
            assert_eq!((target.as_str(), new_text.as_str()), ("$ev1", first.as_str()));
            assert_eq!(text, &self::text("g", 10));
        }
        other => panic!("unexpected {other:?}"),
    }
}
