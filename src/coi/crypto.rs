//! OpenPGP for chat mail with rPGP, as Delta Chat core does it: the bridge's key, sign+encrypt, decrypt+verify, and password encryption for SecureJoin. No I/O.

use std::io::Cursor;

use pgp::composed::{
    Deserializable as _, EncryptionCaps, KeyType, Message, MessageBuilder, SecretKeyParamsBuilder, SignedPublicKey,
    SignedPublicSubKey, SignedSecretKey, SubkeyParamsBuilder, SubpacketConfig,
};
use pgp::crypto::aead::{AeadAlgorithm, ChunkSize};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{Subpacket, SubpacketData};
use pgp::ser::Serialize as _;
use pgp::types::{CompressionAlgorithm, KeyDetails as _, Password, StringToKey, Timestamp};
use rand_08::Rng as _;

/// What went wrong in the OpenPGP layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not a usable OpenPGP key: {0}")]
    BadKey(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

type Result<T> = std::result::Result<T, CryptoError>;

const SYMMETRIC: SymmetricKeyAlgorithm = SymmetricKeyAlgorithm::AES128;

/// The passphrase that unlocks a secret key, if it is locked.
fn unlock_pw(passphrase: Option<&str>) -> Password {
    passphrase.map_or_else(Password::empty, Password::from)
}

/// The upper-case hex v4 fingerprint of a key.
pub fn fingerprint(key: &SignedPublicKey) -> String {
    format!("{:X}", key.fingerprint())
}

/// A new Ed25519 primary key (certify + sign) with a Cv25519 encryption subkey and the
/// user id `<addr>`, advertising SEIPDv2; locked with `passphrase` when one is given.
pub fn generate(addr: &str, passphrase: Option<&str>) -> Result<SignedSecretKey> {
    let bad = |e: &dyn std::fmt::Display| CryptoError::BadKey(e.to_string());
    let subkey = SubkeyParamsBuilder::default()
        .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
        .can_encrypt(EncryptionCaps::All)
        .passphrase(passphrase.map(str::to_owned))
        .build()
        .map_err(|e| bad(&e))?;
    let params = SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .feature_seipd_v2(true)
        .primary_user_id(format!("<{addr}>"))
        .passphrase(passphrase.map(str::to_owned))
        .subkey(subkey)
        .build()
        .map_err(|e| bad(&e))?;
    let key = params.generate(rand_08::thread_rng()).map_err(|e| bad(&e))?;
    key.verify_bindings().map_err(|e| bad(&e))?;
    Ok(key)
}

/// The public half of a secret key.
pub fn public(secret: &SignedSecretKey) -> SignedPublicKey {
    SignedPublicKey::from(secret.clone())
}

pub fn public_to_bytes(key: &SignedPublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

pub fn secret_to_bytes(key: &SignedSecretKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

/// Reads a binary or armored public key and checks its self-signatures.
pub fn public_from_bytes(bytes: &[u8]) -> Result<SignedPublicKey> {
    let key = if bytes.starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(Cursor::new(bytes)).map(|(k, _)| k)
    } else {
        SignedPublicKey::from_bytes(Cursor::new(bytes))
    }
    .map_err(|e| CryptoError::BadKey(e.to_string()))?;
    key.verify_bindings().map_err(|e| CryptoError::BadKey(e.to_string()))?;
    Ok(key)
}

pub fn secret_from_bytes(bytes: &[u8]) -> Result<SignedSecretKey> {
    let key = SignedSecretKey::from_bytes(Cursor::new(bytes)).map_err(|e| CryptoError::BadKey(e.to_string()))?;
    key.verify_bindings().map_err(|e| CryptoError::BadKey(e.to_string()))?;
    Ok(key)
}

/// The armored public key, for `key export-public`.
pub fn public_armored(key: &SignedPublicKey) -> String {
    key.to_armored_string(Default::default()).unwrap_or_default()
}

fn encryption_subkey(key: &SignedPublicKey) -> Option<&SignedPublicSubKey> {
    let now = Timestamp::now().as_secs();
    key.public_subkeys.iter().find(|sk| {
        sk.algorithm().can_encrypt()
            && sk.signatures.first().is_some_and(|sig| {
                sig.key_flags().encrypt_comms()
                    && sig
                        .key_expiration_time()
                        .filter(|d| d.as_secs() != 0)
                        .is_none_or(|d| now <= sk.created_at().as_secs().saturating_add(d.as_secs()))
            })
    })
}

/// Whether messages can be encrypted to this key.
pub fn can_encrypt_to(key: &SignedPublicKey) -> bool {
    encryption_subkey(key).is_some()
}

/// Whether the key advertises SEIPDv2 (AEAD) support.
pub fn supports_seipd_v2(key: &SignedPublicKey) -> bool {
    key.details
        .direct_signatures
        .iter()
        .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()))
        .any(|s| s.features().is_some_and(|f| f.seipd_v2()))
}

/// Signature subpackets: creation time, one Intended Recipient Fingerprint per
/// recipient key, and the issuer.
fn subpackets(signer: &SignedSecretKey, recipients: &[SignedPublicKey]) -> Result<SubpacketConfig> {
    let err = |e: pgp::errors::Error| CryptoError::Encrypt(e.to_string());
    let mut hashed = vec![Subpacket::critical(SubpacketData::SignatureCreationTime(Timestamp::now())).map_err(err)?];
    for key in recipients {
        hashed.push(Subpacket::regular(SubpacketData::IntendedRecipientFingerprint(key.fingerprint())).map_err(err)?);
    }
    hashed.push(Subpacket::regular(SubpacketData::IssuerFingerprint(signer.fingerprint())).map_err(err)?);
    let unhashed = vec![Subpacket::regular(SubpacketData::IssuerKeyId(signer.legacy_key_id())).map_err(err)?];
    Ok(SubpacketConfig::UserDefined { hashed, unhashed })
}

/// Signs and encrypts `plain` to every key in `recipients` (include our own), armored.
/// SEIPDv2 when every recipient advertises it, else v1; anonymous recipient key ids;
/// ZLIB-compressed.
pub fn encrypt(
    plain: &[u8],
    recipients: &[SignedPublicKey],
    signer: &SignedSecretKey,
    passphrase: Option<&str>,
) -> Result<String> {
    let mut rng = rand_08::thread_rng();
    let err = |e: pgp::errors::Error| CryptoError::Encrypt(e.to_string());
    let subkeys: Vec<&SignedPublicSubKey> = recipients
        .iter()
        .map(|k| {
            encryption_subkey(k).ok_or_else(|| CryptoError::Encrypt(format!("key {} cannot encrypt", fingerprint(k))))
        })
        .collect::<Result<_>>()?;
    let subpackets = subpackets(signer, recipients)?;
    let builder = MessageBuilder::from_bytes("", plain.to_vec());
    if recipients.iter().all(supports_seipd_v2) {
        let mut b = builder.seipd_v2(&mut rng, SYMMETRIC, AeadAlgorithm::Ocb, ChunkSize::C8KiB);
        for sk in &subkeys {
            b.encrypt_to_key_anonymous(&mut rng, sk).map_err(err)?;
        }
        b.sign_with_subpackets(&**signer, unlock_pw(passphrase), HashAlgorithm::Sha256, subpackets);
        b.compression(CompressionAlgorithm::ZLIB);
        b.to_armored_string(&mut rng, Default::default()).map_err(err)
    } else {
        let mut b = builder.seipd_v1(&mut rng, SYMMETRIC);
        for sk in &subkeys {
            b.encrypt_to_key_anonymous(&mut rng, sk).map_err(err)?;
        }
        b.sign_with_subpackets(&**signer, unlock_pw(passphrase), HashAlgorithm::Sha256, subpackets);
        b.compression(CompressionAlgorithm::ZLIB);
        b.to_armored_string(&mut rng, Default::default()).map_err(err)
    }
}

/// Encrypts `plain` with a password (SKESK + SEIPDv2), optionally signed: SecureJoin v3's
/// `vc-request-pubkey` and its answer.
pub fn encrypt_with_password(
    plain: &[u8],
    password: &str,
    signer: Option<(&SignedSecretKey, Option<&str>)>,
) -> Result<String> {
    let mut rng = rand_08::thread_rng();
    let err = |e: pgp::errors::Error| CryptoError::Encrypt(e.to_string());
    let mut salt = [0u8; 8];
    rng.fill(&mut salt[..]);
    let s2k = StringToKey::Salted { hash_alg: HashAlgorithm::default(), salt };
    let mut b = MessageBuilder::from_bytes("", plain.to_vec()).seipd_v2(
        &mut rng,
        SYMMETRIC,
        AeadAlgorithm::Ocb,
        ChunkSize::C8KiB,
    );
    b.encrypt_with_password(&mut rng, s2k, &Password::from(password)).map_err(err)?;
    if let Some((key, pw)) = signer {
        b.sign(&**key, unlock_pw(pw), HashAlgorithm::Sha256);
    }
    b.compression(CompressionAlgorithm::ZLIB);
    b.to_armored_string(&mut rng, Default::default()).map_err(err)
}

/// The result of decrypting one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub plain: Vec<u8>,
    /// Fingerprints of the candidate keys whose signature over the message verified.
    pub signers: Vec<String>,
    /// Intended Recipient Fingerprints of the first valid signature.
    pub intended_recipients: Vec<String>,
    /// The message carried a signature at all (valid or not).
    pub signed: bool,
}

/// How to unlock the message.
pub enum Unlock<'a> {
    /// Our secret key and the passphrase that unlocks it, if any.
    Key(&'a SignedSecretKey, Option<&'a str>),
    Password(&'a str),
}

/// Decrypts an armored message and checks its signature against `candidates`.
pub fn decrypt(armored: &[u8], unlock: Unlock<'_>, candidates: &[SignedPublicKey]) -> Result<Decrypted> {
    let derr = |e: pgp::errors::Error| CryptoError::Decrypt(e.to_string());
    let (msg, _) = Message::from_armor(Cursor::new(armored)).map_err(derr)?;
    let mut msg = match unlock {
        Unlock::Key(key, pw) => msg.decrypt(&unlock_pw(pw), key).map_err(derr)?,
        Unlock::Password(p) => msg.decrypt_with_password(&Password::from(p)).map_err(derr)?,
    };
    if msg.is_compressed() {
        msg = msg.decompress().map_err(derr)?;
    }
    let plain = msg.as_data_vec().map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    let signed = msg.is_signed();
    let mut signers = Vec::new();
    let mut intended_recipients = Vec::new();
    if signed {
        for key in candidates {
            if let Ok(sig) = msg.verify(&key.primary_key) {
                if signers.is_empty()
                    && let Some(cfg) = sig.config()
                {
                    for sp in &cfg.hashed_subpackets {
                        if let SubpacketData::IntendedRecipientFingerprint(fp) = &sp.data {
                            intended_recipients.push(format!("{fp:X}"));
                        }
                    }
                }
                signers.push(fingerprint(key));
            }
        }
    }
    Ok(Decrypted { plain, signers, intended_recipients, signed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: &str) -> SignedSecretKey {
        generate(addr, None).expect("keygen")
    }

    #[test]
    fn keys_round_trip_and_have_a_v4_fingerprint() {
        let k = key("bridge@example.org");
        let p = public(&k);
        assert_eq!(fingerprint(&p).len(), 40);
        assert!(can_encrypt_to(&p) && supports_seipd_v2(&p));
        let back = public_from_bytes(&public_to_bytes(&p)).expect("binary");
        assert_eq!(fingerprint(&back), fingerprint(&p));
        let back = public_from_bytes(public_armored(&p).as_bytes()).expect("armored");
        assert_eq!(fingerprint(&back), fingerprint(&p));
        let s = secret_from_bytes(&secret_to_bytes(&k)).expect("secret");
        assert_eq!(fingerprint(&public(&s)), fingerprint(&p));
        assert!(public_from_bytes(b"junk").is_err());
    }

    #[test]
    fn sign_encrypt_decrypt_verify_with_recipients() {
        let (a, b, mallory) = (key("a@x.org"), key("b@x.org"), key("m@x.org"));
        let (pa, pb, pm) = (public(&a), public(&b), public(&mallory));
        let armored = encrypt(b"hello", &[pb.clone(), pa.clone()], &a, None).expect("encrypt");
        let d = decrypt(armored.as_bytes(), Unlock::Key(&b, None), &[pm.clone(), pa.clone()]).expect("decrypt");
        assert_eq!(d.plain, b"hello");
        assert!(d.signed);
        assert_eq!(d.signers, vec![fingerprint(&pa)]);
        assert_eq!(d.intended_recipients, vec![fingerprint(&pb), fingerprint(&pa)]);
        // Mallory was not a recipient.
        assert!(decrypt(armored.as_bytes(), Unlock::Key(&mallory, None), &[]).is_err());
        // Without a's key among the candidates the signature does not count.
        let d = decrypt(armored.as_bytes(), Unlock::Key(&b, None), &[pm]).expect("decrypt");
        assert!(d.signed && d.signers.is_empty());
    }

    /// The PKESK versions of a message: v3 goes with SEIPDv1, v6 with SEIPDv2.
    fn pkesk_versions(armored: &str) -> Vec<String> {
        use pgp::composed::Esk;
        let (msg, _) = Message::from_armor(Cursor::new(armored.as_bytes())).expect("armor");
        match msg {
            Message::Encrypted { esk, .. } => esk
                .iter()
                .map(|e| match e {
                    Esk::PublicKeyEncryptedSessionKey(p) => format!("{:?}", p.version()),
                    Esk::SymKeyEncryptedSessionKey(_) => "skesk".into(),
                })
                .collect(),
            _ => panic!("not encrypted"),
        }
    }

    #[test]
    fn seipd_v2_only_when_every_recipient_supports_it() {
        let me = key("a@x.org");
        let modern = public(&key("b@x.org"));
        // An older client's key: Ed25519/Cv25519 without the SEIPDv2 feature flag.
        let old_secret = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("<old@x.org>".into())
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
                    .can_encrypt(EncryptionCaps::All)
                    .build()
                    .expect("subkey"),
            )
            .build()
            .expect("params")
            .generate(rand_08::thread_rng())
            .expect("keygen");
        let old = public(&old_secret);
        assert!(!supports_seipd_v2(&old));
        let v2 = encrypt(b"x", &[modern.clone(), public(&me)], &me, None).expect("encrypt");
        assert!(pkesk_versions(&v2).iter().all(|v| v.contains('6')), "{:?}", pkesk_versions(&v2));
        let v1 = encrypt(b"x", &[modern, old, public(&me)], &me, None).expect("encrypt");
        assert!(pkesk_versions(&v1).iter().all(|v| v.contains('3')), "{:?}", pkesk_versions(&v1));
        assert_eq!(
            decrypt(v1.as_bytes(), Unlock::Key(&old_secret, None), &[]).expect("old client decrypts").plain,
            b"x"
        );
    }

    #[test]
    fn passphrase_protected_keys_need_the_passphrase() {
        let k = generate("p@x.org", Some("correct horse")).expect("keygen");
        let p = public(&k);
        let good = Some("correct horse");
        let armored = encrypt(b"x", std::slice::from_ref(&p), &k, good).expect("signing with the passphrase");
        assert!(decrypt(armored.as_bytes(), Unlock::Key(&k, Some("wrong")), &[]).is_err());
        assert_eq!(decrypt(armored.as_bytes(), Unlock::Key(&k, good), &[p]).expect("decrypt").plain, b"x");
    }

    #[test]
    fn password_encryption_round_trips() {
        let a = key("a@x.org");
        let armored = encrypt_with_password(b"secret join", "securejoin/FPR/AUTH", Some((&a, None))).expect("encrypt");
        let d = decrypt(armored.as_bytes(), Unlock::Password("securejoin/FPR/AUTH"), &[public(&a)]).expect("decrypt");
        assert_eq!(d.plain, b"secret join");
        assert_eq!(d.signers, vec![fingerprint(&public(&a))]);
        assert!(decrypt(armored.as_bytes(), Unlock::Password("wrong"), &[]).is_err());
    }
}
