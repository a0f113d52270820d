//! libFuzzer entry for the `invite_link` target; the body is fuzz/targets/invite_link.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/invite_link.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
