//! Fuzz target: the Matrix `formatted_body` HTML → text converter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = coi_bridge_matrix::html::to_text(s);
});
