//! libFuzzer entry for the `parse` target; the body is fuzz/targets/parse.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/parse.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
