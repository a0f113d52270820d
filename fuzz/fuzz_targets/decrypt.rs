//! libFuzzer entry for the `decrypt` target; the body is fuzz/targets/decrypt.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/decrypt.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
