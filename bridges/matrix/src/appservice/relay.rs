//! The endpoint's side of the event relay: events of rooms none of this daemon's bridges has are put there (before the homeserver hears 200), and the relayed events of its bridges' rooms are handed to them in order, before their newer live events.

use std::sync::Arc;

use async_trait::async_trait;
use coi_bridge_api::relay::{Drain, EventRelay, TAKE_BATCH};
use serde_json::Value;

use super::{Appservice, Routed};

/// The relay an endpoint keeps events in, under its registration's key.
pub(super) struct Relay {
    store: Arc<dyn EventRelay>,
    /// The registration's `hs_token` digest: the relay's key, never the token.
    key: String,
    /// Starts a drain round of the daemon at once.
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Appservice {
    /// This endpoint with a relay (several daemons on one store): an event no bridge here
    /// has is kept in `store` for another daemon instead of being dropped, and a lone
    /// bridge no longer gets every event (the event may be another daemon's). `wake` starts
    /// the daemon's drain round (see [`coi_bridge_api::SharedRoutes::run_relay`]).
    pub fn with_relay(mut self, store: Arc<dyn EventRelay>, wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let key = format!("{:016x}", super::fnv1a(self.hs_token.as_bytes()));
        self.lock().one_takes_all = false;
        self.relay = Some(Relay { store, key, wake });
        self
    }

    /// A bridge read its rooms: what waits for them is drained now, not at the next round.
    pub(super) fn gained(&self) {
        if let Some(r) = &self.relay {
            (r.wake)();
        }
    }

    /// Keeps the events at `which` (those with a room) in the relay, in one transaction.
    /// An event without a room can be no daemon's: dropped and counted, as before.
    pub(super) async fn relay_events(&self, txn_id: &str, events: &[Value], which: &[usize]) -> Result<(), String> {
        let Some(relay) = &self.relay else { return Ok(()) };
        let mut keep = Vec::with_capacity(which.len());
        for &i in which {
            let ev = &events[i];
            if ev["room_id"].is_string() {
                keep.push(ev.clone());
            } else {
                tracing::debug!(txn_id, event_type = ev["type"].as_str(), "an event without a room; dropped");
                (self.unrouted)();
            }
        }
        if keep.is_empty() {
            return Ok(());
        }
        relay.store.put(&relay.key, &keep).await.map_err(|e| {
            tracing::warn!(txn_id, events = keep.len(), error = %e, "cannot relay events for another daemon; the homeserver will retry");
            format!("the event relay: {e}")
        })?;
        tracing::debug!(txn_id, events = keep.len(), "events of rooms no bridge here has, relayed for another daemon");
        Ok(())
    }

    /// Hands the relayed events of this endpoint's bridges' rooms to them, oldest first,
    /// and deletes each batch once every sink accepted it. The caller holds
    /// `one_at_a_time`. A failure leaves the batch for the next round (the hub's event-id
    /// map drops what a sink had taken already).
    pub(super) async fn drain_locked(&self) -> Result<(), String> {
        let Some(relay) = &self.relay else { return Ok(()) };
        loop {
            let (rooms, bots) = {
                let index = self.lock();
                if index.is_empty() {
                    return Ok(());
                }
                (index.rooms(), index.bots())
            };
            let rows = relay.store.take(&relay.key, &rooms, &bots, TAKE_BATCH).await.map_err(|e| {
                tracing::warn!(error = %e, "cannot read the event relay");
                format!("the event relay: {e}")
            })?;
            if rows.is_empty() {
                return Ok(());
            }
            let full = rows.len() >= TAKE_BATCH;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let events: Vec<Value> = rows.into_iter().map(|r| r.event).collect();
            let Some(Routed { plan, nobody, .. }) = self.route(&events) else { return Ok(()) };
            for i in nobody {
                // Taken for its room, and the room went in between (a bot left it).
                tracing::debug!(
                    event_id = events[i]["event_id"].as_str(),
                    "a relayed event no bridge has now; dropped"
                );
                (self.unrouted)();
            }
            let txn_id = format!("relay-{}", ids[0]);
            for (member, evs) in plan {
                if let Err(e) = member.sink.events(&txn_id, evs).await {
                    tracing::warn!(bridge = %member.id, error = %e, "relayed events not processed; kept for the next round");
                    return Err(e);
                }
            }
            relay.store.done(&ids).await.map_err(|e| {
                tracing::warn!(error = %e, "relayed events handed on but not deleted; they come again (deduplicated)");
                format!("the event relay: {e}")
            })?;
            tracing::info!(events = ids.len(), first = ids[0], "relayed appservice events handed to their bridges");
            if !full {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl Drain for Appservice {
    async fn drain(&self) {
        if self.relay.is_none() {
            return;
        }
        let _turn = self.one_at_a_time.lock().await;
        // Logged where it failed; the next round tries again.
        let _ = self.drain_locked().await;
    }
}
