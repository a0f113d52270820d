//! The client-server API as the appservice uses it: ghosts registered and masqueraded with `?user_id=`, rooms, events, redactions; errors sorted into retry and permanent.

use std::time::Duration;

use coi_bridge_api::DeliverError;
use serde_json::{Value, json};

/// What a call to the homeserver can end in.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// Rate limited (429), server error (5xx) or no connection: try again.
    #[error("homeserver unavailable: {reason}")]
    Retry { reason: String, after: Option<Duration> },
    /// The request is wrong for good (4xx): a missing room, forbidden, too large.
    #[error("refused by the homeserver: {errcode}: {message}")]
    Refused { status: u16, errcode: String, message: String },
}

impl From<MatrixError> for DeliverError {
    fn from(e: MatrixError) -> Self {
        match e {
            MatrixError::Retry { reason, after } => DeliverError::Retry { reason, after },
            refused @ MatrixError::Refused { .. } => DeliverError::Permanent(refused.to_string()),
        }
    }
}

/// Percent-encodes one path segment (room ids, event ids, MXIDs, txn ids).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The appservice's view of the homeserver.
#[derive(Clone)]
pub struct AsClient {
    http: reqwest::Client,
    base: String,
    as_token: String,
    /// The bot's MXID (`@coibot:server`).
    pub bot: String,
}

impl std::fmt::Debug for AsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsClient").field("base", &self.base).field("bot", &self.bot).finish_non_exhaustive()
    }
}

impl AsClient {
    /// No I/O here; calls connect on demand.
    pub fn new(homeserver: &str, as_token: &str, bot: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: homeserver.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            bot: bot.to_owned(),
        })
    }

    /// One request as `user` (the bot when `None`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, MatrixError> {
        let user = user.unwrap_or(&self.bot);
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}user_id={}", self.base, seg(user));
        let mut req = self.http.request(method, &url).bearer_auth(&self.as_token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| MatrixError::Retry { reason: e.to_string(), after: None })?;
        let status = resp.status().as_u16();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status < 300 {
            return Ok(value);
        }
        let errcode = value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
        let message = value["error"].as_str().unwrap_or("").to_owned();
        if status == 429 || status >= 500 {
            let after = value["retry_after_ms"].as_u64().map(Duration::from_millis);
            return Err(MatrixError::Retry { reason: format!("{status} {errcode} {message}"), after });
        }
        Err(MatrixError::Refused { status, errcode, message })
    }

    /// The newest Matrix spec version the homeserver speaks (no auth needed).
    pub async fn versions(&self) -> Result<String, MatrixError> {
        // Without the token: a homeserver that does not know it would refuse even this.
        let url = format!("{}/_matrix/client/versions", self.base);
        let resp =
            self.http.get(&url).send().await.map_err(|e| MatrixError::Retry { reason: e.to_string(), after: None })?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 300 {
            return Err(MatrixError::Retry { reason: format!("{url} answered {status}"), after: None });
        }
        Ok(v["versions"].as_array().and_then(|a| a.last()).and_then(Value::as_str).unwrap_or("?").to_owned())
    }

    /// Asks the homeserver who the appservice's token belongs to: proves that it is
    /// reachable and has loaded this registration. Returns the bot's MXID.
    pub async fn whoami(&self) -> Result<String, MatrixError> {
        let v = self.call(reqwest::Method::GET, "/_matrix/client/v3/account/whoami", None, None).await?;
        Ok(v["user_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Registers a user in the appservice's namespace; an existing one is fine. `true`
    /// when the user is new.
    pub async fn register(&self, localpart: &str) -> Result<bool, MatrixError> {
        let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
        match self.call(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(&body)).await {
            Ok(_) => Ok(true),
            Err(MatrixError::Refused { errcode, .. }) if errcode == "M_USER_IN_USE" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The rooms the bot is in.
    pub async fn joined_rooms(&self) -> Result<Vec<String>, MatrixError> {
        let v = self.call(reqwest::Method::GET, "/_matrix/client/v3/joined_rooms", None, None).await?;
        Ok(v["joined_rooms"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect())
    }

    pub async fn set_displayname(&self, mxid: &str, name: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", seg(mxid));
        self.call(reqwest::Method::PUT, &path, Some(mxid), Some(&json!({ "displayname": name }))).await.map(|_| ())
    }

    pub async fn set_avatar_url(&self, mxid: &str, uri: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/profile/{}/avatar_url", seg(mxid));
        self.call(reqwest::Method::PUT, &path, Some(mxid), Some(&json!({ "avatar_url": uri }))).await.map(|_| ())
    }

    /// Creates a room as the bot, inviting `invite`; returns its id.
    pub async fn create_room(&self, name: &str, invite: &[String]) -> Result<String, MatrixError> {
        let body = json!({ "name": name, "preset": "private_chat", "invite": invite });
        let v = self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", None, Some(&body)).await?;
        v["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Retry { reason: "no room_id".into(), after: None })
    }

    /// Creates a direct-message room as the bot for `invite` (the owners); returns its id.
    pub async fn create_dm(&self, name: &str, invite: &[String]) -> Result<String, MatrixError> {
        let body = json!({ "name": name, "preset": "trusted_private_chat", "is_direct": true, "invite": invite });
        let v = self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", None, Some(&body)).await?;
        v["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Retry { reason: "no room_id".into(), after: None })
    }

    /// Sets a state event as the bot (room name, topic, avatar).
    pub async fn set_state(&self, room: &str, event_type: &str, content: &Value) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{}/", seg(room), seg(event_type));
        let v = self.call(reqwest::Method::PUT, &path, None, Some(content)).await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Makes `mxid` leave the room.
    pub async fn leave(&self, room: &str, mxid: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", seg(room));
        self.call(reqwest::Method::POST, &path, Some(mxid), Some(&json!({}))).await.map(|_| ())
    }

    pub async fn invite(&self, room: &str, mxid: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", seg(room));
        match self.call(reqwest::Method::POST, &path, None, Some(&json!({ "user_id": mxid }))).await {
            Ok(_) => Ok(()),
            // Already in the room.
            Err(MatrixError::Refused { status: 403, message, .. }) if message.contains("already in the room") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `user`'s membership of `room` ("join", "invite", "leave", …) as the bot sees it;
    /// `None` when they never had one. Refused when the bot cannot see the room (not in it).
    pub async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", seg(room), seg(user));
        match self.call(reqwest::Method::GET, &path, None, None).await {
            Ok(v) => Ok(v["membership"].as_str().map(str::to_owned)),
            Err(MatrixError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn join(&self, room: &str, mxid: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/join/{}", seg(room));
        self.call(reqwest::Method::POST, &path, Some(mxid), Some(&json!({}))).await.map(|_| ())
    }

    /// Sends an event as `mxid`. `txn_id` makes a retry of the same send a no-op on the
    /// homeserver, so a crash between sending and recording cannot duplicate it.
    pub async fn send(
        &self,
        room: &str,
        mxid: &str,
        event_type: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/{}/{}", seg(room), seg(event_type), seg(txn_id));
        let v = self.call(reqwest::Method::PUT, &path, Some(mxid), Some(content)).await?;
        v["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Retry { reason: "no event_id".into(), after: None })
    }

    /// Uploads a file as `mxid`; returns its `mxc://` URI.
    pub async fn upload(&self, mxid: &str, name: &str, mime: &str, data: Vec<u8>) -> Result<String, MatrixError> {
        let url = format!("{}/_matrix/media/v3/upload?filename={}&user_id={}", self.base, seg(name), seg(mxid));
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.as_token)
            .header(reqwest::header::CONTENT_TYPE, mime)
            .body(data)
            .send()
            .await
            .map_err(|e| MatrixError::Retry { reason: e.to_string(), after: None })?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        match (status, v["content_uri"].as_str()) {
            (200..=299, Some(uri)) => Ok(uri.to_owned()),
            (429 | 500..=599, _) => Err(MatrixError::Retry { reason: format!("upload: {status} {v}"), after: None }),
            _ => Err(MatrixError::Refused {
                status,
                errcode: v["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
                message: v["error"].as_str().unwrap_or("upload refused").to_owned(),
            }),
        }
    }

    /// Downloads a file through the authenticated media API (as the bot). A file over
    /// `max` bytes is refused without reading it all.
    pub async fn download(&self, server: &str, media_id: &str, max: u64) -> Result<Vec<u8>, MatrixError> {
        let url = format!(
            "{}/_matrix/client/v1/media/download/{}/{}?user_id={}",
            self.base,
            seg(server),
            seg(media_id),
            seg(&self.bot)
        );
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(&self.as_token)
            .send()
            .await
            .map_err(|e| MatrixError::Retry { reason: e.to_string(), after: None })?;
        let status = resp.status().as_u16();
        if status == 429 || status >= 500 {
            return Err(MatrixError::Retry { reason: format!("download: {status}"), after: None });
        }
        if !(200..300).contains(&status) {
            return Err(MatrixError::Refused {
                status,
                errcode: "M_NOT_FOUND".into(),
                message: format!("download: {status}"),
            });
        }
        let too_big = |n: u64| MatrixError::Refused {
            status: 413,
            errcode: "M_TOO_LARGE".into(),
            message: format!("the file is {n} bytes or more, over the limit of {max}"),
        };
        if let Some(n) = resp.content_length().filter(|n| *n > max) {
            return Err(too_big(n));
        }
        let mut data = Vec::new();
        while let Some(chunk) =
            resp.chunk().await.map_err(|e| MatrixError::Retry { reason: e.to_string(), after: None })?
        {
            data.extend_from_slice(&chunk);
            if data.len() as u64 > max {
                return Err(too_big(data.len() as u64));
            }
        }
        Ok(data)
    }

    /// Marks `event_id` (and all before it) read by `mxid`.
    pub async fn receipt(&self, room: &str, mxid: &str, event_id: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", seg(room), seg(event_id));
        self.call(reqwest::Method::POST, &path, Some(mxid), Some(&json!({}))).await.map(|_| ())
    }

    pub async fn redact(&self, room: &str, mxid: &str, event_id: &str, txn_id: &str) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/{}", seg(room), seg(event_id), seg(txn_id));
        let v = self.call(reqwest::Method::PUT, &path, Some(mxid), Some(&json!({}))).await?;
        v["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| MatrixError::Retry { reason: "no event_id".into(), after: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("!abc:hs.org"), "%21abc%3Ahs.org");
        assert_eq!(seg("@coi_a=b.org:hs"), "%40coi_a%3Db.org%3Ahs");
    }

    #[test]
    fn errors_map_to_delivery_classes() {
        let retry: DeliverError =
            MatrixError::Retry { reason: "429".into(), after: Some(Duration::from_secs(2)) }.into();
        assert!(matches!(retry, DeliverError::Retry { after: Some(d), .. } if d == Duration::from_secs(2)));
        let refused: DeliverError =
            MatrixError::Refused { status: 403, errcode: "M_FORBIDDEN".into(), message: "no".into() }.into();
        assert!(matches!(refused, DeliverError::Permanent(m) if m.contains("M_FORBIDDEN")));
    }
}
