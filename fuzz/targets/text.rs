//! Fuzz target: the text helpers of the codec (HTML to text, quotes, format=flowed, footers).

use coi_bridge::coi::text::{html_to_text, split_quote, strip_footer, unflow};

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = html_to_text(s);
    let _ = split_quote(s);
    let _ = unflow(s, data.first().is_some_and(|b| b & 1 == 1));
    let _ = strip_footer(s);
}
