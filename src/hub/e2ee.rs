//! End-to-end encryption around the codec: the bridge's identity key, opening (decrypt, verify, learn keys) inbound mail and sealing outbound mail.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use pgp::composed::{SignedPublicKey, SignedSecretKey};
use rand::Rng as _;

use crate::coi::autocrypt::AutocryptHeader;
use crate::coi::crypto::{self, Unlock};
use crate::coi::{ChatMessage, Limits, ParseError, Parsed, parse, pgpmime};
use crate::config::Secret;
use crate::store::keys::{AccountKeyRow, KeyLearned, KeySource};
use crate::store::{Store, StoreError};

/// The bridge identity: its address and OpenPGP key.
pub struct Identity {
    pub addr: String,
    secret: SignedSecretKey,
    pub public: SignedPublicKey,
    pub fingerprint: String,
    passphrase: Option<Secret>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("addr", &self.addr)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the key from the store, creating it on first start. A protected key needs
    /// its passphrase; a wrong one is an error here, not at the first message.
    pub async fn load_or_create(store: &dyn Store, addr: &str, passphrase: Option<Secret>) -> anyhow::Result<Self> {
        let addr = addr.to_lowercase();
        let row = match store.account_key().await? {
            Some(row) => row,
            None => {
                let secret = crypto::generate(&addr, passphrase.as_ref().map(Secret::expose))?;
                let public = crypto::public(&secret);
                let row = AccountKeyRow {
                    fingerprint: crypto::fingerprint(&public),
                    public_key: crypto::public_to_bytes(&public),
                    secret_key: crypto::secret_to_bytes(&secret),
                    protected: passphrase.is_some(),
                    created_at: chrono::Utc::now().timestamp(),
                };
                let kept = store.init_account_key(&row).await?;
                if kept.fingerprint == row.fingerprint {
                    tracing::info!(fingerprint = %row.fingerprint, protected = row.protected, "created the bridge's OpenPGP key");
                }
                kept
            }
        };
        if row.protected && passphrase.is_none() {
            bail!(
                "account.key_passphrase_file: the bridge's key is protected by a passphrase; set account.key_passphrase_file \
                 or env COI_BRIDGE__ACCOUNT__KEY_PASSPHRASE"
            );
        }
        let secret = crypto::secret_from_bytes(&row.secret_key).context("the stored bridge key is damaged")?;
        let public = crypto::public(&secret);
        let id = Self {
            addr,
            fingerprint: crypto::fingerprint(&public),
            secret,
            public,
            passphrase: passphrase.filter(|_| row.protected),
        };
        // Prove the passphrase now: sign and open a message to ourselves.
        let probe = crypto::encrypt(b"probe", std::slice::from_ref(&id.public), &id.secret, id.unlock())
            .and_then(|a| crypto::decrypt(a.as_bytes(), Unlock::Key(&id.secret, id.unlock()), &[]))
            .map_err(|e| {
                anyhow::anyhow!("account.key_passphrase_file: the passphrase does not unlock the bridge's key ({e})")
            })?;
        debug_assert_eq!(probe.plain, b"probe");
        Ok(id)
    }

    fn unlock(&self) -> Option<&str> {
        self.passphrase.as_ref().map(Secret::expose)
    }

    /// Our Autocrypt header.
    pub fn autocrypt(&self) -> AutocryptHeader {
        AutocryptHeader { addr: self.addr.clone(), prefer_mutual: true, keydata: crypto::public_to_bytes(&self.public) }
    }

    /// Signs and encrypts `msg` to `recipients` and ourselves, as a PGP/MIME mail. The
    /// outer Date is randomised over the last 6 days, as Delta Chat does.
    pub fn seal(&self, msg: &ChatMessage, recipients: &[SignedPublicKey]) -> Result<Vec<u8>, crypto::CryptoError> {
        let now = chrono::Utc::now().timestamp();
        let outer_date = now - rand::rng().random_range(0..6 * 24 * 3600);
        let inner = pgpmime::inner_part(msg, outer_date);
        let mut keys = recipients.to_vec();
        keys.push(self.public.clone());
        let armored = crypto::encrypt(&inner, &keys, &self.secret, self.unlock())?;
        Ok(pgpmime::outer_mail(msg, outer_date, &armored))
    }

    /// Encrypts a SecureJoin v3 step with the invite's password; signed by us unless it is
    /// the joiner's first step, which must not reveal our key.
    pub fn seal_with_password(
        &self,
        msg: &ChatMessage,
        password: &str,
        sign: bool,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        let now = chrono::Utc::now().timestamp();
        let outer_date = now - rand::rng().random_range(0..6 * 24 * 3600);
        let inner = pgpmime::inner_part(msg, outer_date);
        let signer = sign.then(|| (&self.secret, self.unlock()));
        let armored = crypto::encrypt_with_password(&inner, password, signer)?;
        Ok(pgpmime::outer_mail(msg, outer_date, &armored))
    }
}

/// How far an inbound message can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Not encrypted.
    Plain,
    /// Encrypted to us, but not signed by the key we hold (or learned) for its sender.
    Unverified,
    /// Encrypted to us and signed by the sender's key.
    Verified { fingerprint: String },
    /// Opened with a SecureJoin invite's password (the `auth` secret).
    Invite { auth: String, signer: Option<String> },
}

/// An inbound mail, opened.
#[derive(Debug)]
pub struct Opened {
    pub message: ChatMessage,
    pub problems: Vec<crate::coi::Problem>,
    pub trust: Trust,
    /// What happened to keys this mail carried, for the log.
    pub key_events: Vec<(String, KeyLearned)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Encrypted, but not to our key nor with a password we handed out.
    #[error("encrypted to another key: {0}")]
    NotForUs(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpenError {
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Parse(e) => e.label(),
            OpenError::NotForUs(_) => "not_for_us",
            OpenError::Store(_) => "store",
        }
    }
}

/// Opens one inbound mail: decrypts it if it is PGP/MIME, checks the signature against
/// the sender's key, learns keys from Autocrypt and (for verified mail) gossip.
pub async fn open(raw: &[u8], id: &Identity, store: &dyn Store, limits: &Limits) -> Result<Opened, OpenError> {
    let Some(payload) = pgpmime::encrypted_payload(raw) else {
        let Parsed { message, problems } = parse(raw, limits)?;
        return Ok(Opened { message, problems, trust: Trust::Plain, key_events: Vec::new() });
    };
    // The outer From names who we expect to have signed; its stored key is the candidate.
    let outer = parse(raw, limits).ok().map(|p| p.message);
    let outer_from = outer.as_ref().map(|m| m.from.addr.clone());
    let stored = match &outer_from {
        Some(a) => store.contact_key(a).await?,
        None => None,
    };
    let stored_key = stored.as_ref().and_then(|k| crypto::public_from_bytes(&k.public_key).ok());
    let candidates: Vec<SignedPublicKey> = stored_key.iter().cloned().collect();

    let (decrypted, invite_auth) = match crypto::decrypt(&payload, Unlock::Key(&id.secret, id.unlock()), &candidates) {
        Ok(d) => (d, None),
        Err(key_err) => {
            let mut opened = None;
            // Passwords of our invites (we are the inviter), then of the invites we are
            // joining through (we are the joiner).
            let ours = store.invites().await?.into_iter().map(|i| (id.fingerprint.clone(), i.auth));
            let theirs = store.open_joins().await?.into_iter().map(|j| (j.inviter_fpr, j.auth));
            for (fpr, auth) in ours.chain(theirs) {
                let pw = format!("securejoin/{fpr}/{auth}");
                if let Ok(d) = crypto::decrypt(&payload, Unlock::Password(&pw), &candidates) {
                    opened = Some((d, Some(pw)));
                    break;
                }
            }
            opened.ok_or_else(|| OpenError::NotForUs(key_err.to_string()))?
        }
    };
    let Parsed { mut message, problems } = parse(&decrypted.plain, limits)?;
    // The post-message mark is only on the outside.
    message.is_post_message |= outer.as_ref().is_some_and(|m| m.is_post_message);
    let from = message.from.addr.clone();
    let mut key_events = Vec::new();

    // Signed by the key on record?
    let mut signer = stored
        .as_ref()
        .filter(|k| k.addr == from && decrypted.signers.contains(&k.fingerprint))
        .map(|k| k.fingerprint.clone());

    // Else by the key in the inner Autocrypt header (first contact, or a key change)?
    if signer.is_none()
        && let Some(ac) = message.autocrypt.as_ref().filter(|ac| ac.addr == from)
        && let Ok(key) = crypto::public_from_bytes(&ac.keydata)
    {
        let again = if let Some(pw) = &invite_auth {
            crypto::decrypt(&payload, Unlock::Password(pw), std::slice::from_ref(&key))
        } else {
            crypto::decrypt(&payload, Unlock::Key(&id.secret, id.unlock()), std::slice::from_ref(&key))
        };
        let fpr = crypto::fingerprint(&key);
        if again.is_ok_and(|d| d.signers.contains(&fpr)) {
            let learned = store.learn_contact_key(&from, &fpr, &ac.keydata, KeySource::Autocrypt, false).await?;
            if !matches!(learned, KeyLearned::Flagged { .. }) {
                signer = Some(fpr);
            }
            key_events.push((from.clone(), learned));
        }
    }

    // A signature that names its intended recipients must name us.
    if !decrypted.intended_recipients.is_empty() && !decrypted.intended_recipients.contains(&id.fingerprint) {
        signer = None;
    }

    let trust = match (invite_auth, signer) {
        (Some(password), signer) => {
            let auth = password.rsplit('/').next().unwrap_or_default().to_owned();
            Trust::Invite { auth, signer }
        }
        (None, Some(fingerprint)) => Trust::Verified { fingerprint },
        (None, None) => Trust::Unverified,
    };
    if let Trust::Verified { .. } = trust {
        for g in std::mem::take(&mut message.gossip) {
            if g.addr == id.addr || g.addr == from {
                continue;
            }
            if let Ok(key) = crypto::public_from_bytes(&g.keydata) {
                let learned = store
                    .learn_contact_key(&g.addr, &crypto::fingerprint(&key), &g.keydata, KeySource::Gossip, false)
                    .await?;
                key_events.push((g.addr.clone(), learned));
            }
        }
    } else {
        message.gossip.clear();
    }
    Ok(Opened { message, problems, trust, key_events })
}

/// Keys for every recipient, or the addresses that have none.
pub async fn recipient_keys(
    store: &dyn Store,
    recipients: &[String],
) -> Result<Result<Vec<SignedPublicKey>, Vec<String>>, StoreError> {
    let mut keys = Vec::new();
    let mut missing = Vec::new();
    for r in recipients {
        match store.contact_key(r).await?.and_then(|k| crypto::public_from_bytes(&k.public_key).ok()) {
            Some(k) if crypto::can_encrypt_to(&k) => keys.push(k),
            _ => missing.push(r.clone()),
        }
    }
    Ok(if missing.is_empty() { Ok(keys) } else { Err(missing) })
}

/// Shared handle.
pub type SharedIdentity = Arc<Identity>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn protected_keys_need_the_right_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).await.expect("store");
        let id = Identity::load_or_create(&store, "B@x.org", Some(Secret::new("pw1"))).await.expect("created");
        assert_eq!(id.addr, "b@x.org");
        let again = Identity::load_or_create(&store, "b@x.org", Some(Secret::new("pw1"))).await.expect("loaded");
        assert_eq!(id.fingerprint, again.fingerprint, "the key is created once and kept");
        let err = Identity::load_or_create(&store, "b@x.org", None).await.expect_err("needs the passphrase");
        assert!(format!("{err:#}").contains("account.key_passphrase_file"), "{err:#}");
        let err = Identity::load_or_create(&store, "b@x.org", Some(Secret::new("nope"))).await.expect_err("wrong one");
        assert!(format!("{err:#}").contains("does not unlock"), "{err:#}");
        assert!(!format!("{id:?}").contains("pw1"));
    }

    #[tokio::test]
    async fn an_unprotected_key_ignores_a_passphrase_given_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).await.expect("store");
        let id = Identity::load_or_create(&store, "b@x.org", None).await.expect("created");
        let again = Identity::load_or_create(&store, "b@x.org", Some(Secret::new("late"))).await.expect("loaded");
        assert_eq!(id.fingerprint, again.fingerprint);
    }
}
