//! The COI / Delta Chat wire codec: parse and render chat mail, with no I/O.
//!
//! - [`message`]: the typed [`ChatMessage`].
//! - [`parse`]: bytes to message, tolerant of messy mail, bounded against hostile mail.
//! - [`render`]: message to bytes; message headers and content kept apart so that the
//!   encryption layer can put the real headers inside and minimal ones outside.
//! - [`text`]: format=flowed, quotes, footers, header encoding.
//!
//! Golden tests in `tests/fixtures/eml/` pin the parse result of real-world mail.

pub mod autocrypt;
pub mod crypto;
pub mod message;
pub mod parse;
pub mod pgpmime;
pub mod render;
pub mod securejoin_link;
pub mod text;
pub mod vcard;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod proptests;

pub use message::{ChatMessage, Group, GroupChange, Kind, Mailbox, Problem};
pub use parse::{Limits, ParseError, Parsed, parse};
pub use render::render;
