//! The appservice HTTP endpoint: the homeserver pushes transactions here. `hs_token` is checked in constant time (before the body is read); one endpoint serves every bridge built from one registration (one per account), each event going to the bridge(s) whose room it is; each transaction is processed once per bridge, across restarts.
//!
//! With several daemons on one store the endpoint has an event relay ([`relay`]): an event
//! none of this daemon's bridges has is kept there for the daemon that has its room, not
//! dropped, and this daemon takes out what its own bridges' rooms have waiting.

mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use coi_bridge_api::{BridgeId, BridgeState};
use serde_json::{Value, json};

use crate::routing::{Index, MemberId};

/// The largest transaction body read, in bytes. Synapse sends at most 100 room events of at
/// most 64 KiB each (a state event's `unsigned.prev_content` can double one) and 100 small
/// ephemeral ones: about 13 MiB at worst. Anything up to this is read; a larger body is
/// answered 413. The body is only read once the `hs_token` checked out.
pub const MAX_TRANSACTION_BYTES: usize = 32 * 1024 * 1024;

/// How long a transaction with an event in a room no bridge has waits for bridges that
/// are still reading their rooms at start (their portals, their bot's rooms), before
/// the event counts as nobody's. Only at start; the homeserver waits 60 s for an answer.
pub const READY_WAIT: Duration = Duration::from_secs(10);

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

/// One bridge on the endpoint: where its events go and where it remembers transactions.
#[derive(Clone)]
pub struct Member {
    pub id: BridgeId,
    /// Where the bridge was configured (the config file), for errors.
    pub source: String,
    /// Its own persistent state: the transactions it processed.
    pub state: Arc<dyn BridgeState>,
    pub sink: Arc<dyn TransactionSink>,
    /// Its run loop's refusal flag (see [`Refusals`]).
    pub refusals: Refusals,
}

/// The endpoint of one registration (one `hs_token`), shared by every bridge built from it.
pub struct Appservice {
    hs_token: String,
    /// The registration file, for errors.
    registration: String,
    index: Mutex<Index<Member>>,
    /// A bridge finished reading its rooms.
    ready: tokio::sync::Notify,
    /// Counts an event that belongs to no bridge (dropped).
    unrouted: Arc<dyn Fn() + Send + Sync>,
    /// One transaction at a time, whole: a homeserver means its transactions in order, but
    /// Synapse can have two in flight at once (each appservice ping while it is recovering
    /// starts another retry loop), and events of a later one handled beside an earlier one
    /// would reach COI first.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// Where events of rooms no bridge here has wait for another daemon (PostgreSQL).
    relay: Option<relay::Relay>,
}

/// A transaction's events by bridge (see [`Appservice::route`]).
struct Routed {
    plan: Vec<(Member, Vec<Value>)>,
    /// The positions of the events no bridge has.
    nobody: Vec<usize>,
    all_ready: bool,
}

/// A bridge's place on an [`Appservice`]: while it lives, the events of its rooms reach
/// it. Dropping it (or [`Membership::leave`]) takes the bridge off the endpoint.
pub struct Membership {
    app: Arc<Appservice>,
    id: MemberId,
}

impl Membership {
    /// The bridge's rooms at start: its portals and the rooms its bot is in.
    pub fn fill(&self, portals: Vec<String>, bot_rooms: Vec<String>) {
        self.app.lock().fill(self.id, portals, bot_rooms);
        self.app.ready.notify_waiters();
        // Its rooms may have relayed events waiting (an account taken over).
        self.app.gained();
    }

    /// `room` is a portal of this bridge (it opened it or delivered to it).
    pub fn portal(&self, room: &str) {
        self.app.lock().portal(self.id, room);
    }

    /// The bot joined `room` (it accepted an invitation).
    pub fn bot_joined(&self, room: &str) {
        self.app.lock().bot_in(self.id, room, true);
    }

    /// Takes the bridge off the endpoint now (its account stopped); idempotent.
    pub fn leave(&self) {
        self.app.lock().remove(self.id);
        self.app.ready.notify_waiters();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

/// FNV-1a, 64 bit: a stable digest (unlike std's hasher) for remembering transactions.
pub fn fnv1a(data: &[u8]) -> u64 {
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
    /// An endpoint with no bridge yet. `registration` names the file (for errors);
    /// `unrouted` counts each event no bridge has.
    pub fn new(hs_token: &str, registration: &str, unrouted: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self {
            hs_token: hs_token.to_owned(),
            registration: registration.to_owned(),
            index: Mutex::new(Index::default()),
            ready: tokio::sync::Notify::new(),
            unrouted,
            one_at_a_time: tokio::sync::Mutex::new(()),
            relay: None,
        }
    }

    /// An endpoint serving one bridge (`sink`, remembering transactions in `state`), as a
    /// daemon of one account has it; the bridge stays on it while the membership lives.
    pub fn for_one(
        hs_token: &str,
        state: Arc<dyn BridgeState>,
        sink: Arc<dyn TransactionSink>,
        refusals: Refusals,
    ) -> (Arc<Self>, Membership) {
        let app = Arc::new(Self::new(hs_token, "registration", Arc::new(|| {})));
        let member = Member { id: "matrix".into(), source: String::new(), state, sink, refusals };
        let id = app.lock().add("", member).unwrap_or_default();
        let membership = Membership { app: app.clone(), id };
        membership.fill(Vec::new(), Vec::new());
        (app, membership)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index<Member>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a bridge whose bot is `bot` on the endpoint. Two bridges cannot share a bot:
    /// the error names both and their config files.
    pub fn join(self: &Arc<Self>, bot: &str, member: Member) -> Result<Membership, String> {
        let (id, source) = (member.id.clone(), member.source.clone());
        match self.lock().add(bot, member) {
            Ok(mid) => Ok(Membership { app: self.clone(), id: mid }),
            Err(other) => Err(format!(
                "bridge {id:?} ({source}): bot_localpart gives the bot {bot}, which bridge {:?} ({}) already has on \
                 the registration {}; every account's Matrix bridge on one registration needs a bot_localpart of its own",
                other.id, other.source, self.registration
            )),
        }
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

    /// The events of a transaction by bridge, in the bridges' join order and the
    /// homeserver's order within each; and the events no bridge has. `None` when no
    /// bridge is on the endpoint.
    fn route(&self, events: &[Value]) -> Option<Routed> {
        let mut index = self.lock();
        if index.is_empty() {
            return None;
        }
        let mut plan: Vec<(MemberId, Vec<Value>)> = Vec::new();
        let mut nobody = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let to = index.route(ev);
            if to.is_empty() {
                nobody.push(i);
            }
            for id in to {
                match plan.iter_mut().find(|(m, _)| *m == id) {
                    Some((_, evs)) => evs.push(ev.clone()),
                    None => plan.push((id, vec![ev.clone()])),
                }
            }
        }
        plan.sort_by_key(|(id, _)| *id);
        let plan = plan.into_iter().filter_map(|(id, evs)| index.get(id).map(|m| (m.clone(), evs))).collect();
        Some(Routed { plan, nobody, all_ready: index.all_ready() })
    }

    /// A transaction, routed: each bridge's events through its sink, once per bridge.
    async fn handle(&self, txn_id: &str, digest: &str, events: Vec<Value>) -> Result<(), (StatusCode, String)> {
        let unavailable = |e: String| (StatusCode::SERVICE_UNAVAILABLE, e);
        // What waits in the relay for these bridges goes before their newer events.
        self.drain_locked().await.map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        let (plan, nobody) = loop {
            // Registered before routing, so a bridge becoming ready in between is seen.
            let ready = self.ready.notified();
            let Some(Routed { plan, nobody, all_ready }) = self.route(&events) else {
                if self.relay.is_some() {
                    // Another daemon may hold the accounts: they find the events there.
                    let all = (0..events.len()).collect::<Vec<_>>();
                    return self.relay_events(txn_id, &events, &all).await.map_err(unavailable);
                }
                // Every account of this registration stopped (or none started yet): the
                // homeserver keeps the transaction until one runs here again.
                return Err(unavailable("no bridge serves this registration right now".into()));
            };
            if nobody.is_empty() || all_ready || tokio::time::Instant::now() >= deadline {
                break (plan, nobody);
            }
            // A bridge still reads its rooms: the event may be one of them.
            let _ = tokio::time::timeout_at(deadline, ready).await;
        };
        // With a relay they are kept after the bridges here took theirs (below): a failure
        // then makes the homeserver retry, and the bridges here skip what they processed.
        let (nobody, relayed) = if self.relay.is_some() { (Vec::new(), nobody) } else { (nobody, Vec::new()) };
        for i in nobody {
            let ev = &events[i];
            tracing::debug!(
                txn_id,
                event_id = ev["event_id"].as_str(),
                room_id = ev["room_id"].as_str(),
                event_type = ev["type"].as_str(),
                "no bridge of this appservice has the event's room; dropped"
            );
            (self.unrouted)();
        }
        let key = format!("txn:{txn_id}");
        for (member, evs) in plan {
            // Synapse numbers transactions from 1 again after it restarts with none
            // pending, so an id alone does not identify a transaction: the id and the
            // body's digest do.
            match member.state.get(&key).await {
                Ok(Some(seen)) if seen == digest => continue,
                Ok(_) => {}
                Err(e) => {
                    member.refusals.refused();
                    return Err(unavailable(e.to_string()));
                }
            }
            if let Err(e) = member.sink.events(txn_id, evs).await {
                tracing::warn!(txn_id, bridge = %member.id, error = %e, "transaction not processed; the homeserver will retry");
                member.refusals.refused();
                return Err(unavailable(e));
            }
            member.refusals.accepted();
            if let Err(e) = member.state.set(&key, digest).await {
                // Processed but not remembered: a retry is deduplicated by the hub's id map.
                tracing::warn!(txn_id, bridge = %member.id, error = %e, "could not record the transaction id");
            }
        }
        if !relayed.is_empty() {
            self.relay_events(txn_id, &events, &relayed).await.map_err(unavailable)?;
        }
        Ok(())
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
    let digest = format!("{:016x}", fnv1a(&body));
    // Room events, then ephemeral ones (receipts) when the registration asks for them.
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            let list = |k: &str| v.get(k).and_then(Value::as_array).cloned();
            let ephemeral = list("ephemeral").or_else(|| list("de.sorunome.msc2409.ephemeral"));
            list("events").into_iter().chain(ephemeral).flatten().collect::<Vec<_>>()
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", &e.to_string()),
    };
    match app.handle(&txn_id, &digest, events).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({}))).into_response(),
        Err((status, e)) => error(status, "M_UNKNOWN", &e),
    }
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

/// The routes of the appservice API (v1), to be served on the daemon's HTTP listener:
/// once per registration, whatever the number of bridges on it.
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, usize)>>, Mutex<usize>);

    /// An endpoint with one bridge on it (bot `@coibot:hs`), as a one-account daemon has.
    fn single(state: Arc<MemoryState>, sink: Arc<dyn TransactionSink>) -> (Arc<Appservice>, Membership) {
        let app = Arc::new(Appservice::new("secret-hs", "registration.yaml", Arc::new(|| {})));
        let m = member("matrix", state, sink);
        let membership = app.join("@coibot:hs", m).expect("join");
        membership.fill(Vec::new(), Vec::new());
        (app, membership)
    }

    fn member(id: &str, state: Arc<MemoryState>, sink: Arc<dyn TransactionSink>) -> Member {
        Member { id: id.into(), source: format!("{id}.toml"), state, sink, refusals: Refusals::default() }
    }

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
        let (app, _member) = single(Arc::new(MemoryState::default()), sink.clone());
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
        let (app, _member) = single(state.clone(), sink.clone());
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
        let (app, _member) = single(Arc::new(MemoryState::default()), sink.clone());
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

    /// Records the event ids it was handed; fails the next `fail` transactions.
    #[derive(Default)]
    struct Ids(Mutex<Vec<String>>, Mutex<usize>);

    #[async_trait]
    impl TransactionSink for Ids {
        async fn events(&self, _txn_id: &str, events: Vec<Value>) -> Result<(), String> {
            let mut fail = self.1.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                return Err("store busy".into());
            }
            let ids = events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned));
            self.0.lock().expect("lock").extend(ids);
            Ok(())
        }
    }

    impl Ids {
        fn got(&self) -> Vec<String> {
            self.0.lock().expect("lock").clone()
        }
    }

    fn msg(id: &str, room: &str) -> Value {
        json!({"type": "m.room.message", "event_id": id, "room_id": room, "sender": "@mara:hs", "content": {"body": id}})
    }

    /// Two bridges (two accounts) on one endpoint, each with its portal room.
    struct Two {
        app: Arc<Appservice>,
        port: u16,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        a: Arc<Ids>,
        b: Arc<Ids>,
        members: Vec<Membership>,
        unrouted: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn two() -> Two {
        let unrouted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = unrouted.clone();
        let app = Arc::new(Appservice::new(
            "secret-hs",
            "registration.yaml",
            Arc::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        let (a, b) = (Arc::new(Ids::default()), Arc::new(Ids::default()));
        let ma = app.join("@bot_a:hs", member("a", Arc::new(MemoryState::default()), a.clone())).expect("a");
        let mb = app.join("@bot_b:hs", member("b", Arc::new(MemoryState::default()), b.clone())).expect("b");
        ma.fill(vec!["!a".into()], Vec::new());
        mb.fill(vec!["!b".into()], Vec::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(axum::serve(listener, router(app.clone())).into_future());
        Two { app, port, server, a, b, members: vec![ma, mb], unrouted }
    }

    #[tokio::test]
    async fn each_event_reaches_only_the_bridge_whose_room_it_is() {
        let t = two().await;
        let invite = json!({"type": "m.room.member", "event_id": "$invite-b", "room_id": "!new", "sender": "@mara:hs",
                            "state_key": "@bot_b:hs", "content": {"membership": "invite"}});
        let body = json!({"events": [msg("$1", "!a"), msg("$2", "!b"), msg("$3", "!nobody"), invite, msg("$4", "!a")]})
            .to_string();
        assert_eq!(request(t.port, "PUT", "/_matrix/app/v1/transactions/1", Some("secret-hs"), &body).await, 200);
        assert_eq!(t.a.got(), ["$1", "$4"]);
        assert_eq!(t.b.got(), ["$2", "$invite-b"], "the invitation goes to the invited bot's bridge only");
        assert_eq!(t.unrouted.load(Ordering::SeqCst), 1, "the event of nobody's room is counted, not handed to all");
        // B's bot joins the new room: from then on its events are B's.
        let join = json!({"type": "m.room.member", "event_id": "$join-b", "room_id": "!new", "sender": "@bot_b:hs",
                          "state_key": "@bot_b:hs", "content": {"membership": "join"}});
        let body = json!({"events": [join, msg("$5", "!new")]}).to_string();
        assert_eq!(request(t.port, "PUT", "/_matrix/app/v1/transactions/2", Some("secret-hs"), &body).await, 200);
        assert_eq!(t.b.got(), ["$2", "$invite-b", "$join-b", "$5"]);
        assert_eq!(t.a.got(), ["$1", "$4"]);
        t.server.abort();
    }

    #[tokio::test]
    async fn a_bridge_that_fails_makes_the_homeserver_retry_and_the_other_is_not_handed_its_events_twice() {
        let t = two().await;
        *t.b.1.lock().expect("lock") = 1;
        let body = json!({"events": [msg("$1", "!a"), msg("$2", "!b")]}).to_string();
        let path = "/_matrix/app/v1/transactions/9";
        assert_eq!(request(t.port, "PUT", path, Some("secret-hs"), &body).await, 503);
        assert_eq!(request(t.port, "PUT", path, Some("secret-hs"), &body).await, 200);
        assert_eq!(request(t.port, "PUT", path, Some("secret-hs"), &body).await, 200);
        assert_eq!((t.a.got(), t.b.got()), (vec!["$1".to_owned()], vec!["$2".to_owned()]));
        t.server.abort();
    }

    #[tokio::test]
    async fn a_stopped_bridge_gets_nothing_and_with_none_left_the_homeserver_keeps_its_transactions() {
        let mut t = two().await;
        t.members.remove(1); // account B stops
        let body = json!({"events": [msg("$1", "!a"), msg("$2", "!b")]}).to_string();
        assert_eq!(request(t.port, "PUT", "/_matrix/app/v1/transactions/1", Some("secret-hs"), &body).await, 200);
        assert_eq!(t.a.got(), ["$1", "$2"], "one bridge left: it gets every event, as with one account");
        assert!(t.b.got().is_empty());
        t.members.clear();
        assert_eq!(request(t.port, "PUT", "/_matrix/app/v1/transactions/2", Some("secret-hs"), &body).await, 503);
        // And B's bot is free for another bridge.
        assert!(t.app.join("@bot_b:hs", member("b2", Arc::new(MemoryState::default()), t.b.clone())).is_ok());
        t.server.abort();
    }

    #[tokio::test]
    async fn an_event_in_an_unknown_room_waits_for_bridges_still_reading_their_rooms() {
        let app = Arc::new(Appservice::new("secret-hs", "registration.yaml", Arc::new(|| {})));
        let (a, b) = (Arc::new(Ids::default()), Arc::new(Ids::default()));
        let ma = app.join("@bot_a:hs", member("a", Arc::new(MemoryState::default()), a.clone())).expect("a");
        let mb = app.join("@bot_b:hs", member("b", Arc::new(MemoryState::default()), b.clone())).expect("b");
        ma.fill(vec!["!a".into()], Vec::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(axum::serve(listener, router(app.clone())).into_future());
        let body = json!({"events": [msg("$1", "!b")]}).to_string();
        let put = tokio::spawn(async move {
            request(port, "PUT", "/_matrix/app/v1/transactions/1", Some("secret-hs"), &body).await
        });
        // B reads its rooms while the transaction waits (or before it arrives).
        mb.fill(vec!["!b".into()], Vec::new());
        assert_eq!(put.await.expect("put"), 200);
        assert_eq!((a.got(), b.got()), (Vec::<String>::new(), vec!["$1".to_owned()]));
        server.abort();
    }

    #[test]
    fn two_bridges_on_one_registration_cannot_share_a_bot() {
        let app = Arc::new(Appservice::new("secret-hs", "/etc/coi/registration.yaml", Arc::new(|| {})));
        let sink = Arc::new(Ids::default());
        let _a = app.join("@coibot:hs", member("a", Arc::new(MemoryState::default()), sink.clone())).expect("a");
        let err = app.join("@coibot:hs", member("b", Arc::new(MemoryState::default()), sink)).err().expect("refused");
        for part in ["\"a\"", "a.toml", "\"b\"", "b.toml", "bot_localpart", "/etc/coi/registration.yaml"] {
            assert!(err.contains(part), "{part} in: {err}");
        }
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
