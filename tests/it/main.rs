//! The integration tests, one test binary (`cargo test --test it`): each module was its own binary, each linking the daemon and matrix-sdk again; `cargo test --test it mail::` runs one module.

// `#[macro_use]`: the modules below call `mail_server!()` by name.
#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod balance;
mod cli;
mod degrade;
mod demo;
mod deploy;
mod e2ee;
mod failover;
mod fuzz_smoke;
mod hostile;
mod lease;
mod mail;
mod matrix;
mod matrix_accounts;
mod matrix_bot;
mod matrix_migration;
mod migrate_store;
mod ops;
mod push;
mod replies;
mod report;
mod store_postgres;
mod telegram;
