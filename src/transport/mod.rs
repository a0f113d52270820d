//! The one mail transport all bridges share: IMAP in ([`imap`]), SMTP out ([`smtp`]), the mail server's push events ([`push`]), TLS setup ([`tls`]).

pub mod imap;
pub mod push;
pub mod smtp;
pub mod tls;
