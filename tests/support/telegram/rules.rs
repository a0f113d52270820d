//! What the real Bot API refuses, and with which words (core.telegram.org/bots/api and the errors bots see): texts and captions over their limits after entity parsing, reactions outside the `ReactionTypeEmoji` list, photos over 10 MB, uploads over 50 MB, text edits of media messages.

use coi_bridge_telegram::limits;
use serde_json::Value;

/// A refusal: HTTP status (= `error_code`) and `description`.
pub type Refusal = (u16, &'static str);

/// `text` as Telegram counts it: after entity parsing (HTML tags gone, entities decoded).
pub fn visible(text: &str, parse_mode: Option<&str>) -> String {
    if !parse_mode.is_some_and(|m| m.eq_ignore_ascii_case("html")) {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            match rest.find('>') {
                Some(end) => rest = &rest[end + 1..],
                None => {
                    out.push_str(rest);
                    break;
                }
            }
        } else if c == '&' {
            let end = rest.find(';').filter(|e| *e <= 10);
            let decoded = end.and_then(|e| match &rest[1..e] {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                n if n.starts_with("#x") => u32::from_str_radix(&n[2..], 16).ok().and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            });
            match (end, decoded) {
                (Some(e), Some(d)) => {
                    out.push(d);
                    rest = &rest[e + 1..];
                }
                _ => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn too_long(params: &Value, field: &str, max: usize) -> bool {
    let mode = params["parse_mode"].as_str();
    params[field].as_str().is_some_and(|t| limits::text_len(&visible(t, mode)) > max)
}

/// Whether a call breaks a documented limit, checked before the call takes effect.
pub fn refusal(method: &str, params: &Value, files: &[(String, String, Vec<u8>)]) -> Option<Refusal> {
    if files.iter().any(|f| f.2.len() as u64 > limits::MAX_UPLOAD_BYTES) {
        return Some((413, "Request Entity Too Large"));
    }
    match method {
        "sendMessage" | "editMessageText" if too_long(params, "text", limits::MAX_TEXT) => {
            Some((400, "Bad Request: message is too long"))
        }
        "sendPhoto" | "sendDocument" | "sendVoice" | "sendVideo" | "sendAudio" | "editMessageCaption"
            if too_long(params, "caption", limits::MAX_CAPTION) =>
        {
            Some((400, "Bad Request: message caption is too long"))
        }
        "sendMediaGroup"
            if params["media"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| too_long(i, "caption", limits::MAX_CAPTION))) =>
        {
            Some((400, "Bad Request: message caption is too long"))
        }
        "sendPhoto" if files.iter().any(|f| f.2.len() as u64 > limits::MAX_PHOTO_BYTES) => {
            Some((400, "Bad Request: PHOTO_SAVE_FILE_INVALID"))
        }
        "sendMediaGroup" if files.iter().any(|f| f.2.len() as u64 > limits::MAX_PHOTO_BYTES) => {
            Some((400, "Bad Request: PHOTO_SAVE_FILE_INVALID"))
        }
        "setMessageReaction" => {
            let list = params["reaction"].as_array().cloned().unwrap_or_default();
            let bad = list.iter().any(|r| {
                r["type"] == "emoji" && !r["emoji"].as_str().is_some_and(|e| limits::REACTION_EMOJI.contains(&e))
            });
            bad.then_some((400, "Bad Request: REACTION_INVALID"))
        }
        _ => None,
    }
}

/// What Telegram makes of a `sendVoice` file: a voice note only for OGG/Opus, MP3 or M4A
/// (checked here on the bytes, independently of the bridge's own check).
pub fn plays_as_voice(data: &[u8]) -> bool {
    let opus = data.len() > 27
        && data.starts_with(b"OggS")
        && data.get(27 + usize::from(data[26])..).is_some_and(|p| p.starts_with(b"OpusHead"));
    let mp3 = data.starts_with(b"ID3") || (data.len() > 1 && data[0] == 0xFF && data[1] >= 0xE0);
    let m4a = data.len() > 8 && &data[4..8] == b"ftyp";
    opus || mp3 || m4a
}
