//! Fuzz target: decryption of an armored message with a fixed key (and one password, as for
//! a live invite), signature check against that key, within the default decrypt limits.
//! The key (fuzz/keys/fuzz-secret.bin) is a throwaway made for the fuzzer's seeds.

use std::sync::LazyLock;

use coi_bridge::coi::crypto::{self, DecryptLimits};
use pgp::composed::{SignedPublicKey, SignedSecretKey};

static KEY: LazyLock<(SignedSecretKey, SignedPublicKey)> = LazyLock::new(|| {
    let secret = crypto::secret_from_bytes(include_bytes!("../keys/fuzz-secret.bin")).expect("the fuzz key reads");
    let public = crypto::public(&secret);
    (secret, public)
});

/// One input; anything but a panic (or a hang, or unbounded memory) is fine.
pub fn run(data: &[u8]) {
    let (secret, public) = &*KEY;
    let passwords = ["secret".to_owned()];
    let _ =
        crypto::open(data, Some((secret, None)), &passwords, std::slice::from_ref(public), &DecryptLimits::default());
}
