//! The one mail transport all bridges share: IMAP in ([`imap`]), SMTP out ([`smtp`]), TLS setup ([`tls`]).

pub mod imap;
pub mod smtp;
pub mod tls;
