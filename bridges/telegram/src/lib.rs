//! The Telegram bridge module: a bot (Bot API through teloxide) that relays a Telegram group to a COI group with name prefixes.
//!
//! - [`config`]: the `[[bridge]] kind = "telegram"` section.
//! - [`factory`]: [`FACTORY`], what the core's registry lists: the section read, checked and built.
//! - [`bridge`]: the `Bridge` contract: long polling in, bot messages out.
//! - [`limits`]: Telegram's documented limits (text, caption, photo and upload sizes, reaction emoji).
//!
//! Bots never see deletions on Telegram, so deletes only go from COI to Telegram.

pub mod bridge;
pub mod config;
pub mod factory;
pub mod limits;

pub use factory::FACTORY;
