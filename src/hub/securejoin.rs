//! SecureJoin both ways: the bridge hands out invite links and answers joiners (v3 `vc-request-pubkey` first), and joins through other people's links.
//!
//! The steps, as Delta Chat 2.65 speaks them:
//! 1. joiner → us: `vc-request-pubkey`, encrypted with the password
//!    `securejoin/<our fingerprint>/<auth>`, unsigned.
//! 2. us → joiner: `vc-pubkey`, same password, signed, with our Autocrypt header.
//! 3. joiner → us: `vc-request-with-auth` (or `vg-…` for a group), encrypted to our key,
//!    signed, `Secure-Join-Auth` and `Secure-Join-Fingerprint` (the joiner's key).
//! 4. us → joiner: `vc-contact-confirm`, or `vg-member-added` to the whole group; both
//!    gossip the joiner's own key, which Delta Chat requires.

use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use sha2::Digest as _;

use crate::coi::autocrypt::AutocryptHeader;
use crate::coi::securejoin_link::{Invite, InviteGroup};
use crate::coi::{ChatMessage, Group, GroupChange, Mailbox, crypto};
use crate::hub::e2ee::{Identity, Opened, Trust};
use crate::hub::outbound::{Outbound, QueueError};
use crate::store::keys::{InviteRow, JoinRow, KeySource};
use crate::store::migration::{PairedVia, PairingRow};
use crate::store::{ChatKind, ChatRef, Store};

/// What became of an inbound SecureJoin step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not a SecureJoin message: record it as usual.
    NotSecureJoin,
    /// Handled (answered, or ignored with a log line); not a chat message.
    Consumed,
}

pub struct SecureJoin {
    store: Arc<dyn Store>,
    identity: Arc<Identity>,
    outbound: Arc<Outbound>,
    display_name: String,
    /// Bridge id → its network's name, for the migration announcement.
    labels: std::collections::HashMap<String, String>,
    /// The daemon's metrics, for the migration gauges of a group someone moved into.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A reply's Message-ID derived from the request's, so that handling a request twice
/// (after a crash) queues the same reply, which the outbox keeps only once.
fn reply_id(request_id: &str, step: &str) -> String {
    let d = sha2::Sha256::digest(format!("{request_id}\n{step}"));
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}@localhost", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl SecureJoin {
    pub fn new(store: Arc<dyn Store>, identity: Arc<Identity>, outbound: Arc<Outbound>, display_name: &str) -> Self {
        Self {
            store,
            identity,
            outbound,
            display_name: display_name.to_owned(),
            labels: Default::default(),
            metrics: None,
        }
    }

    /// Sets the migration gauges in `metrics` when someone moves (without: at the next sample).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Bridge id → its network's name.
    pub fn labels(&self) -> &std::collections::HashMap<String, String> {
        &self.labels
    }

    /// Names each bridge's network ("Telegram") in what it posts about migration.
    pub fn with_labels(mut self, labels: std::collections::HashMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// A group join just completed through the invite whose auth secret is `auth`: if it
    /// was someone's personal invite, that remote person is `joiner` from now on, and the
    /// portals of the group may have become closable.
    async fn pair_by_invite(&self, auth: &str, joiner: &str, group_id: &str) -> Result<(), QueueError> {
        let Some(invite) = self.store.personal_invite(auth).await? else { return Ok(()) };
        let row = PairingRow {
            bridge: invite.bridge.clone(),
            remote_user: invite.remote_user.clone(),
            address: joiner.to_lowercase(),
            via: PairedVia::Invite,
            paired_at: chrono::Utc::now().timestamp(),
        };
        self.store.pair(&row).await?;
        tracing::info!(bridge = %invite.bridge, user = %invite.remote_user, joiner, "migration: paired through a personal invite");
        let Some(chat) = self.store.find_chat(ChatKind::Group, group_id).await? else { return Ok(()) };
        let gauges = self
            .metrics
            .as_deref()
            .map(|metrics| crate::hub::migration::Gauges { metrics, account: &self.identity.addr });
        crate::hub::migration::announce_if_closable(self.store.as_ref(), &self.outbound, &chat, &self.labels, gauges)
            .await
    }

    /// A new invite link: to a 1:1 chat with the bridge, or to a group (created here if
    /// `group_name` names a new one).
    pub async fn create_invite(&self, group_name: Option<&str>) -> Result<Invite, QueueError> {
        create_invite(self.store.as_ref(), &self.identity, &self.display_name, group_name).await
    }

    /// Answers a SecureJoin step addressed to the bridge as inviter.
    pub async fn handle(&self, opened: &Opened) -> Result<Step, QueueError> {
        let msg = &opened.message;
        let Some(step) = msg.secure_join_header("Secure-Join") else { return Ok(Step::NotSecureJoin) };
        let joiner = msg.from.addr.clone();
        match (step, &opened.trust) {
            ("vc-request-pubkey", Trust::Invite { auth, .. }) => {
                let password = format!("securejoin/{}/{}", self.identity.fingerprint, auth);
                let reply = ChatMessage {
                    message_id: reply_id(&msg.message_id, "vc-pubkey"),
                    subject: Some("Secure-Join".into()),
                    text: "Secure-Join".into(),
                    secure_join: vec![
                        ("Secure-Join".into(), "vc-pubkey".into()),
                        ("Secure-Join-Auth".into(), auth.clone()),
                    ],
                    ..ChatMessage::default()
                };
                let chat = ChatRef { kind: ChatKind::Single, key: joiner.clone(), name: msg.from.display().to_owned() };
                self.outbound.queue_with_password(chat, &joiner, reply, &password).await?;
                tracing::info!(joiner = %joiner, "SecureJoin: sent our key (vc-pubkey)");
                Ok(Step::Consumed)
            }
            // Legacy (pre-v3) first step: plaintext, with the joiner's key in Autocrypt.
            ("vc-request" | "vg-request", Trust::Plain) => {
                let number = msg.secure_join_header("Secure-Join-Invitenumber").unwrap_or_default();
                if self.store.invite(number).await?.is_none() {
                    tracing::warn!(joiner = %joiner, "SecureJoin: unknown invite number; ignored");
                    return Ok(Step::Consumed);
                }
                let Some((keydata, fpr)) = msg.autocrypt.as_ref().filter(|ac| ac.addr == joiner).and_then(|ac| {
                    crypto::public_from_bytes(&ac.keydata).ok().map(|k| (ac.keydata.clone(), crypto::fingerprint(&k)))
                }) else {
                    tracing::warn!(joiner = %joiner, "SecureJoin: legacy request without a usable Autocrypt key; ignored");
                    return Ok(Step::Consumed);
                };
                // Unsigned: it may bring a key for an address new to us (as gossip, not
                // as the owner's own), but never changes a key on record.
                match self.store.contact_key(&joiner).await? {
                    Some(k) if k.fingerprint != fpr => {
                        tracing::warn!(joiner = %joiner, "SecureJoin (legacy): unsigned request with another key than the one on record; ignored");
                        return Ok(Step::Consumed);
                    }
                    Some(_) => {}
                    None => {
                        self.store.learn_contact_key(&joiner, &fpr, &keydata, KeySource::Gossip, false).await?;
                    }
                }
                let answer = if step == "vg-request" { "vg-auth-required" } else { "vc-auth-required" };
                let reply = ChatMessage {
                    message_id: reply_id(&msg.message_id, answer),
                    to: vec![msg.from.clone()],
                    subject: Some(format!("Message from {}", self.display_name)),
                    text: format!("Secure-Join: {answer}"),
                    secure_join: vec![("Secure-Join".into(), answer.into())],
                    gossip: vec![AutocryptHeader { addr: joiner.clone(), prefer_mutual: false, keydata }],
                    ..ChatMessage::default()
                };
                let chat = ChatRef { kind: ChatKind::Single, key: joiner.clone(), name: msg.from.display().to_owned() };
                self.outbound.queue(chat, std::slice::from_ref(&joiner), reply).await?;
                tracing::info!(joiner = %joiner, answer, "SecureJoin (legacy): asked for the auth secret");
                Ok(Step::Consumed)
            }
            ("vc-request-with-auth" | "vg-request-with-auth", Trust::Verified { fingerprint }) => {
                let auth = msg.secure_join_header("Secure-Join-Auth").unwrap_or_default();
                let Some(invite) = self.store.invite_by_auth(auth).await? else {
                    tracing::warn!(joiner = %joiner, "SecureJoin: unknown auth secret; ignored");
                    return Ok(Step::Consumed);
                };
                let claimed =
                    msg.secure_join_header("Secure-Join-Fingerprint").unwrap_or_default().to_ascii_uppercase();
                if claimed != *fingerprint {
                    tracing::warn!(joiner = %joiner, %claimed, signed_by = %fingerprint, "SecureJoin: fingerprint does not match the signature; ignored");
                    return Ok(Step::Consumed);
                }
                let Some(key) = self.store.contact_key(&joiner).await? else { return Ok(Step::Consumed) };
                self.store
                    .learn_contact_key(&joiner, fingerprint, &key.public_key, KeySource::SecureJoin, true)
                    .await?;
                tracing::info!(joiner = %joiner, fingerprint = %fingerprint, "SecureJoin: contact verified");
                let joiner_gossip =
                    AutocryptHeader { addr: joiner.clone(), prefer_mutual: false, keydata: key.public_key.clone() };
                match (step, invite.group_id) {
                    ("vg-request-with-auth", Some(group_id)) => {
                        self.add_to_group(msg, &group_id, &joiner).await?;
                        self.pair_by_invite(auth, &joiner, &group_id).await?;
                    }
                    _ => {
                        let chat = ChatRef {
                            kind: ChatKind::Single,
                            key: joiner.clone(),
                            name: msg.from.display().to_owned(),
                        };
                        self.store.ensure_chat(&chat).await?;
                        let reply = ChatMessage {
                            message_id: reply_id(&msg.message_id, "vc-contact-confirm"),
                            to: vec![msg.from.clone()],
                            subject: Some(format!("Message from {}", self.display_name)),
                            text: "Secure-Join: vc-contact-confirm".into(),
                            secure_join: vec![("Secure-Join".into(), "vc-contact-confirm".into())],
                            gossip: vec![joiner_gossip],
                            ..ChatMessage::default()
                        };
                        self.outbound.queue(chat, std::slice::from_ref(&joiner), reply).await?;
                    }
                }
                Ok(Step::Consumed)
            }
            // We are the joiner: the inviter sent its key.
            ("vc-pubkey", Trust::Invite { auth, signer: Some(fpr) }) => {
                let joins = self.store.open_joins().await?;
                let Some(join) = joins.into_iter().find(|j| j.auth == *auth && j.inviter_fpr == *fpr) else {
                    tracing::warn!(inviter = %joiner, "SecureJoin: vc-pubkey from a key that is not the link's; ignored");
                    return Ok(Step::Consumed);
                };
                self.request_with_auth(&join, msg).await?;
                Ok(Step::Consumed)
            }
            ("vc-contact-confirm", Trust::Verified { fingerprint }) => {
                for j in self.store.open_joins().await? {
                    if j.inviter_addr == joiner && j.inviter_fpr == *fingerprint && j.group_id.is_none() {
                        self.store.set_join_state(j.id, "done").await?;
                        tracing::info!(inviter = %joiner, "SecureJoin: joined, contact verified");
                    }
                }
                Ok(Step::Consumed)
            }
            // Group membership news are group messages: recorded as such. When it is
            // us being added, a group join is complete.
            ("vg-member-added", trust) => {
                let added_me = matches!(
                    msg.group.as_ref().and_then(|g| g.change.as_ref()),
                    Some(GroupChange::MemberAdded(a)) if *a == self.identity.addr
                );
                if added_me && let Trust::Verified { fingerprint } = trust {
                    for j in self.store.open_joins().await? {
                        let same_group = msg.group.as_ref().is_some_and(|g| Some(&g.id) == j.group_id.as_ref());
                        if j.inviter_fpr == *fingerprint && same_group {
                            self.store.set_join_state(j.id, "done").await?;
                            tracing::info!(inviter = %joiner, group = ?j.group_name, "SecureJoin: joined the group");
                        }
                    }
                }
                Ok(Step::NotSecureJoin)
            }
            (other, trust) => {
                tracing::info!(joiner = %joiner, step = other, ?trust, "SecureJoin step not for the inviter, or not trusted; ignored");
                Ok(Step::Consumed)
            }
        }
    }

    /// Joiner, step 3: the inviter's key is confirmed by the link's fingerprint; prove we
    /// scanned the link.
    async fn request_with_auth(&self, join: &JoinRow, pubkey_msg: &ChatMessage) -> Result<(), QueueError> {
        let Some(key) = self.store.contact_key(&join.inviter_addr).await? else { return Ok(()) };
        self.store
            .learn_contact_key(&join.inviter_addr, &join.inviter_fpr, &key.public_key, KeySource::SecureJoin, true)
            .await?;
        let step = if join.group_id.is_some() { "vg-request-with-auth" } else { "vc-request-with-auth" };
        let mut sj = vec![
            ("Secure-Join".to_owned(), step.to_owned()),
            ("Secure-Join-Auth".to_owned(), join.auth.clone()),
            ("Secure-Join-Fingerprint".to_owned(), self.identity.fingerprint.clone()),
        ];
        if let Some(g) = &join.group_id {
            sj.push(("Secure-Join-Group".to_owned(), g.clone()));
        }
        let inviter = Mailbox::new(&join.inviter_addr, pubkey_msg.from.name.as_deref());
        let msg = ChatMessage {
            message_id: reply_id(&pubkey_msg.message_id, step),
            to: vec![inviter.clone()],
            subject: Some(format!("Message from {}", self.display_name)),
            text: format!("Secure-Join: {step}"),
            secure_join: sj,
            gossip: vec![AutocryptHeader {
                addr: join.inviter_addr.clone(),
                prefer_mutual: false,
                keydata: key.public_key,
            }],
            ..ChatMessage::default()
        };
        let chat =
            ChatRef { kind: ChatKind::Single, key: join.inviter_addr.clone(), name: inviter.display().to_owned() };
        self.outbound.queue(chat, std::slice::from_ref(&join.inviter_addr), msg).await?;
        self.store.set_join_state(join.id, "auth-sent").await?;
        tracing::info!(inviter = %join.inviter_addr, step, "SecureJoin: inviter's key verified, request sent");
        Ok(())
    }

    async fn add_to_group(&self, request: &ChatMessage, group_id: &str, joiner: &str) -> Result<(), QueueError> {
        self.store
            .ensure_chat(&ChatRef { kind: ChatKind::Group, key: group_id.to_owned(), name: String::new() })
            .await?;
        let Some(chat) = self.store.find_chat(ChatKind::Group, group_id).await? else { return Ok(()) };
        self.store.update_members(chat.id, &[joiner.to_owned()], &[]).await?;
        let Some(chat) = self.store.chat(chat.id).await? else { return Ok(()) };
        let msg = ChatMessage {
            message_id: reply_id(&request.message_id, "vg-member-added"),
            to: chat.members.iter().map(|m| Mailbox::new(m, None)).collect(),
            group: Some(Group {
                id: chat.key.clone(),
                name: chat.name.clone(),
                change: Some(GroupChange::MemberAdded(joiner.to_owned())),
            }),
            secure_join: vec![("Secure-Join".into(), "vg-member-added".into())],
            text: format!("Member {joiner} added."),
            ..ChatMessage::default()
        };
        self.outbound.queue_to_group(&chat, msg).await?;
        tracing::info!(joiner, group = %chat.name, members = chat.members.len(), "SecureJoin: added to the group");
        Ok(())
    }
}

/// Creates an invite (see [`SecureJoin::create_invite`]); needs only the store and the key.
/// A group is found by name, or created.
pub async fn create_invite(
    store: &dyn Store,
    identity: &Identity,
    display_name: &str,
    group_name: Option<&str>,
) -> Result<Invite, QueueError> {
    let group = match group_name {
        Some(name) => {
            let existing = store.chats().await?.into_iter().find(|c| c.kind == ChatKind::Group && c.name == name);
            let id = match existing {
                Some(c) => c.key,
                None => create_group(store, name).await?,
            };
            Some(InviteGroup { id, name: name.to_owned() })
        }
        None => None,
    };
    invite_for(store, identity, display_name, group).await
}

/// A new, empty COI group owned by the bridge; returns its `Chat-Group-ID`.
pub async fn create_group(store: &dyn Store, name: &str) -> Result<String, QueueError> {
    let id = random_token(12);
    store.ensure_chat(&ChatRef { kind: ChatKind::Group, key: id.clone(), name: name.to_owned() }).await?;
    Ok(id)
}

/// A new invite to the bridge (1:1) or to `group`.
pub async fn invite_for(
    store: &dyn Store,
    identity: &Identity,
    display_name: &str,
    group: Option<InviteGroup>,
) -> Result<Invite, QueueError> {
    let row = InviteRow {
        invite_number: random_token(18),
        auth: random_token(18),
        group_id: group.as_ref().map(|g| g.id.clone()),
    };
    store.add_invite(&row).await?;
    Ok(Invite {
        fingerprint: identity.fingerprint.clone(),
        addr: identity.addr.clone(),
        name: display_name.to_owned(),
        invite_number: row.invite_number,
        auth: row.auth,
        group,
        version: Some(3),
    })
}

/// Why `join` could not start.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    BadLink(String),
    #[error("that is the bridge's own invite link")]
    OwnLink,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Joiner, step 1 (`coi-bridge join LINK`): records the join and asks the inviter for its
/// key with `vc-request-pubkey`. The running daemon does the rest.
pub async fn start_join(
    store: &dyn Store,
    identity: &Identity,
    outbound: &Outbound,
    link: &str,
) -> Result<JoinRow, JoinError> {
    let invite = Invite::parse(link).map_err(JoinError::BadLink)?;
    if invite.fingerprint == identity.fingerprint {
        return Err(JoinError::OwnLink);
    }
    let join = store
        .add_join(&JoinRow {
            id: 0,
            inviter_addr: invite.addr.clone(),
            inviter_fpr: invite.fingerprint.clone(),
            invite_number: invite.invite_number.clone(),
            auth: invite.auth.clone(),
            group_id: invite.group.as_ref().map(|g| g.id.clone()),
            group_name: invite.group.as_ref().map(|g| g.name.clone()),
            state: "requested".into(),
        })
        .await
        .map_err(QueueError::from)?;
    let msg = ChatMessage {
        message_id: reply_id(&format!("{}/{}", invite.fingerprint, invite.auth), "vc-request-pubkey"),
        subject: Some("Secure-Join".into()),
        text: "Secure-Join".into(),
        secure_join: vec![
            ("Secure-Join".into(), "vc-request-pubkey".into()),
            ("Secure-Join-Auth".into(), invite.auth.clone()),
        ],
        ..ChatMessage::default()
    };
    let chat = ChatRef { kind: ChatKind::Single, key: invite.addr.clone(), name: invite.name.clone() };
    let password = format!("securejoin/{}/{}", invite.fingerprint, invite.auth);
    outbound.queue_with_password(chat, &invite.addr, msg, &password).await?;
    Ok(join)
}

/// Whether a key fingerprint is well formed (for links and headers).
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ids_are_stable_and_distinct() {
        assert_eq!(reply_id("a@x", "vc-pubkey"), reply_id("a@x", "vc-pubkey"));
        assert_ne!(reply_id("a@x", "vc-pubkey"), reply_id("a@x", "vc-contact-confirm"));
        assert!(reply_id("a@x", "s").ends_with("@localhost"));
        assert!(is_fingerprint(&"A".repeat(40)) && !is_fingerprint("xyz"));
    }
}
