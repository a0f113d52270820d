//! The degradation rules on their own: splitting at the right places within every unit, text files for very long texts, nearest reactions, and edit plans.

use super::*;

const TELEGRAM: TextLimit = TextLimit { max: 4096, unit: TextUnit::Utf16 };
/// A few of Telegram's allowed reactions, spelled as the Bot API lists them.
const ALLOWED: &[&str] = &["👍", "👎", "❤", "🤣", "😁", "😢", "🤯", "🎉", "👌", "🤷"];

fn caps(limit: TextLimit) -> Capabilities {
    Capabilities { media: true, max_text: Some(limit), ..Capabilities::default() }
}

/// The words of a text, for "nothing lost, nothing reordered".
fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

#[test]
fn a_text_that_fits_goes_unchanged() {
    let text = "  hello\n\nworld  ";
    assert_eq!(plan_text(text, &caps(TELEGRAM), "Alice"), TextPlan { parts: vec![text.into()], full_text: None });
    let none = Capabilities::default();
    let long = "x".repeat(100_000);
    assert_eq!(plan_text(&long, &none, "Alice").parts, vec![long.clone()], "no limit, no split");
}

#[test]
fn ten_thousand_characters_become_three_telegram_parts_in_order() {
    let text: String = (0..2000).map(|i| format!("w{i:04}")).collect::<Vec<_>>().join(" ");
    assert_eq!(text.chars().count(), 2000 * 6 - 1);
    let plan = plan_text(&text, &caps(TELEGRAM), "Alice");
    assert_eq!(plan.full_text, None);
    assert_eq!(plan.parts.len(), 3, "{:?}", plan.parts.iter().map(String::len).collect::<Vec<_>>());
    let reserve = prefix_reserve(TELEGRAM, "Alice");
    assert_eq!(reserve, 5 + 16);
    for p in &plan.parts {
        assert!(TextUnit::Utf16.len(p) <= 4096 - reserve, "{}", p.len());
        assert!(!p.starts_with(' ') && !p.ends_with(' '), "split between words");
    }
    assert_eq!(words(&plan.parts.join(" ")), words(&text), "complete and in order");
}

#[test]
fn splits_prefer_paragraphs_then_lines_then_words() {
    let para = "a".repeat(60);
    let text = format!("{para} {para}\n\n{para}\n{para} {para}");
    let parts = split_text(&text, 200, TextUnit::Utf8);
    assert_eq!(parts[0], format!("{para} {para}"), "at the paragraph break");
    let parts = split_text(&format!("{para}\n{para} {para} {para}"), 150, TextUnit::Utf8);
    assert_eq!(parts[0], format!("{para}\n{para}"), "at a word: the line break would leave the part under half full");
    let parts = split_text(&format!("{para} {para}\n{para} {para}"), 150, TextUnit::Utf8);
    assert_eq!(parts[0], format!("{para} {para}"), "at the line break");
    // No break at all: between characters.
    let parts = split_text(&"b".repeat(250), 100, TextUnit::Utf8);
    assert_eq!(parts.iter().map(String::len).collect::<Vec<_>>(), vec![100, 100, 50]);
}

#[test]
fn never_inside_a_character_a_surrogate_pair_or_an_emoji_sequence() {
    // 😂 is 4 bytes and 2 UTF-16 units; a limit of 5 units cannot take three.
    let parts = split_text(&"😂".repeat(7), 5, TextUnit::Utf16);
    assert_eq!(parts, vec!["😂😂", "😂😂", "😂😂", "😂"]);
    let parts = split_text(&"é".repeat(5), 3, TextUnit::Utf8);
    assert_eq!(parts, vec!["é", "é", "é", "é", "é"], "2 bytes each, a limit of 3 takes one");
    // A family (ZWJ sequence) and a thumbs-up with a skin tone stay whole.
    let family = "👨\u{200d}👩\u{200d}👧";
    let text = format!("{}{family}{}", "a".repeat(9), "👍\u{1f3fd}");
    let parts = split_text(&text, 12, TextUnit::Utf16);
    assert_eq!(parts.concat(), text);
    assert!(parts.iter().all(|p| !p.starts_with('\u{200d}') && !p.ends_with('\u{200d}')), "{parts:?}");
    assert!(parts.iter().all(|p| !p.starts_with('\u{1f3fd}')), "{parts:?}");
    // A character over the limit on its own still goes (no endless loop).
    assert_eq!(split_text("😂a", 1, TextUnit::Utf16), vec!["😂", "a"]);
}

#[test]
fn the_escaped_unit_counts_what_a_matrix_event_carries() {
    assert_eq!(TextUnit::Escaped.len("a&b"), 7);
    assert_eq!(TextUnit::Escaped.len("\"<>\n\\\u{1}é"), 6 + 4 + 4 + 4 + 2 + 6 + 2);
    let matrix = TextLimit { max: 1000, unit: TextUnit::Escaped };
    let text = "&".repeat(1000);
    for p in plan_text(&text, &caps(matrix), "").parts {
        assert!(TextUnit::Escaped.len(&p) <= 1000 - 16, "{}", p.len());
    }
}

#[test]
fn an_extremely_long_text_goes_as_a_file_with_its_start_as_text() {
    let text: String = (0..5000).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
    let limit = TextLimit { max: 2000, unit: TextUnit::Utf16 };
    assert!(split_text(&text, 2000, TextUnit::Utf16).len() > MAX_PARTS);
    let plan = plan_text(&text, &caps(limit), "Alice");
    assert_eq!(plan.full_text.as_deref(), Some(text.as_str()), "the whole text, unchanged");
    assert_eq!(plan.parts.len(), 1);
    assert!(plan.parts[0].starts_with("word0 word1 "));
    assert!(plan.parts[0].ends_with(IN_FILE));
    assert!(TextUnit::Utf16.len(&plan.parts[0]) <= 2000 - prefix_reserve(limit, "Alice"));
    // A side without files, or with too small a file limit: the first parts, and a note.
    for caps in
        [Capabilities { media: false, ..caps(limit) }, Capabilities { max_file_size: Some(1000), ..caps(limit) }]
    {
        let plan = plan_text(&text, &caps, "Alice");
        assert_eq!((plan.parts.len(), plan.full_text), (MAX_PARTS, None));
        assert!(plan.parts[MAX_PARTS - 1].ends_with(CUT), "says what was lost");
    }
}

#[test]
fn a_long_sender_name_takes_at_most_a_quarter_of_a_part() {
    let name = "N".repeat(5000);
    assert_eq!(prefix_reserve(TELEGRAM, &name), 1024);
}

#[test]
fn reactions_map_to_the_nearest_allowed_one_or_none() {
    let allowed = Some(ALLOWED);
    assert_eq!(nearest_reaction("😂", allowed).as_deref(), Some("🤣"));
    assert_eq!(nearest_reaction("👍", allowed).as_deref(), Some("👍"));
    assert_eq!(nearest_reaction("❤\u{fe0f}", allowed).as_deref(), Some("❤"), "as the side spells it");
    assert_eq!(nearest_reaction("👍\u{1f3fd}", allowed).as_deref(), Some("👍"), "skin tone dropped");
    assert_eq!(nearest_reaction("🙁", allowed).as_deref(), Some("😢"));
    assert_eq!(nearest_reaction("😮", allowed).as_deref(), Some("🤯"));
    assert_eq!(nearest_reaction("💜", allowed).as_deref(), Some("❤"));
    assert_eq!(nearest_reaction("🤷\u{200d}♀\u{fe0f}", allowed).as_deref(), Some("🤷"));
    assert_eq!(nearest_reaction("🦆", allowed), None, "nothing close");
    assert_eq!(nearest_reaction("🦆 😂", allowed).as_deref(), Some("🤣"), "the first of several that maps");
    assert_eq!(nearest_reaction("", allowed).as_deref(), Some(""), "a retraction passes");
    assert_eq!(nearest_reaction("🦆", None).as_deref(), Some("🦆"), "any is allowed");
    // Nearest in order: 😂 → 😁 where 🤣 is not allowed.
    assert_eq!(nearest_reaction("😂", Some(&["😁", "👍"])).as_deref(), Some("😁"));
}

#[test]
fn a_reaction_as_text_quotes_the_start_of_its_target() {
    assert_eq!(reaction_text("🦆", Some("see you at the pond")), "🦆 to “see you at the pond”");
    let long = "a long message that goes on and on and on, well past forty characters";
    assert_eq!(reaction_text("🦆", Some(long)), "🦆 to “a long message that goes on and on and…”");
    assert_eq!(reaction_text("🦆", Some("\n first line \nsecond")), "🦆 to “first line…”");
    assert_eq!(reaction_text("🦆", None), "reacted 🦆");
    assert_eq!(reaction_text("🦆", Some("  ")), "reacted 🦆");
}

#[test]
fn parts_are_numbered_by_what_they_hold() {
    assert_eq!((text_slot(0), text_slot(1), text_slot(9)), (0, 1001, 1009));
    assert_eq!(Slot::of(0), Slot::Text(0));
    assert_eq!(Slot::of(1), Slot::File);
    assert_eq!(Slot::of(499), Slot::File);
    assert_eq!(Slot::of(500), Slot::FullText);
    assert_eq!(Slot::of(1003), Slot::Text(3));
}

#[test]
fn edits_edit_send_and_drop_parts_as_the_new_text_needs() {
    let old = vec![(0, "m0".to_owned()), (1, "m1".to_owned()), (2, "m2".to_owned())];
    let plan = |parts: &[&str]| TextPlan { parts: parts.iter().map(|p| (*p).to_owned()).collect(), full_text: None };
    let shorter = edit_steps(&old, &[], &plan(&["a", "b"]));
    assert_eq!(
        shorter,
        vec![
            EditStep::Edit { index: 0, target: "m0".into(), text: "a".into() },
            EditStep::Edit { index: 1, target: "m1".into(), text: "b".into() },
            EditStep::Drop { index: 2, target: "m2".into() },
        ]
    );
    let longer = edit_steps(&old[..1], &[], &plan(&["a", "b"]));
    assert_eq!(
        longer,
        vec![
            EditStep::Edit { index: 0, target: "m0".into(), text: "a".into() },
            EditStep::Send { index: 1, text: "b".into() },
        ]
    );
    let to_file = TextPlan { parts: vec!["start".into()], full_text: Some("all".into()) };
    let steps = edit_steps(&old[..1], &[(500, "f0".into())], &to_file);
    assert_eq!(
        steps,
        vec![
            EditStep::Edit { index: 0, target: "m0".into(), text: "start".into() },
            EditStep::DropFullText { part: 500, target: "f0".into() },
            EditStep::SendFullText { text: "all".into() },
        ]
    );
}

#[test]
fn a_tiny_limit_still_splits_without_a_panic() {
    let tiny = TextLimit { max: 8, unit: TextUnit::Utf8 };
    let text = "word ".repeat(500);
    let plan = plan_text(&text, &caps(tiny), "A");
    assert!(plan.full_text.is_some() && !plan.parts[0].is_empty());
    let plan = plan_text(&text, &Capabilities { media: false, ..caps(tiny) }, "A");
    assert_eq!(plan.parts.len(), MAX_PARTS);
}
