//! `coi-bridge check`: validates the config, opens the store, and logs in to IMAP and SMTP, one line per item with a remedy.

use std::fmt::Display;

use crate::config::Loaded;
use crate::store;
use crate::transport::{imap, smtp};

/// Prints one line per item; returns whether all passed.
pub async fn check(loaded: &Loaded) -> bool {
    let cfg = &loaded.config;
    println!("ok    config  {}", loaded.source.display());
    let mut all = true;

    let state_dir = cfg.store.state_dir();
    match store::open(&cfg.store.url, &state_dir).await {
        Ok(_) => println!("ok    store   {} (state dir {})", cfg.store.url, state_dir.display()),
        Err(e) => all &= fail("store", &format!("{e:#}"), "check store.url and that the state dir is writable"),
    }

    let imap_target = format!("{}:{} ({:?})", cfg.imap.host, cfg.imap.port(), cfg.imap.security);
    let imap_result = async {
        let settings = imap::ImapSettings::from_config(loaded)?;
        let mut session = imap::connect(&settings).await?;
        let mailbox = session.select(&settings.folder).await?;
        let _ = session.logout().await;
        anyhow::Ok(mailbox.exists)
    }
    .await;
    match imap_result {
        Ok(n) => {
            println!("ok    imap    {imap_target} as {}: {} holds {n} mails", cfg.account.login(), cfg.imap.folder)
        }
        Err(e) => all &= fail("imap", &format!("{imap_target}: {e:#}"), &remedy("imap", &e)),
    }

    let smtp_target = format!("{}:{} ({:?})", cfg.smtp.host, cfg.smtp.port(), cfg.smtp.security);
    let smtp_result = async {
        let transport = smtp::transport(loaded)?;
        let ok = transport.test_connection().await?;
        anyhow::ensure!(ok, "the server did not answer NOOP");
        anyhow::Ok(())
    }
    .await;
    match smtp_result {
        Ok(()) => println!("ok    smtp    {smtp_target}"),
        Err(e) => all &= fail("smtp", &format!("{smtp_target}: {e:#}"), &remedy("smtp", &e)),
    }
    all
}

fn fail(item: &str, error: &dyn Display, fix: &str) -> bool {
    println!("FAIL  {item:<7} {error}");
    println!("      fix: {fix}");
    false
}

/// A remedy for the usual causes, read from the error chain.
fn remedy(section: &str, e: &anyhow::Error) -> String {
    let text = format!("{e:#}").to_lowercase();
    if text.contains("refused") {
        format!("nothing listens there: is the server running, and are {section}.host and {section}.port right?")
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        format!(
            "TLS failed: check {section}.security (tls|starttls) and, for a self-signed server, set {section}.ca_file"
        )
    } else if text.contains("login") || text.contains("auth") || text.contains("credentials") || text.contains("535") {
        "the server refused the login: check account.login and the password (account.password_file or env)".into()
    } else if text.contains("dns") || text.contains("lookup") || text.contains("resolve") {
        format!("the host name does not resolve: check {section}.host")
    } else if text.contains("timed out") || text.contains("no answer") {
        format!("no answer in time: check {section}.host, {section}.port and any firewall")
    } else {
        format!("check the [{section}] section of the config")
    }
}
