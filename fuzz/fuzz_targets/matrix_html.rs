//! libFuzzer entry for the `matrix_html` target; the body is fuzz/targets/matrix_html.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/matrix_html.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
