//! End-to-end encryption around the codec: the bridge's identity key, opening (decrypt, verify, learn keys) inbound mail and sealing outbound mail.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pgp::composed::{SignedPublicKey, SignedSecretKey};
use rand::Rng as _;

use crate::coi::autocrypt::AutocryptHeader;
use crate::coi::crypto::{self, Unlock};
use crate::coi::{ChatMessage, Limits, ParseError, Parsed, parse, pgpmime};
use crate::config::Secret;
use crate::store::keys::{AccountKeyRow, KeyLearned, KeySource};
use crate::store::{ChatKind, Store, StoreError};

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
    /// Costs more bytes, work or time than [`Budget`] allows.
    #[error("over budget: {0}")]
    OverBudget(String),
    /// The decoder panicked on this input (caught; the mail is set aside).
    #[error("the decoder panicked: {0}")]
    Panic(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpenError {
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Parse(e) => e.label(),
            OpenError::NotForUs(_) => "not_for_us",
            OpenError::OverBudget(_) => "over_budget",
            OpenError::Panic(_) => "parser_panic",
            OpenError::Store(_) => "store",
        }
    }
}

/// What opening one inbound mail may cost: MIME limits, decryption limits, and wall time
/// for the CPU-heavy steps (which run on the blocking pool, never on the async workers).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub parse: Limits,
    pub decrypt: crypto::DecryptLimits,
    /// Time one decode step (MIME parse, or decrypt + parse) may take.
    pub step_time: Duration,
    /// Invites older than this are no longer tried as SecureJoin passwords.
    pub invite_max_age: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            parse: Limits::default(),
            decrypt: crypto::DecryptLimits::default(),
            step_time: Duration::from_secs(60),
            invite_max_age: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Runs CPU-heavy decoding on the blocking pool within the time budget. A panic in it is
/// an error for this mail only.
async fn blocking<T: Send + 'static>(
    budget: &Budget,
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OpenError> {
    match tokio::time::timeout(budget.step_time, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let msg = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into()),
                Err(e) => e.to_string(),
            };
            Err(OpenError::Panic(format!("{what}: {msg}")))
        }
        Err(_) => Err(OpenError::OverBudget(format!("{what} took longer than {:?}", budget.step_time))),
    }
}

fn crypto_error(e: crypto::CryptoError) -> OpenError {
    match e {
        crypto::CryptoError::OverBudget(m) => OpenError::OverBudget(m),
        other => OpenError::NotForUs(other.to_string()),
    }
}

/// Opens one inbound mail: decrypts it if it is PGP/MIME, checks the signature against
/// the sender's key, learns keys from Autocrypt and (for a group member's verified group
/// mail) gossip.
///
/// Trust rules (docs/SECURITY.md): nothing is attributed to our own address unless our
/// own key signed it; a key on record is never replaced by another one silently (the
/// store flags the change); gossip only comes from a member's signed group mail and only
/// for that mail's recipients.
pub async fn open(
    raw: Arc<Vec<u8>>,
    id: &Arc<Identity>,
    store: &dyn Store,
    budget: &Budget,
) -> Result<Opened, OpenError> {
    let limits = budget.parse;
    let outer_raw = raw.clone();
    let (payload, outer) = blocking(budget, "MIME parse", move || {
        let payload = pgpmime::encrypted_payload(&outer_raw);
        (payload, parse(&outer_raw, &limits))
    })
    .await?;
    let Some(payload) = payload else {
        let Parsed { message, problems } = outer?;
        return Ok(Opened { message, problems, trust: Trust::Plain, key_events: Vec::new() });
    };
    let payload = Arc::new(payload);
    // The outer From names who we expect to have signed; its stored key is the candidate.
    let outer = outer.ok().map(|p| p.message);
    let outer_from = outer.as_ref().map(|m| m.from.addr.clone());
    let stored = match &outer_from {
        Some(a) if *a == id.addr => None,
        Some(a) => store.contact_key(a).await?,
        None => None,
    };
    // Our own key is always a candidate: mail from our address must carry its signature.
    let mut candidates: Vec<SignedPublicKey> =
        stored.as_ref().and_then(|k| crypto::public_from_bytes(&k.public_key).ok()).into_iter().collect();
    candidates.push(id.public.clone());

    // Passwords of our live invites (we are the inviter), then of the invites we are
    // joining through (we are the joiner).
    let since = chrono::Utc::now().timestamp() - budget.invite_max_age.as_secs() as i64;
    let ours =
        store.live_invites(since).await?.into_iter().map(|i| format!("securejoin/{}/{}", id.fingerprint, i.auth));
    let theirs = store.open_joins().await?.into_iter().map(|j| format!("securejoin/{}/{}", j.inviter_fpr, j.auth));
    let passwords: Vec<String> = ours.chain(theirs).collect();

    let (decrypted, message, problems, invite_auth) = {
        let (idc, payload, cands, pws, dl) =
            (id.clone(), payload.clone(), candidates.clone(), passwords.clone(), budget.decrypt);
        let opened = blocking(budget, "decrypt", move || {
            let (d, pw) =
                crypto::open(&payload, Some((&idc.secret, idc.unlock())), &pws, &cands, &dl).map_err(crypto_error)?;
            let parsed = parse(&d.plain, &limits)?;
            Ok::<_, OpenError>((d, parsed, pw.and_then(|i| pws.get(i).cloned())))
        })
        .await??;
        let (d, p, pw) = opened;
        (d, p.message, p.problems, pw)
    };
    let mut message = message;
    // The post-message mark is only on the outside.
    message.is_post_message |= outer.as_ref().is_some_and(|m| m.is_post_message);
    let from = message.from.addr.clone();
    let mut key_events = Vec::new();
    let from_me = from == id.addr;

    // Signed by the key on record (our own, for mail from our address)?
    let mut signer = if from_me {
        decrypted.signers.contains(&id.fingerprint).then(|| id.fingerprint.clone())
    } else {
        stored
            .as_ref()
            .filter(|k| k.addr == from && decrypted.signers.contains(&k.fingerprint))
            .map(|k| k.fingerprint.clone())
    };
    // Else by the key in the inner Autocrypt header (first contact)? Never for our own
    // address, and a key on record is not replaced by it (the store flags the change).
    if signer.is_none()
        && !from_me
        && let Some(ac) = message.autocrypt.as_ref().filter(|ac| ac.addr == from)
        && let Ok(key) = crypto::public_from_bytes(&ac.keydata)
    {
        let (idc, payload, pws, dl, k2) = (id.clone(), payload.clone(), passwords.clone(), budget.decrypt, key.clone());
        let again = blocking(budget, "verify", move || {
            crypto::open(&payload, Some((&idc.secret, idc.unlock())), &pws, std::slice::from_ref(&k2), &dl)
        })
        .await?;
        let fpr = crypto::fingerprint(&key);
        if again.is_ok_and(|(d, _)| d.signers.contains(&fpr)) {
            let learned = store.learn_contact_key(&from, &fpr, &ac.keydata, KeySource::Autocrypt, false).await?;
            if matches!(learned, KeyLearned::New | KeyLearned::Same) {
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
    let gossip = std::mem::take(&mut message.gossip);
    if let Trust::Verified { .. } = trust
        && gossip_allowed(&message, &from, store).await?
    {
        let recipients: Vec<&str> = message.to.iter().chain(&message.cc).map(|m| m.addr.as_str()).collect();
        for g in gossip {
            if g.addr == id.addr || g.addr == from || !recipients.contains(&g.addr.as_str()) {
                continue;
            }
            if let Ok(key) = crypto::public_from_bytes(&g.keydata) {
                let learned = store
                    .learn_contact_key(&g.addr, &crypto::fingerprint(&key), &g.keydata, KeySource::Gossip, false)
                    .await?;
                key_events.push((g.addr.clone(), learned));
            }
        }
    }
    Ok(Opened { message, problems, trust, key_events })
}

/// Gossip counts only in group mail from someone who is (or, for a group new to us,
/// starts out as) a member of that group; never in 1:1 mail.
async fn gossip_allowed(msg: &ChatMessage, from: &str, store: &dyn Store) -> Result<bool, StoreError> {
    let Some(group) = &msg.group else { return Ok(false) };
    Ok(match store.find_chat(ChatKind::Group, &group.id).await? {
        Some(chat) => chat.members.iter().any(|m| m == from),
        None => true,
    })
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
