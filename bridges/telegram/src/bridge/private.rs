//! Private chats with the bot reach their people: a Telegram user's messages go to the bridge's `owners` on COI, or after `/coi_to @handle` to the moved person paired with that handle, each private chat (and target) as a COI group of its own; and the @handles the bot has seen, for `/coi_to` and `/coi_pair @username`.
//!
//! The core's portal for a private chat is keyed by the chat id ("4242") when it reaches
//! the owners, and by "4242/5101" when it reaches the person paired with Telegram user
//! 5101: both stay, so an answer from either COI group still reaches the Telegram chat.

use coi_bridge_api::{BridgeContext, Person, PrivateChat, PrivateTo, RemoteChatId, SubmitError};
use teloxide::types::{ChatId, Message, User};

use super::TelegramBridge;

/// Between a private chat's id and the paired user it reaches, in the portal's remote id.
pub(super) const TO: char = '/';

/// How many @handles are kept in memory to skip writing a sighting the store has.
const HANDLES_CACHED: usize = 10_000;

/// What a private message gets when nobody takes them.
const NO_PRIVATE: &str = "This bot does not take private messages. Here you can ask for your personal invite to a \
                          bridged group of yours with /coi_invite, or write to someone who moved to COI with /coi_to \
                          @handle.";

const BUSY: &str = "Too many people are starting chats with me right now. Your message was not passed on; please \
                    send it again in a minute.";

/// A Telegram username as Telegram spells them: up to 32 of `A-Za-z0-9_`.
pub(super) fn valid_handle(h: &str) -> bool {
    (1..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn person_of(u: &User) -> Person {
    Person { id: u.id.0.to_string().into(), display_name: u.full_name() }
}

impl TelegramBridge {
    /// Remembers `user`'s @username (lower-cased) as their id and name, when it is new or
    /// changed: `/coi_to` and `/coi_pair @username` find people by it.
    pub(super) async fn remember_handle(&self, cx: &BridgeContext, user: &User) -> Result<(), SubmitError> {
        let Some(handle) = user.username.as_deref().filter(|h| !user.is_bot && valid_handle(h)) else {
            return Ok(());
        };
        let handle = handle.to_lowercase();
        let value = format!("{} {}", user.id.0, user.full_name());
        let lock = || self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lock().get(&handle) == Some(&value) {
            return Ok(());
        }
        cx.state.set(&format!("username:{handle}"), &value).await?;
        let mut seen = lock();
        if seen.len() >= HANDLES_CACHED {
            seen.clear();
        }
        seen.insert(handle, value);
        Ok(())
    }

    /// The person `@handle` names, as the bot last saw them; `None` for a handle it has
    /// not seen (or that is no handle).
    pub(super) async fn person_by_handle(
        &self,
        cx: &BridgeContext,
        handle: &str,
    ) -> Result<Option<Person>, SubmitError> {
        let h = handle.trim_start_matches('@');
        if !valid_handle(h) {
            return Ok(None);
        }
        let Some(v) = cx.state.get(&format!("username:{}", h.to_lowercase())).await? else { return Ok(None) };
        let (id, name) = v.split_once(' ').unwrap_or((v.as_str(), ""));
        if id.parse::<u64>().is_err() {
            return Ok(None);
        }
        let name = if name.trim().is_empty() { format!("@{h}") } else { name.to_owned() };
        Ok(Some(Person { id: id.into(), display_name: name }))
    }

    /// Where the private chat `chat` goes now: the portal's remote id, and whom it reaches.
    pub(super) async fn private_target(
        &self,
        cx: &BridgeContext,
        chat: ChatId,
    ) -> Result<(RemoteChatId, PrivateTo), SubmitError> {
        let to = cx.state.get(&format!("private_to:{}", chat.0)).await?.filter(|u| !u.is_empty());
        Ok(match to {
            Some(user) => (RemoteChatId(format!("{}{TO}{user}", chat.0)), PrivateTo::Paired(user.into())),
            None => (RemoteChatId(chat.0.to_string()), PrivateTo::Owners(self.cfg.owner_list())),
        })
    }

    /// `/start` without an invite payload, and `/coi_to`, in a private chat; `false` for
    /// any other text.
    pub(super) async fn private_command(
        &self,
        cx: &BridgeContext,
        m: &Message,
        text: &str,
    ) -> Result<bool, SubmitError> {
        let mut words = text.split_whitespace();
        let verb = words.next().unwrap_or_default().split('@').next().unwrap_or_default();
        match verb {
            "/start" => {
                let text = if self.cfg.owners.is_empty() {
                    NO_PRIVATE
                } else {
                    "Hello! What you write here reaches the people behind this bridge on COI (Delta Chat), and their \
                     answers come back here. /coi_to @handle writes to someone who moved to COI instead; /coi_invite \
                     gives you your personal invite to a bridged group of yours."
                };
                self.say(m.chat.id, text).await;
                Ok(true)
            }
            "/coi_to" => {
                self.point(cx, m, words.next()).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `/coi_to @handle`: this private chat reaches the person paired with that Telegram
    /// user from now on; `/coi_to` alone: the owners again. The answer never says an address.
    async fn point(&self, cx: &BridgeContext, m: &Message, handle: Option<&str>) -> Result<(), SubmitError> {
        let Some(from) = m.from.as_ref() else { return Ok(()) };
        let key = format!("private_to:{}", m.chat.id.0);
        let Some(handle) = handle else {
            cx.state.set(&key, "").await?;
            let text = if self.cfg.owners.is_empty() {
                NO_PRIVATE
            } else {
                "Your messages here go to the people behind this bridge again."
            };
            self.say(m.chat.id, text).await;
            return Ok(());
        };
        let Some(target) = self.person_by_handle(cx, handle).await? else {
            let h = handle.trim_start_matches('@');
            let who = if valid_handle(h) { format!("@{h}") } else { "that handle".to_owned() };
            tracing::info!(bridge = %cx.id, user = from.id.0, "/coi_to names a handle the bot has not seen");
            let text = format!("I do not know {who}: I only know people who wrote in a group I am in.");
            self.say(m.chat.id, &text).await;
            return Ok(());
        };
        let remote = RemoteChatId(format!("{}{TO}{}", m.chat.id.0, target.id));
        let to = PrivateTo::Paired(target.id.clone());
        let name = &target.display_name;
        let text = match cx.hub.private_chat(&cx.id, &remote, &person_of(from), &to).await? {
            PrivateChat::Ready { .. } => {
                cx.state.set(&key, target.id.as_str()).await?;
                tracing::info!(bridge = %cx.id, user = from.id.0, to = %target.id, "a private chat now reaches a moved person");
                format!(
                    "Your messages here now go to {name} on COI, and their answers come back here. /coi_to alone \
                     switches back."
                )
            }
            PrivateChat::NotPaired | PrivateChat::NoOwners => {
                format!("{name} has not moved to COI through this bridge, so I cannot pass messages on to them.")
            }
            PrivateChat::Nobody => format!("{name} left your conversation on COI, so I cannot pass messages on."),
            PrivateChat::NoKey => format!("I cannot reach {name} on COI yet; please try again later."),
            PrivateChat::Busy => {
                "Too many people are starting chats with me right now; please try /coi_to again in a minute.".to_owned()
            }
        };
        self.say(m.chat.id, &text).await;
        Ok(())
    }

    /// The remote chat a private message goes to, its COI group opened on the first one;
    /// `None` when nobody takes private messages (the person is told). `Err(Rejected)`
    /// sets the message aside (a dead letter, for the operator) after telling the person
    /// plainly: no key for anyone it would reach yet, too many new chats this minute, or
    /// the `/coi_to` person paired with nobody any more. Holding the update instead would
    /// stop every update behind it for as long as that lasts.
    pub(super) async fn private_route(
        &self,
        cx: &BridgeContext,
        m: &Message,
        edited: bool,
    ) -> Result<Option<RemoteChatId>, SubmitError> {
        let Some(from) = m.from.as_ref() else { return Ok(None) };
        let (remote, to) = self.private_target(cx, m.chat.id).await?;
        if edited {
            return Ok(Some(remote));
        }
        let (text, reason) = match cx.hub.private_chat(&cx.id, &remote, &person_of(from), &to).await? {
            PrivateChat::Ready { opened } => {
                if opened && matches!(to, PrivateTo::Owners(_)) {
                    let text = "Your message went to the people behind this bridge on COI (Delta Chat); their \
                                answers come back here.";
                    self.say(m.chat.id, text).await;
                }
                return Ok(Some(remote));
            }
            PrivateChat::NoOwners => {
                tracing::info!(bridge = %cx.id, user = from.id.0, "a private message, and no owners take them");
                self.say(m.chat.id, NO_PRIVATE).await;
                return Ok(None);
            }
            PrivateChat::Nobody => {
                tracing::info!(bridge = %cx.id, user = from.id.0, remote = %remote, "a private message, and everyone left its COI chat");
                let text = "Nobody on COI reads this conversation now (they left it), so your message was not passed \
                            on.";
                self.say(m.chat.id, text).await;
                return Ok(None);
            }
            PrivateChat::NotPaired => {
                cx.state.set(&format!("private_to:{}", m.chat.id.0), "").await?;
                (
                    "The person you chose with /coi_to cannot be reached through this bridge any more, so your \
                     message was not passed on. Your next messages go to the people behind this bridge; /coi_to \
                     @handle chooses someone else.",
                    "the person chosen with /coi_to is paired with nobody now",
                )
            }
            PrivateChat::NoKey => (
                "I cannot pass your message on yet: the bridge has no encryption key for the people it would reach \
                 on COI. It was not passed on; please send it again later.",
                "a private message, and the bridge has no key for anyone it would reach",
            ),
            PrivateChat::Busy => (BUSY, "a new private chat, and too many were opened this minute"),
        };
        self.say(m.chat.id, text).await;
        Err(SubmitError::Rejected(reason.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::valid_handle;

    #[test]
    fn handles_are_what_telegram_allows() {
        assert!(valid_handle("ann_tg") && valid_handle("Ann_TG5"));
        assert!(!valid_handle("") && !valid_handle("ann tg") && !valid_handle("ann-tg") && !valid_handle("änn"));
        assert!(!valid_handle(&"a".repeat(33)));
    }
}
