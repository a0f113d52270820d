//! The daemon's HTTP endpoint: /metrics (Prometheus text), /health (process up), /ready (JSON, a reason per part), POST /wake (another process queued outbox rows), PUT /push/dovecot (Dovecot's new-mail events), plus the bridges' routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accounts::Running;
use crate::health::Part;
use crate::metrics::Metrics;

/// How long `/ready` waits for the store before calling it not ready.
const STORE_PING: Duration = Duration::from_secs(2);

/// `POST /wake` is honoured at most this often; more often is 429 (a wake-up costs each
/// outbox worker of every account one store query, and the listener may be public).
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// What the handlers read.
#[derive(Clone)]
pub struct Http {
    pub metrics: Arc<Metrics>,
    /// The accounts this daemon runs (their health, stores and outbox targets).
    pub accounts: Arc<Running>,
    /// When `POST /wake` was last honoured.
    last_wake: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Http {
    pub fn new(metrics: Arc<Metrics>, accounts: Arc<Running>) -> Self {
        Self { metrics, accounts, last_wake: Arc::default() }
    }
}

pub fn router(state: Http) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(|| async { axum::Json(json!({"status": "alive"})) }))
        .route("/ready", get(ready))
        .route("/wake", axum::routing::post(wake))
        .route(
            crate::transport::push::PATH,
            axum::routing::put(crate::transport::push::dovecot).post(crate::transport::push::dovecot),
        )
        .with_state(state)
}

/// `POST /wake[?account=ADDRESS]`: a command beside the daemon (`join`, `quarantine
/// release`) queued rows in the store; the outbox workers of that account (or of every
/// account) look now instead of at their next safety poll. It only makes workers look at
/// what the store already holds, so it needs no credentials; it is rate-limited.
async fn wake(
    State(h): State<Http>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> StatusCode {
    {
        let mut last = h.last_wake.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now < t + WAKE_EVERY) {
            return StatusCode::TOO_MANY_REQUESTS;
        }
        *last = Some(now);
    }
    let want = q.get("account").map(|a| a.to_lowercase());
    let mut woken = 0;
    for a in h.accounts.list().into_iter().filter(|a| want.as_ref().is_none_or(|w| *w == a.key)) {
        a.outbox.queued(a.targets.iter().map(String::as_str));
        a.released.notify_one();
        woken += 1;
    }
    tracing::debug!(account = ?want, woken, "outbox workers woken (POST /wake)");
    if woken == 0 { StatusCode::NOT_FOUND } else { StatusCode::ACCEPTED }
}

/// The loopback address to reach a daemon listening on `listen` from the same machine
/// (a wildcard address is asked on loopback).
pub fn local_addr(mut listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    listen
}

async fn metrics_handler(State(h): State<Http>) -> impl IntoResponse {
    // The outbox gauges are read from the stores at scrape time, so they are never stale,
    // summed over the accounts per target. Each gauge is set once, to its final value: a
    // concurrent scrape never sees a reset.
    let now = chrono::Utc::now().timestamp_millis();
    let mut values: std::collections::BTreeMap<String, (i64, i64)> = std::collections::BTreeMap::new();
    let mut store_up = 1;
    for a in h.accounts.list() {
        for t in &a.targets {
            values.entry(t.clone()).or_insert((0, 0));
        }
        match a.store.outbox_stats().await {
            Ok(stats) => {
                for s in &stats {
                    let v = values.entry(s.target.clone()).or_insert((0, 0));
                    v.0 += s.depth as i64;
                    v.1 = v.1.max((now - s.oldest_queued_ms).max(0) / 1000);
                }
            }
            Err(e) => {
                store_up = 0;
                tracing::warn!(account = %a.key, error = %e, "metrics: cannot read the outbox from the store");
            }
        }
    }
    for (target, (depth, age)) in values {
        h.metrics.outbox_depth.with_label_values(&[&target]).set(depth);
        h.metrics.outbox_oldest_age.with_label_values(&[&target]).set(age);
    }
    h.metrics.store_up.set(store_up);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
}

/// `/ready`: every part of every running account, and the store of each. The main
/// account's parts keep their plain names (`imap`, `smtp`, `bridge ID`, `store`); a
/// directory account's are prefixed with its address. `accounts` lists the accounts this
/// daemon runs (with their lease epoch on PostgreSQL), `broken` those that cannot run.
async fn ready(State(h): State<Http>) -> impl IntoResponse {
    let mut parts = std::collections::BTreeMap::new();
    let mut accounts = serde_json::Map::new();
    for a in h.accounts.list() {
        let prefix = if a.main { String::new() } else { format!("{} ", a.key) };
        for (name, p) in a.health.parts() {
            parts.insert(format!("{prefix}{name}"), p);
        }
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let store = match tokio::time::timeout(STORE_PING, a.store.ping()).await {
            Ok(Ok(())) => Part { ok: true, state: "connected", reason: None, since },
            Ok(Err(e)) => Part { ok: false, state: "reconnecting", reason: Some(format!("store: {e}")), since },
            Err(_) => Part {
                ok: false,
                state: "reconnecting",
                reason: Some(format!("store: no answer within {STORE_PING:?}")),
                since,
            },
        };
        parts.insert(format!("{prefix}store"), store);
        accounts.insert(a.key.clone(), json!({ "main": a.main, "lease_epoch": a.epoch }));
    }
    let broken = h.accounts.broken();
    let ready = parts.values().all(|p: &Part| p.ok) && broken.is_empty();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        axum::Json(json!({
            "ready": ready,
            "parts": parts,
            "accounts": accounts,
            "broken": broken,
            "node": h.accounts.node,
        })),
    )
}

/// How long a client may take to send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the request line and headers, from the first byte (slowloris).
    pub header: Duration,
    /// Between two pieces of a request body.
    pub body: Duration,
}

impl Timeouts {
    pub fn from_config(c: &crate::config::HttpConfig) -> Self {
        Self {
            header: Duration::from_secs(c.header_read_timeout_secs),
            body: Duration::from_secs(c.body_read_timeout_secs),
        }
    }
}

/// Answers a handler's panic: logged at ERROR with its message, counted, 500.
#[derive(Clone)]
struct PanicTo500(prometheus::IntCounterVec);

impl tower_http::catch_panic::ResponseForPanic for PanicTo500 {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(
        &mut self,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> axum::http::Response<Self::ResponseBody> {
        self.0.with_label_values(&["http"]).inc();
        let message = crate::supervisor::panic_message(payload.as_ref());
        tracing::error!(task = "http", panic = %message, "an HTTP handler panicked; answered 500");
        (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"errcode": "M_UNKNOWN", "error": "internal error"})))
            .into_response()
    }
}

/// Serves until `shutdown`, with `extra` routes: those the bridges' factories built
/// ([`coi_bridge_api::Built::routes`], such as the Matrix appservice endpoint).
///
/// A panic in a handler answers 500, is logged at ERROR and counted
/// (`coi_bridge_panics_total{task="http"}`); the listener goes on. A client that does
/// not send its request head within `timeouts.header`, or stalls its body for
/// `timeouts.body`, is cut off.
pub async fn serve(
    listener: TcpListener,
    state: Http,
    extra: Router,
    shutdown: CancellationToken,
    timeouts: Timeouts,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceBuilder;
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::timeout::RequestBodyTimeoutLayer;

    let app = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(PanicTo500(state.metrics.panics.clone())))
        .layer(RequestBodyTimeoutLayer::new(timeouts.body))
        .service(router(state).merge(extra));
    // One task per connection, all waited for (at most the daemon's grace period).
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "http: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(timeouts.header);
            let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The status code of a plain-HTTP GET to `url` (`http://host:port/path`), for
/// `coi-bridge health` in images without curl.
pub async fn get_status(url: &str, within: Duration) -> anyhow::Result<u16> {
    request_status("GET", url, within).await
}

/// `POST url` (no body), the status code of the answer.
pub async fn post_status(url: &str, within: Duration) -> anyhow::Result<u16> {
    request_status("POST", url, within).await
}

/// `POST /wake` at `url` as the CLI sends it: a 429 (another wake-up less than
/// [`WAKE_EVERY`] ago, e.g. two `quarantine release` in a row) is asked again after that
/// long, a few times, so a wake-up is not lost to the rate limit. The last status.
pub async fn post_wake(url: &str, within: Duration) -> anyhow::Result<u16> {
    let mut status = post_status(url, within).await?;
    for _ in 0..5 {
        if status != 429 {
            break;
        }
        tokio::time::sleep(WAKE_EVERY).await;
        status = post_status(url, within).await?;
    }
    Ok(status)
}

async fn request_status(method: &str, url: &str, within: Duration) -> anyhow::Result<u16> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.context("connect")?;
        let request =
            format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line, however the answer is split into reads (at most 1 KiB).
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let code = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        code.with_context(|| format!("not an HTTP answer: {line:?}"))
    };
    tokio::time::timeout(within, ask).await.context("no answer in time")?
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A listener on a free loopback port, serving `extra` besides the daemon's routes.
    async fn start(extra: Router, timeouts: Timeouts) -> (std::net::SocketAddr, Arc<Metrics>, CancellationToken) {
        let (addr, metrics, token, _) = start_with(extra, timeouts).await;
        (addr, metrics, token)
    }

    /// [`start`], with the account's outbox notifier (its targets: smtp and telegram).
    async fn start_with(
        extra: Router,
        timeouts: Timeouts,
    ) -> (std::net::SocketAddr, Arc<Metrics>, CancellationToken, Arc<crate::hub::wake::OutboxNotifier>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).await.expect("store");
        std::mem::forget(dir);
        let metrics = Arc::new(Metrics::new());
        let outbox = crate::hub::wake::OutboxNotifier::new();
        let state = Http::new(
            metrics.clone(),
            Running::single(crate::accounts::AccountView {
                key: "bridge@example.org".into(),
                main: true,
                health: crate::health::Health::new(metrics.clone()),
                store: Arc::new(store),
                targets: vec!["smtp".into(), "telegram".into()],
                epoch: None,
                outbox: outbox.clone(),
                released: Arc::new(tokio::sync::Notify::new()),
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        tokio::spawn(serve(listener, state, extra, token.clone(), timeouts));
        (addr, metrics, token, outbox)
    }

    /// Rows another process queued: `POST /wake` wakes every outbox worker of the account
    /// named (none of another), and a flood of wake-ups is refused.
    #[tokio::test]
    async fn post_wake_wakes_the_accounts_outbox_workers_and_is_rate_limited() {
        let (addr, _, token, outbox) = start_with(Router::new(), SLOW).await;
        let woken = |target: &'static str| {
            let outbox = outbox.clone();
            async move { tokio::time::timeout(Duration::from_millis(200), outbox.wait(target)).await.is_ok() }
        };
        assert!(!woken("smtp").await, "nothing before");
        let url = format!("http://{addr}/wake?account=Bridge@Example.org");
        assert_eq!(post_status(&url, Duration::from_secs(5)).await.expect("answer"), 202);
        assert!(woken("smtp").await && woken("telegram").await, "every target of the account");
        // At once again: refused, nothing woken.
        assert_eq!(post_status(&format!("http://{addr}/wake"), Duration::from_secs(5)).await.expect("answer"), 429);
        assert!(!woken("smtp").await);
        tokio::time::sleep(WAKE_EVERY).await;
        let url = format!("http://{addr}/wake?account=nobody@example.org");
        assert_eq!(post_status(&url, Duration::from_secs(5)).await.expect("answer"), 404, "no such account here");
        assert!(!woken("smtp").await);
        token.cancel();
    }

    /// Two CLI commands in a row (`quarantine release`, twice): the second wake-up comes
    /// inside the rate limit, is asked again, and still wakes the workers.
    #[tokio::test]
    async fn a_wake_up_inside_the_rate_limit_is_asked_again_not_lost() {
        let (addr, _, token, outbox) = start_with(Router::new(), SLOW).await;
        let url = format!("http://{addr}/wake");
        assert_eq!(post_wake(&url, Duration::from_secs(5)).await.expect("answer"), 202);
        tokio::time::timeout(Duration::from_secs(1), outbox.wait("smtp")).await.expect("the first woke");
        assert_eq!(post_wake(&url, Duration::from_secs(5)).await.expect("answer"), 202, "taken on a later try");
        tokio::time::timeout(Duration::from_secs(1), outbox.wait("smtp")).await.expect("the second woke too");
        token.cancel();
    }

    /// The whole answer to a plain request.
    async fn ask(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await.expect("answer").expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    const SLOW: Timeouts = Timeouts { header: Duration::from_secs(1), body: Duration::from_secs(1) };

    #[tokio::test]
    async fn a_panicking_handler_answers_500_is_counted_and_the_listener_goes_on() {
        // Only this test's router has a route that panics.
        let boom = Router::new().route(
            "/boom",
            get(|| async {
                let text = String::from("!coi link é");
                text[..11].len().to_string()
            }),
        );
        let (addr, metrics, token) = start(boom, SLOW).await;
        let answer = ask(addr, "GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert_eq!(metrics.panics.with_label_values(&["http"]).get(), 1);
        let scrape = ask(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(scrape.contains("coi_bridge_panics_total{task=\"http\"} 1"), "{scrape}");
        token.cancel();
    }

    #[tokio::test]
    async fn a_client_sending_its_head_byte_by_byte_is_disconnected() {
        let (addr, _, token) = start(Router::new(), SLOW).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // A head that never ends: one byte at a time, each well within any idle timeout.
        let trickle = async {
            let head = b"GET /health HTTP/1.1\r\nHost: x\r\n".iter().chain(b"X-Slow: a\r\n".iter().cycle());
            for byte in head {
                if s.write_all(&[*byte]).await.is_err() {
                    return "closed on write";
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return "closed",
                    Ok(Ok(_)) => return "answered",
                    Err(_) => {}
                }
            }
            "the head ended"
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), trickle).await;
        assert!(
            matches!(outcome, Ok("closed" | "closed on write" | "answered")),
            "the server kept the slow connection open: {outcome:?}"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_off() {
        let echo = Router::new()
            .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }));
        let (addr, _, token) = start(echo, SLOW).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nten bytes.").await.expect("write");
        // Then nothing: the server gives up on the body and answers or closes.
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server waited for the body for 60 s");
        let answer = String::from_utf8_lossy(&out);
        assert!(!answer.contains("200 OK"), "{answer}");
        token.cancel();
    }
}
