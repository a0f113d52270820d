//! The Matrix bridge module: appservice mode (registration, transaction endpoint, ghosts in portal rooms) and bot mode (one account through matrix-sdk), both directions.
//!
//! - [`authority`]: who may edit or redact a bridged message (its sender; redactions also
//!   the room's moderators).
//! - [`bot`]: bot mode, one ordinary account through matrix-sdk, with name prefixes and
//!   encrypted rooms.
//! - [`bridge`]: the `Bridge` contract: COI people post through ghosts in portal rooms.
//! - [`client`]: the client-server API as the appservice uses it (ghosts via `?user_id=`).
//! - [`config`]: the `[[bridge]] kind = "matrix"` section.
//! - [`html`]: `formatted_body` HTML → readable plain text (nothing of the markup survives).
//! - [`inbound`]: Matrix events of a transaction → `RemoteEvent`s submitted to the hub.
//! - [`registration`]: the appservice registration file Synapse loads, and its tokens.
//! - [`appservice`]: the HTTP endpoint the homeserver pushes transactions to, checking
//!   `hs_token` in constant time and processing each transaction once.

pub mod appservice;
pub mod authority;
pub mod bot;
pub mod bridge;
pub mod client;
pub mod config;
pub mod html;
pub mod inbound;
pub mod registration;
