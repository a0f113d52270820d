//! The daemon's HTTP endpoint: /metrics (Prometheus text), /health (process up), /ready (JSON, a reason per part), plus the bridges' routes.

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

use crate::health::{Health, Part};
use crate::metrics::Metrics;
use crate::store::Store;

/// How long `/ready` waits for the store before calling it not ready.
const STORE_PING: Duration = Duration::from_secs(2);

/// What the handlers read.
#[derive(Clone)]
pub struct Http {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub store: Arc<dyn Store>,
    /// Every outbox target (smtp and each bridge id): their gauges read 0 when empty.
    pub targets: Vec<String>,
}

pub fn router(state: Http) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(|| async { axum::Json(json!({"status": "alive"})) }))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn metrics_handler(State(h): State<Http>) -> impl IntoResponse {
    // The outbox gauges are read from the store at scrape time, so they are never stale.
    // Each gauge is set once, to its final value: a concurrent scrape never sees a reset.
    match h.store.outbox_stats().await {
        Ok(stats) => {
            let now = chrono::Utc::now().timestamp_millis();
            let mut values: std::collections::BTreeMap<&str, (i64, i64)> =
                h.targets.iter().map(|t| (t.as_str(), (0, 0))).collect();
            for s in &stats {
                values.insert(&s.target, (s.depth as i64, (now - s.oldest_queued_ms).max(0) / 1000));
            }
            for (target, (depth, age)) in values {
                h.metrics.outbox_depth.with_label_values(&[target]).set(depth);
                h.metrics.outbox_oldest_age.with_label_values(&[target]).set(age);
            }
            h.metrics.store_up.set(1);
        }
        Err(e) => {
            h.metrics.store_up.set(0);
            tracing::warn!(error = %e, "metrics: cannot read the outbox from the store");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
}

async fn ready(State(h): State<Http>) -> impl IntoResponse {
    let mut parts = h.health.parts();
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let store = match tokio::time::timeout(STORE_PING, h.store.ping()).await {
        Ok(Ok(())) => Part { ok: true, state: "connected", reason: None, since },
        Ok(Err(e)) => Part { ok: false, state: "reconnecting", reason: Some(format!("store: {e}")), since },
        Err(_) => Part {
            ok: false,
            state: "reconnecting",
            reason: Some(format!("store: no answer within {STORE_PING:?}")),
            since,
        },
    };
    parts.insert("store".into(), store);
    let ready = parts.values().all(|p| p.ok);
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(json!({ "ready": ready, "parts": parts })))
}

/// Serves until `shutdown`, with the bridges' `extra` routes (the appservice endpoint).
pub async fn serve(
    listener: TcpListener,
    state: Http,
    extra: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state).merge(extra)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}

/// The status code of a plain-HTTP GET to `url` (`http://host:port/path`), for
/// `coi-bridge health` in images without curl.
pub async fn get_status(url: &str, within: Duration) -> anyhow::Result<u16> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.context("connect")?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
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
