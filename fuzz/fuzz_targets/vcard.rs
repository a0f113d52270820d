//! libFuzzer entry for the `vcard` target; the body is fuzz/targets/vcard.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/vcard.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
