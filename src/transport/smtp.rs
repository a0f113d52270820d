//! The SMTP side of the transport: drains the durable outbox in order per chat, retrying 4xx and connection errors with backoff.
//!
//! 5xx replies are permanent: the row is marked failed with the server's reason and the
//! failure hook tells the origin side. Nothing is removed from the outbox before the
//! server accepted it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use lettre::address::Envelope as LettreEnvelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::config::{Loaded, Security};
use crate::hub::wake::OutboxNotifier;
use crate::metrics::Metrics;
use crate::store::{OutboxItem, SMTP_TARGET, Store};

/// Deliveries run at once (each for a different chat).
const PARALLEL: usize = 4;
/// How long an idle worker sleeps when nothing wakes it: rows queued in this process
/// wake it (the outbox notifier) and a retry when it comes due, so this look only finds
/// rows another process queued (the CLI).
const SAFETY_POLL: Duration = crate::hub::delivery::SAFETY_POLL;

/// A message the outbox gave up on, handed to whoever must tell the origin side.
#[derive(Debug, Clone)]
pub struct FailedDelivery {
    pub message_id: String,
    pub chat_id: i64,
    pub reason: String,
}

/// Called once for every message that failed for good.
pub type FailureHook = Arc<dyn Fn(FailedDelivery) + Send + Sync>;

/// When to retry and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
}

pub mod client;

pub use client::{Client as Transport, SendError};

/// Builds the SMTP client from the config (no I/O; connections open on the first mail).
pub fn transport(loaded: &Loaded) -> anyhow::Result<Transport> {
    let c = &loaded.config.smtp;
    // One TLS setup per server and CA file for the whole process (see tls::client_config).
    static PARAMS: super::tls::Cache<(String, Option<[u8; 32]>), TlsParameters> = std::sync::OnceLock::new();
    let digest = match &c.ca_file {
        Some(ca) => Some(super::tls::ca_digest(ca).context("smtp.ca_file")?),
        None => None,
    };
    let (starttls, rustls) = match c.security {
        Security::Starttls => {
            let params = super::tls::shared(&PARAMS, (c.host.clone(), digest), || {
                let mut tls = TlsParameters::builder(c.host.clone());
                if let Some(ca) = &c.ca_file {
                    let pem =
                        std::fs::read(ca).with_context(|| format!("smtp.ca_file: cannot read {}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem)
                        .with_context(|| format!("smtp.ca_file: {} is not a PEM certificate", ca.display()))?;
                    tls = tls.add_root_certificate(cert);
                }
                tls.build_rustls().context("smtp: TLS setup")
            })?;
            (Some(params), None)
        }
        Security::Tls => (None, Some(super::tls::client_config(c.ca_file.as_deref()).context("smtp: TLS setup")?)),
        Security::Plain => (None, None),
    };
    let domain = loaded.config.account.address.rsplit('@').next().unwrap_or("localhost").to_owned();
    let credentials = if c.auth {
        Some(Credentials::new(loaded.config.account.login().to_owned(), loaded.password()?.expose().to_owned()))
    } else {
        None
    };
    Ok(Transport::new(client::Server {
        host: c.host.clone(),
        port: c.port(),
        security: c.security,
        starttls,
        rustls,
        hello: ClientId::Domain(domain),
        credentials,
    }))
}

/// Drains the `smtp` outbox.
pub struct SmtpWorker {
    transport: Transport,
    store: Arc<dyn Store>,
    policy: RetryPolicy,
    wake: Arc<OutboxNotifier>,
    on_failure: FailureHook,
    metrics: Arc<Metrics>,
    health: Option<Arc<crate::health::Health>>,
    /// The last attempt found no SMTP server answering (not a 4xx/5xx reply): while rows
    /// wait, the worker probes it every [`PROBE`] and sends them as soon as it answers.
    unreachable: std::sync::atomic::AtomicBool,
    /// See [`SAFETY_POLL`].
    safety_poll: Duration,
}

/// How often an unreachable SMTP server is probed while mails wait for it.
const PROBE: Duration = Duration::from_secs(1);

impl SmtpWorker {
    /// Reports the SMTP server's state on `/ready`: ok after a mail went out, not ready
    /// while mails wait on a temporary failure.
    pub fn with_health(mut self, health: Arc<crate::health::Health>) -> Self {
        self.health = Some(health);
        self
    }
}

enum Outcome {
    Sent,
    Retry,
    Failed,
}

impl SmtpWorker {
    pub fn new(
        transport: Transport,
        store: Arc<dyn Store>,
        policy: RetryPolicy,
        wake: Arc<OutboxNotifier>,
        on_failure: FailureHook,
        metrics: Arc<Metrics>,
    ) -> Self {
        // A new process does not know whether the server answered the last one: mails in
        // a backoff grown over an outage (before a crash or restart) go as soon as the
        // first probe gets an answer, not when that backoff runs out.
        let unreachable = std::sync::atomic::AtomicBool::new(true);
        Self {
            transport: transport.with_metrics(metrics.clone()),
            store,
            policy,
            wake,
            on_failure,
            metrics,
            health: None,
            unreachable,
            safety_poll: SAFETY_POLL,
        }
    }

    /// Another [`SAFETY_POLL`] (tests make it long, to see nothing depends on it).
    pub fn with_safety_poll(mut self, every: Duration) -> Self {
        self.safety_poll = every;
        self
    }

    /// Runs until `shutdown`. A delivery in flight is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut store_backoff = backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            if shutdown.is_cancelled() {
                // QUIT on the kept connections: the server logs a clean end, not a lost client.
                self.transport.close_idle(Duration::ZERO).await;
                return;
            }
            let now = chrono::Utc::now().timestamp();
            let due = match self.store.due_outbox(SMTP_TARGET, now, 64).await {
                Ok(d) => {
                    store_backoff.reset();
                    d
                }
                Err(e) => {
                    let pause = store_backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?pause, "outbox: cannot read the store");
                    self.pause(&shutdown, pause).await;
                    continue;
                }
            };
            if due.is_empty() {
                let (pause, waiting) = match self.store.next_outbox_due(SMTP_TARGET).await {
                    Ok(Some(at)) => (
                        Duration::from_secs(at.saturating_sub(now).clamp(0, 3600) as u64)
                            .min(crate::backoff::spread(self.safety_poll)),
                        true,
                    ),
                    // Nothing queued: `queue` wakes us in-process; other processes (the
                    // CLI) are noticed by the safety poll.
                    Ok(None) => (crate::backoff::spread(self.safety_poll), false),
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: cannot read the next due time");
                        (store_backoff.next_delay(), false)
                    }
                };
                // An unreachable server is probed only while mails wait for it.
                let unreachable = waiting && self.unreachable.load(std::sync::atomic::Ordering::SeqCst);
                let pause = if unreachable { pause.min(PROBE) } else { pause };
                self.pause(&shutdown, pause.max(Duration::from_millis(50))).await;
                if unreachable && self.transport.test_connection().await {
                    // The server is back: every chat's head goes now, not when a backoff
                    // grown over the outage runs out (their attempts count as usual).
                    self.unreachable.store(false, std::sync::atomic::Ordering::SeqCst);
                    if let Ok(heads) = self.store.due_outbox(SMTP_TARGET, i64::MAX, 64).await {
                        tracing::info!(mails = heads.len(), "the SMTP server answers again; sending what waits now");
                        Box::pin(self.send_all(heads)).await;
                    }
                }
                continue;
            }
            // Heads of different chats go out in parallel; each chat's next item waits for
            // its head, so order per chat holds.
            // Retried rows get a later next_attempt_at, so the next round does not spin.
            Box::pin(self.send_all(due)).await;
        }
    }

    /// Sends `items`, up to PARALLEL at once. Boxed by its callers: the worker waits for
    /// hours holding only its waiting state, and the sends' state only while they run.
    async fn send_all(&self, items: Vec<OutboxItem>) {
        let _: Vec<Outcome> =
            futures::stream::iter(items).map(|item| self.deliver(item)).buffer_unordered(PARALLEL).collect().await;
    }

    /// Waits `d`, or less when woken. Kept connections are closed once unused for
    /// [`client::IDLE_CLOSE`], and all of them at shutdown (in `run`).
    async fn pause(&self, shutdown: &CancellationToken, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let step = if self.transport.keeps_any() { left.min(client::IDLE_CLOSE) } else { left };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.wait(SMTP_TARGET) => return,
                () = tokio::time::sleep(step) => {}
            }
            self.transport.close_idle(client::IDLE_CLOSE).await;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }

    async fn deliver(&self, item: OutboxItem) -> Outcome {
        let Some(env) = item.envelope.as_ref() else {
            return self.fail(&item, "outbox row has no envelope".into()).await;
        };
        let envelope = match envelope(&env.from, &env.to) {
            Ok(e) => e,
            Err(e) => return self.fail(&item, format!("bad envelope: {e}")).await,
        };
        if item.attempts == 0 {
            let waited = chrono::Utc::now().timestamp_millis().saturating_sub(item.queued_at_ms).max(0);
            self.metrics.hop("outbox_wait", Duration::from_millis(waited as u64));
        }
        let started = std::time::Instant::now();
        let sent = self.transport.send_raw(&envelope, &item.payload).await;
        if sent.is_ok() {
            self.metrics.hop("smtp_send", started.elapsed());
        }
        // Any reply (even a refusal) is a server answering: no probe needed before the
        // next attempt, which goes when it comes due.
        let answered = match &sent {
            Ok(_) => true,
            Err(e) => e.is_permanent() || e.is_transient(),
        };
        self.unreachable.store(!answered, std::sync::atomic::Ordering::SeqCst);
        match sent {
            Ok(_) => {
                if let Err(e) = backoff::until_ok(backoff::RECORD_FOR, || self.store.outbox_done(item.id)).await {
                    // Sent but not marked: it will be sent again; receivers dedupe by Message-ID.
                    tracing::error!(error = %e, message_id = %item.message_id, "sent, but could not mark the outbox row");
                }
                self.metrics.delivered(SMTP_TARGET, &item.message_id, item.queued_at_ms);
                if let Some(h) = &self.health {
                    h.smtp_sent();
                }
                tracing::info!(message_id = %item.message_id, chat_id = item.chat_id, attempts = item.attempts + 1, "mail sent");
                Outcome::Sent
            }
            // One refused recipient must not sink the mail for the others.
            Err(e) if e.is_permanent() && env.to.len() > 1 => self.one_by_one(&item, env).await,
            Err(e) if e.is_permanent() => self.fail(&item, format!("rejected by the SMTP server: {e}")).await,
            Err(e) => {
                if let Some(h) = &self.health {
                    h.smtp_failed(format!("SMTP: {e}"));
                }
                // No reply at all (refused, reset, timed out): `unreachable` is set above,
                // and the server is probed until it answers.
                self.retry(&item, &e.to_string()).await
            }
        }
    }

    /// After a 5xx for a mail to several recipients: sends to each alone. Refused ones
    /// are reported, the others delivered; recipients hit by a temporary error stay in
    /// the row's envelope for the next attempt.
    async fn one_by_one(&self, item: &OutboxItem, env: &crate::store::Envelope) -> Outcome {
        let mut refused = Vec::new();
        let mut left = Vec::new();
        let mut last_error = String::new();
        for rcpt in &env.to {
            let single = match envelope(&env.from, std::slice::from_ref(rcpt)) {
                Ok(e) => e,
                Err(e) => {
                    refused.push(format!("{rcpt} ({e})"));
                    continue;
                }
            };
            match self.transport.send_raw(&single, &item.payload).await {
                Ok(_) => {}
                Err(e) if e.is_permanent() => refused.push(format!("{rcpt} ({e})")),
                Err(e) => {
                    last_error = e.to_string();
                    left.push(rcpt.clone());
                }
            }
        }
        if refused.len() == env.to.len() {
            return self
                .fail(item, format!("rejected by the SMTP server for every recipient: {}", refused.join("; ")))
                .await;
        }
        if !refused.is_empty() {
            // The message reached the others; the refused ones are reported like a failure.
            self.metrics.delivery_failed(SMTP_TARGET);
            let reason = format!("rejected by the SMTP server for {}", refused.join("; "));
            tracing::error!(message_id = %item.message_id, reason = %reason, "mail refused for some recipients");
            self.tell_portals(item, &env.from, &reason).await;
            (self.on_failure)(FailedDelivery { message_id: item.message_id.clone(), chat_id: item.chat_id, reason });
        }
        if left.is_empty() {
            if let Err(e) = self.store.outbox_done(item.id).await {
                tracing::error!(error = %e, message_id = %item.message_id, "sent, but could not mark the outbox row");
            }
            self.metrics.delivered(SMTP_TARGET, &item.message_id, item.queued_at_ms);
            tracing::info!(message_id = %item.message_id, chat_id = item.chat_id, "mail sent, recipient by recipient");
            return Outcome::Sent;
        }
        let narrowed = crate::store::Envelope { from: env.from.clone(), to: left };
        if let Err(e) = self.store.outbox_set_recipients(item.id, &narrowed).await {
            // Not narrowed: the next attempt reaches everyone again; receivers dedupe by Message-ID.
            tracing::error!(error = %e, message_id = %item.message_id, "could not narrow the recipients");
        }
        self.retry(item, &last_error).await
    }

    /// A temporary failure: try again later, or give up after `max_attempts`.
    async fn retry(&self, item: &OutboxItem, error: &str) -> Outcome {
        let attempts = item.attempts + 1;
        if attempts >= self.policy.max_attempts {
            return self.fail(item, format!("gave up after {attempts} attempts: {error}")).await;
        }
        let pause = backoff::delay(self.policy.base, self.policy.max_delay, item.attempts);
        let next = chrono::Utc::now().timestamp() + pause.as_secs().max(1) as i64;
        self.metrics.delivery_retry(SMTP_TARGET);
        tracing::warn!(message_id = %item.message_id, attempts, retry_in = ?pause, error, "mail not sent; will retry");
        if let Err(se) = self.store.outbox_retry(item.id, next, error).await {
            tracing::error!(error = %se, "could not record the retry");
            // The row stays due: pause rather than take it again at once, in a loop.
            tokio::time::sleep(backoff::PROBE_EVERY).await;
        }
        Outcome::Retry
    }

    async fn fail(&self, item: &OutboxItem, reason: String) -> Outcome {
        self.metrics.delivery_failed(SMTP_TARGET);
        tracing::error!(message_id = %item.message_id, chat_id = item.chat_id, reason = %reason, "mail failed for good; telling the origin side");
        if let Err(e) = self.store.outbox_failed(item.id, &reason).await {
            tracing::error!(error = %e, "could not record the failure");
        }
        let from = item.envelope.as_ref().map(|e| e.from.clone()).unwrap_or_default();
        self.tell_portals(item, &from, &reason).await;
        (self.on_failure)(FailedDelivery { message_id: item.message_id.clone(), chat_id: item.chat_id, reason });
        Outcome::Failed
    }

    /// A chat message that COI (some or all of its recipients) did not get is reported to
    /// the chat's bridged sides, where its sender wrote it: a visible notice, never a
    /// silent drop. Receipts and key-exchange mail are only logged.
    async fn tell_portals(&self, item: &OutboxItem, from: &str, reason: &str) {
        use sha2::Digest as _;
        let message_id = item.message_id.trim_end_matches("#plain");
        let msg = match self.store.message(message_id).await {
            Ok(Some(m)) if m.kind == crate::store::MessageKind::Text && m.direction == crate::store::Direction::Out => {
                m
            }
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, message_id, "could not read the failed message to tell its sender");
                return;
            }
        };
        let what: String = msg.text.chars().take(60).collect();
        let text = format!("⚠️ Not delivered on COI: \"{what}\" ({reason})");
        let digest = sha2::Sha256::digest(reason.as_bytes());
        let notice_id =
            format!("{message_id}#failed-{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3]);
        let queued = crate::hub::route::queue_portal_notice(
            self.store.as_ref(),
            &self.wake,
            item.chat_id,
            &notice_id,
            from,
            &text,
        );
        if let Err(e) = queued.await {
            tracing::error!(error = %e, message_id, "could not queue the failure notice for the bridged sides");
        }
    }
}

fn envelope(from: &str, to: &[String]) -> anyhow::Result<LettreEnvelope> {
    let from = from.parse().with_context(|| format!("sender {from:?}"))?;
    let to =
        to.iter().map(|t| t.parse().with_context(|| format!("recipient {t:?}"))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(LettreEnvelope::new(Some(from), to)?)
}

#[cfg(test)]
mod tests_idle;
#[cfg(test)]
mod tests_probe;
