//! libFuzzer entry for the `telegram_update` target; the body is fuzz/targets/telegram_update.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/telegram_update.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
