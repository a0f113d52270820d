//! What a side cannot carry, turned into what it can (pure, no I/O): a reaction into the nearest allowed one or a short text, a long text into parts (or a text file), and the plan that keeps a split message's parts in step through edits.
//!
//! The core decides here, from the bridge's [`Capabilities`], before `Bridge::deliver`: a
//! bridge never has to split a text or pick another emoji.
//!
//! A copy of one COI message on a bridge is kept as parts (`message_map.part`), numbered by
//! what they are, so an edit or a delete finds every one of them:
//! - part 0: the main part, the first text part (replies and reactions point at it);
//! - parts 1..[`FULL_TEXT_SLOT`]: the files, as the bridge returned them;
//! - parts [`FULL_TEXT_SLOT`]..[`TEXT_SLOT_BASE`]: the whole text as a file, for a text
//!   too long for [`MAX_PARTS`] parts;
//! - part [`TEXT_SLOT_BASE`] + i: text part i (i ≥ 1).

use coi_bridge_api::{Capabilities, TextLimit, TextUnit};

/// A text needing more parts than this goes as a text file, with its start as text.
pub const MAX_PARTS: usize = 10;
/// The name of that file.
pub const FULL_TEXT_NAME: &str = "message.txt";
/// The first part number of the whole text as a file.
pub const FULL_TEXT_SLOT: i64 = 500;
/// Text part i (i ≥ 1) is part `TEXT_SLOT_BASE + i`.
pub const TEXT_SLOT_BASE: i64 = 1000;
/// The most a sender's name prefix may take of a part (a longer name is the bridge's to cut).
const PREFIX_SHARE: usize = 4;
/// What a name prefix adds besides the name (`<b></b>: `).
const PREFIX_EXTRA: usize = 16;
/// Said after the start of a text that went as a file: nothing is lost, the reader is told where the rest is.
const IN_FILE: &str = "\n\n[… the whole message is in the attached message.txt]";
/// Said when a text could not go whole (no files on this side, or too large for one).
const CUT: &str = "\n\n[… the rest of this message was too long to send here]";
/// How much of the target's text a reaction sent as text quotes.
const QUOTE_CHARS: usize = 40;

/// The part number of text part `i`.
pub fn text_slot(i: usize) -> i64 {
    if i == 0 { 0 } else { TEXT_SLOT_BASE + i as i64 }
}

/// What a part number holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Text(usize),
    File,
    FullText,
}

impl Slot {
    pub fn of(part: i64) -> Self {
        match part {
            0 => Self::Text(0),
            p if p >= TEXT_SLOT_BASE => Self::Text((p - TEXT_SLOT_BASE) as usize),
            p if p >= FULL_TEXT_SLOT => Self::FullText,
            _ => Self::File,
        }
    }
}

/// How a text goes to a side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextPlan {
    /// The texts of the parts, in order; one part for a text that fits (unchanged).
    pub parts: Vec<String>,
    /// The whole text, to send as a [`FULL_TEXT_NAME`] file after the parts.
    pub full_text: Option<String>,
}

/// Room kept in every part for the sender's name prefix, in the side's unit.
pub fn prefix_reserve(limit: TextLimit, sender_name: &str) -> usize {
    (limit.unit.len(sender_name) + PREFIX_EXTRA).min(limit.max / PREFIX_SHARE)
}

/// How `text` goes to a side with these capabilities, from a sender called `sender_name`.
pub fn plan_text(text: &str, caps: &Capabilities, sender_name: &str) -> TextPlan {
    let whole = || TextPlan { parts: vec![text.to_owned()], full_text: None };
    let Some(limit) = caps.max_text else { return whole() };
    let budget = limit.max - prefix_reserve(limit, sender_name);
    if limit.unit.len(text) <= budget {
        return whole();
    }
    let parts = split_text(text, budget, limit.unit);
    if parts.len() <= MAX_PARTS {
        return TextPlan { parts, full_text: None };
    }
    let fits_a_file = caps.media && caps.max_file_size.is_none_or(|max| text.len() as u64 <= max);
    if fits_a_file {
        let first = first_part(text, budget.saturating_sub(limit.unit.len(IN_FILE)).max(1), limit.unit) + IN_FILE;
        return TextPlan { parts: vec![first], full_text: Some(text.to_owned()) };
    }
    let mut parts = split_text(text, budget.saturating_sub(limit.unit.len(CUT)).max(1), limit.unit);
    parts.truncate(MAX_PARTS);
    if let Some(last) = parts.last_mut() {
        last.push_str(CUT);
    }
    TextPlan { parts, full_text: None }
}

fn first_part(text: &str, budget: usize, unit: TextUnit) -> String {
    let (head, _) = next_part(text, budget, unit);
    head.to_owned()
}

/// Splits `text` into parts of at most `max` (in `unit`), at a paragraph break if one
/// leaves the part at least half full, else at a line break, else between words, else
/// between characters (never inside one, nor before a joiner, variation selector, skin
/// tone or combining mark). The whitespace at a break is dropped; nothing else is.
pub fn split_text(text: &str, max: usize, unit: TextUnit) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (head, tail) = next_part(rest, max.max(1), unit);
        if !head.trim().is_empty() {
            parts.push(head.to_owned());
        }
        rest = tail;
    }
    if parts.is_empty() {
        parts.push(text.to_owned());
    }
    parts
}

/// The next part of `text` and what follows it (the whitespace at the break dropped).
fn next_part(text: &str, max: usize, unit: TextUnit) -> (&str, &str) {
    // The longest prefix within `max`, on a character boundary.
    let mut used = 0;
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        used += unit.cost(c);
        if used > max {
            end = i;
            break;
        }
    }
    if end == text.len() {
        return (text, "");
    }
    if end == 0 {
        // One character over the limit on its own: it goes whole, so the split moves on.
        end = text.chars().next().map_or(text.len(), char::len_utf8);
    }
    let window = &text[..end];
    let half = end / 2;
    let cut = [window.rfind("\n\n"), window.rfind('\n'), window.rfind(char::is_whitespace)]
        .into_iter()
        .flatten()
        .find(|&at| at >= half && at > 0)
        .unwrap_or_else(|| hard_cut(text, end));
    let head = text[..cut].trim_end();
    let tail = text[cut..].trim_start();
    if head.is_empty() {
        // Only whitespace before the cut: take the characters themselves.
        let at = hard_cut(text, end);
        return (&text[..at], &text[at..]);
    }
    (head, tail)
}

/// A character boundary at or before `end` that does not tear a visible character apart
/// (emoji sequences, combining marks); `end` itself if there is none.
fn hard_cut(text: &str, end: usize) -> usize {
    let glued = |c: char| {
        matches!(c, '\u{200d}' | '\u{fe0e}' | '\u{fe0f}' | '\u{20e3}' | '\u{1f3fb}'..='\u{1f3ff}' | '\u{0300}'..='\u{036f}')
            || ('\u{e0020}'..='\u{e007f}').contains(&c)
    };
    let mut at = end;
    // At most a few characters back: a long run of combining marks is cut anyway.
    for _ in 0..16 {
        let next = text[at..].chars().next();
        let prev = text[..at].chars().next_back();
        if !next.is_some_and(glued) && prev != Some('\u{200d}') {
            return at;
        }
        match text[..at].char_indices().next_back() {
            Some((i, _)) if i > 0 => at = i,
            _ => break,
        }
    }
    end
}

/// The emoji without what only varies its look (variation selectors, skin tones).
fn bare(emoji: &str) -> String {
    emoji.chars().filter(|c| !matches!(c, '\u{fe0e}' | '\u{fe0f}' | '\u{1f3fb}'..='\u{1f3ff}')).collect()
}

/// Emoji close in meaning, the nearest first (keys and values bare).
const NEAREST: &[(&[&str], &[&str])] = &[
    (&["😂", "😹", "😆", "🤭"], &["🤣", "😁"]),
    (&["😀", "😃", "😄", "😅", "🙂", "😊", "☺", "😸", "😺"], &["😁", "🥰"]),
    (&["🙁", "☹", "😞", "😔", "😟", "😕", "😥", "😓", "😿"], &["😢", "😭"]),
    (&["😮", "😯", "😲", "😳", "🙀"], &["🤯", "😱"]),
    (&["😦", "😧", "😰"], &["😨", "😱"]),
    (&["😠", "😤", "👿"], &["😡", "🤬"]),
    (&["😑", "😶", "🫤"], &["😐"]),
    (&["🤢"], &["🤮"]),
    (&["😗", "😙", "😚", "😽"], &["😘", "💋"]),
    (&["😻", "🤤"], &["😍"]),
    (&["💤", "😪"], &["😴"]),
    (&["🥳", "🎊", "🎈"], &["🎉"]),
    (&["🙌", "👐"], &["👏"]),
    (&["✅", "✔", "☑", "🆗", "👍"], &["👌", "👍"]),
    (&["🍻", "🥂", "🍷"], &["🍾"]),
    (
        &["💕", "💖", "💗", "💓", "💞", "💝", "♥", "❣", "💙", "💚", "💛", "💜", "🧡", "🖤", "🤍", "🤎", "🩷"],
        &["❤", "💘"],
    ),
    (&["💥", "🌩"], &["⚡"]),
    (&["🤷\u{200d}♀", "🤷\u{200d}♂"], &["🤷"]),
];

/// The reaction a side with `allowed` reactions takes for `emoji`: itself, as the side
/// spells it, or the nearest in meaning. The first of several (space-separated) that maps
/// wins; `None` when nothing is close. An empty emoji (a retraction) always passes.
pub fn nearest_reaction(emoji: &str, allowed: Option<&[&str]>) -> Option<String> {
    let Some(allowed) = allowed else { return Some(emoji.to_owned()) };
    if emoji.trim().is_empty() {
        return Some(String::new());
    }
    let find = |want: &str| allowed.iter().find(|a| bare(a) == want).map(|a| (*a).to_owned());
    emoji.split_whitespace().find_map(|token| {
        let token = bare(token);
        find(&token).or_else(|| {
            NEAREST
                .iter()
                .filter(|(from, _)| from.contains(&token.as_str()))
                .find_map(|(_, to)| to.iter().find_map(|t| find(t)))
        })
    })
}

/// A reaction said as a short text: "😂 to “the start of the message…”", or "😂" alone when
/// the target has no text to quote.
pub fn reaction_text(emoji: &str, quote: Option<&str>) -> String {
    let emoji = emoji.trim();
    let Some(line) = quote.and_then(|q| q.lines().map(str::trim).find(|l| !l.is_empty())) else {
        return format!("reacted {emoji}");
    };
    let mut start: String = line.chars().take(QUOTE_CHARS).collect();
    if start.len() < line.len() {
        // Between words, where there is a break in the second half.
        if let Some(at) = start.rfind(char::is_whitespace).filter(|at| *at >= start.len() / 2) {
            start.truncate(at);
        }
    }
    if start.len() < line.len() || quote.is_some_and(|q| q.trim() != line) {
        start = start.trim_end().to_owned() + "…";
    }
    format!("{emoji} to “{start}”")
}

/// One step to bring a split copy in line with an edited text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditStep {
    /// Edit existing text part `index` (its remote id `target`) to `text`.
    Edit { index: usize, target: String, text: String },
    /// Send text part `index` anew (the new text needs more parts than there were).
    Send { index: usize, text: String },
    /// Delete text part `index` (the new text needs fewer parts).
    Drop { index: usize, target: String },
    /// Delete the old whole-text file (part `part`).
    DropFullText { part: i64, target: String },
    /// Send the whole new text as a file.
    SendFullText { text: String },
}

/// The steps that turn a copy with these text parts (by index, remote id) and whole-text
/// file parts (part number, remote id) into `plan`, in the order to take them.
pub fn edit_steps(old_text: &[(usize, String)], old_full: &[(i64, String)], plan: &TextPlan) -> Vec<EditStep> {
    let mut steps = Vec::new();
    for (i, text) in plan.parts.iter().enumerate() {
        match old_text.iter().find(|(j, _)| *j == i) {
            Some((_, target)) => steps.push(EditStep::Edit { index: i, target: target.clone(), text: text.clone() }),
            None => steps.push(EditStep::Send { index: i, text: text.clone() }),
        }
    }
    for (j, target) in old_text.iter().filter(|(j, _)| *j >= plan.parts.len()) {
        steps.push(EditStep::Drop { index: *j, target: target.clone() });
    }
    for (part, target) in old_full {
        steps.push(EditStep::DropFullText { part: *part, target: target.clone() });
    }
    if let Some(text) = &plan.full_text {
        steps.push(EditStep::SendFullText { text: text.clone() });
    }
    steps
}

#[cfg(test)]
mod tests;
