//! The daemon's HTTP endpoint: /metrics (Prometheus text), /health (process up), /ready (IMAP logged in), plus the bridges' routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(metrics)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.imap_connected.get() == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "IMAP not connected\n")
    }
}

/// Serves until `shutdown`.
/// Serves until `shutdown`, with the bridges' `extra` routes (the appservice endpoint).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    extra: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(metrics).merge(extra)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
