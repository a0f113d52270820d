//! Fuzz target: `pgpmime::encrypted_payload`, which finds the armored payload of a PGP/MIME mail.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coi_bridge::coi::pgpmime::encrypted_payload(data);
});
