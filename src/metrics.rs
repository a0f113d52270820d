//! The daemon's Prometheus metrics, in one registry passed around (no globals, so tests can read their own).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The `bridge` label of the mail side in `messages_total`.
pub const COI: &str = "coi";

/// The states `bridge_state` has one series for each (one-hot).
pub const BRIDGE_STATES: [&str; 4] = ["starting", "connected", "reconnecting", "stopped"];

/// Every metric the daemon exports.
pub struct Metrics {
    pub registry: Registry,
    /// Chat mails recorded from IMAP.
    pub inbound_recorded: IntCounter,
    /// Mails fetched again that were already recorded (by Message-ID).
    pub inbound_duplicates: IntCounter,
    /// Mails kept aside unparsed, by reason.
    pub inbound_rejected: IntCounterVec,
    /// Tolerated defects in recorded mails, by kind.
    pub inbound_problems: IntCounterVec,
    pub imap_reconnects: IntCounter,
    /// Dovecot push events by result (accepted, ignored, bad_secret, no_secret,
    /// unknown_user, malformed, too_large).
    pub push_events: IntCounterVec,
    /// Fetches an IMAP worker started because a push event woke it.
    pub push_fetches: IntCounter,
    /// Push events that came while a fetch was already pending (one fetch for all).
    pub push_coalesced: IntCounter,
    pub imap_uidvalidity_changes: IntCounter,
    /// 1 while an IMAP session is logged in.
    pub imap_connected: IntGauge,
    /// Outbox deliveries, by target and result (sent, retry, failed).
    pub outbox: IntCounterVec,
    /// A verified contact presented another key (kept aside, not used).
    pub key_changes_flagged: IntCounter,
    /// Rows waiting in the outbox, by target (smtp or a bridge id): a bridge held back by
    /// rate limits shows here, nothing is dropped.
    pub outbox_depth: IntGaugeVec,
    /// Age in seconds of the oldest waiting row, by target (0 when none waits).
    pub outbox_oldest_age: IntGaugeVec,
    /// Messages by network (`coi` or a bridge id) and direction: `in` arrived from that
    /// network, `out` was delivered to it.
    pub messages: IntCounterVec,
    /// Failures by part (imap, smtp, ingest, a bridge id) and kind (transient,
    /// permanent, rejected, decrypt, signature, restart).
    pub failures: IntCounterVec,
    /// Seconds from queueing in the durable outbox to the target accepting it.
    pub delivery_latency: HistogramVec,
    /// Seconds spent in each hop of a message's way through the bridge (see `Metrics::hop`).
    pub hop_seconds: HistogramVec,
    /// Encrypted mails that could not be decrypted.
    pub decrypt_failures: IntCounter,
    /// Mails whose signature was missing, unknown or wrong, by reason.
    pub signature_failures: IntCounterVec,
    /// One-hot per bridge instance: starting, connected, reconnecting, stopped.
    pub bridge_state: IntGaugeVec,
    /// 1 when the last scrape could read the store (the outbox gauges are fresh).
    pub store_up: IntGauge,
    /// Panics caught, by task (a supervised task's name, or `http` for a handler).
    pub panics: IntCounterVec,
    /// Items set apart that retention pruned, by kind (rejected, message, chat, dead_letter).
    pub pruned: IntCounterVec,
    /// Released rejected mails taken through ingest again.
    pub released: IntCounter,
    /// Remote events a bridge set aside, by bridge and reason (failed, gave_up,
    /// unparseable, panicked, forbidden).
    pub dead_letters: IntCounterVec,
    /// Accounts this daemon runs now (on PostgreSQL: the leases it holds).
    pub accounts_held: IntGauge,
    /// 1 for each account this daemon runs, by account (its address).
    pub account_held: IntGaugeVec,
    /// Account files that could not be read (they do not run; `/ready` says why).
    pub account_config_errors: IntCounter,
    /// Accounts that could not start, or stopped on a failure of one of their workers.
    pub account_failures: IntCounter,
    /// Leases this daemon lost (another daemon took the account, or no renewal in time).
    pub leases_lost: IntCounter,
    /// On PostgreSQL: the daemons live on the store (this one included), as the node
    /// table says at the last lease tick.
    pub cluster_nodes: IntGauge,
    /// Accounts this daemon handed to another to spread the accounts evenly.
    pub accounts_handed_over: IntCounter,
    /// Times the allocator gave freed memory back to the system (`src/heap.rs`).
    pub heap_trims: IntCounter,
    /// Per portal: people on the remote side (as its network counts them, else those seen
    /// and not gone) and members of the COI chat.
    pub migration_members: IntGaugeVec,
    /// Per portal: remote people who are also on COI.
    pub migration_moved: IntGaugeVec,
    /// Per portal: remote people active in the last 30 days who have not moved.
    pub migration_active_not_moved: IntGaugeVec,
    /// Personal invites refused because the person asked too often lately, by bridge.
    pub personal_invites_refused: IntCounterVec,
    /// The names of the metrics above, as registered.
    names: Vec<String>,
}

/// The registry while [`Metrics::new`] fills it, noting every metric's name: a labelled
/// metric without a series yet is registered but not exported, and still has to be known.
struct Registering {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Registering {
    fn add(&self, c: Box<dyn prometheus::core::Collector>) {
        self.names.borrow_mut().extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.registry.register(c).expect("metric registered once");
    }
}

impl Metrics {
    pub fn new() -> Self {
        let reg = Registering {
            registry: Registry::new_custom(Some("coi_bridge".into()), None).expect("static prefix is valid"),
            names: std::cell::RefCell::default(),
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            reg.add(Box::new(c.clone()));
            c
        };
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            reg.add(Box::new(c.clone()));
            c
        };
        let outbox_depth =
            IntGaugeVec::new(Opts::new("outbox_depth", "Outbox rows waiting, by target"), &["target"]).expect("static");
        reg.add(Box::new(outbox_depth.clone()));
        let imap_connected = IntGauge::new(
            "imap_connected",
            "IMAP sessions logged in (one per account of this daemon that is connected)",
        )
        .expect("static");
        reg.add(Box::new(imap_connected.clone()));
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            reg.add(Box::new(g.clone()));
            g
        };
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Seconds from queueing in the durable outbox to the target accepting it",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
            &["target"],
        )
        .expect("static metric definition");
        reg.add(Box::new(delivery_latency.clone()));
        let hop_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hop_seconds",
                "Seconds a message spends in one hop through the bridge: submit (a remote event translated, \
                 sealed and in the outbox), outbox_wait (in the outbox until a worker takes it), smtp_connect (a new \
                 SMTP connection up to AUTH), smtp_send (one mail until the server's 250), homeserver_push (a Matrix message from its \
                 origin_server_ts until its appservice transaction reached the bridge)",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]),
            &["hop"],
        )
        .expect("static metric definition");
        reg.add(Box::new(hop_seconds.clone()));
        let store_up = IntGauge::new("store_up", "1 when the last scrape could read the store").expect("static");
        reg.add(Box::new(store_up.clone()));
        let build_info = IntGaugeVec::new(Opts::new("build_info", "The running version (always 1)"), &["version"])
            .expect("static metric definition");
        reg.add(Box::new(build_info.clone()));
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Self {
            inbound_recorded: counter("inbound_recorded_total", "Chat mails recorded from IMAP"),
            inbound_duplicates: counter("inbound_duplicates_total", "Fetched mails already recorded"),
            inbound_rejected: vec("inbound_rejected_total", "Mails kept aside unparsed", &["reason"]),
            inbound_problems: vec("inbound_problems_total", "Tolerated defects in recorded mails", &["problem"]),
            imap_reconnects: counter("imap_reconnects_total", "IMAP reconnects after an error"),
            push_events: vec("push_events_total", "Dovecot push events, by result", &["result"]),
            push_fetches: counter("imap_push_fetches_total", "IMAP fetches started by a push event"),
            push_coalesced: counter("push_wakes_coalesced_total", "Push events folded into a pending fetch"),
            imap_uidvalidity_changes: counter("imap_uidvalidity_changes_total", "Mailboxes found recreated"),
            imap_connected,
            outbox: vec("outbox_deliveries_total", "Outbox delivery attempts", &["target", "result"]),
            key_changes_flagged: counter("key_changes_flagged_total", "Verified contacts that presented another key"),
            outbox_depth,
            outbox_oldest_age: gauges(
                "outbox_oldest_age_seconds",
                "Age of the oldest waiting outbox row, by target",
                &["target"],
            ),
            messages: vec("messages_total", "Messages by network and direction (in, out)", &["bridge", "direction"]),
            failures: vec("failures_total", "Failures by part and kind", &["part", "kind"]),
            delivery_latency,
            hop_seconds,
            decrypt_failures: counter("decrypt_failures_total", "Encrypted mails that could not be decrypted"),
            signature_failures: vec("signature_failures_total", "Mails without a valid known signature", &["reason"]),
            bridge_state: gauges("bridge_state", "1 for the bridge instance's current state", &["bridge", "state"]),
            dead_letters: vec("dead_letters_total", "Remote events set aside by a bridge", &["bridge", "reason"]),
            store_up,
            panics: vec("panics_total", "Panics caught, by task", &["task"]),
            pruned: vec("pruned_total", "Items set apart that retention pruned, by kind", &["what"]),
            released: counter("released_total", "Released rejected mails taken through ingest again"),
            accounts_held: {
                let g = IntGauge::new("accounts_held", "Accounts this daemon runs (on PostgreSQL: leases held)")
                    .expect("static");
                reg.add(Box::new(g.clone()));
                g
            },
            account_held: gauges("account_held", "1 for each account this daemon runs", &["account"]),
            account_config_errors: counter("account_config_errors_total", "Account files that could not be read"),
            account_failures: counter(
                "account_failures_total",
                "Accounts that could not start or stopped on a failure",
            ),
            leases_lost: counter("leases_lost_total", "Account leases this daemon lost"),
            cluster_nodes: {
                let g = IntGauge::new("cluster_nodes", "Daemons live on the shared PostgreSQL store").expect("static");
                reg.add(Box::new(g.clone()));
                g
            },
            accounts_handed_over: counter(
                "accounts_handed_over_total",
                "Accounts handed to another daemon to spread the accounts evenly",
            ),
            heap_trims: counter(
                "heap_trims_total",
                "Times the allocator gave memory freed after a burst back to the system",
            ),
            migration_members: gauges(
                "migration_members",
                "People on each side of a portal (side = remote: as its network counts them, else those seen there and not gone; coi: COI chat members)",
                &["account", "bridge", "remote_chat", "side"],
            ),
            migration_moved: gauges(
                "migration_moved",
                "Remote people of a portal who are also on COI",
                &["account", "bridge", "remote_chat"],
            ),
            migration_active_not_moved: gauges(
                "migration_active_not_moved",
                "Remote people of a portal active in the last 30 days who have not moved",
                &["account", "bridge", "remote_chat"],
            ),
            personal_invites_refused: vec(
                "personal_invites_refused_total",
                "Personal invites refused because the person asked too often lately, by bridge",
                &["bridge"],
            ),
            names: reg.names.take(),
            registry: reg.registry,
        };
        // Series that alerts watch exist from the start, at 0.
        for reason in ["unsigned", "unknown_or_wrong_key"] {
            m.signature_failures.with_label_values(&[reason]).inc_by(0);
        }
        for result in ["accepted", "bad_secret"] {
            m.push_events.with_label_values(&[result]).inc_by(0);
        }
        m
    }

    /// An outbox row reached `target` (smtp or a bridge id); it was queued at `queued_at_ms`.
    /// The plaintext copy of a mail (`…#plain`) is not another message.
    pub fn delivered(&self, target: &str, message_id: &str, queued_at_ms: i64) {
        self.outbox.with_label_values(&[target, "sent"]).inc();
        let network = if target == crate::store::SMTP_TARGET { COI } else { target };
        if !message_id.ends_with("#plain") {
            self.messages.with_label_values(&[network, "out"]).inc();
        }
        let waited = (chrono::Utc::now().timestamp_millis() - queued_at_ms).max(0) as f64 / 1000.0;
        self.delivery_latency.with_label_values(&[target]).observe(waited);
    }

    /// A message spent `took` in `hop` (one of the names `hop_seconds` documents).
    pub fn hop(&self, hop: &str, took: std::time::Duration) {
        self.hop_seconds.with_label_values(&[hop]).observe(took.as_secs_f64());
    }

    /// A delivery to `target` failed for now; it is tried again.
    pub fn delivery_retry(&self, target: &str) {
        self.outbox.with_label_values(&[target, "retry"]).inc();
        self.failures.with_label_values(&[target, "transient"]).inc();
    }

    /// A post a stopped daemon had started to `target` was posted again (the side may show
    /// it twice unless it drops the repeated delivery key).
    pub fn delivery_unconfirmed(&self, target: &str) {
        self.outbox.with_label_values(&[target, "unconfirmed"]).inc();
    }

    /// A delivery to `target` was given up.
    pub fn delivery_failed(&self, target: &str) {
        self.outbox.with_label_values(&[target, "failed"]).inc();
        self.failures.with_label_values(&[target, "permanent"]).inc();
    }

    /// Sets `bridge`'s one-hot state series.
    pub fn set_bridge_state(&self, bridge: &str, state: &str) {
        for s in BRIDGE_STATES {
            self.bridge_state.with_label_values(&[bridge, s]).set(i64::from(s == state));
        }
    }

    /// The name of every metric [`Metrics::new`] registers, without the `coi_bridge_`
    /// prefix, whether or not it has a series yet (`/metrics` shows only those that have).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format for /metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_with_prefix() {
        let m = super::Metrics::new();
        m.inbound_rejected.with_label_values(&["not_mime"]).inc();
        let text = m.render();
        assert!(text.contains("coi_bridge_inbound_rejected_total{reason=\"not_mime\"} 1"), "{text}");
    }

    #[test]
    fn every_registered_metric_has_its_name_even_without_a_series() {
        let m = super::Metrics::new();
        let names = m.names();
        assert!(!m.render().contains("personal_invites_refused_total"), "no series yet");
        for name in ["personal_invites_refused_total", "messages_total", "hop_seconds", "store_up", "build_info"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "each once: {names:?}");
        assert!(names.len() >= 35, "{names:?}");
    }
}
