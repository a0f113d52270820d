//! OpenPGP for chat mail with rPGP, as Delta Chat core does it: the bridge's key, sign+encrypt, decrypt+verify, and password encryption for SecureJoin. No I/O.

use std::io::Cursor;

use std::io::Read as _;

use pgp::composed::{
    Deserializable as _, EncryptionCaps, Esk, KeyType, Message, MessageBuilder, SecretKeyParamsBuilder,
    SignedPublicKey, SignedPublicSubKey, SignedSecretKey, SubkeyParamsBuilder, SubpacketConfig,
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
    /// The message asks for more work or memory than [`DecryptLimits`] allow.
    #[error("over budget: {0}")]
    OverBudget(String),
}

/// What decrypting one hostile message may cost at most. The sender chooses the packet
/// counts, the string-to-key parameters and the compression ratio, so each is capped
/// before any work is done (see docs/SECURITY.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecryptLimits {
    /// Plaintext bytes after decompression; more and the message is refused.
    pub max_plain_bytes: u64,
    /// Public-key packets (one per recipient; each costs an ECDH with our key).
    pub max_pkesk: usize,
    /// Symmetric-key (password) packets. Delta Chat sends one.
    pub max_skesk: usize,
    /// Argon2 memory per derivation, in KiB.
    pub max_argon2_kib: u64,
    /// Argon2 passes per derivation.
    pub max_argon2_passes: u8,
    /// Iterated-and-salted S2K: bytes hashed per derivation.
    pub max_iterated_bytes: u64,
    /// Password derivations in all (symmetric packets times passwords tried).
    pub max_derivations: usize,
    /// Passwords (SecureJoin invite secrets) are tried only on messages up to this size;
    /// larger ones only with our key. SecureJoin steps are a few KiB.
    pub max_password_message_bytes: u64,
}

impl Default for DecryptLimits {
    fn default() -> Self {
        Self {
            max_plain_bytes: 64 * 1024 * 1024,
            max_pkesk: 1024,
            max_skesk: 4,
            max_argon2_kib: 64 * 1024,
            max_argon2_passes: 4,
            max_iterated_bytes: 16 * 1024 * 1024,
            max_derivations: 4096,
            max_password_message_bytes: 1024 * 1024,
        }
    }
}

impl DecryptLimits {
    /// Refuses a message whose key packets cost more than the limits allow to try with
    /// `passwords` passwords.
    fn check_esk(&self, esk: &[Esk], passwords: usize) -> Result<()> {
        let over = |m: String| Err(CryptoError::OverBudget(m));
        let pkesk = esk.iter().filter(|e| matches!(e, Esk::PublicKeyEncryptedSessionKey(_))).count();
        if pkesk > self.max_pkesk {
            return over(format!("{pkesk} public-key packets (limit {})", self.max_pkesk));
        }
        let skesks: Vec<_> = esk
            .iter()
            .filter_map(|e| match e {
                Esk::SymKeyEncryptedSessionKey(k) => Some(k),
                Esk::PublicKeyEncryptedSessionKey(_) => None,
            })
            .collect();
        if skesks.is_empty() || passwords == 0 {
            return Ok(());
        }
        if skesks.len() > self.max_skesk {
            return over(format!("{} symmetric-key packets (limit {})", skesks.len(), self.max_skesk));
        }
        let mut argon2 = 0usize;
        for k in &skesks {
            match k.s2k() {
                Some(StringToKey::Argon2 { t, p, m_enc, .. }) => {
                    let kib = 1u64.checked_shl(u32::from(*m_enc)).unwrap_or(u64::MAX);
                    if kib > self.max_argon2_kib || *t > self.max_argon2_passes || *p == 0 || *p > 16 {
                        return over(format!(
                            "Argon2 string-to-key asks {kib} KiB, {t} passes, {p} lanes (limits {} KiB, {} passes)",
                            self.max_argon2_kib, self.max_argon2_passes
                        ));
                    }
                    argon2 += 1;
                }
                Some(StringToKey::IteratedAndSalted { count, .. }) => {
                    let bytes = decode_s2k_count(*count);
                    if bytes > self.max_iterated_bytes {
                        return over(format!(
                            "iterated string-to-key hashes {bytes} bytes (limit {})",
                            self.max_iterated_bytes
                        ));
                    }
                }
                _ => {}
            }
        }
        let derivations = skesks.len().saturating_mul(passwords);
        // An Argon2 derivation costs up to max_argon2_kib of memory and time: allow few.
        if derivations > self.max_derivations || argon2.saturating_mul(passwords) > 16 {
            return over(format!(
                "{} symmetric-key packets ({argon2} Argon2) times {passwords} live invites is too many derivations",
                skesks.len()
            ));
        }
        Ok(())
    }
}

/// RFC 9580 §3.7.1.3: the coded iteration count as bytes to hash.
fn decode_s2k_count(coded: u8) -> u64 {
    (16u64 + u64::from(coded & 15)) << (u32::from(coded >> 4) + 6)
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

/// Decrypts an armored message and checks its signature against `candidates`, with the
/// default [`DecryptLimits`].
pub fn decrypt(armored: &[u8], unlock: Unlock<'_>, candidates: &[SignedPublicKey]) -> Result<Decrypted> {
    let (key, passwords) = match unlock {
        Unlock::Key(k, pw) => (Some((k, pw)), Vec::new()),
        Unlock::Password(p) => (None, vec![p.to_owned()]),
    };
    open(armored, key, &passwords, candidates, &DecryptLimits::default()).map(|(d, _)| d)
}

/// Decrypts an armored message with our key or any of `passwords` (whichever opens it),
/// within `limits`, and checks its signature against `candidates`. Returns which
/// password opened it (`None`: our key).
///
/// Passwords are tried one at a time (a v4 password packet without an encrypted session
/// key "opens" with any password and only the data tells), and only for messages up to
/// [`DecryptLimits::max_password_message_bytes`].
pub fn open(
    armored: &[u8],
    key: Option<(&SignedSecretKey, Option<&str>)>,
    passwords: &[String],
    candidates: &[SignedPublicKey],
    limits: &DecryptLimits,
) -> Result<(Decrypted, Option<usize>)> {
    let derr = |e: pgp::errors::Error| CryptoError::Decrypt(e.to_string());
    let mut binary = Vec::new();
    // The armored input is bounded by the mail's size limit; its binary is smaller.
    pgp::armor::Dearmor::new(Cursor::new(armored))
        .read_to_end(&mut binary)
        .map_err(|e| CryptoError::Decrypt(format!("armor: {e}")))?;
    let parse = || Message::from_bytes(Cursor::new(binary.as_slice())).map_err(derr);
    let passwords = if binary.len() as u64 > limits.max_password_message_bytes { &[][..] } else { passwords };
    if let Message::Encrypted { esk, .. } = &parse()? {
        limits.check_esk(esk, passwords.len())?;
    }
    let mut last_err = None;
    if let Some((k, pw)) = key {
        match parse()?.decrypt(&unlock_pw(pw), k).map_err(derr).and_then(|m| read_verified(m, candidates, limits)) {
            Ok(d) => return Ok((d, None)),
            Err(e @ CryptoError::OverBudget(_)) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    for (i, pw) in passwords.iter().enumerate() {
        let opened = parse()?
            .decrypt_with_password(&Password::from(pw.as_str()))
            .map_err(derr)
            .and_then(|m| read_verified(m, candidates, limits));
        match opened {
            Ok(d) => return Ok((d, Some(i))),
            Err(e @ CryptoError::OverBudget(_)) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| CryptoError::Decrypt("no key or password to try".into())))
}

/// Reads a decrypted message within the plaintext budget and checks its signature.
fn read_verified(mut msg: Message<'_>, candidates: &[SignedPublicKey], limits: &DecryptLimits) -> Result<Decrypted> {
    if msg.is_compressed() {
        msg = msg.decompress().map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    }
    // Streamed and cut at the budget: a compression bomb never reaches memory.
    let mut plain = Vec::new();
    (&mut msg)
        .take(limits.max_plain_bytes.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    if plain.len() as u64 > limits.max_plain_bytes {
        return Err(CryptoError::OverBudget(format!(
            "decompresses to more than {} bytes (limit)",
            limits.max_plain_bytes
        )));
    }
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

    #[test]
    fn budgets_refuse_bombs_and_floods_of_password_packets() {
        let a = key("a@x.org");
        let pa = public(&a);
        // Zeros compress well: 1 MiB of plaintext in a small message.
        let armored = encrypt(&vec![0u8; 1 << 20], std::slice::from_ref(&pa), &a, None).expect("encrypt");
        assert!(armored.len() < 64 * 1024);
        let tight = DecryptLimits { max_plain_bytes: 1000, ..Default::default() };
        let err = open(armored.as_bytes(), Some((&a, None)), &[], std::slice::from_ref(&pa), &tight)
            .expect_err("over the plaintext budget");
        assert!(matches!(err, CryptoError::OverBudget(_)), "{err}");
        let roomy = DecryptLimits { max_plain_bytes: 1 << 20, ..Default::default() };
        let (d, pw) = open(armored.as_bytes(), Some((&a, None)), &[], std::slice::from_ref(&pa), &roomy)
            .expect("exactly at the budget");
        assert_eq!((d.plain.len(), pw), (1 << 20, None));

        // Five password packets: over the limit of four, refused before any is tried.
        let mut rng = rand_08::thread_rng();
        let mut b = MessageBuilder::from_bytes("", b"x".to_vec()).seipd_v2(
            &mut rng,
            SYMMETRIC,
            AeadAlgorithm::Ocb,
            ChunkSize::C8KiB,
        );
        for i in 0..5 {
            let s2k = StringToKey::Salted { hash_alg: HashAlgorithm::Sha256, salt: [i; 8] };
            b.encrypt_with_password(&mut rng, s2k, &Password::from(format!("pw{i}").as_str())).expect("skesk");
        }
        let flood = b.to_armored_string(&mut rng, Default::default()).expect("armor");
        let err = open(flood.as_bytes(), None, &["pw1".into()], &[], &DecryptLimits::default())
            .expect_err("too many password packets");
        assert!(err.to_string().contains("5 symmetric-key packets"), "{err}");
        let many = DecryptLimits { max_skesk: 8, ..Default::default() };
        let (d, pw) = open(flood.as_bytes(), None, &["nope".into(), "pw3".into()], &[], &many).expect("opens");
        assert_eq!((d.plain.as_slice(), pw), (b"x".as_slice(), Some(1)), "the second password opened it");
        // The cost of trying many invites' passwords is capped as a whole.
        let few = DecryptLimits { max_skesk: 8, max_derivations: 9, ..Default::default() };
        let pws: Vec<String> = (0..2).map(|i| format!("p{i}")).collect();
        assert!(matches!(open(flood.as_bytes(), None, &pws, &[], &few), Err(CryptoError::OverBudget(_))));
    }

    #[test]
    fn iterated_s2k_counts_decode_as_rfc_9580_says() {
        assert_eq!(decode_s2k_count(0), 1024);
        assert_eq!(decode_s2k_count(96), 65536);
        assert_eq!(decode_s2k_count(255), 65_011_712);
    }
}
