//! Fuzz target: the Autocrypt / Autocrypt-Gossip header parser.
#![no_main]

use coi_bridge::coi::autocrypt::AutocryptHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(h) = AutocryptHeader::parse(s) {
        assert_eq!(AutocryptHeader::parse(&h.render()).as_ref(), Some(&h), "render/parse round trip");
    }
});
