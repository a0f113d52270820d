//! The IMAP side of the transport: log in, fetch new UIDs in batches, IDLE, and reconnect with backoff after any error.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Loaded, Secret, Security};
use crate::hub::ingest::{Fetched, Ingest};
use crate::metrics::Metrics;
use crate::store::ImapCursor;
use crate::transport::push::PushAccount;

/// Any byte stream async-imap can run on (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Io for T {}

pub type Session = async_imap::Session<Box<dyn Io>>;

/// How long connecting and logging in may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command (FETCH of a batch, SEARCH) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes downloaded per batch at most (one larger mail still gets its own batch).
const MAX_BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// What the IMAP side needs to know, resolved from the config.
#[derive(Clone, Debug)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub tls: Arc<rustls::ClientConfig>,
    pub login: String,
    pub password: Secret,
    pub folder: String,
    pub idle_timeout: Duration,
    pub batch_size: u32,
    pub max_message_bytes: u64,
    /// Set with `[imap] push = true`: Dovecot's push events wake the worker through it.
    pub push: Option<Arc<PushAccount>>,
}

impl ImapSettings {
    pub fn from_config(loaded: &Loaded) -> anyhow::Result<Self> {
        let c = &loaded.config.imap;
        let login = loaded.config.account.login().to_owned();
        let push = loaded.push_secret.as_ref().map(|secret| {
            Arc::new(PushAccount {
                key: loaded.key(),
                login: login.to_lowercase(),
                folder: c.folder.clone(),
                secret: secret.clone(),
                wake: Arc::default(),
            })
        });
        Ok(Self {
            host: c.host.clone(),
            port: c.port(),
            security: c.security,
            tls: super::tls::client_config(c.ca_file.as_deref()).context("imap.ca_file")?,
            login,
            password: loaded.password()?.clone(),
            folder: c.folder.clone(),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            batch_size: c.batch_size,
            max_message_bytes: c.max_message_bytes,
            push,
        })
    }
}

/// Connects, secures the connection as configured, and logs in.
pub async fn connect(s: &ImapSettings) -> anyhow::Result<Session> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(s))
        .await
        .map_err(|_| anyhow!("IMAP {}:{}: no answer within {CONNECT_TIMEOUT:?}", s.host, s.port))?
}

async fn connect_inner(s: &ImapSettings) -> anyhow::Result<Session> {
    let tcp = TcpStream::connect((s.host.as_str(), s.port))
        .await
        .with_context(|| format!("IMAP {}:{}: cannot connect", s.host, s.port))?;
    tcp.set_nodelay(true).ok();
    let stream: Box<dyn Io> = match s.security {
        Security::Tls => Box::new(super::tls::wrap(s.tls.clone(), &s.host, tcp).await?),
        Security::Plain => Box::new(tcp),
        Security::Starttls => {
            let mut client = async_imap::Client::new(tcp);
            read_greeting(&mut client).await?;
            client
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .with_context(|| format!("IMAP {}: STARTTLS refused", s.host))?;
            Box::new(super::tls::wrap(s.tls.clone(), &s.host, client.into_inner()).await?)
        }
    };
    let mut client = async_imap::Client::new(stream);
    if s.security != Security::Starttls {
        read_greeting(&mut client).await?;
    }
    let session = client
        .login(&s.login, s.password.expose())
        .await
        .map_err(|(e, _)| anyhow!("IMAP {}: login as {} failed: {e}", s.host, s.login))?;
    Ok(session)
}

async fn read_greeting<T: AsyncRead + AsyncWrite + Unpin + Send + Debug>(
    client: &mut async_imap::Client<T>,
) -> anyhow::Result<()> {
    match client.read_response().await.context("IMAP greeting")? {
        Some(_) => Ok(()),
        None => bail!("IMAP server closed the connection before its greeting"),
    }
}

/// Watches one folder and hands every new mail to [`Ingest`].
pub struct ImapWorker {
    settings: ImapSettings,
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    health: Arc<crate::health::Health>,
}

impl ImapWorker {
    pub fn new(
        settings: ImapSettings,
        ingest: Arc<Ingest>,
        metrics: Arc<Metrics>,
        health: Arc<crate::health::Health>,
    ) -> Self {
        Self { settings, ingest, metrics, health }
    }

    /// What push events for this account must carry, and the worker's wake-up
    /// (`[imap] push = true`).
    pub fn push(&self) -> Option<Arc<PushAccount>> {
        self.settings.push.clone()
    }

    /// Runs until `shutdown`; every error leads to a reconnect after a growing, jittered pause.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.session(&shutdown, &mut backoff) => r,
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    let pause = backoff.next_delay();
                    self.metrics.imap_reconnects.inc();
                    self.metrics.failures.with_label_values(&["imap", "transient"]).inc();
                    self.health.imap_failed(format!("{e:#}"));
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?pause, "IMAP connection failed; reconnecting");
                    // A refused connection: the server is down; reconnect as soon as it
                    // listens again, not when a backoff grown over the outage ends.
                    let refused = crate::backoff::is_refused(&e);
                    let s = &self.settings;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = crate::backoff::pause_until_reachable(pause, &s.host, s.port), if refused => {}
                        () = tokio::time::sleep(pause), if !refused => {}
                    }
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> anyhow::Result<()> {
        let s = &self.settings;
        // Boxed, as the sync below: the task holds its waiting state for hours and these
        // rare steps (TLS handshake, fetch and ingest) only while they run.
        let mut session = Box::pin(connect(s)).await?;
        let mailbox = timed(session.select(&s.folder)).await?.with_context(|| format!("SELECT {}", s.folder))?;
        let uid_validity =
            mailbox.uid_validity.ok_or_else(|| anyhow!("server sent no UIDVALIDITY for {}", s.folder))?;
        tracing::info!(host = %s.host, folder = %s.folder, uid_validity, exists = mailbox.exists, "IMAP connected");
        // Counted while this session lives (however it ends): one per connected account.
        let _connected = Connected::count(&self.metrics.imap_connected);
        self.health.imap_connected();
        backoff.reset();
        // The cursor as this session last recorded it: only this worker moves it, so a
        // renewal of IDLE need not read the store (with 1,000 accounts, each renewal
        // opened a store connection for that one read, #12). A new session reads it.
        let mut known = None;
        // Push events: a wake-up that ends IDLE at once (see [`crate::transport::push`]).
        let wake = s.push.as_ref().map(|p| p.wake.clone());
        loop {
            if let Some(w) = &wake {
                w.take();
            }
            Box::pin(self.sync(&mut session, uid_validity, &mut known)).await?;
            // Events during that fetch: one more fetch for all of them, before IDLE.
            if wake.as_ref().is_some_and(|w| w.pending()) {
                self.metrics.push_fetches.inc();
                continue;
            }
            while session.unsolicited_responses.try_recv().is_ok() {}
            let mut idle = session.idle();
            timed(idle.init()).await?.context("IDLE")?;
            {
                // Renewed after half to all of the timeout, so that a daemon's accounts,
                // which start together, do not all renew in the same second.
                let renew = crate::backoff::spread(s.idle_timeout);
                let (wait, _stop) = idle.wait_with_timeout(renew);
                let pushed = async {
                    match &wake {
                        Some(w) => w.wait().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    // Dovecot announced new mail: fetch now, not at IDLE's (batched) news.
                    () = pushed => {
                        self.metrics.push_fetches.inc();
                        tracing::debug!("push event: leaving IDLE to fetch");
                    }
                    // Our own deadline: async-imap's restarts at every response, and
                    // Dovecot says "* OK Still here" every 2 minutes, so it never ended an
                    // IDLE, and every account reconnected at the 6-minute guard this
                    // replaced (411 of 1,000 at once in #12's benchmark). A connection
                    // that died without a FIN shows in DONE's command timeout.
                    () = tokio::time::sleep(renew) => tracing::debug!(after = ?renew, "IDLE renewed"),
                    r = wait => {
                        let r = r.context("IDLE")?;
                        tracing::debug!(?r, "IDLE woke");
                    }
                }
            }
            session = timed(idle.done()).await?.context("IDLE DONE")?;
        }
    }

    /// Fetches everything above the cursor, batch by batch. `known` is the cursor this
    /// session recorded last (`None`: read it from the store); it is set on success.
    async fn sync(&self, session: &mut Session, uid_validity: u32, known: &mut Option<u32>) -> anyhow::Result<()> {
        let s = &self.settings;
        let cursor = match *known {
            Some(last_uid) => Some(ImapCursor { uid_validity, last_uid }),
            None => self.ingest.store().imap_cursor(&s.folder).await?,
        };
        let mut last = match cursor {
            Some(c) if c.uid_validity == uid_validity => c.last_uid,
            Some(c) => {
                self.metrics.imap_uidvalidity_changes.inc();
                tracing::warn!(
                    folder = %s.folder, old = c.uid_validity, new = uid_validity,
                    "UIDVALIDITY changed: the mailbox was recreated; fetching it again, known messages are skipped by Message-ID"
                );
                self.ingest.advance(&s.folder, ImapCursor { uid_validity, last_uid: 0 }).await?;
                0
            }
            None => 0,
        };
        let set = format!("{}:*", last.saturating_add(1));
        let sizes: Vec<_> =
            timed(async { session.uid_fetch(&set, "(UID RFC822.SIZE)").await?.try_collect::<Vec<_>>().await })
                .await??;
        let mut new: Vec<(u32, u64)> = sizes
            .iter()
            .filter_map(|f| Some((f.uid?, u64::from(f.size.unwrap_or(0)))))
            .filter(|(uid, _)| *uid > last)
            .collect();
        drop(sizes);
        new.sort_unstable();
        new.dedup_by_key(|(uid, _)| *uid);
        for batch in plan_batches(&new, s.batch_size as usize, MAX_BATCH_BYTES, s.max_message_bytes) {
            let fetched = self.fetch(session, &batch).await?;
            let new_last = batch.last().map_or(last, |(uid, _)| *uid);
            let cursor = ImapCursor { uid_validity, last_uid: new_last };
            let outcome = self.ingest.batch(&s.folder, cursor, fetched).await?;
            tracing::debug!(?outcome, last_uid = new_last, "batch recorded");
            last = new_last;
        }
        *known = Some(last);
        Ok(())
    }

    /// Downloads one planned batch; mails over the size limit are passed on without body.
    async fn fetch(&self, session: &mut Session, batch: &[(u32, u64)]) -> anyhow::Result<Vec<Fetched>> {
        let max = self.settings.max_message_bytes;
        let mut out: Vec<Fetched> = batch
            .iter()
            .filter(|(_, size)| *size > max)
            .map(|&(uid, size)| Fetched { uid, raw: Vec::new(), oversize: Some(size) })
            .collect();
        let wanted: Vec<u32> = batch.iter().filter(|(_, size)| *size <= max).map(|(uid, _)| *uid).collect();
        if !wanted.is_empty() {
            let bodies: Vec<_> = timed(async {
                session.uid_fetch(uid_set(&wanted), "(UID BODY.PEEK[])").await?.try_collect::<Vec<_>>().await
            })
            .await??;
            for f in bodies {
                if let (Some(uid), Some(body)) = (f.uid, f.body()) {
                    out.push(Fetched { uid, raw: body.to_vec(), oversize: None });
                }
            }
        }
        // A UID the server no longer has (expunged meanwhile) is simply absent.
        out.sort_by_key(|f| f.uid);
        Ok(out)
    }
}

/// The most mails in the first batch of a round: a backlog (after an outage) starts
/// flowing once these few are decrypted and recorded, not once the whole first batch is
/// (the soak saw 47 mails take 6 s before the first went on).
const FIRST_BATCH: usize = 8;

/// Splits new mail (uid, size) into batches of at most `max_count` mails (the first of at
/// most [`FIRST_BATCH`]) and about `max_bytes` (a single larger mail gets a batch of its
/// own). Mails over `max_message` are not downloaded and cost nothing.
fn plan_batches(mails: &[(u32, u64)], max_count: usize, max_bytes: u64, max_message: u64) -> Vec<Vec<(u32, u64)>> {
    let mut out: Vec<Vec<(u32, u64)>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for &(uid, size) in mails {
        let cost = if size > max_message { 0 } else { size };
        let count = if out.is_empty() { max_count.clamp(1, FIRST_BATCH) } else { max_count.max(1) };
        if !current.is_empty() && (current.len() >= count || bytes + cost > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push((uid, size));
        bytes += cost;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `1,2,3,7` as `1:3,7`.
fn uid_set(uids: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
        i += 1;
    }
    parts.join(",")
}

async fn timed<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(COMMAND_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("IMAP command timed out after {COMMAND_TIMEOUT:?}"))
}

/// One logged-in session in `coi_bridge_imap_connected`, until dropped.
struct Connected(prometheus::IntGauge);

impl Connected {
    fn count(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::{FIRST_BATCH, plan_batches, uid_set};

    #[test]
    fn batches_respect_count_bytes_and_oversize() {
        let mails = [(1, 10), (2, 10), (3, 10), (4, 100), (5, 5), (6, 1_000)];
        let b = plan_batches(&mails, 2, 25, 500);
        assert_eq!(b, vec![vec![(1, 10), (2, 10)], vec![(3, 10)], vec![(4, 100)], vec![(5, 5), (6, 1_000)]]);
        assert!(plan_batches(&[], 5, 5, 5).is_empty());
    }

    #[test]
    fn a_backlog_starts_with_a_small_batch_then_full_ones() {
        let mails: Vec<(u32, u64)> = (1..=60).map(|uid| (uid, 10)).collect();
        let sizes: Vec<usize> = plan_batches(&mails, 50, u64::MAX, 500).iter().map(Vec::len).collect();
        assert_eq!(sizes, [FIRST_BATCH, 50, 60 - FIRST_BATCH - 50]);
    }

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
    }
}
