//! Moving people off Telegram: members joining and leaving reach the core's migration status (and the group's member count, which the Bot API gives where it cannot list the members), `/coi_invite` in a private chat with the bot gives a member their personal invite, a non-admin's `/coi_invite` in the group points them there, and an admin's `/coi_pair` pairs someone by hand.

use coi_bridge_api::{BridgeContext, CommandReply, Person, RemoteChatId, SubmitError};
use teloxide::prelude::Requester as _;
use teloxide::types::{ChatId, InputFile, Message, User, UserId};

use super::TelegramBridge;

/// The `/start` payload of the deep link that asks for a personal invite to a group:
/// `invite_<chat id>` (Telegram allows `A-Za-z0-9_-`, up to 64 characters).
const START_INVITE: &str = "invite_";

/// How old a group's member count may grow before a message there counts it again (the
/// core samples the portals hourly).
const RECOUNT: std::time::Duration = std::time::Duration::from_secs(3600);

fn person_of(u: &User) -> Person {
    Person { id: u.id.0.to_string().into(), display_name: u.full_name() }
}

impl TelegramBridge {
    /// Service messages about members joining or leaving a group, passed to the core;
    /// `true` when `m` was one (it carries nothing else to bridge).
    pub(super) async fn membership(&self, cx: &BridgeContext, m: &Message, me: UserId) -> Result<bool, SubmitError> {
        let chat = RemoteChatId(m.chat.id.0.to_string());
        if m.new_chat_members().is_some() || m.left_chat_member().is_some() {
            // Counted first: the core's status after a departure uses the new number.
            self.count_members(cx, m.chat.id).await;
        }
        if let Some(users) = m.new_chat_members() {
            for u in users.iter().filter(|u| !u.is_bot && u.id != me) {
                self.remember_handle(cx, u).await?;
                cx.hub.person_seen(&cx.id, &chat, &person_of(u), true).await?;
            }
            return Ok(true);
        }
        if let Some(u) = m.left_chat_member() {
            if !u.is_bot && u.id != me {
                cx.hub.person_seen(&cx.id, &chat, &person_of(u), false).await?;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Counts the members of `chat` (`getChatMemberCount`: the Bot API cannot list them)
    /// and keeps the number, the bot not counted, where the core's migration status reads
    /// it. A failed count leaves the last one (or the people seen) in place.
    pub(super) async fn count_members(&self, cx: &BridgeContext, chat: ChatId) {
        let n = match self.bot.get_chat_member_count(chat).await {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(bridge = %cx.id, chat = chat.0, error = %e, "could not count the chat's members");
                return;
            }
        };
        self.counted_at().insert(chat.0, tokio::time::Instant::now());
        let key = coi_bridge_api::member_count_key(&RemoteChatId(chat.0.to_string()));
        // Only a number the status shows: a failed write waits for the next count.
        if let Err(e) = cx.state.set(&key, &n.saturating_sub(1).to_string()).await {
            tracing::warn!(bridge = %cx.id, chat = chat.0, error = %e, "could not keep the chat's member count");
        }
    }

    /// Counts `chat`'s members again when they were not counted in the last [`RECOUNT`]
    /// (nor since the start): a group's size follows it without a join or leave message
    /// (which a big group or an admin may hide), at most one request an hour per group.
    pub(super) async fn count_members_if_due(&self, cx: &BridgeContext, chat: ChatId) {
        let due = self.counted_at().get(&chat.0).is_none_or(|at| at.elapsed() >= RECOUNT);
        if due {
            self.count_members(cx, chat).await;
        }
    }

    fn counted_at(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, tokio::time::Instant>> {
        self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The link that opens a private chat with the bot asking for a personal invite to
    /// `chat`, once the bot's username is known.
    fn invite_deep_link(&self, chat: ChatId) -> Option<String> {
        let name = self.username.get()?;
        Some(format!("https://t.me/{name}?start={START_INVITE}{}", chat.0))
    }

    /// In a group: what a member who is not an admin gets for `/coi_invite`: the way to
    /// their personal invite, in a private chat with the bot.
    pub(super) async fn invite_hint(&self, chat: ChatId, who: &User) {
        let text = match self.invite_deep_link(chat) {
            Some(link) => format!(
                "{}, your personal invite to this group's COI side is one tap away, in a private chat with me: {link}",
                who.full_name()
            ),
            None => "Write /coi_invite to me in a private chat for your personal invite.".to_owned(),
        };
        self.say(chat, &text).await;
    }

    /// Appended to an admin's `/coi_invite` in a group: members can get a personal invite.
    pub(super) fn personal_invite_line(&self, chat: ChatId) -> Option<String> {
        self.invite_deep_link(chat)
            .map(|link| format!("\nMembers: open {link} for your personal invite, so the group can see who has moved."))
    }

    /// A private message to the bot that asks for a personal invite: `/start invite_<chat>`
    /// from the deep link, or `/coi_invite` (every bridged group the person is a member of).
    /// `false` when the text is no such request.
    pub(super) async fn private_invite(
        &self,
        cx: &BridgeContext,
        m: &Message,
        text: &str,
    ) -> Result<bool, SubmitError> {
        let Some(from) = m.from.as_ref() else { return Ok(false) };
        let mut words = text.split_whitespace();
        let verb = words.next().unwrap_or_default().split('@').next().unwrap_or_default();
        let wanted: Option<i64> = match verb {
            "/start" => match words.next().and_then(|p| p.strip_prefix(START_INVITE)) {
                Some(chat) => match chat.parse() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        // Anyone can send any payload: answer, never fail the update.
                        tracing::info!(user = from.id.0, payload = chat, "a /start invite payload that is no chat id");
                        self.say(m.chat.id, "That link is not one of mine; ask in your group with /coi_invite.").await;
                        return Ok(true);
                    }
                },
                None => return Ok(false),
            },
            "/coi_invite" => None,
            _ => return Ok(false),
        };
        let chats: Vec<i64> = match wanted {
            Some(c) => vec![c],
            // Groups only (negative ids): a private chat's portal is no group to invite to.
            None => {
                let chats = cx.state.remote_chats().await?;
                chats.iter().filter_map(|c| c.as_str().parse().ok()).filter(|c: &i64| *c < 0).collect()
            }
        };
        let mut given = 0;
        for chat in chats {
            // Only a member gets one: the invite pairs whoever completes it with this user.
            let member = match self.bot.get_chat_member(ChatId(chat), from.id).await {
                Ok(cm) => cm.kind.is_present(),
                Err(e) => {
                    tracing::info!(chat, user = from.id.0, error = %e, "cannot tell whether the user is a member");
                    false
                }
            };
            if !member {
                continue;
            }
            let remote = RemoteChatId(chat.to_string());
            match cx.hub.personal_invite(&cx.id, &remote, &person_of(from)).await {
                Ok(reply) => {
                    self.answer(m.chat.id, reply).await;
                    given += 1;
                }
                Err(SubmitError::Rejected(e)) => {
                    tracing::info!(chat, user = from.id.0, reason = %e, "no personal invite");
                }
                Err(e) => return Err(e),
            }
        }
        if given == 0 {
            self.say(
                m.chat.id,
                "I found no bridged group of yours. Ask in the group with /coi_invite, then open the link I post there.",
            )
            .await;
        }
        Ok(true)
    }

    /// An admin's `/coi_pair ADDRESS` as a reply to the person's message, or
    /// `/coi_pair USER_ID ADDRESS`, or `/coi_pair @username ADDRESS` (a handle the bot has seen).
    pub(super) async fn pair_command(&self, cx: &BridgeContext, m: &Message, args: &str) -> Result<(), SubmitError> {
        let words: Vec<&str> = args.split_whitespace().collect();
        let target: Option<Person> = match words.as_slice() {
            [_address] => m.reply_to_message().and_then(|r| r.from.as_ref()).filter(|u| !u.is_bot).map(person_of),
            [handle, _] if handle.starts_with('@') => match self.person_by_handle(cx, handle).await? {
                Some(p) => Some(p),
                None => {
                    let h = handle.trim_start_matches('@');
                    let who = if super::private::valid_handle(h) { format!("@{h}") } else { "that handle".to_owned() };
                    let text = format!(
                        "I do not know {who} yet: I learn handles from what people write where I am. Reply to their \
                         message with /coi_pair ADDRESS instead."
                    );
                    self.say(m.chat.id, &text).await;
                    return Ok(());
                }
            },
            [id, _] => {
                id.parse::<u64>().ok().map(|id| Person { id: id.to_string().into(), display_name: id.to_string() })
            }
            _ => None,
        };
        let address = words.last().copied().filter(|a| a.contains('@'));
        let (Some(person), Some(address)) = (target, address) else {
            self.say(
                m.chat.id,
                "Usage: reply to the person's message with /coi_pair ADDRESS, or /coi_pair @username ADDRESS, or \
                 /coi_pair TELEGRAM_USER_ID ADDRESS.",
            )
            .await;
            return Ok(());
        };
        let chat = RemoteChatId(m.chat.id.0.to_string());
        match cx.hub.pair(&cx.id, &chat, &person, address).await {
            Ok(reply) => {
                self.answer(m.chat.id, reply).await;
                Ok(())
            }
            Err(SubmitError::Rejected(e)) => {
                self.say(m.chat.id, &format!("That did not work: {e}")).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Posts a command's reply, with its QR code if it has one.
    pub(super) async fn answer(&self, chat: ChatId, reply: CommandReply) {
        self.say(chat, &reply.text).await;
        if let Some(png) = reply.qr_png
            && let Err(e) = self.bot.send_photo(chat, InputFile::memory(png).file_name("invite-qr.png")).await
        {
            tracing::warn!(error = %e, "could not post the QR code");
        }
    }
}
