//! Remote → COI: the core's [`Hub`] for bridges. A remote event is resolved through its portal, translated (reply targets, edits, reactions) and durably queued before `submit` returns.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::{BridgeId, Command, CommandReply, Hub, Person, RemoteChatId, RemoteEvent, SubmitError};

use crate::coi::securejoin_link::Invite;
use crate::coi::securejoin_link::InviteGroup;
use crate::coi::{ChatMessage, Kind, Mailbox};
use crate::hub::e2ee::Identity;
use crate::hub::invites::{InviteLimiter, Verdict, hand_out, refusal_text};
use crate::hub::migration;
use crate::hub::outbound::{Outbound, QueueError};
use crate::hub::securejoin::{JoinError, create_group, invite_for, start_join};
use crate::store::migration::{PairedVia, PairingRow, Seen};
use crate::store::portals::RemoteCopy;
use crate::store::{ChatKind, ChatRef, Direction, Origin, Store, StoreError};

/// The hub bridges submit to.
pub struct CoreHub {
    store: Arc<dyn Store>,
    outbound: Arc<Outbound>,
    identity: Arc<Identity>,
    /// The bridge's own name, shown in invite links.
    display_name: String,
    me: String,
    /// Bridge id → the network's name shown after relayed names ("Alice (Matrix)").
    labels: HashMap<String, String>,
    metrics: Arc<crate::metrics::Metrics>,
    /// How often each person may ask for a personal invite.
    invites: InviteLimiter,
    /// When each bridge opened its latest private chats.
    private_chats: crate::hub::private::NewChats,
}

pub(super) fn retry_or_reject(e: QueueError) -> SubmitError {
    match e {
        QueueError::Store(StoreError::Retry(m)) => SubmitError::Retry(m),
        QueueError::Store(StoreError::Fatal(m)) => SubmitError::Rejected(format!("store: {m}")),
        QueueError::Store(StoreError::Fenced(m)) => SubmitError::Retry(format!("lease lost: {m}")),
        other => SubmitError::Rejected(other.to_string()),
    }
}

/// A store that cannot write now (busy, disk full) is the core being unavailable: the
/// bridge submits again for as long as that lasts. A write the store refuses for good
/// (a constraint this event breaks) rejects the event, so it is set aside.
pub(super) fn store_err(e: StoreError) -> SubmitError {
    match e {
        StoreError::Retry(m) => SubmitError::Retry(m),
        StoreError::Fatal(m) => SubmitError::Rejected(format!("store: {m}")),
        // The account is stopping here: the event stays unacknowledged for the next holder.
        StoreError::Fenced(m) => SubmitError::Retry(format!("lease lost: {m}")),
    }
}

impl CoreHub {
    pub fn new(
        store: Arc<dyn Store>,
        outbound: Arc<Outbound>,
        identity: Arc<Identity>,
        display_name: &str,
        labels: HashMap<String, String>,
    ) -> Self {
        let me = identity.addr.clone();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let invites = InviteLimiter::default();
        let private_chats = Default::default();
        Self {
            store,
            outbound,
            identity,
            display_name: display_name.to_owned(),
            me,
            labels,
            metrics,
            invites,
            private_chats,
        }
    }

    /// Counts queued messages in the daemon's metrics (a private registry otherwise).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A fresh invite to the portal's chat.
    async fn invite(&self, chat: &crate::store::Chat) -> Result<String, QueueError> {
        let group =
            (chat.kind == ChatKind::Group).then(|| InviteGroup { id: chat.key.clone(), name: chat.name.clone() });
        Ok(invite_for(self.store.as_ref(), &self.identity, &self.display_name, group).await?.render())
    }

    /// Where this account's migration gauges go.
    fn gauges(&self) -> migration::Gauges<'_> {
        migration::Gauges { metrics: &self.metrics, account: &self.me }
    }

    fn label<'a>(&'a self, bridge: &'a BridgeId) -> &'a str {
        self.labels.get(bridge.as_str()).map_or(bridge.as_str(), String::as_str)
    }

    async fn coi_id(&self, bridge: &BridgeId, chat: &str, remote: &str) -> Result<Option<String>, SubmitError> {
        self.store.coi_id_of_remote(bridge.as_str(), chat, remote).await.map_err(store_err)
    }

    /// The remote chat already linked to a COI chat on this bridge, if any.
    async fn portal_of(&self, chat: &ChatRef, bridge: &BridgeId) -> Result<Option<String>, SubmitError> {
        let Some(c) = self.store.find_chat(chat.kind, &chat.key).await.map_err(store_err)? else { return Ok(None) };
        let portals = self.store.portals_of_chat(c.id).await.map_err(store_err)?;
        Ok(portals.into_iter().find(|p| p.bridge == bridge.as_str()).map(|p| p.remote_chat))
    }

    /// Records that `person` was seen in the remote chat `chat` now (the migration status).
    async fn note(&self, from: &BridgeId, chat: &str, person: &Person, seen: Seen) -> Result<(), SubmitError> {
        let now = chrono::Utc::now().timestamp();
        self.store
            .note_remote_person(from.as_str(), chat, person.id.as_str(), &person.display_name, seen, now)
            .await
            .map_err(store_err)
    }

    /// The COI chat of the portal of `chat` on `bridge`, if it has one.
    async fn portal_chat(
        &self,
        bridge: &BridgeId,
        chat: &RemoteChatId,
    ) -> Result<Option<crate::store::Chat>, SubmitError> {
        match self.store.portal_by_remote(bridge.as_str(), chat.as_str()).await.map_err(store_err)? {
            Some(p) => self.store.chat(p.chat_id).await.map_err(store_err),
            None => Ok(None),
        }
    }

    /// Counts a personal-invite request of `person` (at `asked`); the answer to give instead
    /// of an invite when they asked too often lately.
    fn asked_too_often(&self, from: &BridgeId, person: &Person, asked: std::time::Instant) -> Option<CommandReply> {
        let Verdict::Refused { again_in } = self.invites.ask(from.as_str(), person.id.as_str(), asked) else {
            return None;
        };
        self.metrics.personal_invites_refused.with_label_values(&[from.as_str()]).inc();
        tracing::info!(bridge = %from, user = %person.id, again_in_s = again_in.as_secs(), "personal invite refused: asked too often");
        Some(CommandReply { text: refusal_text(again_in), link: None, qr_png: None })
    }

    /// A personal invite asked for outside any portal (a direct room with the bot): one to
    /// each group the person is in, in one answer (the first one's QR code), counted as one
    /// request.
    async fn personal_invites_elsewhere(&self, from: &BridgeId, person: &Person) -> Result<CommandReply, SubmitError> {
        let groups = crate::hub::invites::groups_of(self.store.as_ref(), from, person).await.map_err(store_err)?;
        if groups.is_empty() {
            return Err(SubmitError::Rejected(
                "I know of no bridged group you are in; ask in the group's room instead".into(),
            ));
        }
        let asked = std::time::Instant::now();
        if let Some(refused) = self.asked_too_often(from, person, asked) {
            return Ok(refused);
        }
        let mut replies = Vec::new();
        for (chat, c) in &groups {
            match hand_out(self.store.as_ref(), &self.identity, &self.display_name, from, chat, person, c).await {
                Ok(r) => replies.push(r),
                Err(e) => {
                    self.invites.give_back(from.as_str(), person.id.as_str(), asked);
                    return Err(e);
                }
            }
        }
        let text = replies.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join("\n\n");
        let first = replies.into_iter().next();
        Ok(CommandReply {
            text,
            link: first.as_ref().and_then(|r| r.link.clone()),
            qr_png: first.and_then(|r| r.qr_png),
        })
    }

    async fn target(&self, bridge: &BridgeId, chat: &str, remote: &str) -> Result<String, SubmitError> {
        self.coi_id(bridge, chat, remote)
            .await?
            .ok_or_else(|| SubmitError::Rejected(format!("message {remote} was never bridged")))
    }
}

#[async_trait]
impl Hub for CoreHub {
    async fn command(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        title: &str,
        command: Command,
    ) -> Result<CommandReply, SubmitError> {
        let portal = self.store.portal_by_remote(from.as_str(), chat.as_str()).await.map_err(store_err)?;
        let portal_chat = match &portal {
            Some(p) => self.store.chat(p.chat_id).await.map_err(store_err)?,
            None => None,
        };
        let reply = |text: String, link: Option<String>| {
            let qr_png = link.as_deref().and_then(|l| match crate::qr::png(l) {
                Ok(png) => Some(png),
                Err(e) => {
                    tracing::warn!(error = %e, "no QR code for the invite link");
                    None
                }
            });
            Ok(CommandReply { text, link, qr_png })
        };
        match (command, portal_chat) {
            (Command::Help, _) => reply(
                "Commands: bridge (link this room to a new COI group and show its invite), link LINK (join a Delta \
                 Chat group or contact invite link and link it here), start ADDRESS (a 1:1 portal with a COI contact \
                 whose key the bridge has), invite (show the invite again), status (the portal and its members), \
                 pair PERSON ADDRESS (that person is that COI address; for the bridge's and this chat's admins), \
                 unlink (remove the portal), help."
                    .into(),
                None,
            ),
            (Command::Bridge, Some(c)) | (Command::Invite, Some(c)) => {
                let link = self.invite(&c).await.map_err(retry_or_reject)?;
                reply(
                    format!(
                        "This room is bridged to the COI group \"{}\". Delta Chat users join with:\n{link}",
                        c.name
                    ),
                    Some(link),
                )
            }
            (Command::Bridge, None) => {
                let name = if title.trim().is_empty() { chat.as_str() } else { title.trim() };
                let id = create_group(self.store.as_ref(), name).await.map_err(retry_or_reject)?;
                let c = self
                    .store
                    .find_chat(ChatKind::Group, &id)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| SubmitError::Retry("the new group is not in the store".into()))?;
                self.store.create_portal(c.id, from.as_str(), chat.as_str()).await.map_err(store_err)?;
                let link = self.invite(&c).await.map_err(retry_or_reject)?;
                tracing::info!(bridge = %from, chat = %chat, group = %name, "room bridged to a new COI group");
                reply(
                    format!("Bridged to the new COI group \"{name}\". Delta Chat users join with:\n{link}"),
                    Some(link),
                )
            }
            (Command::Link(_) | Command::Start(_), Some(c)) => {
                reply(format!("This room is already linked to the COI chat \"{}\"; unlink it first.", c.name), None)
            }
            (Command::Link(link), None) => {
                let invite = Invite::parse(&link).map_err(SubmitError::Rejected)?;
                if invite.fingerprint == self.identity.fingerprint {
                    // The bridge's own group (already linked elsewhere, say on Matrix): one
                    // more portal to it, N-way.
                    let Some(g) = invite.group else {
                        return Err(SubmitError::Rejected("that is the bridge's own 1:1 link, not a group".into()));
                    };
                    let c =
                        self.store.find_chat(ChatKind::Group, &g.id).await.map_err(store_err)?.ok_or_else(|| {
                            SubmitError::Rejected(format!("the bridge has no group \"{}\" any more", g.name))
                        })?;
                    self.store.create_portal(c.id, from.as_str(), chat.as_str()).await.map_err(store_err)?;
                    return reply(
                        format!("Linked to the COI group \"{}\"; messages flow to all its sides.", c.name),
                        None,
                    );
                }
                let chat_ref = match &invite.group {
                    Some(g) => ChatRef { kind: ChatKind::Group, key: g.id.clone(), name: g.name.clone() },
                    None => ChatRef { kind: ChatKind::Single, key: invite.addr.clone(), name: invite.name.clone() },
                };
                start_join(self.store.as_ref(), &self.identity, &self.outbound, &link).await.map_err(|e| match e {
                    JoinError::Queue(q) => retry_or_reject(q),
                    other => SubmitError::Rejected(other.to_string()),
                })?;
                let chat_id = self.store.ensure_chat(&chat_ref).await.map_err(store_err)?;
                self.store.create_portal(chat_id, from.as_str(), chat.as_str()).await.map_err(store_err)?;
                tracing::info!(bridge = %from, chat = %chat, coi_chat = %chat_ref.key, "joining an invite link for a portal");
                reply(
                    format!(
                        "Joining \"{}\" (invited by {}). This room is linked to it; messages flow as soon as the \
                         key exchange completes, usually within seconds.",
                        chat_ref.name, invite.addr
                    ),
                    None,
                )
            }
            (Command::Start(addr), None) => {
                let addr = addr.to_lowercase();
                if self.store.contact_key(&addr).await.map_err(store_err)?.is_none() {
                    return Err(SubmitError::Rejected(format!(
                        "the bridge has no key for {addr} yet. Send the bridge their invite link (link LINK), or \
                         import their vCard (coi-bridge contact import FILE), then try again."
                    )));
                }
                if let Some(p) = self
                    .portal_of(&ChatRef { kind: ChatKind::Single, key: addr.clone(), name: String::new() }, from)
                    .await?
                {
                    return Err(SubmitError::Rejected(format!("{addr} already has a portal: {p}")));
                }
                let chat_ref = ChatRef { kind: ChatKind::Single, key: addr.clone(), name: addr.clone() };
                let chat_id = self.store.ensure_chat(&chat_ref).await.map_err(store_err)?;
                self.store.create_portal(chat_id, from.as_str(), chat.as_str()).await.map_err(store_err)?;
                reply(format!("This room is now a 1:1 chat with {addr} on COI."), None)
            }
            (Command::Invite | Command::Status | Command::Unlink, None) => {
                reply("This room is not bridged; say bridge to link it to a COI group.".into(), None)
            }
            (Command::Status, Some(c)) => {
                let members = if c.members.is_empty() { "nobody yet".to_owned() } else { c.members.join(", ") };
                let mut text = format!("Bridged to the COI group \"{}\"; on COI: {members}.", c.name);
                if let Some(p) = &portal {
                    let status = migration::portal_status(self.store.as_ref(), p, &c).await.map_err(store_err)?;
                    migration::set_gauges(&self.metrics, &self.me, p, &status);
                    text.push('\n');
                    text.push_str(&status.render(self.label(from)));
                }
                reply(text, None)
            }
            (Command::Unlink, Some(c)) => {
                self.store.delete_portal(from.as_str(), chat.as_str()).await.map_err(store_err)?;
                migration::drop_gauges(&self.metrics, &self.me, from.as_str(), chat.as_str());
                reply(format!("Unlinked from the COI group \"{}\"; nothing is bridged here any more.", c.name), None)
            }
        }
    }

    async fn person_seen(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        person: &Person,
        joined: bool,
    ) -> Result<(), SubmitError> {
        // Only portals' people count (a DM with the bot, a room not bridged: nothing).
        let Some(c) = self.portal_chat(from, chat).await? else { return Ok(()) };
        self.note(from, chat.as_str(), person, if joined { Seen::Joined } else { Seen::Left }).await?;
        // Someone active who had not moved may have left: the rest may now all be on COI.
        if !joined {
            migration::announce_if_closable(self.store.as_ref(), &self.outbound, &c, &self.labels, Some(self.gauges()))
                .await
                .map_err(retry_or_reject)?;
        }
        Ok(())
    }

    async fn personal_invite(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        person: &Person,
    ) -> Result<CommandReply, SubmitError> {
        let Some(c) = self.portal_chat(from, chat).await? else {
            // Asked outside any portal (in a direct room with the bot): the groups they are in.
            return self.personal_invites_elsewhere(from, person).await;
        };
        if c.kind != ChatKind::Group {
            return Err(SubmitError::Rejected("that chat is a 1:1 portal, not a group".into()));
        }
        // Each invite costs a store write and a QR code, and anyone in a portal may ask.
        let asked = std::time::Instant::now();
        if let Some(refused) = self.asked_too_often(from, person, asked) {
            return Ok(refused);
        }
        let made = hand_out(self.store.as_ref(), &self.identity, &self.display_name, from, chat, person, &c).await;
        if made.is_err() {
            // Not handed out: the bridge asks again, and that is no second request.
            self.invites.give_back(from.as_str(), person.id.as_str(), asked);
        }
        made
    }

    async fn pair(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        person: &Person,
        address: &str,
    ) -> Result<CommandReply, SubmitError> {
        let address = address.trim().trim_start_matches("mailto:").to_lowercase();
        if self.store.contact_key(&address).await.map_err(store_err)?.is_none() {
            return Err(SubmitError::Rejected(format!(
                "the bridge has no key for {address}; they join the group (or send the bridge their invite link) first"
            )));
        }
        let portal_chat = self.portal_chat(from, chat).await?;
        // Pairings hold for the whole bridge; only a portal's people are counted.
        if portal_chat.is_some() {
            self.note(from, chat.as_str(), person, Seen::Joined).await?;
        }
        let now = chrono::Utc::now().timestamp();
        let row = PairingRow {
            bridge: from.as_str().to_owned(),
            remote_user: person.id.as_str().to_owned(),
            address: address.clone(),
            via: PairedVia::Admin,
            paired_at: now,
        };
        self.store.pair(&row).await.map_err(store_err)?;
        tracing::info!(bridge = %from, user = %person.id, %address, "paired by an admin");
        if let Some(c) = portal_chat {
            migration::announce_if_closable(self.store.as_ref(), &self.outbound, &c, &self.labels, Some(self.gauges()))
                .await
                .map_err(retry_or_reject)?;
        }
        Ok(CommandReply {
            text: format!("{} is {address} on COI from now on.", person.display_name),
            link: None,
            qr_png: None,
        })
    }

    async fn private_chat(
        &self,
        from: &BridgeId,
        chat: &RemoteChatId,
        person: &Person,
        to: &coi_bridge_api::PrivateTo,
    ) -> Result<coi_bridge_api::PrivateChat, SubmitError> {
        let (store, metrics, new_chats) = (self.store.as_ref(), self.metrics.as_ref(), &self.private_chats);
        let private = crate::hub::private::Private { store, metrics, new_chats, me: &self.me, label: self.label(from) };
        private.open(from, chat, person, to).await
    }

    async fn dead_letter(&self, from: &BridgeId, letter: coi_bridge_api::DeadLetter) -> Result<(), SubmitError> {
        crate::hub::deadletter::set_aside(self.store.as_ref(), &self.metrics, from, letter).await
    }

    fn hop(&self, hop: &str, took: std::time::Duration) {
        self.metrics.hop(hop, took);
    }

    async fn submit(&self, from: &BridgeId, event: RemoteEvent) -> Result<(), SubmitError> {
        // The first hop of a remote message's way to COI (translated, sealed, in the outbox).
        let started = std::time::Instant::now();
        let message = matches!(event, RemoteEvent::Message { .. });
        let handled = self.handle(from, event).await;
        if message && handled.is_ok() {
            self.metrics.hop("submit", started.elapsed());
        }
        handled
    }
}

impl CoreHub {
    async fn handle(&self, from: &BridgeId, event: RemoteEvent) -> Result<(), SubmitError> {
        if let RemoteEvent::Migrated { chat, new_chat } = &event {
            if chat != new_chat
                && self.store.portal_by_remote(from.as_str(), new_chat.as_str()).await.map_err(store_err)?.is_some()
                && self.store.portal_by_remote(from.as_str(), chat.as_str()).await.map_err(store_err)?.is_some()
            {
                return Err(SubmitError::Rejected(format!(
                    "{chat} moved into {new_chat}, which has a portal of its own; the portal of {chat} stays"
                )));
            }
            // Idempotent: after the first time there is no portal under the old id.
            let moved =
                self.store.move_portal(from.as_str(), chat.as_str(), new_chat.as_str()).await.map_err(store_err)?;
            if moved {
                tracing::info!(bridge = %from, old = %chat, new = %new_chat, "the remote chat moved; its portal follows");
            }
            // The people seen there, their invites and the report's history follow too.
            self.store.move_remote_people(from.as_str(), chat.as_str(), new_chat.as_str()).await.map_err(store_err)?;
            return Ok(());
        }
        let remote_chat = event.chat().as_str().to_owned();
        let portal = self
            .store
            .portal_by_remote(from.as_str(), &remote_chat)
            .await
            .map_err(store_err)?
            .ok_or_else(|| SubmitError::Rejected(format!("no portal for {remote_chat} on {from}")))?;
        let chat = self
            .store
            .chat(portal.chat_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| SubmitError::Rejected(format!("the chat of portal {} is gone", portal.id)))?;
        if let RemoteEvent::Message { sender, .. } = &event {
            // Who posts here counts as a member, and as active (the migration status).
            self.note(from, &remote_chat, sender, Seen::Posted).await?;
        }
        let relayed = |name: &str| Mailbox::new(&self.me, Some(&format!("{name} ({})", self.label(from))));
        let (origin, msg) = match event {
            RemoteEvent::Message { id, sender, text, attachments, reply_to, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    // Submitted before (at-least-once delivery), or our own copy echoed back.
                    return Ok(());
                }
                let in_reply_to = match reply_to {
                    Some(r) => self.coi_id(from, &remote_chat, r.as_str()).await?,
                    None => None,
                };
                // Delta Chat shows a reply only with a quote, so quote the parent.
                let quote = match &in_reply_to {
                    Some(id) => {
                        self.store.message(id).await.map_err(store_err)?.map(|m| crate::hub::resolve::quote_of(&m))
                    }
                    None => None,
                };
                let copy = RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 };
                let msg = ChatMessage {
                    from: relayed(&sender.display_name),
                    text,
                    attachments,
                    in_reply_to: in_reply_to.clone(),
                    references: in_reply_to.into_iter().collect(),
                    quote,
                    ..ChatMessage::default()
                };
                (Some(copy), msg)
            }
            RemoteEvent::Edit { id, target, sender, new_text, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    return Ok(());
                }
                let target = self.target(from, &remote_chat, target.as_str()).await?;
                let msg = ChatMessage {
                    from: relayed(&sender.display_name),
                    kind: Kind::Edit { target },
                    text: new_text,
                    ..ChatMessage::default()
                };
                (Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }), msg)
            }
            RemoteEvent::Delete { id, target, sender, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    return Ok(());
                }
                let target = self.target(from, &remote_chat, target.as_str()).await?;
                let msg = ChatMessage {
                    from: relayed(&sender.display_name),
                    kind: Kind::Delete { targets: vec![target] },
                    ..ChatMessage::default()
                };
                (Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }), msg)
            }
            RemoteEvent::Reaction { id, target, sender, emoji, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    return Ok(());
                }
                let target = self.target(from, &remote_chat, target.as_str()).await?;
                let msg = ChatMessage {
                    from: relayed(&sender.display_name),
                    kind: Kind::Reaction { emoji },
                    in_reply_to: Some(target),
                    ..ChatMessage::default()
                };
                (Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }), msg)
            }
            RemoteEvent::Renamed { id, name, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    return Ok(());
                }
                let name = name.trim();
                if chat.kind != ChatKind::Group || name.is_empty() || name == chat.name {
                    return Ok(());
                }
                let origin = Origin::Bridge {
                    bridge: from.as_str().to_owned(),
                    copy: Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }),
                };
                return crate::hub::groups::rename_for(origin, self.store.as_ref(), &self.outbound, &chat, name)
                    .await
                    .map(|_| ())
                    .map_err(retry_or_reject);
            }
            RemoteEvent::Described { id, text, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() || chat.kind != ChatKind::Group {
                    return Ok(());
                }
                let origin = Origin::Bridge {
                    bridge: from.as_str().to_owned(),
                    copy: Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }),
                };
                return crate::hub::groups::describe_for(origin, &self.outbound, &chat, text.trim())
                    .await
                    .map(|_| ())
                    .map_err(retry_or_reject);
            }
            RemoteEvent::AvatarChanged { id, image, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() || chat.kind != ChatKind::Group {
                    return Ok(());
                }
                let origin = Origin::Bridge {
                    bridge: from.as_str().to_owned(),
                    copy: Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }),
                };
                let image = image.map(|a| a.data).filter(|d| !d.is_empty());
                return crate::hub::groups::set_avatar_for(origin, &self.outbound, &chat, image)
                    .await
                    .map(|_| ())
                    .map_err(retry_or_reject);
            }
            RemoteEvent::MemberRemoved { id, member, .. } => {
                if self.coi_id(from, &remote_chat, id.as_str()).await?.is_some() {
                    return Ok(());
                }
                let member = member.to_lowercase();
                if chat.kind != ChatKind::Group || !chat.members.contains(&member) {
                    return Err(SubmitError::Rejected(format!("{member} is not a member of the COI group")));
                }
                let origin = Origin::Bridge {
                    bridge: from.as_str().to_owned(),
                    copy: Some(RemoteCopy { remote_chat: remote_chat.clone(), remote_id: id.0, part: 0 }),
                };
                return crate::hub::groups::remove_member_for(
                    origin,
                    self.store.as_ref(),
                    &self.outbound,
                    &chat,
                    &member,
                )
                .await
                .map(|_| ())
                .map_err(retry_or_reject);
            }
            RemoteEvent::Migrated { .. } => return Ok(()),
            RemoteEvent::ReadReceipt { up_to, .. } => {
                // A receipt goes to whoever wrote the message, and only for what a COI
                // person wrote and asked receipts for (as Delta Chat does).
                let original = self.target(from, &remote_chat, up_to.as_str()).await?;
                let Some(read) = self.store.message(&original).await.map_err(store_err)? else {
                    return Err(SubmitError::Rejected(format!("message {original} is gone")));
                };
                if read.direction != Direction::In || read.from_addr.eq_ignore_ascii_case(&self.me) {
                    return Ok(());
                }
                let msg = ChatMessage {
                    kind: Kind::ReadReceipt { original, additional: Vec::new() },
                    text: "This is a receipt notification.".into(),
                    ..ChatMessage::default()
                };
                let chat_ref = ChatRef { kind: chat.kind, key: chat.key.clone(), name: chat.name.clone() };
                let origin = Origin::Bridge { bridge: from.as_str().to_owned(), copy: None };
                return self
                    .outbound
                    .queue_from(origin, chat_ref, std::slice::from_ref(&read.from_addr), msg)
                    .await
                    .map(|_| ())
                    .map_err(retry_or_reject);
            }
        };
        let origin = Origin::Bridge { bridge: from.as_str().to_owned(), copy: origin };
        self.outbound.queue_to_chat(origin, &chat, msg).await.map_err(retry_or_reject)?;
        self.metrics.messages.with_label_values(&[from.as_str(), "in"]).inc();
        Ok(())
    }
}

/// A bridge's persistent key/value state (cursors, transaction ids) in the store.
pub struct StoreState {
    store: Arc<dyn Store>,
    bridge: String,
}

impl StoreState {
    pub fn new(store: Arc<dyn Store>, bridge: &BridgeId) -> Self {
        Self { store, bridge: bridge.as_str().to_owned() }
    }
}

#[async_trait]
impl coi_bridge_api::BridgeState for StoreState {
    async fn get(&self, key: &str) -> Result<Option<String>, SubmitError> {
        self.store.bridge_state(&self.bridge, key).await.map_err(store_err)
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), SubmitError> {
        self.store.set_bridge_state(&self.bridge, key, value).await.map_err(store_err)
    }

    /// This bridge's portals' remote chats (read once at start, for routing).
    async fn remote_chats(&self) -> Result<Vec<RemoteChatId>, SubmitError> {
        let portals = crate::store::portals::PortalStore::portals(&*self.store).await.map_err(store_err)?;
        Ok(portals.into_iter().filter(|p| p.bridge == self.bridge).map(|p| p.remote_chat.into()).collect())
    }
}
