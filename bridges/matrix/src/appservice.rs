//! The appservice HTTP endpoint: the homeserver pushes transactions here. `hs_token` is checked in constant time (before the body is read); each transaction id is processed once, across restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use coi_bridge_api::BridgeState;
use serde_json::{Value, json};

/// The largest transaction body read, in bytes. Synapse sends at most 100 room events of at
/// most 64 KiB each (a state event's `unsigned.prev_content` can double one) and 100 small
/// ephemeral ones: about 13 MiB at worst. Anything up to this is read; a larger body is
/// answered 413. The body is only read once the `hs_token` checked out.
pub const MAX_TRANSACTION_BYTES: usize = 32 * 1024 * 1024;

/// Where the events of a transaction go. `Ok` once every event is durably handled
/// (submitted to the hub, or set aside as a dead letter); an error (only for a transient
/// failure) makes the homeserver send the transaction again.
#[async_trait]
pub trait TransactionSink: Send + Sync + 'static {
    async fn events(&self, txn_id: &str, events: Vec<Value>) -> Result<(), String>;
}

/// Whether this endpoint refused a transaction since the last one it took. A refused
/// transaction sits in the homeserver's retry backoff (Synapse: 2, 4, 8 … 512 s), so the
/// bridge's run loop asks the homeserver to retry at once (appservice ping) until one
/// goes through, instead of waiting out a backoff grown while the store was down.
#[derive(Clone, Default)]
pub struct Refusals(Arc<RefusalsInner>);

#[derive(Default)]
struct RefusalsInner {
    pending: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Refusals {
    /// A transaction was refused: the homeserver will hold it back.
    pub fn refused(&self) {
        self.0.pending.store(true, Ordering::SeqCst);
        self.0.notify.notify_one();
    }
    /// A transaction went through: the homeserver's queue flows again.
    pub fn accepted(&self) {
        self.0.pending.store(false, Ordering::SeqCst);
    }
    /// Whether a refused transaction may still wait in the homeserver's backoff.
    pub fn pending(&self) -> bool {
        self.0.pending.load(Ordering::SeqCst)
    }
    /// Resolves at the next refusal (or at once if one happened unseen).
    pub async fn next(&self) {
        self.0.notify.notified().await;
    }
}

pub struct Appservice {
    hs_token: String,
    state: Arc<dyn BridgeState>,
    sink: Arc<dyn TransactionSink>,
    refusals: Refusals,
    /// One transaction at a time, whole: a homeserver means its transactions in order, but
    /// Synapse can have two in flight at once (each appservice ping while it is recovering
    /// starts another retry loop), and events of a later one handled beside an earlier one
    /// would reach COI first.
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// FNV-1a, 64 bit: a stable digest (unlike std's hasher) for remembering transactions.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Compares without leaking where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "errcode": errcode, "error": message }))).into_response()
}

impl Appservice {
    pub fn new(hs_token: &str, state: Arc<dyn BridgeState>, sink: Arc<dyn TransactionSink>) -> Self {
        Self {
            hs_token: hs_token.to_owned(),
            state,
            sink,
            refusals: Refusals::default(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Shares the refusal flag with the bridge's run loop (see [`Refusals`]).
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
    }

    /// `Authorization: Bearer <hs_token>`, or the legacy `?access_token=`.
    fn authorized(&self, headers: &HeaderMap, query: &std::collections::HashMap<String, String>) -> bool {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| query.get("access_token").map(String::as_str));
        presented.is_some_and(|t| constant_time_eq(t.as_bytes(), self.hs_token.as_bytes()))
    }
}

type Q = Query<std::collections::HashMap<String, String>>;

async fn transaction(
    State(app): State<Arc<Appservice>>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    query: Q,
    body: axum::body::Body,
) -> Response {
    if !app.authorized(&headers, &query) {
        tracing::warn!(txn_id, "appservice transaction with a wrong or missing hs_token; refused");
        return error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "bad hs_token");
    }
    let body = match axum::body::to_bytes(body, MAX_TRANSACTION_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(txn_id, error = %e, limit = MAX_TRANSACTION_BYTES, "appservice transaction body not read");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", &format!("transaction body: {e}"));
        }
    };
    let _turn = app.one_at_a_time.lock().await;
    // Synapse numbers transactions from 1 again after it restarts with none pending, so
    // an id alone does not identify a transaction: the id and the body's digest do.
    let key = format!("txn:{txn_id}");
    let digest = format!("{:016x}", fnv1a(&body));
    match app.state.get(&key).await {
        Ok(Some(seen)) if seen == digest => return (StatusCode::OK, axum::Json(json!({}))).into_response(),
        Ok(_) => {}
        Err(e) => {
            app.refusals.refused();
            return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &e.to_string());
        }
    }
    // Room events, then ephemeral ones (receipts) when the registration asks for them.
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            let list = |k: &str| v.get(k).and_then(Value::as_array).cloned();
            let ephemeral = list("ephemeral").or_else(|| list("de.sorunome.msc2409.ephemeral"));
            list("events").into_iter().chain(ephemeral).flatten().collect::<Vec<_>>()
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", &e.to_string()),
    };
    if let Err(e) = app.sink.events(&txn_id, events).await {
        tracing::warn!(txn_id, error = %e, "transaction not processed; the homeserver will retry");
        app.refusals.refused();
        return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", &e);
    }
    app.refusals.accepted();
    if let Err(e) = app.state.set(&key, &digest).await {
        // Processed but not remembered: a retry is deduplicated by the hub's id map.
        tracing::warn!(txn_id, error = %e, "could not record the transaction id");
    }
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn not_found(State(app): State<Arc<Appservice>>, headers: HeaderMap, query: Q) -> Response {
    if !app.authorized(&headers, &query) {
        return error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "bad hs_token");
    }
    // Ghosts are registered by the bridge before they are used; nothing is made on demand.
    error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "not provided by this appservice")
}

async fn ping(State(app): State<Arc<Appservice>>, headers: HeaderMap, query: Q) -> Response {
    if !app.authorized(&headers, &query) {
        return error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "bad hs_token");
    }
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

/// The routes of the appservice API (v1), to be served on the bridge's HTTP listener.
pub fn router(app: Arc<Appservice>) -> Router {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(not_found))
        .route("/_matrix/app/v1/rooms/{alias}", get(not_found))
        .route("/_matrix/app/v1/ping", post(ping))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coi_bridge_api::testing::MemoryState;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, usize)>>, Mutex<usize>);

    #[async_trait]
    impl TransactionSink for Sink {
        async fn events(&self, txn_id: &str, events: Vec<Value>) -> Result<(), String> {
            let mut fail = self.1.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                return Err("store busy".into());
            }
            self.0.lock().expect("lock").push((txn_id.to_owned(), events.len()));
            Ok(())
        }
    }

    /// Holds transaction "1" until told, and notes when each starts and ends.
    #[derive(Default)]
    struct SlowSink {
        log: Mutex<Vec<String>>,
        release: tokio::sync::Notify,
        started: tokio::sync::Notify,
    }

    #[async_trait]
    impl TransactionSink for SlowSink {
        async fn events(&self, txn_id: &str, _events: Vec<Value>) -> Result<(), String> {
            self.log.lock().expect("lock").push(format!("start {txn_id}"));
            if txn_id == "1" {
                self.started.notify_one();
                self.release.notified().await;
            }
            self.log.lock().expect("lock").push(format!("end {txn_id}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_second_transaction_waits_for_the_first_to_be_handled_whole() {
        let sink = Arc::new(SlowSink::default());
        let app = Arc::new(Appservice::new("secret-hs", Arc::new(MemoryState::default()), sink.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
        let body = r#"{"events":[{"type":"m.room.message"}]}"#;
        let first = tokio::spawn(async move {
            request(port, "PUT", "/_matrix/app/v1/transactions/1", Some("secret-hs"), body).await
        });
        sink.started.notified().await;
        // Transaction 2 arrives while 1 is being handled (two Synapse retry loops).
        let second = tokio::spawn(async move {
            request(port, "PUT", "/_matrix/app/v1/transactions/2", Some("secret-hs"), body).await
        });
        // Let the second reach the daemon and, if nothing held it, the sink.
        for _ in 0..50 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        sink.release.notify_one();
        assert_eq!((first.await.expect("first"), second.await.expect("second")), (200, 200));
        assert_eq!(
            sink.log.lock().expect("lock").clone(),
            ["start 1", "end 1", "start 2", "end 2"],
            "the later transaction's events were handled beside the earlier one's"
        );
        server.abort();
    }

    async fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status")
    }

    #[tokio::test]
    async fn transactions_need_the_hs_token_and_are_processed_once() {
        let sink = Arc::new(Sink::default());
        let state = Arc::new(MemoryState::default());
        let app = Arc::new(Appservice::new("secret-hs", state.clone(), sink.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
        let body = r#"{"events":[{"type":"m.room.message"}],"ephemeral":[{"type":"m.receipt"}]}"#;
        let path = "/_matrix/app/v1/transactions/7";

        assert_eq!(request(port, "PUT", path, Some("wrong"), body).await, 403);
        assert_eq!(request(port, "PUT", path, None, body).await, 403);
        assert_eq!(request(port, "PUT", path, Some("secret-hs-but-longer"), body).await, 403);
        assert!(sink.0.lock().expect("lock").is_empty(), "nothing processed without the token");

        *sink.1.lock().expect("lock") = 1;
        assert_eq!(request(port, "PUT", path, Some("secret-hs"), body).await, 503, "a failing sink makes the HS retry");
        assert_eq!(request(port, "PUT", path, Some("secret-hs"), body).await, 200);
        assert_eq!(request(port, "PUT", path, Some("secret-hs"), body).await, 200, "a repeat is acknowledged");
        assert_eq!(sink.0.lock().expect("lock").clone(), vec![("7".to_string(), 2)], "processed exactly once");
        // After a homeserver restart the same id can carry a new transaction.
        let other = r#"{"events":[{"type":"m.room.message","event_id":"$new"}]}"#;
        assert_eq!(request(port, "PUT", path, Some("secret-hs"), other).await, 200);
        assert_eq!(sink.0.lock().expect("lock").len(), 2, "a reused id with new events is processed");
        assert_eq!(request(port, "PUT", "/_matrix/app/v1/transactions/8", Some("secret-hs"), "not json").await, 400);
        assert_eq!(request(port, "POST", "/_matrix/app/v1/ping", Some("secret-hs"), "{}").await, 200);
        assert_eq!(request(port, "GET", "/_matrix/app/v1/users/@x:hs", Some("secret-hs"), "").await, 404);
        assert_eq!(request(port, "GET", "/_matrix/app/v1/users/@x:hs", Some("nope"), "").await, 403);
        server.abort();
    }

    #[tokio::test]
    async fn the_largest_transactions_synapse_sends_are_read() {
        let sink = Arc::new(Sink::default());
        let app = Arc::new(Appservice::new("secret-hs", Arc::new(MemoryState::default()), sink.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
        // 100 events of 64 KiB, as Synapse may send them: 6.5 MB, over axum's default 2 MiB.
        let filler = "x".repeat(65_000);
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "m.room.message", "event_id": format!("${i}"), "content": {"body": filler}}))
            .collect();
        let body = json!({ "events": events }).to_string();
        assert!(body.len() > 6_500_000);
        let path = "/_matrix/app/v1/transactions/big";
        assert_eq!(request(port, "PUT", path, Some("secret-hs"), &body).await, 200);
        assert_eq!(sink.0.lock().expect("lock").clone(), vec![("big".to_string(), 100)]);
        server.abort();
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
