//! libFuzzer entry for the `autocrypt` target; the body is fuzz/targets/autocrypt.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/autocrypt.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
