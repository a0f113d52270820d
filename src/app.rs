//! Wires the daemon together: config -> store -> transport -> (bridges) -> supervisor, and runs it until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;

use crate::coi::Limits;
use crate::config::Loaded;
use crate::hub::e2ee::Identity;
use crate::hub::ingest::Ingest;
use crate::metrics::Metrics;
use crate::supervisor::{Stop, Supervisor};
use crate::transport::imap::{ImapSettings, ImapWorker};
use crate::transport::smtp::{self, FailedDelivery, RetryPolicy, SmtpWorker};
use crate::{http, store};

/// How long a stop may take before the process exits anyway.
pub const GRACE: Duration = Duration::from_secs(30);

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(loaded: Loaded) -> anyhow::Result<Stop> {
    let cfg = &loaded.config;
    let state_dir = cfg.store.state_dir();
    let store = store::open(&cfg.store.url, &state_dir).await?;
    let metrics = Arc::new(Metrics::new());
    let imap = ImapSettings::from_config(&loaded)?;
    let transport = smtp::transport(&loaded)?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}; pick a free address", cfg.http.listen))?;
    let http_addr = listener.local_addr()?;

    let sup = Supervisor::new().context("cannot take over SIGTERM/SIGINT")?;
    let identity = Arc::new(
        Identity::load_or_create(store.as_ref(), &cfg.account.address, loaded.key_passphrase.clone())
            .await
            .context("the bridge's OpenPGP key")?,
    );
    tracing::info!(fingerprint = %identity.fingerprint, "bridge key loaded");
    let ingest = Arc::new(Ingest::new(
        store.clone(),
        identity.clone(),
        cfg.account.encryption,
        Limits::default(),
        metrics.clone(),
    ));
    let imap_worker = ImapWorker::new(imap, ingest, metrics.clone());
    let token = sup.token();
    sup.spawn("imap", async move {
        imap_worker.run(token).await;
        Ok(())
    });

    let wake = Arc::new(Notify::new());
    let policy = RetryPolicy {
        base: Duration::from_secs(1),
        max_delay: Duration::from_secs(cfg.smtp.retry_max_delay_secs),
        max_attempts: cfg.smtp.max_attempts,
    };
    // Until bridges exist there is no origin side to tell: the failure is logged and counted.
    let on_failure = Arc::new(|f: FailedDelivery| {
        tracing::error!(message_id = %f.message_id, chat_id = f.chat_id, reason = %f.reason, "delivery to COI failed for good");
    });
    let smtp_worker = SmtpWorker::new(transport, store.clone(), policy, wake, on_failure, metrics.clone());
    let token = sup.token();
    sup.spawn("smtp", async move {
        smtp_worker.run(token).await;
        Ok(())
    });

    let token = sup.token();
    let m = metrics.clone();
    sup.spawn("http", async move { http::serve(listener, m, token).await });

    tracing::info!(
        address = %cfg.account.address,
        state_dir = %state_dir.display(),
        http = %http_addr,
        "coi-bridge running"
    );
    sup.run_until_signal(GRACE).await
}
