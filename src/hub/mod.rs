//! Routing between COI and the bridges: which chat a mail belongs to, recording inbound mail, and queueing outbound mail.
//!
//! - [`resolve`]: pure rules that pick a mail's chat and member changes.
//! - [`ingest`]: fetched mail → parsed → recorded with the IMAP cursor in one transaction.
//! - [`outbound`]: a message for COI → rendered → recorded and queued for SMTP in one transaction.
//! - [`e2ee`]: the identity key; decrypt/verify inbound, sign/encrypt outbound.
//! - [`securejoin`]: invite links and SecureJoin both ways; [`groups`]: renames, removals.
//! - [`submit`]: remote → COI, the `Hub` bridges submit to; [`delivery`]: COI → remote, per bridge.
//! - [`deadletter`]: remote events a bridge set aside, kept with their reason and counted.
//! - [`private`]: a private chat with a bridge's bot, opened as a COI group with its people.
//! - [`migration`]: who has moved; [`invites`]: how often one person may ask for a personal invite.
//! - [`degrade`]: what a side cannot carry, turned into what it can (reactions, long texts).
//! - [`route`]: who gets a copy of a message (the store only writes the rows it is given);
//!   [`wake`]: the one outbox notifier that wakes SMTP and every bridge's worker.

pub mod deadletter;
pub mod degrade;
pub mod delivery;
pub mod e2ee;
pub mod groups;
pub mod ingest;
pub mod invites;
pub mod migration;
pub mod outbound;
pub mod private;
pub mod resolve;
pub mod route;
pub mod securejoin;
pub mod submit;
pub mod wake;
