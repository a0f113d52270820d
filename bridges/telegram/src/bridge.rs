//! The Telegram side of the `Bridge` contract: long polling in (offset persisted only after a durable submit, or once the update is set aside as a dead letter), bot messages out with bold name prefixes in forms Telegram takes ([`send`]), 429 `retry_after` honoured by the core's per-chat order.

use std::time::Duration;

use async_trait::async_trait;
use coi_bridge_api::{
    Attachment, Bridge, BridgeContext, BridgeError, Capabilities, Command, DeliverError, DeliveryKey, Outgoing, Person,
    RemoteChatId, RemoteEvent, RemoteMsgId, SubmitError,
};
use teloxide::net::Download as _;
use teloxide::payloads::GetUpdatesSetters as _;
use teloxide::prelude::Requester as _;
use teloxide::types::{AllowedUpdate, ChatId, Message, MessageId, ReactionType, Update, UpdateKind, UserId};
use teloxide::{ApiError, Bot, RequestError};

use crate::config::TelegramConfig;

mod migration;
mod private;
pub mod send;
mod updates;

/// Seconds one `getUpdates` long-polls: Telegram's most, so an idle bot makes one HTTP
/// round trip in 50 s (1,000 bots at 10 s each were 100 a second).
const LONG_POLL: u32 = 50;

/// Seconds any Bot API request may take (teloxide's own default is 17 s, too short
/// for a 50-s long poll). Connecting still times out after 5 s.
const HTTP_TIMEOUT_SECS: u64 = 65;
const _: () = assert!(LONG_POLL as u64 + 10 <= HTTP_TIMEOUT_SECS, "a long poll ends before its HTTP request times out");

/// A bot for `token` on the process's one HTTP client: every bot (one per account in a
/// directory of accounts) shares its connection pool and TLS setup instead of parsing the
/// root store and keeping a pool of its own.
fn bot_on_shared_client(token: &str) -> Result<Bot, String> {
    static CLIENT: std::sync::OnceLock<Result<Bot, String>> = std::sync::OnceLock::new();
    let proto = CLIENT.get_or_init(|| {
        teloxide::net::default_reqwest_settings()
            .timeout(Duration::from_secs(HTTP_TIMEOUT_SECS))
            .build()
            .map(|client| Bot::with_client("", client))
            .map_err(|e| format!("the Telegram HTTP client: {e}"))
    });
    Ok(Bot::with_client(token, proto.as_ref().map_err(Clone::clone)?.client().clone()))
}

pub struct TelegramBridge {
    cfg: TelegramConfig,
    bot: Bot,
    /// The bridge's own COI address: its messages carry no name prefix.
    coi_address: String,
    /// The bridge's own display name: its own messages carry no prefix.
    coi_name: String,
    /// When the bot may next send into each chat, and over all chats.
    pace: tokio::sync::Mutex<Pace>,
    /// The running bridge's context (hub, state), for what `deliver` learns on the way:
    /// a group that moved, a message that carries a file.
    cx: std::sync::RwLock<Option<BridgeContext>>,
    /// Groups Telegram told us became supergroups: old chat id → new.
    moved: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
    /// The parts of a multi-part delivery already sent, by delivery key, while its
    /// later parts wait for a retry.
    partial: std::sync::Mutex<std::collections::HashMap<String, Vec<Vec<RemoteMsgId>>>>,
    /// The bot's username (from `getMe`), for links that open a private chat with it.
    username: std::sync::OnceLock<String>,
    /// @handles (lower-cased) already in the bridge state, with the id and name written.
    handles: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// When each group's members were last counted ([`migration`]).
    counted: std::sync::Mutex<std::collections::HashMap<i64, tokio::time::Instant>>,
}

/// Telegram's limits, kept before Telegram has to answer 429.
#[derive(Default)]
struct Pace {
    next_in_chat: std::collections::HashMap<i64, tokio::time::Instant>,
    next_any: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for TelegramBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramBridge").field("id", &self.cfg.id).field("api_url", &self.cfg.api_url).finish()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Telegram's answers, sorted into what the core does next.
fn lowered(e: RequestError) -> DeliverError {
    match e {
        RequestError::RetryAfter(s) => {
            DeliverError::Retry { reason: "429 Too Many Requests".into(), after: Some(s.duration()) }
        }
        RequestError::Network(e) => DeliverError::Retry { reason: e.to_string(), after: None },
        RequestError::Io(e) => DeliverError::Retry { reason: e.to_string(), after: None },
        RequestError::Api(ApiError::Unknown(m)) if m.contains("Internal Server Error") || m.contains("Bad Gateway") => {
            DeliverError::Retry { reason: m, after: None }
        }
        other => DeliverError::Permanent(other.to_string()),
    }
}

/// The Telegram chat of a portal's remote id: "4242", or "4242/5101" for a private chat
/// that reaches a moved person ([`private`]).
fn chat_id(to: &RemoteChatId) -> Result<ChatId, DeliverError> {
    let chat = to.as_str().split(private::TO).next().unwrap_or_default();
    chat.parse().map(ChatId).map_err(|_| DeliverError::Permanent(format!("{to} is not a Telegram chat id")))
}

fn message_id(m: &RemoteMsgId) -> Result<MessageId, DeliverError> {
    m.as_str().parse().map(MessageId).map_err(|_| DeliverError::Permanent(format!("{m} is not a Telegram message id")))
}

/// "Name (Telegram)" as COI shows it comes from the hub; the person is their Telegram name.
fn person(m: &Message) -> Option<Person> {
    let from = m.from.as_ref()?;
    Some(Person { id: from.id.0.to_string().into(), display_name: from.full_name() })
}

impl TelegramBridge {
    /// No network I/O; `run` connects.
    pub fn new(cfg: TelegramConfig, token: &str, coi_address: &str, coi_name: &str) -> Result<Self, String> {
        let url = url::Url::parse(&cfg.api_url).map_err(|e| format!("api_url {:?}: {e}", cfg.api_url))?;
        let bot = bot_on_shared_client(token)?.set_api_url(url);
        Ok(Self {
            cfg,
            bot,
            coi_address: coi_address.to_lowercase(),
            coi_name: coi_name.to_owned(),
            pace: tokio::sync::Mutex::default(),
            cx: std::sync::RwLock::default(),
            moved: std::sync::Mutex::default(),
            partial: std::sync::Mutex::default(),
            username: std::sync::OnceLock::new(),
            handles: std::sync::Mutex::default(),
            counted: std::sync::Mutex::default(),
        })
    }

    /// For `coi-bridge check`: `getMe` with the token. On failure, what went wrong and the fix.
    pub async fn check(&self) -> Result<String, (String, String)> {
        match self.bot.get_me().await {
            Ok(me) => Ok(format!(
                "{} answers getMe: @{} ({})",
                self.cfg.api_url,
                me.user.username.as_deref().unwrap_or("?"),
                me.user.full_name()
            )),
            Err(RequestError::Api(ApiError::InvalidToken)) => Err((
                "Telegram refused the bot token".into(),
                "put the token @BotFather gave into token_file (or COI_BRIDGE_TELEGRAM_TOKEN)".into(),
            )),
            Err(e) => Err((
                format!("getMe at {}: {e}", self.cfg.api_url),
                "is api.telegram.org (or api_url) reachable from here?".into(),
            )),
        }
    }

    /// Waits until the bot may send into `chat` again, and books the slot. The core
    /// delivers one message per chat at a time, so this only ever delays, never reorders.
    async fn pace(&self, chat: ChatId) {
        let wait_until = {
            let mut p = self.pace.lock().await;
            let now = tokio::time::Instant::now();
            let chat_at = p.next_in_chat.get(&chat.0).copied().unwrap_or(now).max(now);
            let at = chat_at.max(p.next_any.unwrap_or(now));
            p.next_in_chat.insert(chat.0, at + Duration::from_millis(self.cfg.chat_interval_ms));
            p.next_any = Some(at + Duration::from_secs(1) / self.cfg.global_per_second.max(1));
            at
        };
        tokio::time::sleep_until(wait_until).await;
    }

    fn context(&self) -> Option<BridgeContext> {
        self.cx.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn prefixed(&self, sender: &Person, text: &str) -> String {
        if sender.speaker(&self.coi_address, &self.coi_name) == coi_bridge_api::Speaker::Bridge {
            return escape(text);
        }
        format!("<b>{}</b>: {}", escape(&sender.display_name), escape(text))
    }

    /// On the allowlist, or the supergroup an allowed group became.
    async fn allowed(&self, cx: &BridgeContext, chat: i64) -> Result<bool, SubmitError> {
        Ok(self.cfg.is_allowed(chat) || cx.state.get(&format!("allowed:{chat}")).await?.is_some())
    }

    /// Whether `user` may command the bridge in `chat`: a configured id, or an
    /// administrator of that chat.
    async fn is_admin(&self, chat: ChatId, user: UserId) -> bool {
        if self.cfg.admins.contains(&(user.0 as i64)) {
            return true;
        }
        match self.bot.get_chat_administrators(chat).await {
            Ok(admins) => admins.iter().any(|m| m.user.id == user),
            Err(e) => {
                tracing::warn!(chat = chat.0, error = %e, "could not read the chat's administrators");
                false
            }
        }
    }

    /// The file of a photo, document, voice note, video or audio message, if any.
    async fn file(&self, m: &Message) -> Option<Result<Attachment, String>> {
        let (id, name, mime) = if let Some(sizes) = m.photo() {
            let best = sizes.iter().max_by_key(|p| p.width * p.height)?;
            (best.file.id.clone(), "photo.jpg".to_owned(), "image/jpeg".to_owned())
        } else if let Some(d) = m.document() {
            let mime = d.mime_type.as_ref().map_or("application/octet-stream".into(), ToString::to_string);
            (d.file.id.clone(), d.file_name.clone().unwrap_or_else(|| "file".into()), mime)
        } else if let Some(v) = m.voice() {
            let mime = v.mime_type.as_ref().map_or("audio/ogg".into(), ToString::to_string);
            (v.file.id.clone(), "voice.ogg".to_owned(), mime)
        } else if let Some(v) = m.video() {
            let mime = v.mime_type.as_ref().map_or("video/mp4".into(), ToString::to_string);
            (v.file.id.clone(), v.file_name.clone().unwrap_or_else(|| "video.mp4".into()), mime)
        } else if let Some(a) = m.audio() {
            let mime = a.mime_type.as_ref().map_or("audio/mpeg".into(), ToString::to_string);
            (a.file.id.clone(), a.file_name.clone().unwrap_or_else(|| "audio.mp3".into()), mime)
        } else {
            return None;
        };
        Some(self.download(&id, name, mime).await)
    }

    async fn download(&self, id: &teloxide::types::FileId, name: String, mime: String) -> Result<Attachment, String> {
        let file = self.bot.get_file(id.clone()).await.map_err(|e| e.to_string())?;
        if u64::from(file.size) > self.cfg.max_file_bytes {
            return Err(format!("{name} is {} bytes, over max_file_bytes", file.size));
        }
        let mut data = Vec::new();
        self.bot.download_file(&file.path, &mut data).await.map_err(|e| e.to_string())?;
        Ok(Attachment { name, mime, data })
    }

    /// A chat that is not on the allowlist: the bot says so and leaves.
    async fn refuse_chat(&self, chat: ChatId) {
        tracing::warn!(chat = chat.0, "a chat not on the allowlist; leaving it");
        self.say(chat, "This chat is not on this bridge's allowlist (allowed_chats), so I am leaving.").await;
        if let Err(e) = self.bot.leave_chat(chat).await {
            tracing::warn!(chat = chat.0, error = %e, "could not leave the chat");
        }
    }

    async fn say(&self, chat: ChatId, text: &str) {
        if let Err(e) = self.bot.send_message(chat, text).await {
            tracing::warn!(chat = chat.0, error = %e, "could not answer in the chat");
        }
    }

    async fn command(&self, cx: &BridgeContext, m: &Message, text: &str) -> Result<(), SubmitError> {
        let Some(from) = m.from.as_ref() else { return Ok(()) };
        // "/coi_bridge@SomeBot arg" → "bridge arg"
        let mut words = text.trim_start_matches('/').splitn(2, char::is_whitespace);
        let verb = words.next().unwrap_or_default().split('@').next().unwrap_or_default();
        let verb = verb.strip_prefix("coi_").unwrap_or(verb);
        let args = words.next().unwrap_or_default();
        if !self.is_admin(m.chat.id, from.id).await {
            if verb == "invite" && !m.chat.is_private() {
                // A member asks to move: their personal invite waits in a private chat.
                self.invite_hint(m.chat.id, from).await;
                return Ok(());
            }
            tracing::warn!(chat = m.chat.id.0, user = from.id.0, "/coi command from a non-admin; refused");
            let who = from.full_name();
            self.say(m.chat.id, &format!("Sorry {who}, only this chat's admins can use the /coi commands.")).await;
            return Ok(());
        }
        if verb == "pair" {
            return self.pair_command(cx, m, args).await;
        }
        let command = match Command::parse(&format!("{verb} {args}")) {
            Ok(c) => c,
            Err(e) => {
                self.say(m.chat.id, &e).await;
                return Ok(());
            }
        };
        let title = m.chat.title().unwrap_or("Telegram chat").to_owned();
        let chat = RemoteChatId(m.chat.id.0.to_string());
        let status = command == Command::Status;
        let invite = matches!(command, Command::Invite | Command::Bridge);
        // The migration in numbers: how big the Telegram side is now, counted (and kept)
        // before the core's status reads it; the status says it ("of the N members here").
        if status && !m.chat.is_private() {
            self.count_members(cx, m.chat.id).await;
        }
        match cx.hub.command(&cx.id, &chat, &title, command).await {
            Ok(mut reply) => {
                if invite
                    && reply.link.is_some()
                    && !m.chat.is_private()
                    && let Some(line) = self.personal_invite_line(m.chat.id)
                {
                    reply.text.push_str(&line);
                }
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

    /// One update, handled durably: `Err` means "not done, keep the offset here".
    async fn handle(&self, cx: &BridgeContext, me: UserId, update: Update) -> Result<(), SubmitError> {
        let (m, edited) = match update.kind {
            UpdateKind::Message(m) => (m, false),
            UpdateKind::EditedMessage(m) => (m, true),
            UpdateKind::MyChatMember(u) => {
                // Added to a chat that is not on the allowlist: say so and leave at once.
                if u.new_chat_member.kind.is_present() && !u.chat.is_private() && !self.allowed(cx, u.chat.id.0).await?
                {
                    self.refuse_chat(u.chat.id).await;
                }
                return Ok(());
            }
            UpdateKind::MessageReaction(r) => {
                let Some(user) = r.user().filter(|u| u.id != me) else { return Ok(()) };
                let emoji = r
                    .new_reaction
                    .iter()
                    .find_map(|t| match t {
                        ReactionType::Emoji { emoji } => Some(emoji.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let chat = if r.chat.is_private() {
                    self.private_target(cx, r.chat.id).await?.0
                } else {
                    RemoteChatId(r.chat.id.0.to_string())
                };
                let event = RemoteEvent::Reaction {
                    chat,
                    id: RemoteMsgId(format!("{}-react-{}-{}", r.message_id.0, user.id.0, r.date.timestamp())),
                    target: RemoteMsgId(r.message_id.0.to_string()),
                    sender: Person { id: user.id.0.to_string().into(), display_name: user.full_name() },
                    emoji,
                };
                return match cx.hub.submit(&cx.id, event).await {
                    Err(SubmitError::Rejected(e)) => {
                        tracing::info!(bridge = %cx.id, reason = %e, "Telegram reaction not bridged");
                        Ok(())
                    }
                    other => other,
                };
            }
            _ => return Ok(()),
        };
        if m.from.as_ref().is_some_and(|f| f.id == me) {
            return Ok(()); // our own relays
        }
        if let Some(new_chat) = m.migrate_to_chat_id() {
            // The supergroup inherits the group's place on the allowlist.
            if self.cfg.is_allowed(m.chat.id.0) {
                cx.state.set(&format!("allowed:{}", new_chat.0), &m.chat.id.0.to_string()).await?;
            }
            let event = RemoteEvent::Migrated {
                chat: RemoteChatId(m.chat.id.0.to_string()),
                new_chat: RemoteChatId(new_chat.0.to_string()),
            };
            return cx.hub.submit(&cx.id, event).await;
        }
        if m.migrate_from_chat_id().is_some() {
            return Ok(());
        }
        if !m.chat.is_private() && !self.allowed(cx, m.chat.id.0).await? {
            self.refuse_chat(m.chat.id).await;
            return Ok(());
        }
        if let Some(from) = m.from.as_ref() {
            self.remember_handle(cx, from).await?;
        }
        if self.membership(cx, &m, me).await? {
            return Ok(());
        }
        if !m.chat.is_private() {
            // Members come and go without a word too: an active group is counted hourly.
            self.count_members_if_due(cx, m.chat.id).await;
        }
        let text = m.text().or(m.caption()).unwrap_or_default().to_owned();
        let private = m.chat.is_private();
        if !edited
            && private
            && (self.private_invite(cx, &m, &text).await? || self.private_command(cx, &m, &text).await?)
        {
            return Ok(());
        }
        if !edited && text.starts_with("/coi") {
            return self.command(cx, &m, &text).await;
        }
        let Some(sender) = person(&m) else { return Ok(()) };
        let chat = if private {
            // Reaches the owners (or the moved person chosen with /coi_to) on COI.
            match self.private_route(cx, &m, edited).await? {
                Some(chat) => chat,
                None => return Ok(()),
            }
        } else {
            RemoteChatId(m.chat.id.0.to_string())
        };
        let event = if edited {
            let at = m.edit_date().map(|d| d.timestamp()).unwrap_or_default();
            RemoteEvent::Edit {
                chat,
                id: RemoteMsgId(format!("{}-edit-{at}", m.id.0)),
                target: RemoteMsgId(m.id.0.to_string()),
                sender,
                new_text: text,
            }
        } else {
            let (mut text, mut attachments) = (text, Vec::new());
            match self.file(&m).await {
                Some(Ok(a)) => attachments.push(a),
                Some(Err(e)) => text = format!("{text}\n[file not bridged: {e}]").trim().to_owned(),
                None => {}
            }
            // Forwarded messages are marked the way Delta Chat marks its own.
            if let Some(origin) = m.forward_origin() {
                use teloxide::types::MessageOrigin;
                let from = match origin {
                    MessageOrigin::User { sender_user, .. } => sender_user.full_name(),
                    MessageOrigin::HiddenUser { sender_user_name, .. } => sender_user_name.clone(),
                    MessageOrigin::Chat { sender_chat, .. } | MessageOrigin::Channel { chat: sender_chat, .. } => {
                        sender_chat.title().unwrap_or("a chat").to_owned()
                    }
                };
                text = format!("---------- Forwarded message ----------\nFrom: {from}\n\n{text}");
            }
            RemoteEvent::Message {
                chat,
                id: RemoteMsgId(m.id.0.to_string()),
                sender,
                text,
                attachments,
                reply_to: m.reply_to_message().map(|r| RemoteMsgId(r.id.0.to_string())),
            }
        };
        match cx.hub.submit(&cx.id, event).await {
            Ok(()) => Ok(()),
            Err(SubmitError::Rejected(e)) => {
                tracing::info!(bridge = %cx.id, reason = %e, "Telegram update not bridged");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Bridge for TelegramBridge {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: true,
            deletes: true,
            reactions: true,
            replies: true,
            media: true,
            ghosts: false,
            max_file_size: Some(self.cfg.max_file_bytes),
            // Counted after entity parsing, so the HTML of the name prefix is free.
            max_text: Some(coi_bridge_api::TextLimit {
                max: crate::limits::MAX_TEXT,
                unit: coi_bridge_api::TextUnit::Utf16,
            }),
            allowed_reactions: Some(crate::limits::REACTION_EMOJI),
        }
    }

    async fn run(&self, cx: BridgeContext) -> Result<(), BridgeError> {
        let connect = async {
            self.bot.delete_webhook().await?;
            self.bot.get_me().await
        };
        let me = tokio::select! {
            () = cx.shutdown.cancelled() => return Ok(()),
            r = connect => match r {
                Ok(me) => me,
                Err(RequestError::Api(ApiError::InvalidToken)) => {
                    return Err(BridgeError::Fatal("the Telegram bot token was refused; check token_file".into()));
                }
                // The supervisor restarts the bridge with backoff.
                Err(e) => return Err(BridgeError::Retry(format!("Telegram getMe: {e}"))),
            },
        };
        tracing::info!(bridge = %cx.id, bot = %me.user.full_name(), "Telegram bot connected");
        if let Some(name) = &me.user.username {
            let _ = self.username.set(name.clone());
        }
        *self.cx.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.clone());
        cx.status.connected();
        let mut offset: i32 = match cx.state.get("offset").await {
            Ok(v) => v.and_then(|v| v.parse().ok()).unwrap_or(0),
            Err(e) => return Err(BridgeError::Retry(format!("reading the update offset: {e}"))),
        };
        let mut backoff = Duration::from_secs(1);
        let attempts = coi_bridge_api::deadletter::Attempts::default();
        loop {
            let poll = self.bot.get_updates().offset(offset).timeout(LONG_POLL).allowed_updates(vec![
                AllowedUpdate::Message,
                AllowedUpdate::EditedMessage,
                AllowedUpdate::MessageReaction,
                AllowedUpdate::MyChatMember,
            ]);
            let updates = tokio::select! {
                () = cx.shutdown.cancelled() => return Ok(()),
                r = poll => r,
            };
            let items = match updates {
                Ok(u) => u.into_iter().map(|u| updates::Item::Parsed(Box::new(u))).collect(),
                // One update teloxide cannot read spoils the whole answer: read them one by one.
                Err(RequestError::InvalidJson { raw, source }) if updates::split_batch(&raw).is_some() => {
                    tracing::warn!(bridge = %cx.id, error = %source, "a Telegram update does not parse; reading them one by one");
                    updates::split_batch(&raw).unwrap_or_default()
                }
                Err(RequestError::RetryAfter(s)) => {
                    tokio::time::sleep(s.duration()).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(bridge = %cx.id, error = %e, retry_in = ?backoff, "Telegram getUpdates failed");
                    cx.status.reconnecting(format!("Telegram getUpdates: {e}"));
                    tokio::select! {
                        () = cx.shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    // Capped low: an unanswered long poll costs nothing, and the
                    // delivery queue waits for this loop to report the API back.
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                    continue;
                }
            };
            backoff = Duration::from_secs(1);
            cx.status.connected();
            for item in items {
                let id = item.id() as i32;
                if id < offset {
                    continue;
                }
                if let updates::Step::Again(pause) = self.process(&cx, me.user.id, item, &attempts).await {
                    // Not durably queued: keep the offset, ask again after a pause.
                    tokio::select! {
                        () = cx.shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    break;
                }
                offset = id + 1;
                if let Err(e) = cx.state.set("offset", &offset.to_string()).await {
                    tracing::warn!(bridge = %cx.id, error = %e, "could not save the update offset");
                }
            }
        }
    }

    async fn deliver(
        &self,
        to: &RemoteChatId,
        key: &DeliveryKey,
        msg: &Outgoing,
    ) -> Result<Vec<RemoteMsgId>, DeliverError> {
        let chat = self.current_chat(chat_id(to)?);
        if !matches!(msg, Outgoing::ReadReceipt { .. } | Outgoing::MemberJoined { .. } | Outgoing::MemberLeft { .. }) {
            self.pace(chat).await;
        }
        match msg {
            Outgoing::Message { sender, text, attachments, reply_to, .. } => {
                self.send_message(chat, key, sender, text, attachments, reply_to.as_ref()).await
            }
            Outgoing::Edit { sender, target, new_text } => self.edit(chat, sender, target, new_text).await,
            Outgoing::Delete { target, .. } => self.delete(chat, target).await.map(|()| Vec::new()),
            Outgoing::Reaction { target, emoji, .. } => self.react(chat, target, emoji).await.map(|()| Vec::new()),
            Outgoing::Notice { text } => {
                let (_, sent) = self
                    .followed(chat, |c| {
                        use teloxide::requests::Request as _;
                        self.bot.send_message(c, text.clone()).send()
                    })
                    .await?;
                Ok(vec![RemoteMsgId(sent.id.0.to_string())])
            }
            Outgoing::ReadReceipt { .. }
            | Outgoing::MemberJoined { .. }
            | Outgoing::MemberLeft { .. }
            | Outgoing::Rename { .. }
            | Outgoing::Describe { .. }
            | Outgoing::GroupAvatar { .. } => Err(DeliverError::Unsupported),
        }
    }
}
