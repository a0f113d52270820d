//! A fake Telegram Bot API on loopback (no Telegram server is reachable here): the real JSON shapes, long polling, `429 retry_after`, "message to edit not found", the documented limits ([`rules`]) and `migrate_to_chat_id` after an upgrade to a supergroup, plus an in-process control API to inject updates (well-formed or not) and read what the bot sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub mod rules;
mod server;

pub const BOT_ID: i64 = 7_000_001;
pub const TOKEN: &str = "7000001:fake-token";

/// What the bot asked for, in order.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub params: Value,
    /// Files of a multipart request: (field, file name, bytes).
    pub files: Vec<(String, String, Vec<u8>)>,
    /// The message id the fake answered with, if the call made a message.
    pub message_id: Option<i64>,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    updates: Vec<Value>,
    next_update: i64,
    next_message: HashMap<i64, i64>,
    /// (chat, message) → text (or caption), for edits and deletes.
    messages: HashMap<(i64, i64), String>,
    /// The messages of `messages` that carry a file: their text is a caption.
    media: HashSet<(i64, i64)>,
    /// Groups upgraded to a supergroup: old chat id → new. Telegram refuses every call
    /// naming the old id with 400 and `migrate_to_chat_id`.
    migrated: HashMap<i64, i64>,
    calls: Vec<Call>,
    /// Errors to answer the next calls of a method with: (method, calls to let through
    /// first, code, description, retry_after).
    failures: VecDeque<(String, usize, u16, String, Option<u64>)>,
    admins: HashMap<i64, Vec<i64>>,
    /// Members of each chat besides its admins (getChatMember), by user id, with names.
    members: HashMap<i64, HashMap<i64, String>>,
    titles: HashMap<i64, String>,
    files: HashMap<String, Vec<u8>>,
    /// The highest `offset` getUpdates was asked with: every update below it is confirmed.
    offset: i64,
    /// Users' @usernames (without the @), sent in `from` of what they say or do.
    usernames: HashMap<i64, String>,
}

impl Inner {
    /// What `getChatMemberCount` answers for `chat`: its admins, its other members and the bot.
    fn member_count(&self, chat: i64) -> usize {
        let admins = self.admins.get(&chat).map_or(&[][..], Vec::as_slice);
        let others = self.members.get(&chat).map_or(0, |m| m.keys().filter(|u| !admins.contains(u)).count());
        admins.len() + others + 1
    }
}

/// The fake server; stopped on drop.
pub struct FakeTelegram {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(result: Value) -> Response {
    json_response(StatusCode::OK, &json!({"ok": true, "result": result}))
}

fn err(code: u16, description: &str, retry_after: Option<u64>) -> Response {
    err_with(code, description, retry_after.map(|s| json!({"retry_after": s})))
}

/// An error with `parameters` (`ResponseParameters`: `retry_after`, `migrate_to_chat_id`).
fn err_with(code: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST), &body)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn chat_json(id: i64, title: &str) -> Value {
    if id < 0 {
        json!({"id": id, "type": if id < -1_000_000_000_000 { "supergroup" } else { "group" }, "title": title})
    } else {
        json!({"id": id, "type": "private", "first_name": title})
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "COI Bridge", "username": "coi_bridge_bot"})
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner { next_update: 1, ..Inner::default() }));
        let changed = Arc::new(Notify::new());
        let app = Router::new()
            .route("/{bot}/{method}", axum::routing::post(server::handle).get(server::handle))
            .route("/file/{bot}/{*path}", axum::routing::get(server::download))
            .with_state((inner.clone(), changed.clone()))
            // Uploads up to Telegram's 50 MB and beyond reach the handler, which answers
            // what Telegram answers (413 above 50 MB).
            .layer(axum::extract::DefaultBodyLimit::max(128 * 1024 * 1024));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, inner, changed, server }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lock")
    }

    pub fn set_chat(&self, chat: i64, title: &str, admins: &[i64]) {
        let mut i = self.lock();
        i.titles.insert(chat, title.to_owned());
        i.admins.insert(chat, admins.to_vec());
    }

    /// Queues an update of `kind` with `message` as its body (a `date` is added if it has
    /// none); returns its update id. Tests use it for updates no helper makes.
    pub fn push_update(&self, kind: &str, mut message: Value) -> i64 {
        let mut i = self.lock();
        let id = i.next_update;
        i.next_update += 1;
        let chat = message["chat"]["id"].as_i64().unwrap_or_default();
        if let (Some(mid), Some(text)) = (message["message_id"].as_i64(), message["text"].as_str()) {
            i.messages.insert((chat, mid), text.to_owned());
        }
        if message.get("date").is_none() {
            message["date"] = json!(now());
        }
        i.updates.push(json!({"update_id": id, kind: message}));
        drop(i);
        self.changed.notify_waiters();
        id
    }

    fn new_message_id(&self, chat: i64) -> i64 {
        let mut i = self.lock();
        let n = i.next_message.entry(chat).or_insert(100);
        *n += 1;
        *n
    }

    /// A person's message in a chat; returns its message id.
    pub fn user_says(&self, chat: i64, user: (i64, &str), text: &str, reply_to: Option<i64>) -> i64 {
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let mut m = json!({
            "message_id": id, "chat": chat_json(chat, &title),
            "from": self.user_json(user), "text": text,
        });
        if text.starts_with('/') {
            let len = text.split_whitespace().next().unwrap_or_default().encode_utf16().count();
            m["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
        }
        if let Some(r) = reply_to {
            let original = self.lock().messages.get(&(chat, r)).cloned().unwrap_or_default();
            m["reply_to_message"] = json!({
                "message_id": r, "date": now(), "chat": chat_json(chat, &title), "from": bot_user(), "text": original,
            });
        }
        self.push_update("message", m);
        id
    }

    /// Telegram upgrades `chat` to the supergroup `new_chat` (the service message in the
    /// old group, then one in the new): from now on every call naming `chat` is refused
    /// with `migrate_to_chat_id`.
    pub fn migrate(&self, chat: i64, new_chat: i64, by: (i64, &str)) {
        self.upgrade(chat, new_chat);
        self.announce_migration(chat, new_chat, by);
    }

    /// The upgrade happens on Telegram, but its service messages have not reached the bot
    /// yet: calls naming `chat` already get 400 with `migrate_to_chat_id`.
    pub fn upgrade(&self, chat: i64, new_chat: i64) {
        let mut i = self.lock();
        let title = i.titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let admins = i.admins.get(&chat).cloned().unwrap_or_default();
        i.titles.insert(new_chat, title);
        i.admins.insert(new_chat, admins);
        i.migrated.insert(chat, new_chat);
    }

    /// Only the service messages of an upgrade (also a forged one, which changes nothing).
    pub fn announce_migration(&self, chat: i64, new_chat: i64, by: (i64, &str)) {
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let admins = self.lock().admins.get(&chat).cloned().unwrap_or_default();
        self.set_chat(new_chat, &title, &admins);
        let id = self.new_message_id(chat);
        let from = json!({"id": by.0, "is_bot": false, "first_name": by.1});
        self.push_update(
            "message",
            json!({"message_id": id, "chat": chat_json(chat, &title), "from": from, "migrate_to_chat_id": new_chat}),
        );
        let id = self.new_message_id(new_chat);
        self.push_update(
            "message",
            json!({"message_id": id, "chat": chat_json(new_chat, &title), "from": from, "migrate_from_chat_id": chat}),
        );
    }

    /// A person sends a photo (stored as a file the bot can fetch with getFile).
    pub fn user_sends_photo(&self, chat: i64, user: (i64, &str), data: &[u8], caption: &str) -> i64 {
        self.user_sends_album_photo(chat, user, data, caption, None)
    }

    /// A photo that is part of an album (`media_group_id`), as Telegram sends albums: one
    /// message per item.
    pub fn user_sends_album_photo(
        &self,
        chat: i64,
        user: (i64, &str),
        data: &[u8],
        caption: &str,
        album: Option<&str>,
    ) -> i64 {
        let file_id = {
            let mut i = self.lock();
            let id = format!("file-{}", i.files.len() + 1);
            i.files.insert(id.clone(), data.to_vec());
            id
        };
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        self.push_update(
            "message",
            json!({
                "message_id": id, "chat": chat_json(chat, &title),
                "from": {"id": user.0, "is_bot": false, "first_name": user.1}, "caption": caption,
                "photo": [
                    {"file_id": "thumb", "file_unique_id": "thumb", "width": 1, "height": 1, "file_size": 1},
                    {"file_id": file_id, "file_unique_id": file_id, "width": 90, "height": 90, "file_size": data.len()},
                ],
                "media_group_id": album,
            }),
        );
        id
    }

    /// A person sends a voice note, video or document (`kind`), with its Bot API fields.
    pub fn user_sends_media(
        &self,
        chat: i64,
        user: (i64, &str),
        kind: &str,
        data: &[u8],
        mime: &str,
        caption: &str,
    ) -> i64 {
        let file_id = {
            let mut i = self.lock();
            let id = format!("file-{}", i.files.len() + 1);
            i.files.insert(id.clone(), data.to_vec());
            id
        };
        let mut media =
            json!({"file_id": file_id, "file_unique_id": file_id, "file_size": data.len(), "mime_type": mime});
        match kind {
            "voice" => media["duration"] = json!(2),
            "video" => {
                media["duration"] = json!(2);
                media["width"] = json!(16);
                media["height"] = json!(16);
                media["file_name"] = json!("clip.mp4");
            }
            _ => media["file_name"] = json!("notes.pdf"),
        }
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        self.push_update(
            "message",
            json!({
                "message_id": id, "chat": chat_json(chat, &title), "caption": caption, kind: media,
                "from": {"id": user.0, "is_bot": false, "first_name": user.1},
            }),
        );
        id
    }

    /// A person forwards someone else's message into the chat.
    pub fn user_forwards(&self, chat: i64, user: (i64, &str), original_author: &str, text: &str) -> i64 {
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        self.push_update(
            "message",
            json!({
                "message_id": id, "chat": chat_json(chat, &title), "text": text,
                "from": {"id": user.0, "is_bot": false, "first_name": user.1},
                "forward_origin": {"type": "hidden_user", "sender_user_name": original_author, "date": now()},
            }),
        );
        id
    }

    /// A person reacts to a message (what the Bot API sends to admin bots).
    pub fn user_reacts(&self, chat: i64, user: (i64, &str), message_id: i64, emoji: &str) {
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        self.push_update(
            "message_reaction",
            json!({
                "chat": chat_json(chat, &title), "message_id": message_id, "date": now(),
                "user": {"id": user.0, "is_bot": false, "first_name": user.1},
                "old_reaction": [], "new_reaction": [{"type": "emoji", "emoji": emoji}],
            }),
        );
    }

    /// What `getChatMemberCount` answers for `chat` now (the bot included, as Telegram counts).
    pub fn member_count(&self, chat: i64) -> usize {
        self.lock().member_count(chat)
    }

    /// `user` is a member of `chat` (getChatMember says so), with no service message.
    pub fn set_member(&self, chat: i64, user: (i64, &str)) {
        self.lock().members.entry(chat).or_default().insert(user.0, user.1.to_owned());
    }

    /// `user` has the @username `name` (without the @) from now on.
    pub fn set_username(&self, user: i64, name: &str) {
        self.lock().usernames.insert(user, name.to_owned());
    }

    /// A `User` object for `user`, with their @username if they have one.
    fn user_json(&self, user: (i64, &str)) -> Value {
        let mut u = json!({"id": user.0, "is_bot": false, "first_name": user.1});
        if let Some(name) = self.lock().usernames.get(&user.0) {
            u["username"] = json!(name);
        }
        u
    }

    /// `user` joins `chat`: a member from now on, and the `new_chat_members` service message.
    pub fn user_joins(&self, chat: i64, user: (i64, &str)) -> i64 {
        self.set_member(chat, user);
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let u = self.user_json(user);
        self.push_update(
            "message",
            json!({"message_id": id, "chat": chat_json(chat, &title), "from": u, "new_chat_members": [u]}),
        );
        id
    }

    /// `user` leaves `chat`: no member any more, and the `left_chat_member` service message.
    pub fn user_leaves(&self, chat: i64, user: (i64, &str)) -> i64 {
        if let Some(m) = self.lock().members.get_mut(&chat) {
            m.remove(&user.0);
        }
        let id = self.new_message_id(chat);
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let u = json!({"id": user.0, "is_bot": false, "first_name": user.1});
        self.push_update(
            "message",
            json!({"message_id": id, "chat": chat_json(chat, &title), "from": u, "left_chat_member": u}),
        );
        id
    }

    /// Someone adds the bot to a chat (`my_chat_member`).
    pub fn bot_added(&self, chat: i64, title: &str, by: (i64, &str)) {
        self.set_chat(chat, title, &[by.0]);
        let from = json!({"id": by.0, "is_bot": false, "first_name": by.1});
        self.push_update(
            "my_chat_member",
            json!({
                "chat": chat_json(chat, title), "from": from, "date": now(),
                "old_chat_member": {"status": "left", "user": bot_user()},
                "new_chat_member": {"status": "member", "user": bot_user()},
            }),
        );
    }

    /// The message disappears on Telegram (deleted by someone; bots are not told).
    pub fn forget(&self, chat: i64, message_id: i64) {
        self.lock().messages.remove(&(chat, message_id));
    }

    /// A person edits their message.
    pub fn user_edits(&self, chat: i64, user: (i64, &str), message_id: i64, text: &str) {
        let title = self.lock().titles.get(&chat).cloned().unwrap_or_else(|| "Chat".into());
        let m = json!({
            "message_id": message_id, "chat": chat_json(chat, &title), "edit_date": now(),
            "from": {"id": user.0, "is_bot": false, "first_name": user.1}, "text": text,
        });
        self.push_update("edited_message", m);
    }

    /// The next `n` calls of `method` fail with `code` (429 carries `retry_after`).
    pub fn fail_next(&self, method: &str, n: usize, code: u16, description: &str, retry_after: Option<u64>) {
        self.fail_after(method, 0, n, code, description, retry_after);
    }

    /// The `n` calls of `method` after the next `skip` fail with `code`.
    pub fn fail_after(
        &self,
        method: &str,
        skip: usize,
        n: usize,
        code: u16,
        description: &str,
        retry_after: Option<u64>,
    ) {
        let mut i = self.lock();
        for _ in 0..n {
            i.failures.push_back((method.to_owned(), skip, code, description.to_owned(), retry_after));
        }
    }

    /// The highest `offset` the bot asked getUpdates for (it confirms every update below).
    pub fn confirmed_offset(&self) -> i64 {
        self.lock().offset
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Texts the bot sent to `chat` (sendMessage), in order.
    pub fn sent_texts(&self, chat: i64) -> Vec<(i64, String)> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "sendMessage" && c.params["chat_id"].as_i64() == Some(chat))
            .map(|c| (c.message_id.unwrap_or_default(), c.params["text"].as_str().unwrap_or_default().to_owned()))
            .collect()
    }

    /// The calls of `method` (answered, not refused) naming `chat`, in order.
    pub fn sent(&self, method: &str, chat: i64) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method && c.params["chat_id"].as_i64() == Some(chat)).collect()
    }

    /// The text (or caption) a message has now, if it exists.
    pub fn message_text(&self, chat: i64, message_id: i64) -> Option<String> {
        self.lock().messages.get(&(chat, message_id)).cloned()
    }

    /// Waits (bounded) until a call matches.
    pub async fn wait_call(&self, what: &str, pred: impl Fn(&Call) -> bool) -> Call {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(c) = self.calls().into_iter().find(|c| pred(c)) {
                return c;
            }
            if Instant::now() >= deadline {
                let calls: Vec<String> = self
                    .calls()
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} files={:?}",
                            c.method,
                            c.params,
                            c.files.iter().map(|f| (&f.0, &f.1, f.2.len())).collect::<Vec<_>>()
                        )
                    })
                    .collect();
                panic!("timed out waiting for the bot to {what}; calls:\n{}", calls.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
