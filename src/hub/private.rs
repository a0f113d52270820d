//! Private chats with a bridge's bot reach their people: each one becomes a COI group of its own that looks 1:1 ("Tom (Telegram)"), with the bridge's owners or with the moved person it points at, made once per chat and at most [`NEW_PER_MINUTE`] new ones a minute per bridge.
//!
//! Delta Chat has one 1:1 chat per contact, and every remote person writes through the
//! same bridge address, so a 1:1 chat cannot tell them apart: each private chat gets a
//! group instead, and a portal from the bridge's id for it (the bridge picks one per
//! private chat and target), so the usual routing carries messages both ways.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use coi_bridge_api::{BridgeId, Person, PrivateChat, PrivateTo, RemoteChatId, SubmitError};
use rand::RngCore as _;

use crate::metrics::Metrics;
use crate::store::portals::Portal;
use crate::store::{Chat, ChatKind, ChatRef, Store, StoreError, StoreResult};

/// The most new private chats (new COI groups) one bridge instance opens a minute. A person
/// opens one per target, so this is far above real use; a flood of new accounts writing to
/// the bot makes at most this many groups (and mails to the owners) a minute, and the
/// rest are told to try again.
pub const NEW_PER_MINUTE: usize = 10;

const WINDOW: Duration = Duration::from_secs(60);

/// When each bridge opened its latest private chats (in memory: a restart forgets them,
/// which at worst allows one more minute's worth).
#[derive(Default)]
pub struct NewChats {
    opened: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl NewChats {
    /// Whether `bridge` may open one more private chat at `now`; if so, it is counted.
    pub fn allow(&self, bridge: &str, now: Instant) -> bool {
        let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let times = opened.entry(bridge.to_owned()).or_default();
        while times.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
            times.pop_front();
        }
        if times.len() >= NEW_PER_MINUTE {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// What opening a private chat needs from the core's hub.
pub struct Private<'a> {
    pub store: &'a dyn Store,
    pub metrics: &'a Metrics,
    pub new_chats: &'a NewChats,
    /// The bridge's own address (never a member of its own groups).
    pub me: &'a str,
    /// The network's name after the person's ("Telegram").
    pub label: &'a str,
}

fn store_err(e: StoreError) -> SubmitError {
    match e {
        StoreError::Retry(m) | StoreError::Fenced(m) => SubmitError::Retry(m),
        StoreError::Fatal(m) => SubmitError::Rejected(format!("store: {m}")),
    }
}

/// A new `Chat-Group-ID`: 12 random bytes, URL-safe base64 (16 characters, as the
/// bridge's other groups).
fn new_group_id() -> String {
    let mut buf = [0u8; 12];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The bridge-state key that holds the COI group of the private chat `remote_chat`.
fn marker(remote_chat: &str) -> String {
    format!("private-group:{remote_chat}")
}

/// Whether `portal` is a private chat with a bridge's bot opened here (its COI group is
/// the one made for it): no group whose migration is watched.
pub async fn is_private_chat(store: &dyn Store, portal: &Portal, chat: &Chat) -> StoreResult<bool> {
    let kept = store.bridge_state(&portal.bridge, &marker(&portal.remote_chat)).await?;
    Ok(chat.kind == ChatKind::Group && kept.as_deref() == Some(chat.key.as_str()))
}

/// "Tom (Telegram)": the person's name without control characters, cut to a length
/// every client shows.
pub fn group_name(person: &Person, label: &str) -> String {
    let clean: String = person.display_name.chars().filter(|c| !c.is_control()).collect();
    let name = crate::store::migration::clip_display_name(clean.trim());
    let name = if name.is_empty() { person.id.as_str() } else { name };
    format!("{name} ({label})")
}

impl Private<'_> {
    /// See [`coi_bridge_api::Hub::private_chat`].
    pub async fn open(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        person: &Person,
        to: &PrivateTo,
    ) -> Result<PrivateChat, SubmitError> {
        let bridge = from.as_str();
        let mut wanted: Vec<String> = match to {
            PrivateTo::Owners(owners) => owners.iter().map(|o| o.trim().to_lowercase()).collect(),
            PrivateTo::Paired(user) => match self.store.pairing(bridge, user.as_str()).await.map_err(store_err)? {
                Some(p) => vec![p.address.to_lowercase()],
                None => return Ok(PrivateChat::NotPaired),
            },
        };
        wanted.retain(|a| !a.is_empty() && !a.eq_ignore_ascii_case(self.me));
        wanted.sort();
        wanted.dedup();
        if let Some(portal) = self.store.portal_by_remote(bridge, chat.as_str()).await.map_err(store_err)? {
            let members = match self.store.chat(portal.chat_id).await.map_err(store_err)? {
                Some(c) => c.members,
                None => Vec::new(),
            };
            if members.is_empty() {
                // Everyone left the COI chat: say so rather than queue mail for nobody (and
                // a chat they left is not made again behind their back).
                return Ok(PrivateChat::Nobody);
            }
            // A person paired with another address since: their new one gets a chat of its own.
            let moved_on = matches!(to, PrivateTo::Paired(_)) && !wanted.iter().all(|a| members.contains(a));
            if !moved_on {
                return Ok(PrivateChat::Ready { opened: false });
            }
            tracing::info!(bridge, chat = %chat, "private chat: the paired person has another address now");
            self.store.delete_portal(bridge, chat.as_str()).await.map_err(store_err)?;
        }
        if wanted.is_empty() {
            return Ok(PrivateChat::NoOwners);
        }
        // Encrypted like every group: only people whose key the bridge has are members
        // (anyone else would make every message carry a notice naming them).
        let mut keyed = Vec::new();
        for addr in &wanted {
            if self.store.contact_key(addr).await.map_err(store_err)?.is_some() {
                keyed.push(addr.clone());
            } else {
                tracing::warn!(bridge, chat = %chat, owner = %addr, "private chat: no key for this address yet; left out");
            }
        }
        if keyed.is_empty() {
            return Ok(PrivateChat::NoKey);
        }
        if !self.new_chats.allow(bridge, Instant::now()) {
            self.metrics.failures.with_label_values(&[bridge, "private_chats_limited"]).inc();
            tracing::warn!(bridge, chat = %chat, per_minute = NEW_PER_MINUTE, "private chat not opened: too many new ones this minute");
            return Ok(PrivateChat::Busy);
        }
        // The group's id is kept before the group is made: a retry after a crash in
        // between makes the same group, never a second one. A kept group whose members are
        // others (the paired person's old address) is not reused.
        let key = marker(chat.as_str());
        let kept = match self.store.bridge_state(bridge, &key).await.map_err(store_err)?.filter(|id| !id.is_empty()) {
            Some(id) => match self.store.find_chat(ChatKind::Group, &id).await.map_err(store_err)? {
                Some(c) if !c.members.is_empty() && !keyed.iter().all(|a| c.members.contains(a)) => None,
                _ => Some(id),
            },
            None => None,
        };
        let id = match kept {
            Some(id) => id,
            None => {
                let id = new_group_id();
                self.store.set_bridge_state(bridge, &key, &id).await.map_err(store_err)?;
                id
            }
        };
        let name = group_name(person, self.label);
        let chat_ref = ChatRef { kind: ChatKind::Group, key: id.clone(), name: name.clone() };
        let chat_id = self.store.ensure_chat(&chat_ref).await.map_err(store_err)?;
        self.store.update_members(chat_id, &keyed, &[]).await.map_err(store_err)?;
        self.store.create_portal(chat_id, bridge, chat.as_str()).await.map_err(store_err)?;
        tracing::info!(bridge, chat = %chat, group = %name, members = keyed.len(), "private chat opened as a COI group");
        Ok(PrivateChat::Ready { opened: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_chats_are_bounded_per_minute_and_per_bridge() {
        let limit = NewChats::default();
        let t0 = Instant::now();
        for i in 0..NEW_PER_MINUTE {
            assert!(limit.allow("telegram", t0 + Duration::from_secs(i as u64)), "chat {i}");
        }
        assert!(!limit.allow("telegram", t0 + Duration::from_secs(30)), "one over the limit");
        assert!(limit.allow("telegram-2", t0 + Duration::from_secs(30)), "another bridge counts apart");
        // A minute after the first, one more is allowed; a refusal did not count.
        assert!(limit.allow("telegram", t0 + WINDOW));
        assert!(!limit.allow("telegram", t0 + WINDOW));
    }

    #[test]
    fn the_group_is_named_after_the_person() {
        let p = |name: &str| Person { id: "42".into(), display_name: name.into() };
        assert_eq!(group_name(&p("Tom"), "Telegram"), "Tom (Telegram)");
        assert_eq!(group_name(&p("To\nm\u{7}"), "Telegram"), "Tom (Telegram)");
        assert_eq!(group_name(&p("  "), "Telegram"), "42 (Telegram)");
        assert!(group_name(&p(&"x".repeat(5000)), "T").chars().count() < 300);
    }
}
