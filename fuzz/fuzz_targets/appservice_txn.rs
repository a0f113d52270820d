//! libFuzzer entry for the `appservice_txn` target; the body is fuzz/targets/appservice_txn.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/appservice_txn.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
