//! coi-bridge: one chat-over-email identity bridged to Matrix, Telegram and more.
//!
//! Module map (data flows top to bottom on the way in, bottom to top on the way out):
//! - [`config`]: the strict config file, env overrides, secrets.
//! - [`app`]: wires store, transport and bridges under the [`supervisor`]; [`bridges`]: the registry of bridge modules.
//! - [`accounts`]: many accounts in one daemon, SIGHUP reload, leases on PostgreSQL.
//! - [`transport`]: the shared IMAP (in) and SMTP (out) connections.
//! - [`coi`]: the wire codec, no I/O.
//! - [`hub`]: which chat a mail belongs to; recording inbound, queueing outbound.
//! - [`store`]: the durable record: chats, messages, outbox, IMAP cursor.
//! - [`http`], [`metrics`], [`health`], [`logging`]: what the operator sees; [`notify`]: systemd's notify protocol.
//! - [`check`]: `coi-bridge check`; [`commands`]: `key …`, `contact import`, `quarantine`.
//! - [`retention`]: prunes what is set apart, takes released mail through ingest again.
//!
//! The bridge contract lives in the `coi-bridge-api` crate (`bridges/api`).

pub mod accounts;
pub mod app;
pub mod backoff;
pub mod bridges;
pub mod check;
pub mod coi;
pub mod commands;
pub mod config;
pub mod health;
pub mod heap;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod qr;
pub mod report;
pub mod retention;
pub mod store;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod transport;

/// Installs rustls' process-wide crypto provider (ring). Both ring and aws-lc-rs are
/// compiled in through dependencies, so rustls cannot pick one by itself. Idempotent.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
