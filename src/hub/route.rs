//! Routing: who gets a copy of a message. The hub decides it from the chat's portals, the message's origin and the DM-portal rule; the store only writes the outbox rows it is given.
//!
//! The portals are read just before the write transaction. A portal linked in between
//! misses that one message (it was written before the link); a portal removed in
//! between gets a row that its delivery worker skips ("the portal was removed").

use std::sync::RwLock;

use crate::coi::{ChatMessage, Kind};
use crate::hub::wake::OutboxNotifier;
use crate::store::portals::Portal;
use crate::store::{ChatKind, ChatRef, InboundMessage, Origin, Store, StoreResult};

/// Each bridge with a portal in the chat, once, in the order the portals were made,
/// except `except` (the bridge a message came from: it gets no copy back).
pub fn fan_out(portals: &[Portal], except: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(portals.len());
    for p in portals {
        if Some(p.bridge.as_str()) != except && !out.contains(&p.bridge) {
            out.push(p.bridge.clone());
        }
    }
    out
}

/// Whether a COI message opens a DM portal: a person's chat message in a 1:1 chat
/// attributed to its sender (not a receipt, edit or key-exchange step).
pub fn opens_dm(chat: &ChatRef, m: &ChatMessage) -> bool {
    chat.kind == ChatKind::Single
        && !chat.key.starts_with("unverified:")
        && m.is_chat
        && m.kind == Kind::Text
        && m.secure_join.is_empty()
}

/// The bridges a message from COI goes to: every portal of its chat; a 1:1 chat with no
/// portal yet goes to the bridges that open DM portals (`dm`) when the message opens one.
pub fn inbound(portals: &[Portal], chat: &ChatRef, m: &ChatMessage, dm: &[String]) -> Vec<String> {
    if portals.is_empty() && opens_dm(chat, m) { dm.to_vec() } else { fan_out(portals, None) }
}

/// The bridges a message for COI also goes to, by where it came from.
pub fn outbound(portals: &[Portal], origin: &Origin) -> Vec<String> {
    match origin {
        // The bridge itself (a command, SecureJoin): every portal.
        Origin::Local => fan_out(portals, None),
        // N-way: the chat's other portals, not the one it came from.
        Origin::Bridge { bridge, .. } => fan_out(portals, Some(bridge)),
        // A notice for COI only: a failing bridge cannot cause notices about notices.
        Origin::Notice => Vec::new(),
    }
}

/// The portals of the chat `chat` names; none if the chat is not known yet.
pub async fn portals_of(store: &dyn Store, chat: &ChatRef) -> StoreResult<Vec<Portal>> {
    match store.find_chat(chat.kind, &chat.key).await? {
        Some(c) => store.portals_of_chat(c.id).await,
        None => Ok(Vec::new()),
    }
}

/// The bridges that open a DM portal when a COI contact writes 1:1 and the chat has none
/// yet (set once the bridges are built).
#[derive(Debug, Default)]
pub struct DmBridges(RwLock<Vec<String>>);

impl DmBridges {
    pub fn set(&self, bridges: Vec<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = bridges;
    }

    pub fn get(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Sets each message's targets ([`inbound`]), reading each chat's portals once.
pub async fn route_inbound(store: &dyn Store, dm: &[String], messages: &mut [InboundMessage]) -> StoreResult<()> {
    let mut portals: Vec<(ChatRef, Vec<Portal>)> = Vec::new();
    for m in messages.iter_mut() {
        let i = match portals.iter().position(|(c, _)| c.kind == m.chat.kind && c.key == m.chat.key) {
            Some(i) => i,
            None => {
                portals.push((m.chat.clone(), portals_of(store, &m.chat).await?));
                portals.len() - 1
            }
        };
        m.targets = inbound(&portals[i].1, &m.chat, &m.message, dm);
    }
    Ok(())
}

/// Queues a notice from the bridge itself for every portal of `chat_id` (the remote
/// sides are told what COI did not get), once per `notice_id`, and wakes their workers.
pub async fn queue_portal_notice(
    store: &dyn Store,
    wake: &OutboxNotifier,
    chat_id: i64,
    notice_id: &str,
    from_addr: &str,
    text: &str,
) -> StoreResult<()> {
    let targets = fan_out(&store.portals_of_chat(chat_id).await?, None);
    store.queue_portal_notice(chat_id, notice_id, from_addr, text, &targets).await?;
    wake.queued(targets.iter().map(String::as_str));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coi::Mailbox;
    use crate::store::portals::RemoteCopy;

    fn portal(id: i64, bridge: &str) -> Portal {
        Portal { id, chat_id: 1, bridge: bridge.into(), remote_chat: format!("!{bridge}{id}") }
    }

    fn one_to_one(key: &str) -> ChatRef {
        ChatRef { kind: ChatKind::Single, key: key.into(), name: String::new() }
    }

    fn chat_message(kind: Kind) -> ChatMessage {
        ChatMessage {
            message_id: "m@x".into(),
            from: Mailbox::new("dave@x.org", None),
            is_chat: true,
            kind,
            ..ChatMessage::default()
        }
    }

    #[test]
    fn a_message_goes_to_every_other_portal_once_and_never_back_to_its_origin() {
        let portals = [portal(1, "matrix"), portal(2, "telegram"), portal(3, "matrix")];
        assert_eq!(fan_out(&portals, None), ["matrix", "telegram"], "one row per bridge, in portal order");
        let from_matrix = Origin::Bridge {
            bridge: "matrix".into(),
            copy: Some(RemoteCopy { remote_chat: "!r".into(), remote_id: "$e".into(), part: 0 }),
        };
        assert_eq!(outbound(&portals, &from_matrix), ["telegram"]);
        assert_eq!(outbound(&portals, &Origin::Local), ["matrix", "telegram"]);
        assert!(outbound(&portals, &Origin::Notice).is_empty(), "a notice for COI goes to no portal");
        let group = ChatRef { kind: ChatKind::Group, key: "grp".into(), name: String::new() };
        assert_eq!(inbound(&portals, &group, &chat_message(Kind::Text), &["matrix".into()]), ["matrix", "telegram"]);
    }

    #[test]
    fn only_a_persons_message_in_a_one_to_one_chat_without_a_portal_opens_a_dm_portal() {
        let dm = ["matrix".to_owned()];
        let dave = one_to_one("dave@x.org");
        assert_eq!(inbound(&[], &dave, &chat_message(Kind::Text), &dm), ["matrix"]);
        // Once the chat has a portal, that is where it goes.
        assert_eq!(inbound(&[portal(1, "telegram")], &dave, &chat_message(Kind::Text), &dm), ["telegram"]);
        let receipt = chat_message(Kind::ReadReceipt { original: "x@x".into(), additional: vec![] });
        let edit = chat_message(Kind::Edit { target: "x@x".into() });
        let mut step = chat_message(Kind::Text);
        step.secure_join = vec![("Secure-Join".into(), "vc-request-with-auth".into())];
        let not_chat = ChatMessage { is_chat: false, ..chat_message(Kind::Text) };
        for m in [receipt, edit, step, not_chat] {
            assert!(inbound(&[], &dave, &m, &dm).is_empty(), "{:?}", m.kind);
        }
        assert!(inbound(&[], &one_to_one("unverified:eve@x.org"), &chat_message(Kind::Text), &dm).is_empty());
        let group = ChatRef { kind: ChatKind::Group, key: "grp".into(), name: String::new() };
        assert!(inbound(&[], &group, &chat_message(Kind::Text), &dm).is_empty());
    }
}
