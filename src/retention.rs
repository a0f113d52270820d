//! The daemon's retention task: prunes what is set apart by `[retention]`'s caps (soon after the start and periodically) and takes released mail through ingest again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::hub::ingest::{Fetched, Ingest};
use crate::metrics::Metrics;
use crate::store::retention::Caps;
use crate::store::{ImapCursor, Store};

/// How often released mail is looked for when nothing says so. Only `coi-bridge
/// quarantine release`, another process, releases mail, and it wakes the loop through
/// `POST /wake`; this look catches a release whose wake-up did not reach the daemon. As
/// rare as the outbox's [`crate::hub::delivery::SAFETY_POLL`], for the same reason.
pub const RELEASE_POLL: Duration = crate::hub::delivery::SAFETY_POLL;

/// The cursor folder released mail is recorded under: never an IMAP folder's, so taking
/// a released mail through ingest never moves the real cursor.
pub const RELEASED_FOLDER: &str = "coi-bridge/released";

/// How long a send-journal entry is kept: far longer than any outbox row is retried, so
/// a post is never repeated while its row may still run.
pub const SEND_JOURNAL_DAYS: i64 = 30;

/// Released mails taken through ingest per pass.
const RELEASE_BATCH: u32 = 10;

/// The first pruning pass comes at a random moment this long after the start at most: the
/// accounts of one daemon start together, each with its IMAP catch-up writing to its
/// store, and 1,000 of them pruning in the same second as well is a burst of I/O for
/// nothing (#12).
pub const FIRST_PRUNE_WITHIN: Duration = Duration::from_secs(10);

/// When the first pruning pass comes, after the start: anywhere in [`FIRST_PRUNE_WITHIN`].
fn first_prune() -> Duration {
    use rand::Rng as _;
    FIRST_PRUNE_WITHIN.mul_f64(rand::rng().random_range(0.0..=1.0))
}

pub struct Retention {
    pub store: Arc<dyn Store>,
    pub ingest: Arc<Ingest>,
    pub config: RetentionConfig,
    pub metrics: Arc<Metrics>,
    /// Released mail to look at now (another process released it and said so).
    pub released: Arc<tokio::sync::Notify>,
}

impl Retention {
    /// Until `token` is cancelled. Store errors are logged and tried again on the next
    /// pass; nothing here stops the daemon.
    pub async fn run(&self, token: CancellationToken) {
        let every = Duration::from_secs(self.config.prune_interval_secs);
        let mut next_prune = tokio::time::Instant::now() + first_prune();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                Box::pin(self.prune()).await;
                next_prune = tokio::time::Instant::now() + every;
            }
            // Boxed: the task waits between looks holding only its small waiting state.
            if Box::pin(self.release()).await == RELEASE_BATCH {
                // A full batch: more may wait.
                continue;
            }
            // Until the next look for released mail or the next pruning pass, whichever
            // comes first.
            let wake = next_prune.min(tokio::time::Instant::now() + crate::backoff::spread(RELEASE_POLL));
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
                () = self.released.notified() => {}
            }
        }
    }

    /// One pruning pass by the configured caps.
    pub async fn prune(&self) {
        let days = i64::from(self.config.quarantine_max_age_days);
        let caps = Caps {
            older_than: chrono::Utc::now().timestamp() - days * 86_400,
            max_bytes: self.config.quarantine_max_bytes,
        };
        match self.store.prune(caps).await {
            Ok(p) if p.is_empty() => tracing::debug!("retention: nothing to prune"),
            Ok(p) => {
                for (what, n) in [
                    ("rejected", p.rejected),
                    ("message", p.messages),
                    ("chat", p.chats),
                    ("dead_letter", p.dead_letters),
                ] {
                    self.metrics.pruned.with_label_values(&[what]).inc_by(n);
                }
                tracing::info!(
                    rejected = p.rejected,
                    messages = p.messages,
                    chats = p.chats,
                    dead_letters = p.dead_letters,
                    bytes = p.bytes,
                    max_age_days = days,
                    max_bytes = self.config.quarantine_max_bytes,
                    "retention: pruned what was set apart"
                );
            }
            Err(e) => tracing::warn!(error = %e, "retention: pruning failed; trying again at the next pass"),
        }
        let before = chrono::Utc::now().timestamp() - SEND_JOURNAL_DAYS * 86_400;
        match self.store.prune_send_journal(before).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.pruned.with_label_values(&["send_journal"]).inc_by(n);
                tracing::info!(entries = n, max_age_days = SEND_JOURNAL_DAYS, "retention: pruned the send journal");
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: pruning the send journal failed; trying again at the next pass")
            }
        }
    }

    /// Takes released mail through ingest again: recorded (or found known by Message-ID,
    /// so never delivered twice) or set apart again with its new reason. How many were
    /// taken (at most a batch).
    pub async fn release(&self) -> u32 {
        let released = match self.store.released(RELEASE_BATCH).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read released mail; trying again");
                return 0;
            }
        };
        let mut taken = 0;
        for r in released {
            let fetched = vec![Fetched { uid: r.uid, raw: r.raw, oversize: None }];
            let cursor = ImapCursor { uid_validity: 0, last_uid: 0 };
            match self.ingest.batch(RELEASED_FOLDER, cursor, fetched).await {
                Ok(outcome) => {
                    if let Err(e) = self.store.forget_released(r.id).await {
                        tracing::warn!(id = r.id, error = %e, "retention: released mail taken, but its row stays; trying again");
                        return 0;
                    }
                    taken += 1;
                    self.metrics.released.inc();
                    tracing::info!(
                        id = r.id,
                        recorded = outcome.recorded,
                        already_known = outcome.duplicates,
                        set_apart_again = outcome.rejected,
                        "retention: released mail taken through ingest"
                    );
                }
                Err(e) => {
                    tracing::warn!(id = r.id, error = %e, "retention: released mail could not be taken; trying again");
                    return 0;
                }
            }
        }
        taken
    }
}
