//! The fake's HTTP side: every Bot API method it knows, answered in Telegram's JSON shapes (and refused in Telegram's words, see [`super::rules`]), and file downloads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Call, Inner, TOKEN, bot_user, chat_json, err, err_with, now, ok, rules};

/// A minimal multipart/form-data reader: (name, filename, bytes) per part.
fn multipart(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let Some(boundary) = content_type.split("boundary=").nth(1).map(|b| b.trim_matches('"')) else { return Vec::new() };
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let text = body;
    let mut pos = 0;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    while let Some(start) = find(text, delim.as_bytes(), pos) {
        let part_start = start + delim.len();
        if text[part_start..].starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(text, b"\r\n\r\n", part_start) else { break };
        let head = String::from_utf8_lossy(&text[part_start..head_end]).to_string();
        let Some(next) = find(text, delim.as_bytes(), head_end) else { break };
        let data = text[head_end + 4..next.saturating_sub(2)].to_vec();
        let attr = |key: &str| {
            head.split(';')
                .find_map(|p| p.trim().strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('"').to_owned()))
        };
        if let Some(name) = attr("name") {
            out.push((name, attr("filename"), data));
        }
        pos = next;
    }
    out
}

type S = State<(Arc<Mutex<Inner>>, Arc<Notify>)>;

/// The fake answers [`TOKEN`] and every token of its form, `<digits>:fake-token`, as one
/// bot: the many-accounts bench (benches/accounts.rs) gives each account a token of its own.
fn is_bot_token(path: &str) -> bool {
    let Some(token) = path.strip_prefix("bot") else { return false };
    let suffix = TOKEN.split_once(':').map_or("", |(_, s)| s);
    token.split_once(':').is_some_and(|(id, s)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && s == suffix)
}

pub(super) async fn handle(
    State((inner, changed)): S,
    Path((bot, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_bot_token(&bot) {
        return err(401, "Unauthorized", None);
    }
    // Telegram takes method names in any case (teloxide writes "SendMessage").
    let method = [
        "getUpdates",
        "getMe",
        "deleteWebhook",
        "getWebhookInfo",
        "getChat",
        "getChatMemberCount",
        "getChatMember",
        "getChatAdministrators",
        "leaveChat",
        "setMessageReaction",
        "sendChatAction",
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "sendVoice",
        "sendVideo",
        "sendAudio",
        "sendMediaGroup",
        "editMessageText",
        "editMessageCaption",
        "deleteMessage",
        "getFile",
    ]
    .iter()
    .find(|m| m.eq_ignore_ascii_case(&method))
    .map_or(method, |m| (*m).to_owned());
    let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut files = Vec::new();
    let params: Value = if ctype.starts_with("multipart/form-data") {
        let mut p = serde_json::Map::new();
        for (name, filename, data) in multipart(&ctype, &body) {
            match filename {
                Some(f) => files.push((name, f, data)),
                None => {
                    let text = String::from_utf8_lossy(&data).to_string();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    p.insert(name, v);
                }
            }
        }
        Value::Object(p)
    } else if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return err(400, &format!("Bad Request: can't parse JSON: {e}"), None),
        }
    };
    // Injected failures first.
    {
        let mut i = inner.lock().expect("lock");
        let due = match i.failures.iter_mut().find(|f| f.0 == method) {
            Some(f) if f.1 > 0 => {
                f.1 -= 1;
                None
            }
            Some(_) => i.failures.iter().position(|f| f.0 == method),
            None => None,
        };
        if let Some(pos) = due {
            let (_, _, code, description, retry_after) = i.failures.remove(pos).expect("present");
            i.calls.push(Call {
                method: format!("{method}!failed"),
                params: params.clone(),
                files,
                message_id: None,
                at: Instant::now(),
            });
            return err(code, &description, retry_after);
        }
    }
    // What Telegram itself refuses: a call naming an upgraded group, then the limits.
    {
        let mut i = inner.lock().expect("lock");
        let named = params["chat_id"].as_i64().or_else(|| params["chat_id"].as_str().and_then(|s| s.parse().ok()));
        let moved = named.and_then(|c| i.migrated.get(&c).copied());
        let refused = match moved {
            Some(new_chat) => Some((
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                Some(json!({"migrate_to_chat_id": new_chat})),
            )),
            None => rules::refusal(&method, &params, &files).map(|(code, d)| (code, d, None)),
        };
        if let Some((code, description, parameters)) = refused {
            i.calls.push(Call {
                method: format!("{method}!failed"),
                params,
                files,
                message_id: None,
                at: Instant::now(),
            });
            return err_with(code, description, parameters);
        }
    }
    if method == "getUpdates" {
        let offset = params["offset"].as_i64().unwrap_or(0);
        let timeout = params["timeout"].as_u64().unwrap_or(0).min(50);
        let deadline = Instant::now() + Duration::from_secs(timeout);
        loop {
            let notified = changed.notified();
            {
                let mut i = inner.lock().expect("lock");
                i.offset = i.offset.max(offset);
                // Confirmed updates are forgotten, as Telegram does.
                i.updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                if !i.updates.is_empty() {
                    return ok(Value::Array(i.updates.clone()));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ok(json!([]));
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
    let mut i = inner.lock().expect("lock");
    let chat = params["chat_id"].as_i64().or_else(|| params["chat_id"].as_str().and_then(|s| s.parse().ok()));
    let title = chat.and_then(|c| i.titles.get(&c).cloned()).unwrap_or_else(|| "Chat".into());
    let new_message = |i: &mut Inner, c: i64, extra: Value| {
        let n = i.next_message.entry(c).or_insert(100);
        *n += 1;
        let id = *n;
        let mut m = json!({"message_id": id, "date": now(), "chat": chat_json(c, &title), "from": bot_user()});
        if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        (id, m)
    };
    let (result, message_id) = match method.as_str() {
        "getMe" => {
            let mut me = bot_user();
            me["can_join_groups"] = json!(true);
            me["can_read_all_group_messages"] = json!(true);
            me["supports_inline_queries"] = json!(false);
            me["has_main_web_app"] = json!(false);
            (me, None)
        }
        "deleteWebhook" => (json!(true), None),
        "getWebhookInfo" => (json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}), None),
        "getChat" => (chat_json(chat.unwrap_or_default(), &title), None),
        "getChatMemberCount" => (json!(i.member_count(chat.unwrap_or_default())), None),
        "getChatMember" => {
            let c = chat.unwrap_or_default();
            let Some(user) =
                params["user_id"].as_i64().or_else(|| params["user_id"].as_str().and_then(|s| s.parse().ok()))
            else {
                return err(400, "Bad Request: user_id is empty", None);
            };
            let admin = i.admins.get(&c).is_some_and(|a| a.contains(&user));
            let name = i.members.get(&c).and_then(|m| m.get(&user).cloned());
            let status = if admin {
                "creator"
            } else if name.is_some() {
                "member"
            } else {
                "left"
            };
            let first_name = name.unwrap_or_else(|| format!("user{user}"));
            let mut member = json!({"status": status, "user": {"id": user, "is_bot": false, "first_name": first_name}});
            if admin {
                member["is_anonymous"] = json!(false);
            }
            (member, None)
        }
        "getChatAdministrators" => {
            let admins = i.admins.get(&chat.unwrap_or_default()).cloned().unwrap_or_default();
            let list: Vec<Value> = admins
                .iter()
                .map(|id| json!({"status": "creator", "is_anonymous": false, "user": {"id": id, "is_bot": false, "first_name": format!("admin{id}")}}))
                .collect();
            (Value::Array(list), None)
        }
        "leaveChat" | "setMessageReaction" | "sendChatAction" => (json!(true), None),
        "sendMessage" => {
            let Some(c) = chat else { return err(400, "Bad Request: chat_id is empty", None) };
            let text = params["text"].as_str().unwrap_or_default().to_owned();
            if text.is_empty() {
                return err(400, "Bad Request: message text is empty", None);
            }
            let (id, m) = new_message(&mut i, c, json!({"text": text}));
            i.messages.insert((c, id), text);
            (m, Some(id))
        }
        "sendPhoto" | "sendDocument" | "sendVoice" | "sendVideo" | "sendAudio" => {
            let Some(c) = chat else { return err(400, "Bad Request: chat_id is empty", None) };
            if files.is_empty() {
                return err(400, "Bad Request: there is no file in the request", None);
            }
            let file_id = format!("file-{}", i.files.len() + 1);
            i.files.insert(file_id.clone(), files[0].2.clone());
            let file =
                json!({"file_id": file_id, "file_unique_id": file_id, "file_size": files[0].2.len(), "duration": 1});
            let kind = match method.as_str() {
                "sendPhoto" => {
                    json!({"photo": [{"file_id": file_id, "file_unique_id": file_id, "width": 1, "height": 1}]})
                }
                // Telegram keeps other formats sent as a voice note as a plain file.
                "sendVoice" if rules::plays_as_voice(&files[0].2) => json!({"voice": file}),
                "sendAudio" => json!({"audio": file}),
                _ => json!({"document": {"file_id": file_id, "file_unique_id": file_id, "file_name": files[0].1}}),
            };
            let mut extra = kind;
            let caption = params["caption"].as_str().unwrap_or_default().to_owned();
            if !caption.is_empty() {
                extra["caption"] = json!(caption);
            }
            let (id, m) = new_message(&mut i, c, extra);
            i.messages.insert((c, id), caption);
            i.media.insert((c, id));
            (m, Some(id))
        }
        "sendMediaGroup" => {
            let Some(c) = chat else { return err(400, "Bad Request: chat_id is empty", None) };
            let items = params["media"].as_array().cloned().unwrap_or_default();
            if !(2..=10).contains(&items.len()) {
                return err(400, "Bad Request: media group must include 2-10 items", None);
            }
            let mut out = Vec::new();
            for item in &items {
                // Each item names its file as attach://<field>.
                let field = item["media"].as_str().and_then(|m| m.strip_prefix("attach://")).unwrap_or_default();
                let Some(file) = files.iter().find(|f| f.0 == field) else {
                    return err(400, "Bad Request: wrong file identifier/HTTP URL specified", None);
                };
                let file_id = format!("file-{}", i.files.len() + 1);
                i.files.insert(file_id.clone(), file.2.clone());
                let extra = json!({
                    "photo": [{"file_id": file_id, "file_unique_id": file_id, "width": 1, "height": 1}],
                    "caption": item["caption"], "media_group_id": "album-1",
                });
                let (id, m) = new_message(&mut i, c, extra);
                i.messages.insert((c, id), item["caption"].as_str().unwrap_or_default().to_owned());
                i.media.insert((c, id));
                out.push(m);
            }
            (Value::Array(out), None)
        }
        "editMessageText" => {
            let (Some(c), Some(mid)) = (chat, params["message_id"].as_i64()) else {
                return err(400, "Bad Request: message identifier is not specified", None);
            };
            let text = params["text"].as_str().unwrap_or_default().to_owned();
            if !i.messages.contains_key(&(c, mid)) {
                i.calls.push(Call {
                    method: format!("{method}!failed"),
                    params,
                    files,
                    message_id: None,
                    at: Instant::now(),
                });
                return err(400, "Bad Request: message to edit not found", None);
            }
            if i.media.contains(&(c, mid)) {
                i.calls.push(Call {
                    method: format!("{method}!failed"),
                    params,
                    files,
                    message_id: None,
                    at: Instant::now(),
                });
                return err(400, "Bad Request: there is no text in the message to edit", None);
            }
            i.messages.insert((c, mid), text.clone());
            let m = json!({"message_id": mid, "date": now(), "edit_date": now(), "chat": chat_json(c, &title), "from": bot_user(), "text": text});
            (m, Some(mid))
        }
        "editMessageCaption" => {
            let (Some(c), Some(mid)) = (chat, params["message_id"].as_i64()) else {
                return err(400, "Bad Request: message identifier is not specified", None);
            };
            let caption = params["caption"].as_str().unwrap_or_default().to_owned();
            let refused = if !i.messages.contains_key(&(c, mid)) {
                Some("Bad Request: message to edit not found")
            } else if !i.media.contains(&(c, mid)) {
                Some("Bad Request: there is no caption in the message to edit")
            } else {
                None
            };
            if let Some(description) = refused {
                i.calls.push(Call {
                    method: format!("{method}!failed"),
                    params,
                    files,
                    message_id: None,
                    at: Instant::now(),
                });
                return err(400, description, None);
            }
            i.messages.insert((c, mid), caption.clone());
            let m = json!({
                "message_id": mid, "date": now(), "edit_date": now(), "chat": chat_json(c, &title), "from": bot_user(),
                "document": {"file_id": "edited", "file_unique_id": "edited"}, "caption": caption,
            });
            (m, Some(mid))
        }
        "deleteMessage" => {
            let (Some(c), Some(mid)) = (chat, params["message_id"].as_i64()) else {
                return err(400, "Bad Request: message identifier is not specified", None);
            };
            i.media.remove(&(c, mid));
            if i.messages.remove(&(c, mid)).is_none() {
                i.calls.push(Call {
                    method: format!("{method}!failed"),
                    params,
                    files,
                    message_id: None,
                    at: Instant::now(),
                });
                return err(400, "Bad Request: message to delete not found", None);
            }
            (json!(true), Some(mid))
        }
        "getFile" => {
            let id = params["file_id"].as_str().unwrap_or_default().to_owned();
            let Some(data) = i.files.get(&id) else { return err(400, "Bad Request: invalid file_id", None) };
            (
                json!({"file_id": id, "file_unique_id": id, "file_size": data.len(), "file_path": format!("documents/{id}")}),
                None,
            )
        }
        other => return err(404, &format!("Not Found: method {other} is not in this fake"), None),
    };
    i.calls.push(Call { method, params, files, message_id, at: Instant::now() });
    ok(result)
}

pub(super) async fn download(State((inner, _)): S, Path((bot, path)): Path<(String, String)>) -> Response {
    if !is_bot_token(&bot) {
        return err(401, "Unauthorized", None);
    }
    let id = path.rsplit('/').next().unwrap_or_default();
    match inner.lock().expect("lock").files.get(id) {
        Some(data) => (StatusCode::OK, data.clone()).into_response(),
        None => err(404, "Not Found", None),
    }
}
