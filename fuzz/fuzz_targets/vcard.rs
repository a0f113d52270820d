//! Fuzz target: the vCard parser (contacts shared in a chat, imported keys).
#![no_main]

use coi_bridge::coi::vcard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for c in vcard::parse(s) {
        let _ = vcard::render(&c);
    }
});
