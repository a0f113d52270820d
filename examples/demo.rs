//! The one-command local demo (`bash deploy/demo.sh`): Dovecot + Postfix + Synapse on loopback, the bridge on an embedded SQLite store, and a bridged demo room; prints the Matrix login and the Delta Chat invite link, and stops everything on Ctrl-C.
//!
//! It reuses the test suite's server helpers (`tests/support`), so the demo and the
//! tests start the servers the same way.

// It uses a part of the tests' support; tests/it uses all of it, where the compiler finds
// what is dead.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::bridged::{BOT, add_matrix_bridge, bridge_room_as, new_room_as};
use support::synapse::{Synapse, free_port};
use support::{Daemon, Link, MailServer};

/// The Matrix account that owns the demo room and may command the bridge.
const DEMO_USER: &str = "demo";

#[tokio::main]
async fn main() {
    coi_bridge::init_crypto();
    eprintln!("starting Dovecot + Postfix, Synapse and coi-bridge on 127.0.0.1 (this takes a few seconds)…");
    let Some(mail) = MailServer::start() else {
        eprintln!("error: Dovecot/Postfix are missing: run `bash tests/servers/install.sh` (or `bash deploy/demo.sh`)");
        std::process::exit(69);
    };
    let as_port = free_port();
    let Some(hs) = Synapse::start_with_as_port(as_port) else {
        eprintln!("error: Synapse is missing: run `bash tests/servers/install.sh` (or `bash deploy/demo.sh`)");
        std::process::exit(69);
    };
    let token = hs.user(DEMO_USER).await;

    let state = tempfile::Builder::new().prefix("coi-bridge-demo-").tempdir().expect("a state dir");
    let config = support::write_config_with(&mail, state.path(), Link::Plain, "", as_port, "required");
    add_matrix_bridge(&config, &hs, as_port, &format!("@{DEMO_USER}:localhost"), "");
    let mut daemon = Daemon::with_config(state.path(), config.clone(), as_port);
    daemon.wait_ready().await;

    let room = new_room_as(&hs, &token, "COI demo").await;
    let link = bridge_room_as(&hs, &token, &room).await;

    println!(
        "\ncoi-bridge demo is running. Ctrl-C stops it and every server it started.\n\n\
         Matrix (any client, e.g. Element; no TLS):\n\
         \x20 homeserver  {hs}\n\
         \x20 user        @{DEMO_USER}:localhost\n\
         \x20 password    {DEMO_USER}-pw\n\
         \x20 room        COI demo ({room}); the bridge bot is {BOT}\n\n\
         Delta Chat (add an account with manual settings, security off):\n\
         \x20 accounts    alice@example.org, bob@example.org, carol@example.org (password: NAME-secret)\n\
         \x20 imap        127.0.0.1:{imap}\n\
         \x20 smtp        127.0.0.1:{smtp}\n\n\
         Delta Chat invite link to the demo room's group (paste it into \"Scan QR code\" → paste):\n\
         \x20 invite      {link}\n\n\
         The bridge: config {config}, log {log}, metrics http://127.0.0.1:{as_port}/metrics\n",
        hs = hs.url(),
        imap = mail.imap_port(),
        smtp = mail.smtp_port(),
        config = config.display(),
        log = daemon.log.display(),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
        () = async { while daemon.is_running() { tokio::time::sleep(Duration::from_secs(1)).await } } => "the bridge exited",
    };
    eprintln!("\n{why}: stopping the bridge, Synapse, Dovecot and Postfix…");
    daemon.stop();
    // Synapse and the mail servers stop when dropped, by PID; their data goes with the temp dirs.
    drop(hs);
    drop(mail);
    eprintln!("stopped.");
}
