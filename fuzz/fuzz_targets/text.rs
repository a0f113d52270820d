//! libFuzzer entry for the `text` target; the body is fuzz/targets/text.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/text.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
