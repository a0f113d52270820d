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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use coi_bridge_api::Relayed;
    use coi_bridge_api::testing::MemoryState;
    use serde_json::json;

    use super::super::{Member, Refusals, TransactionSink};
    use super::*;

    /// The relay as PostgreSQL keeps it (tests/it/failover/relay.rs runs the real one):
    /// rows by id, taken by room or bot, deleted when done; `fail` fails the next puts.
    #[derive(Default)]
    struct Rows {
        rows: Mutex<Vec<(i64, String, Value)>>,
        next: AtomicUsize,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl EventRelay for Rows {
        async fn put(&self, registration: &str, events: &[Value]) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err("database down".into());
            }
            let mut rows = self.rows.lock().expect("lock");
            for ev in events {
                let id = self.next.fetch_add(1, Ordering::SeqCst) as i64 + 1;
                rows.push((id, registration.to_owned(), ev.clone()));
            }
            Ok(())
        }
        async fn take(
            &self,
            reg: &str,
            rooms: &[String],
            bots: &[String],
            limit: usize,
        ) -> Result<Vec<Relayed>, String> {
            let rows = self.rows.lock().expect("lock");
            let has = |ev: &Value| {
                ev["room_id"].as_str().is_some_and(|r| rooms.iter().any(|x| x == r))
                    || ev["state_key"].as_str().is_some_and(|k| bots.iter().any(|b| b == k))
            };
            Ok(rows
                .iter()
                .filter(|(_, r, ev)| r == reg && has(ev))
                .take(limit)
                .map(|(id, _, ev)| Relayed { id: *id, event: ev.clone() })
                .collect())
        }
        async fn done(&self, ids: &[i64]) -> Result<(), String> {
            self.rows.lock().expect("lock").retain(|(id, _, _)| !ids.contains(id));
            Ok(())
        }
        async fn prune(&self, _ttl: Duration) -> Result<u64, String> {
            Ok(0)
        }
    }

    impl Rows {
        fn ids(&self) -> Vec<String> {
            let rows = self.rows.lock().expect("lock");
            rows.iter().filter_map(|(_, _, ev)| ev["event_id"].as_str().map(str::to_owned)).collect()
        }
    }

    /// Records the event ids it was handed; fails the next `fail` calls.
    #[derive(Default)]
    struct Ids(Mutex<Vec<String>>, AtomicUsize);

    #[async_trait]
    impl TransactionSink for Ids {
        async fn events(&self, _txn_id: &str, events: Vec<Value>) -> Result<(), String> {
            if self.1.load(Ordering::SeqCst) > 0 {
                self.1.fetch_sub(1, Ordering::SeqCst);
                return Err("store busy".into());
            }
            let ids = events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned));
            self.0.lock().expect("lock").extend(ids);
            Ok(())
        }
    }

    impl Ids {
        fn got(&self) -> Vec<String> {
            self.0.lock().expect("lock").clone()
        }
    }

    fn msg(id: &str, room: &str) -> Value {
        json!({"type": "m.room.message", "event_id": id, "room_id": room, "sender": "@mara:hs", "content": {"body": id}})
    }

    fn member(id: &str, sink: Arc<Ids>) -> Member {
        let state = Arc::new(MemoryState::default());
        Member { id: id.into(), source: format!("{id}.toml"), state, sink, refusals: Refusals::default() }
    }

    fn endpoint(rows: Arc<Rows>, unrouted: Arc<AtomicUsize>) -> Arc<Appservice> {
        let count = move || {
            unrouted.fetch_add(1, Ordering::SeqCst);
        };
        Arc::new(Appservice::new("secret-hs", "registration.yaml", Arc::new(count)).with_relay(rows, Arc::new(|| {})))
    }

    async fn put(app: &Appservice, txn: &str, events: Vec<Value>) -> Result<(), StatusCode> {
        let _turn = app.one_at_a_time.lock().await;
        app.handle(txn, txn, events).await.map_err(|(s, _)| s)
    }

    use axum::http::StatusCode;

    #[tokio::test]
    async fn events_of_another_daemons_rooms_are_relayed_and_handed_on_in_order_before_newer_ones() {
        let (rows, unrouted) = (Arc::new(Rows::default()), Arc::new(AtomicUsize::new(0)));
        // Daemon B: only bridge Y runs here, alone on the endpoint.
        let app = endpoint(rows.clone(), unrouted.clone());
        let y = Arc::new(Ids::default());
        let my = app.join("@bot_y:hs", member("y", y.clone())).expect("y");
        my.fill(vec!["!y".into()], Vec::new());

        // X's room is another daemon's: kept, not handed to the lone bridge, not dropped.
        put(&app, "1", vec![msg("$x1", "!x"), msg("$y1", "!y"), msg("$x2", "!x")]).await.expect("200");
        assert_eq!(y.got(), ["$y1"], "a lone bridge no longer gets every event");
        assert_eq!(rows.ids(), ["$x1", "$x2"]);
        assert_eq!(unrouted.load(Ordering::SeqCst), 0);
        // A database that fails: the homeserver must retry, nothing is lost.
        rows.fail.store(1, Ordering::SeqCst);
        assert_eq!(put(&app, "2", vec![msg("$x3", "!x")]).await, Err(StatusCode::SERVICE_UNAVAILABLE));
        put(&app, "2", vec![msg("$x3", "!x")]).await.expect("the retry");
        assert_eq!(rows.ids(), ["$x1", "$x2", "$x3"]);

        // X is taken over here. Its sink fails once: the relayed events stay, and the newer
        // live event is refused with them (it must not overtake them).
        let x = Arc::new(Ids::default());
        let mx = app.join("@bot_x:hs", member("x", x.clone())).expect("x");
        mx.fill(vec!["!x".into()], Vec::new());
        x.1.store(1, Ordering::SeqCst);
        assert_eq!(put(&app, "3", vec![msg("$x4", "!x")]).await, Err(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(rows.ids(), ["$x1", "$x2", "$x3"], "deleted only after the sink accepted them");
        put(&app, "3", vec![msg("$x4", "!x")]).await.expect("the retry");
        assert_eq!(x.got(), ["$x1", "$x2", "$x3", "$x4"], "relayed events first, in order, then the live one");
        assert!(rows.ids().is_empty());
        assert_eq!(y.got(), ["$y1"]);
    }

    #[tokio::test]
    async fn the_periodic_drain_hands_on_invitations_of_a_bot_here_and_an_empty_endpoint_relays_everything() {
        let (rows, unrouted) = (Arc::new(Rows::default()), Arc::new(AtomicUsize::new(0)));
        let app = endpoint(rows.clone(), unrouted.clone());
        // No bridge here at all (every account stopped): relayed, not refused.
        let invite = json!({"type": "m.room.member", "event_id": "$invite", "room_id": "!new", "sender": "@mara:hs",
                            "state_key": "@bot_y:hs", "content": {"membership": "invite"}});
        let typing = json!({"type": "m.presence", "sender": "@mara:hs", "content": {}});
        put(&app, "1", vec![invite, msg("$other", "!other"), typing]).await.expect("200");
        assert_eq!(rows.ids(), ["$invite", "$other"]);
        assert_eq!(unrouted.load(Ordering::SeqCst), 1, "an event without a room is no daemon's: counted");

        // Y starts here: the drain round gives it the invitation of its bot, and leaves the rest.
        let y = Arc::new(Ids::default());
        let my = app.join("@bot_y:hs", member("y", y.clone())).expect("y");
        my.fill(Vec::new(), Vec::new());
        Drain::drain(&*app).await;
        assert_eq!(y.got(), ["$invite"]);
        assert_eq!(rows.ids(), ["$other"]);
    }
}
