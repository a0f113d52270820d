//! Fuzz target: the vCard parser (contacts shared in a chat, imported keys).

use coi_bridge::coi::vcard;

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for c in vcard::parse(s) {
        let _ = vcard::render(&c);
    }
}
