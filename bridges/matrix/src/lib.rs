//! The Matrix bridge module: appservice mode (registration, transaction endpoint, ghosts in portal rooms) and bot mode (one account through matrix-sdk), both directions.
//!
//! - [`authority`]: who may edit or redact a bridged message (its sender; redactions also
//!   the room's moderators).
//! - [`bot`]: bot mode, one ordinary account through matrix-sdk, with name prefixes and
//!   encrypted rooms.
//! - [`bridge`]: the `Bridge` contract: COI people post through ghosts in portal rooms.
//! - [`client`]: the client-server API as the appservice uses it (ghosts via `?user_id=`).
//! - [`config`]: the `[[bridge]] kind = "matrix"` section.
//! - [`factory`]: [`FACTORY`], what the core's registry lists: the section read, checked and
//!   built (appservice mode with its transaction endpoint's routes, or bot mode).
//! - [`handle`]: one Matrix event handled the same way in both modes (commands, authority,
//!   submit, set aside).
//! - [`html`]: `formatted_body` HTML → readable plain text (nothing of the markup survives).
//! - [`inbound`]: appservice mode's side: the events of a transaction through [`handle`].
//! - [`registration`]: the appservice registration file Synapse loads, and its tokens.
//! - [`routing`]: which bridge on a shared appservice endpoint an event belongs to (an
//!   in-memory room → bridge index).
//! - [`sync`]: bot mode's side: what the bot account syncs, through [`handle`].
//! - [`translate`]: Matrix event → hub event, the one translation both modes share.
//! - [`appservice`]: the HTTP endpoint the homeserver pushes transactions to, checking
//!   `hs_token` in constant time and processing each transaction once; one per
//!   registration, shared by every account's bridge built from it.

pub mod appservice;
pub mod authority;
pub mod bot;
pub mod bridge;
pub mod client;
pub mod config;
pub mod factory;
pub mod handle;
pub mod html;
pub mod inbound;
pub mod registration;
pub mod routing;
pub mod sync;
pub mod translate;

pub use factory::FACTORY;
