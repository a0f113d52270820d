//! Fuzz target: `coi::parse::parse` on arbitrary mail bytes (the bridge's address is public).
#![no_main]

use coi_bridge::coi::{Limits, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, &Limits::default());
});
