//! Outgoing messages in a form Telegram takes ([`crate::limits`]): a picture with a short text as one captioned photo, a picture over 10 MB as a document, voice notes only for OGG/Opus, text over 4,096 characters in parts (resumed, not repeated, after a retry), caption edits for media, reactions outside Telegram's list handed back to the core, and a send into a group that became a supergroup followed there.

use coi_bridge_api::{Attachment, DeliverError, DeliveryKey, Person, RemoteChatId, RemoteEvent, RemoteMsgId, Speaker};
use teloxide::RequestError;
use teloxide::payloads::{
    EditMessageCaptionSetters as _, EditMessageTextSetters as _, SendAudioSetters as _, SendDocumentSetters as _,
    SendMessageSetters as _, SendPhotoSetters as _, SendVideoSetters as _, SendVoiceSetters as _,
    SetMessageReactionSetters as _,
};
use teloxide::prelude::Requester as _;
use teloxide::requests::Request as _;
use teloxide::types::{
    ChatId, InputFile, InputMedia, InputMediaPhoto, MessageId, ParseMode, ReactionType, ReplyParameters,
};

/// A Bot API call on its way, whatever its payload.
type Call<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, RequestError>> + Send>>;

use super::{TelegramBridge, lowered, message_id};
use crate::limits;

/// How one file goes to Telegram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Photo,
    Document,
    Voice,
    Audio,
    Video,
}

/// The method Telegram shows `a` best with: a photo only up to 10 MB, a voice note only
/// for OGG/Opus, audio only for MP3/M4A; anything else as a document.
pub fn method_for(a: &Attachment) -> Method {
    if a.mime.starts_with("image/") && a.mime != "image/gif" {
        if a.data.len() as u64 <= limits::MAX_PHOTO_BYTES { Method::Photo } else { Method::Document }
    } else if a.mime.starts_with("audio/") || a.mime == "application/ogg" {
        if limits::is_ogg_opus(&a.data) {
            Method::Voice
        } else if limits::is_mp3_or_m4a(&a.data) {
            Method::Audio
        } else {
            Method::Document
        }
    } else if a.mime.starts_with("video/") {
        Method::Video
    } else {
        Method::Document
    }
}

/// The longest head of `text` that fits `room` UTF-16 units, cut at a line break or a
/// space in its second half where there is one, and the rest (whitespace at the cut dropped).
pub fn head(text: &str, room: usize) -> (&str, &str) {
    if limits::text_len(text) <= room {
        return (text, "");
    }
    let mut units = 0;
    let mut cut = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > room {
            break;
        }
        cut = i + c.len_utf8();
    }
    if cut == 0 {
        // Not even one character fits: take one anyway, or nothing would ever move.
        cut = text.chars().next().map_or(0, char::len_utf8);
    }
    let window = &text[..cut];
    let at = window.rfind('\n').filter(|p| *p >= cut / 2).or_else(|| window.rfind(' ').filter(|p| *p >= cut / 2));
    let (piece, rest) = match at {
        Some(p) => (&text[..p], &text[p..]),
        None => text.split_at(cut),
    };
    (piece.trim_end(), rest.trim_start())
}

/// `text` in pieces of at most `room` UTF-16 units, in order; one empty piece for "".
pub fn split(text: &str, room: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let (piece, more) = head(rest, room);
        out.push(piece);
        if more.is_empty() {
            return out;
        }
        rest = more;
    }
}

/// One Telegram message (or album) of a delivery.
enum Part<'a> {
    Text { html: String },
    File { file: &'a Attachment, how: Method, caption: String },
    Album { files: Vec<(&'a Attachment, String)> },
}

impl TelegramBridge {
    /// How many characters the name prefix takes on Telegram ("Alice: ", after parsing).
    fn prefix_len(&self, sender: &Person) -> usize {
        match sender.speaker(&self.coi_address, &self.coi_name) {
            Speaker::Bridge => 0,
            _ => limits::text_len(&sender.display_name) + 2,
        }
    }

    /// The messages `text` and `attachments` become, in order.
    fn plan<'a>(&self, sender: &Person, text: &str, attachments: &'a [Attachment]) -> Vec<Part<'a>> {
        let prefix = self.prefix_len(sender);
        let caption_room = limits::MAX_CAPTION.saturating_sub(prefix).max(1);
        // Delta Chat's picture with a short text: one captioned photo, as Telegram users send it.
        if let [file] = attachments
            && !text.is_empty()
            && limits::text_len(text) <= caption_room
        {
            return vec![Part::File { file, how: method_for(file), caption: self.prefixed(sender, text) }];
        }
        let mut parts = Vec::new();
        if !text.is_empty() || attachments.is_empty() {
            let room = limits::MAX_TEXT.saturating_sub(prefix).max(1);
            parts.extend(split(text, room).into_iter().map(|p| Part::Text { html: self.prefixed(sender, p) }));
        }
        let named = |a: &Attachment| self.prefixed(sender, head(&a.name, caption_room).0);
        // Several pictures go as one album, as a Telegram user would send them.
        if (2..=10).contains(&attachments.len()) && attachments.iter().all(|a| method_for(a) == Method::Photo) {
            parts.push(Part::Album { files: attachments.iter().map(|a| (a, named(a))).collect() });
        } else {
            parts.extend(attachments.iter().map(|a| Part::File { file: a, how: method_for(a), caption: named(a) }));
        }
        parts
    }

    /// Sends a COI message as the parts of [`Self::plan`]. Parts already sent by an
    /// attempt that failed later are not sent again: the retry goes on where it stopped.
    pub(super) async fn send_message(
        &self,
        chat: ChatId,
        key: &DeliveryKey,
        sender: &Person,
        text: &str,
        attachments: &[Attachment],
        reply_to: Option<&RemoteMsgId>,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        if let Some(a) = attachments.iter().find(|a| a.data.len() as u64 > self.cfg.max_file_bytes) {
            return Err(DeliverError::Permanent(format!("{} is over max_file_bytes", a.name)));
        }
        let reply = reply_to.map(message_id).transpose()?;
        let parts = self.plan(sender, text, attachments);
        let mut done = self.journal().remove(&key.0).unwrap_or_default();
        for (i, part) in parts.iter().enumerate().skip(done.len()) {
            if i > 0 {
                self.pace(self.current_chat(chat)).await;
            }
            match self.send_part(chat, part, if i == 0 { reply } else { None }).await {
                Ok(ids) => done.push(ids),
                Err(e) => {
                    // Only a retry comes back for the rest; after a permanent failure none does.
                    if !done.is_empty() && matches!(e, DeliverError::Retry { .. }) {
                        self.journal().insert(key.0.clone(), done);
                    }
                    return Err(e);
                }
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Vec<RemoteMsgId>>>> {
        self.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn send_part(
        &self,
        chat: ChatId,
        part: &Part<'_>,
        reply: Option<MessageId>,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let replying = || reply.map(|r| ReplyParameters::new(r).allow_sending_without_reply());
        match part {
            Part::Text { html } => {
                let (_, sent) = self
                    .followed(chat, |c| {
                        let mut req = self.bot.send_message(c, html.clone()).parse_mode(ParseMode::Html);
                        if let Some(r) = replying() {
                            req = req.reply_parameters(r);
                        }
                        req.send()
                    })
                    .await?;
                Ok(vec![RemoteMsgId(sent.id.0.to_string())])
            }
            Part::File { file, how, caption } => {
                let (c, sent) = match self.send_file(chat, file, *how, caption, replying()).await {
                    // Telegram refused it as a photo (size, dimensions): a document keeps it whole.
                    Err(DeliverError::Permanent(e)) if *how == Method::Photo && e.contains("PHOTO") => {
                        tracing::info!(reason = %e, file = %file.name, "a picture Telegram refused as a photo goes as a document");
                        self.send_file(chat, file, Method::Document, caption, replying()).await?
                    }
                    other => other?,
                };
                self.mark_media(c, sent).await;
                Ok(vec![RemoteMsgId(sent.0.to_string())])
            }
            Part::Album { files } => {
                let (c, sent) = self
                    .followed(chat, |c| {
                        let media: Vec<InputMedia> = files
                            .iter()
                            .map(|(a, caption)| {
                                let file = InputFile::memory(a.data.clone()).file_name(a.name.clone());
                                InputMedia::Photo(
                                    InputMediaPhoto::new(file).caption(caption.clone()).parse_mode(ParseMode::Html),
                                )
                            })
                            .collect();
                        let mut req = self.bot.send_media_group(c, media);
                        if let Some(r) = replying() {
                            use teloxide::payloads::SendMediaGroupSetters as _;
                            req = req.reply_parameters(r);
                        }
                        req.send()
                    })
                    .await?;
                for m in &sent {
                    self.mark_media(c, m.id).await;
                }
                Ok(sent.iter().map(|m| RemoteMsgId(m.id.0.to_string())).collect())
            }
        }
    }

    async fn send_file(
        &self,
        chat: ChatId,
        a: &Attachment,
        how: Method,
        caption: &str,
        reply: Option<ReplyParameters>,
    ) -> Result<(ChatId, MessageId), DeliverError> {
        let caption = caption.to_owned();
        let (c, sent) = self
            .followed(chat, |c| -> Call<teloxide::types::Message> {
                let file = InputFile::memory(a.data.clone()).file_name(a.name.clone());
                let caption = caption.clone();
                let html = ParseMode::Html;
                macro_rules! with_reply {
                    ($req:expr) => {{
                        let mut req = $req.caption(caption).parse_mode(html);
                        if let Some(r) = reply.clone() {
                            req = req.reply_parameters(r);
                        }
                        Box::pin(req.send())
                    }};
                }
                match how {
                    Method::Photo => with_reply!(self.bot.send_photo(c, file)),
                    Method::Voice => with_reply!(self.bot.send_voice(c, file)),
                    Method::Audio => with_reply!(self.bot.send_audio(c, file)),
                    Method::Video => with_reply!(self.bot.send_video(c, file)),
                    Method::Document => with_reply!(self.bot.send_document(c, file)),
                }
            })
            .await?;
        Ok((c, sent.id))
    }

    /// An edit: the caption of a media message, the text of any other. A text over the
    /// limit keeps its head in the message and follows as replies to it.
    pub(super) async fn edit(
        &self,
        chat: ChatId,
        sender: &Person,
        target: &RemoteMsgId,
        new_text: &str,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let target = message_id(target)?;
        let prefix = self.prefix_len(sender);
        let mut media = self.is_media(self.current_chat(chat), target).await;
        let text_room = limits::MAX_TEXT.saturating_sub(prefix).max(1);
        let mut rest = "";
        if !media {
            let (piece, more) = head(new_text, text_room);
            let html = self.prefixed(sender, piece);
            let edited = self
                .followed(chat, |c| {
                    self.bot.edit_message_text(c, target, html.clone()).parse_mode(ParseMode::Html).send()
                })
                .await;
            match edited {
                Ok(_) => rest = more,
                // The remote message carries a file after all (sent before the bridge kept track).
                Err(DeliverError::Permanent(e)) if e.contains("no text in the message") => {
                    self.mark_media(self.current_chat(chat), target).await;
                    media = true;
                }
                Err(e) => return Err(e),
            }
        }
        if media {
            let (piece, more) = head(new_text, limits::MAX_CAPTION.saturating_sub(prefix).max(1));
            let html = self.prefixed(sender, piece);
            self.followed(chat, |c| {
                self.bot.edit_message_caption(c, target).caption(html.clone()).parse_mode(ParseMode::Html).send()
            })
            .await?;
            rest = more;
        }
        let mut ids = vec![RemoteMsgId(format!("{}-edit", target.0))];
        for piece in if rest.is_empty() { Vec::new() } else { split(rest, text_room) } {
            self.pace(self.current_chat(chat)).await;
            let part = Part::Text { html: self.prefixed(sender, piece) };
            ids.extend(self.send_part(chat, &part, Some(target)).await?);
        }
        Ok(ids)
    }

    /// A reaction, spelled as Telegram lists it; one Telegram does not take goes back to
    /// the core as [`DeliverError::Unsupported`], which sends it as a short text instead.
    pub(super) async fn react(&self, chat: ChatId, target: &RemoteMsgId, emoji: &str) -> Result<(), DeliverError> {
        let target = message_id(target)?;
        let reaction = if emoji.is_empty() {
            Vec::new()
        } else {
            let Some(allowed) = limits::reaction_emoji(emoji) else { return Err(DeliverError::Unsupported) };
            vec![ReactionType::Emoji { emoji: allowed.to_owned() }]
        };
        let set =
            self.followed(chat, |c| self.bot.set_message_reaction(c, target).reaction(reaction.clone()).send()).await;
        match set {
            Err(DeliverError::Permanent(e)) if e.contains("REACTION_INVALID") => Err(DeliverError::Unsupported),
            other => other.map(|_| ()),
        }
    }

    /// A delete, in the chat the group became if it moved.
    pub(super) async fn delete(&self, chat: ChatId, target: &RemoteMsgId) -> Result<(), DeliverError> {
        let target = message_id(target)?;
        self.followed(chat, |c| self.bot.delete_message(c, target).send()).await.map(|_| ())
    }

    /// Where a chat is now: the supergroup it became, once Telegram said so.
    pub(super) fn current_chat(&self, chat: ChatId) -> ChatId {
        let moved = self.moved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = chat;
        for _ in 0..4 {
            match moved.get(&at.0) {
                Some(next) => at = ChatId(*next),
                None => break,
            }
        }
        at
    }

    /// Runs `op` in the chat's current place; when Telegram answers that the group became
    /// a supergroup, the bridge follows it (the portal too) and runs `op` there. Nothing
    /// was sent by the refused call, so nothing is sent twice.
    pub(super) async fn followed<T, F, Fut>(&self, chat: ChatId, op: F) -> Result<(ChatId, T), DeliverError>
    where
        F: Fn(ChatId) -> Fut,
        Fut: std::future::Future<Output = Result<T, RequestError>>,
    {
        let mut at = self.current_chat(chat);
        for _ in 0..3 {
            match op(at).await {
                Ok(t) => return Ok((at, t)),
                Err(RequestError::MigrateToChatId(new)) if new != at => {
                    self.follow(at, new).await;
                    at = new;
                }
                Err(e) => return Err(lowered(e)),
            }
        }
        Err(DeliverError::Retry { reason: format!("chat {} keeps moving", chat.0), after: None })
    }

    /// Remembers that `old` became `new`, lets `new` inherit `old`'s place on the
    /// allowlist, and moves the portal (the service message will say the same; the hub
    /// takes it twice without harm).
    async fn follow(&self, old: ChatId, new: ChatId) {
        tracing::info!(old = old.0, new = new.0, "Telegram says the group is now a supergroup; sending there");
        self.moved.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(old.0, new.0);
        let Some(cx) = self.context() else { return };
        let allowed =
            self.cfg.is_allowed(old.0) || matches!(cx.state.get(&format!("allowed:{}", old.0)).await, Ok(Some(_)));
        if allowed && let Err(e) = cx.state.set(&format!("allowed:{}", new.0), &old.0.to_string()).await {
            tracing::warn!(bridge = %cx.id, error = %e, "could not carry the allowlist over to the supergroup");
        }
        let event =
            RemoteEvent::Migrated { chat: RemoteChatId(old.0.to_string()), new_chat: RemoteChatId(new.0.to_string()) };
        if let Err(e) = cx.hub.submit(&cx.id, event).await {
            // The service message in getUpdates moves the portal as well.
            tracing::warn!(bridge = %cx.id, error = %e, "could not move the portal yet");
        }
    }

    /// Notes that a message carries a file: its text is a caption, edited as one.
    async fn mark_media(&self, chat: ChatId, id: MessageId) {
        let Some(cx) = self.context() else { return };
        if let Err(e) = cx.state.set(&format!("media:{}:{}", chat.0, id.0), "1").await {
            tracing::warn!(bridge = %cx.id, error = %e, "could not note a media message (its edits find out)");
        }
    }

    async fn is_media(&self, chat: ChatId, id: MessageId) -> bool {
        let Some(cx) = self.context() else { return false };
        matches!(cx.state.get(&format!("media:{}:{}", chat.0, id.0)).await, Ok(Some(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_words_and_nothing_is_lost() {
        let text = "word ".repeat(2000);
        let pieces = split(text.trim_end(), 4096);
        assert!(pieces.iter().all(|p| limits::text_len(p) <= 4096));
        assert_eq!(pieces.join(" "), text.trim_end());
        assert_eq!(split("", 10), vec![""]);
        // UTF-16: an emoji outside the BMP counts twice.
        let (piece, rest) = head("😂😂😂", 4);
        assert_eq!((piece, rest), ("😂😂", "😂"));
        assert_eq!(head("abcdef", 3), ("abc", "def"));
    }

    #[test]
    fn files_go_as_what_telegram_takes() {
        let a = |mime: &str, data: &[u8]| Attachment { name: "f".into(), mime: mime.into(), data: data.to_vec() };
        assert_eq!(method_for(&a("image/png", b"png")), Method::Photo);
        let big = vec![0u8; limits::MAX_PHOTO_BYTES as usize + 1];
        assert_eq!(method_for(&a("image/jpeg", &big)), Method::Document);
        assert_eq!(method_for(&a("audio/ogg", b"OggS but vorbis")), Method::Document);
        assert_eq!(method_for(&a("audio/mpeg", b"ID3\x04")), Method::Audio);
        assert_eq!(method_for(&a("video/mp4", b"x")), Method::Video);
    }
}
