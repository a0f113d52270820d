//! libFuzzer entry for the `parse` target; the body is fuzz/targets/parse.rs (also replayed by tests/it/fuzz_smoke.rs).
#![no_main]

#[path = "../targets/parse.rs"]
mod target;

use std::sync::Once;

/// The one dependency assertion release builds skip: mail-parser 0.11.9's
/// `debug_assert!(false, "Invalid part ID, could not find multipart.")`. cargo-fuzz
/// compiles every crate with `-Cdebug-assertions`, where the daemon's builds have it off
/// for mail-parser (Cargo.toml, `profile.dev.package.mail-parser`; release never has it).
/// Every other panic still aborts through libFuzzer's hook and is reported.
fn is_mail_parser_debug_assert(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let at_it = info
        .location()
        .is_some_and(|l| l.file().contains("mail-parser-0.11.9") && l.file().ends_with("parsers/message.rs"));
    let said = info.payload().downcast_ref::<&str>().copied().or(info.payload().downcast_ref::<String>().map(String::as_str));
    at_it && said == Some("Invalid part ID, could not find multipart.")
}

static HOOK: Once = Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !is_mail_parser_debug_assert(info) {
                libfuzzer_hook(info);
            }
        }));
    });
    if std::panic::catch_unwind(|| target::run(data)).is_err() {
        // Only the assertion above unwinds this far; anything else aborted in the hook.
    }
});
