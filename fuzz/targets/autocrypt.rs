//! Fuzz target: the Autocrypt / Autocrypt-Gossip header parser.

use coi_bridge::coi::autocrypt::AutocryptHeader;

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(h) = AutocryptHeader::parse(s) {
        assert_eq!(AutocryptHeader::parse(&h.render()).as_ref(), Some(&h), "render/parse round trip");
    }
}
