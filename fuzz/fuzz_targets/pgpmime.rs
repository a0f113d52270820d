//! libFuzzer entry for the `pgpmime` target; the body is fuzz/targets/pgpmime.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/pgpmime.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
