//! The daemon's readiness: each part (IMAP, every bridge) with its state and, when it is not ready, why; `/ready` shows it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use coi_bridge_api::{LinkState, Status};
use serde::Serialize;

use crate::metrics::Metrics;

/// One part as `/ready` shows it. `idle` (SMTP before its first mail) counts as ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Part {
    pub ok: bool,
    /// starting, connected, idle, reconnecting or stopped.
    pub state: &'static str,
    /// Why it is not ready (no secrets: error texts from servers and our own words).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it entered this state (RFC 3339).
    pub since: String,
}

/// The parts that report on their own (the store is asked at request time).
pub struct Health {
    parts: Mutex<BTreeMap<String, Part>>,
    metrics: Arc<Metrics>,
}

/// The `/ready` name of a bridge instance's part.
pub fn bridge_part(id: &str) -> String {
    format!("bridge {id}")
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let h = Arc::new(Self { parts: Mutex::default(), metrics });
        h.set("imap", "starting", Some("not connected yet".into()));
        // SMTP connects per mail; until one fails it is assumed fine.
        h.set("smtp", "idle", None);
        h
    }

    fn set(&self, part: &str, state: &'static str, reason: Option<String>) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let ok = matches!(state, "connected" | "idle");
        // Keep `since` while the state stays (a connected bridge reports on every poll).
        if let Some(p) = parts.get_mut(part)
            && p.state == state
        {
            p.reason = reason;
            return;
        }
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        parts.insert(part.to_owned(), Part { ok, state, reason, since });
    }

    pub fn imap_connected(&self) {
        self.set("imap", "connected", None);
    }

    pub fn imap_failed(&self, reason: String) {
        self.set("imap", "reconnecting", Some(reason));
    }

    pub fn smtp_sent(&self) {
        self.set("smtp", "connected", None);
    }

    /// A mail waits because the SMTP server failed for now.
    pub fn smtp_failed(&self, reason: String) {
        self.set("smtp", "reconnecting", Some(reason));
    }

    /// Registers bridge `id` (starting) and returns the handle it reports through.
    pub fn bridge(self: &Arc<Self>, id: &str) -> Status {
        self.bridge_state(id, "starting", Some("not connected yet".into()));
        let (me, id) = (self.clone(), id.to_owned());
        Status::new(move |link| match link {
            LinkState::Connected => me.bridge_state(&id, "connected", None),
            LinkState::Reconnecting(reason) => me.bridge_state(&id, "reconnecting", Some(reason)),
        })
    }

    /// Sets a bridge's state directly (the supervisor: restarting, stopped).
    pub fn bridge_state(&self, id: &str, state: &'static str, reason: Option<String>) {
        self.metrics.set_bridge_state(id, state);
        self.set(&bridge_part(id), state, reason);
    }

    /// Every part reported so far.
    pub fn parts(&self) -> BTreeMap<String, Part> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_report_through_their_status_and_show_in_metrics() {
        let m = Arc::new(Metrics::new());
        let h = Health::new(m.clone());
        let status = h.bridge("matrix");
        assert_eq!(h.parts()["bridge matrix"].state, "starting");
        assert!(!h.parts()["bridge matrix"].ok);
        status.connected();
        let p = &h.parts()["bridge matrix"];
        assert!(p.ok && p.reason.is_none());
        assert_eq!(m.bridge_state.with_label_values(&["matrix", "connected"]).get(), 1);
        assert_eq!(m.bridge_state.with_label_values(&["matrix", "starting"]).get(), 0);
        status.reconnecting("homeserver down");
        let p = &h.parts()["bridge matrix"];
        assert_eq!((p.ok, p.state, p.reason.as_deref()), (false, "reconnecting", Some("homeserver down")));
        assert_eq!(m.bridge_state.with_label_values(&["matrix", "reconnecting"]).get(), 1);
        assert_eq!(m.bridge_state.with_label_values(&["matrix", "connected"]).get(), 0);
    }

    #[test]
    fn imap_starts_not_ready_and_keeps_since_while_the_state_stays() {
        let h = Health::new(Arc::new(Metrics::new()));
        assert!(!h.parts()["imap"].ok);
        h.imap_connected();
        let since = h.parts()["imap"].since.clone();
        h.imap_connected();
        assert_eq!(h.parts()["imap"].since, since);
        h.imap_failed("refused".into());
        assert_eq!(h.parts()["imap"].reason.as_deref(), Some("refused"));
        assert!(h.parts()["smtp"].ok, "SMTP is fine until a mail fails");
        h.smtp_failed("SMTP: connection refused".into());
        assert!(!h.parts()["smtp"].ok);
        h.smtp_sent();
        assert!(h.parts()["smtp"].ok);
    }
}
