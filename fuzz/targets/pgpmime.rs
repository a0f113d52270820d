//! Fuzz target: `pgpmime::encrypted_payload`, which finds the armored payload of a PGP/MIME mail.

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let _ = coi_bridge::coi::pgpmime::encrypted_payload(data);
}
