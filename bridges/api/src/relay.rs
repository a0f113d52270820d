//! A durable relay for events a shared endpoint took but no bridge of this daemon has: with several daemons on one PostgreSQL, the daemon holding the event's account takes it from there.
//!
//! A homeserver pushes one registration's transactions to one URL, whichever daemon answers
//! it; the account whose room an event is in may run in another daemon (accounts spread by
//! leases, or a standby taking over a killed holder). Such an event is put in the relay
//! before the transaction is answered, and the daemon whose bridge has the room takes it out
//! (in the order it was put) and deletes it only after that bridge's sink accepted it.
//!
//! The core implements [`EventRelay`] over the shared PostgreSQL; on SQLite (one daemon)
//! there is none and such an event is dropped and counted, as before.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// How long a relayed event waits for a daemon whose bridge has its room. Older ones are
/// pruned (logged, and counted as unrouted): a room no account of the cluster has.
pub const RELAY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often every daemon looks for relayed events of its bridges' rooms (one query per
/// registration), and at most how late a relayed event reaches its bridge.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// How often events older than [`RELAY_TTL`] are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// The most relayed events taken by one query.
pub const TAKE_BATCH: usize = 200;

/// One relayed event, as [`EventRelay::take`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Relayed {
    /// Its place in the relay: events are taken in this order.
    pub id: i64,
    pub event: Value,
}

/// Where a shared endpoint keeps events for the daemon that has their room. `registration`
/// is a digest of the registration's `hs_token` (never the token).
#[async_trait]
pub trait EventRelay: Send + Sync + 'static {
    /// Keeps `events` (with a `room_id` each) in one transaction: `Ok` once durable.
    async fn put(&self, registration: &str, events: &[Value]) -> Result<(), String>;

    /// The oldest `limit` events of `registration` (by id) in one of `rooms`, or membership
    /// events about one of `bots` (an invitation to a room the bridge has not yet).
    async fn take(
        &self,
        registration: &str,
        rooms: &[String],
        bots: &[String],
        limit: usize,
    ) -> Result<Vec<Relayed>, String>;

    /// Deletes the events with these ids: their bridge's sink accepted them.
    async fn done(&self, ids: &[i64]) -> Result<(), String>;

    /// Deletes every event kept longer than `ttl`; returns how many.
    async fn prune(&self, ttl: Duration) -> Result<u64, String>;
}

/// What takes relayed events out for its bridges: one per shared endpoint.
#[async_trait]
pub trait Drain: Send + Sync + 'static {
    /// Hands the relayed events of this daemon's bridges' rooms to them.
    async fn drain(&self);
}
