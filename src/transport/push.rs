//! Dovecot's push events (the push_notification plugin's OX driver): `PUT /push/dovecot` on the daemon's HTTP listener wakes the IMAP worker of the account named, which fetches from its cursor at once instead of after IDLE's batching.
//!
//! The event is only a wake-up: the worker leaves IDLE, fetches everything above its
//! cursor through the same ingest as always, and goes back to IDLE, which stays the
//! fallback (an event lost or refused costs Dovecot's IDLE delay, nothing else). Events
//! while a fetch runs are coalesced into one more fetch after it.
//!
//! Dovecot 2.3 sends, per mail LMTP delivers into INBOX of a user whose server metadata
//! `/private/vendor/vendor.dovecot/http-notify` is set, `PUT` with basic auth from its
//! URL and a JSON body: `{"user":…,"event":"messageNew","folder":"INBOX",
//! "imap-uidvalidity":…,"imap-uid":…,"from":…,"subject":…,"snippet":…,"unseen":…}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use crate::config::Secret;
use crate::http::Http;

/// Where Dovecot posts its events.
pub const PATH: &str = "/push/dovecot";

/// The largest event body read (Dovecot's carry a subject and a 100-character snippet).
pub const MAX_BODY: usize = 8 * 1024;

/// Wakes one account's IMAP worker: a flag and a wake-up, not a queue.
#[derive(Debug, Default)]
pub struct PushWake {
    pending: AtomicBool,
    notify: Notify,
}

impl PushWake {
    /// New mail was announced: the worker fetches now, or once more after the fetch it is
    /// in. Returns whether a fetch was already pending (this event is coalesced into it).
    pub fn wake(&self) -> bool {
        let coalesced = self.pending.swap(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        coalesced
    }

    /// Takes the pending wake-up (the worker is about to fetch); whether there was one.
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    /// Whether a wake-up came since the last [`PushWake::take`].
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Returns once a wake-up is pending (at once if one is). Cancel-safe.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() {
                return;
            }
            notified.await;
        }
    }
}

/// One account that takes push events: what an event must name and carry.
#[derive(Debug)]
pub struct PushAccount {
    /// The account's key (its address, lower-cased).
    pub key: String,
    /// The IMAP login, lower-cased (Dovecot's `user`).
    pub login: String,
    pub folder: String,
    pub secret: Secret,
    pub wake: Arc<PushWake>,
}

impl PushAccount {
    /// Whether Dovecot's `user` names this account (its login or its address).
    pub fn is_user(&self, user: &str) -> bool {
        let user = user.to_lowercase();
        user == self.login || user == self.key
    }
}

/// The part of an event that matters here; the rest (from, subject, snippet) is ignored.
#[derive(Debug, Deserialize)]
struct Event {
    user: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    folder: Option<String>,
    #[serde(default, rename = "imap-uid")]
    uid: Option<u32>,
}

/// Whether a refusal may be logged now (one a second); if so, how many were not since.
fn log_slot() -> Option<u64> {
    use std::sync::atomic::AtomicU64;
    static LAST_SEC: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_SEC.load(Ordering::Relaxed);
    if now != last && LAST_SEC.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        Some(SUPPRESSED.swap(0, Ordering::Relaxed))
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Compares two secrets in time independent of where they differ (and of their lengths).
pub fn same_secret(given: &[u8], expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The secret of a request: the password of basic auth (Dovecot's `http://user:SECRET@…`),
/// or a bearer token.
fn presented_secret(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().as_bytes().to_vec())
    } else {
        None
    }
}

/// `PUT|POST /push/dovecot`: 202 woken (or ignored: another event or folder), 401 no or
/// a wrong secret, 404 an authenticated event for a user that takes no push here, 400 not
/// an event, 413 too large. Only 202 for a `messageNew` of the account's folder wakes.
pub async fn dovecot(State(h): State<Http>, headers: HeaderMap, body: axum::body::Body) -> StatusCode {
    let refused = |reason: &'static str, code: StatusCode, user: Option<&str>| {
        h.metrics.push_events.with_label_values(&[reason]).inc();
        // A flood of forged events is counted in full but logged once a second at most.
        if let Some(suppressed) = log_slot() {
            tracing::warn!(reason, user, status = code.as_u16(), suppressed, "push event refused; nothing fetched");
        }
        code
    };
    let Some(secret) = presented_secret(&headers) else {
        return refused("no_secret", StatusCode::UNAUTHORIZED, None);
    };
    let Ok(raw) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refused("too_large", StatusCode::PAYLOAD_TOO_LARGE, None);
    };
    let Ok(event) = serde_json::from_slice::<Event>(&raw) else {
        return refused("malformed", StatusCode::BAD_REQUEST, None);
    };
    let accounts = h.accounts.push_accounts();
    let Some(account) = accounts.iter().find(|a| a.is_user(&event.user)) else {
        // Whether the user is known is told only to a caller that knows a secret.
        return if accounts.iter().any(|a| same_secret(&secret, a.secret.expose())) {
            refused("unknown_user", StatusCode::NOT_FOUND, Some(&event.user))
        } else {
            refused("bad_secret", StatusCode::UNAUTHORIZED, None)
        };
    };
    if !same_secret(&secret, account.secret.expose()) {
        return refused("bad_secret", StatusCode::UNAUTHORIZED, None);
    }
    let folder = event.folder.as_deref().unwrap_or("INBOX");
    if !event.event.eq_ignore_ascii_case("messageNew") || !folder.eq_ignore_ascii_case(&account.folder) {
        h.metrics.push_events.with_label_values(&["ignored"]).inc();
        tracing::debug!(account = %account.key, event = %event.event, folder, "push event for nothing watched; ignored");
        return StatusCode::ACCEPTED;
    }
    h.metrics.push_events.with_label_values(&["accepted"]).inc();
    if account.wake.wake() {
        h.metrics.push_coalesced.inc();
    }
    tracing::debug!(account = %account.key, uid = event.uid, "push event: fetching now");
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeF", "0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef0", "0123456789abcdef"));
        assert!(!same_secret(b"", "0123456789abcdef"));
    }

    #[test]
    fn the_secret_is_the_basic_auth_password_or_a_bearer_token() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_secret(&h), None);
        // Dovecot's url=http://coi:s3cret@127.0.0.1:…/push/dovecot
        h.insert(header::AUTHORIZATION, "Basic Y29pOnMzY3JldA==".parse().expect("header"));
        assert_eq!(presented_secret(&h).as_deref(), Some(&b"s3cret"[..]));
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().expect("header"));
        assert_eq!(presented_secret(&h).as_deref(), Some(&b"tok"[..]));
        h.insert(header::AUTHORIZATION, "Digest x".parse().expect("header"));
        assert_eq!(presented_secret(&h), None);
    }

    #[test]
    fn the_user_is_the_accounts_login_or_address_in_any_case() {
        let a = PushAccount {
            key: "bridge@example.org".into(),
            login: "bridge-login".into(),
            folder: "INBOX".into(),
            secret: Secret::new("0123456789abcdef"),
            wake: Arc::default(),
        };
        assert!(a.is_user("Bridge@Example.org") && a.is_user("BRIDGE-LOGIN"));
        assert!(!a.is_user("other@example.org") && !a.is_user(""));
    }

    /// A burst while the worker fetches is one more fetch, not one per event; a wake-up
    /// before the worker waits is not lost.
    #[tokio::test]
    async fn wakes_coalesce_and_are_not_lost() {
        let w = Arc::new(PushWake::default());
        assert!(!w.wake(), "the first is not coalesced");
        assert!(w.wake() && w.wake(), "more before the fetch are");
        tokio::time::timeout(Duration::from_secs(1), w.wait()).await.expect("pending: at once");
        assert!(w.take());
        assert!(tokio::time::timeout(Duration::from_millis(100), w.wait()).await.is_err(), "taken");
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.wait().await })
        };
        tokio::task::yield_now().await;
        w.wake();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
    }
}
