//! The daemon's Prometheus metrics, in one registry passed around (no globals, so tests can read their own).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("coi_bridge".into()), None).expect("static prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let outbox_depth =
            IntGaugeVec::new(Opts::new("outbox_depth", "Outbox rows waiting, by target"), &["target"]).expect("static");
        registry.register(Box::new(outbox_depth.clone())).expect("metric registered once");
        let imap_connected = IntGauge::new("imap_connected", "1 while an IMAP session is logged in").expect("static");
        registry.register(Box::new(imap_connected.clone())).expect("metric registered once");
        Self {
            inbound_recorded: counter("inbound_recorded_total", "Chat mails recorded from IMAP"),
            inbound_duplicates: counter("inbound_duplicates_total", "Fetched mails already recorded"),
            inbound_rejected: vec("inbound_rejected_total", "Mails kept aside unparsed", &["reason"]),
            inbound_problems: vec("inbound_problems_total", "Tolerated defects in recorded mails", &["problem"]),
            imap_reconnects: counter("imap_reconnects_total", "IMAP reconnects after an error"),
            imap_uidvalidity_changes: counter("imap_uidvalidity_changes_total", "Mailboxes found recreated"),
            imap_connected,
            outbox: vec("outbox_deliveries_total", "Outbox delivery attempts", &["target", "result"]),
            key_changes_flagged: counter("key_changes_flagged_total", "Verified contacts that presented another key"),
            outbox_depth,
            registry,
        }
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
}
