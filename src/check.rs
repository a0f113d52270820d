//! `coi-bridge check`: validates the config, opens the store, logs in to IMAP (and IDLE) and SMTP, waits for a push event (`[imap] push`), and asks every bridge's server; a table with one row per item and a remedy for each failure.

use std::fmt::Display;

mod push;

use crate::config::Loaded;
use crate::store;
use crate::transport::{imap, smtp};

/// One checked item.
struct Row {
    item: String,
    /// What answered, or what went wrong and the fix.
    outcome: Result<String, (String, String)>,
}

/// Prints the table; returns whether every item passed.
pub async fn check(loaded: &Loaded) -> bool {
    let cfg = &loaded.config;
    let mut rows = vec![Row { item: "config".into(), outcome: Ok(loaded.source.display().to_string()) }];

    let state_dir = cfg.store.state_dir();
    rows.push(Row {
        item: "store".into(),
        outcome: match store::open_with(&cfg.store.url, &state_dir, &loaded.store_options()).await {
            Ok(s) => match s.ping().await {
                Ok(()) => Ok(format!(
                    "{} (state dir {}), migrations applied",
                    store::redact_url(&cfg.store.url),
                    state_dir.display()
                )),
                Err(e) => Err((e.to_string(), "check that the database file is readable and writable".into())),
            },
            Err(e) => Err((format!("{e:#}"), "check store.url and that the state dir is writable".into())),
        },
    });

    let imap_target = format!("{}:{} ({:?})", cfg.imap.host, cfg.imap.port(), cfg.imap.security);
    let imap_result = async {
        let settings = imap::ImapSettings::from_config(loaded)?;
        let mut session = imap::connect(&settings).await?;
        let mailbox = session.select(&settings.folder).await?;
        let idle = session.capabilities().await?.has_str("IDLE");
        let _ = session.logout().await;
        anyhow::Ok((mailbox.exists, idle))
    }
    .await;
    match imap_result {
        Ok((n, idle)) => {
            rows.push(Row {
                item: "imap".into(),
                outcome: Ok(format!("{imap_target} as {}: {} holds {n} mails", cfg.account.login(), cfg.imap.folder)),
            });
            rows.push(Row {
                item: "imap idle".into(),
                outcome: if idle {
                    Ok("the server announces IDLE: new mail arrives at once".into())
                } else {
                    Err((
                        "the server does not announce IDLE".into(),
                        "new mail is only seen on reconnects; use a server with IDLE (RFC 2177)".into(),
                    ))
                },
            });
        }
        Err(e) => {
            rows.push(Row { item: "imap".into(), outcome: Err((format!("{imap_target}: {e:#}"), remedy("imap", &e))) })
        }
    }

    let smtp_target = format!("{}:{} ({:?})", cfg.smtp.host, cfg.smtp.port(), cfg.smtp.security);
    let smtp_result = async {
        let transport = smtp::transport(loaded)?;
        transport.check().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        transport.close_idle(std::time::Duration::ZERO).await;
        anyhow::Ok(())
    }
    .await;
    rows.push(Row {
        item: "smtp".into(),
        outcome: smtp_result
            .map(|()| smtp_target.clone())
            .map_err(|e| (format!("{smtp_target}: {e:#}"), remedy("smtp", &e))),
    });

    if cfg.imap.push {
        rows.push(Row { item: "imap push".into(), outcome: push::row(loaded).await });
    }

    for b in &cfg.bridge {
        let (item, outcome) = crate::bridges::check(loaded, b).await;
        rows.push(Row { item, outcome });
    }

    print!("{}", render(&rows));
    rows.iter().all(|r| r.outcome.is_ok())
}

/// ITEM / STATUS / DETAIL columns; a failing row gets a `fix:` line under it.
fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.item.chars().count()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  STATUS  DETAIL\n", "ITEM");
    for r in rows {
        match &r.outcome {
            Ok(detail) => out.push_str(&format!("{:<width$}  ok      {detail}\n", r.item)),
            Err((error, fix)) => {
                out.push_str(&format!("{:<width$}  FAIL    {}\n", r.item, one_line(error)));
                out.push_str(&format!("{:<width$}          fix: {fix}\n", ""));
            }
        }
    }
    out
}

fn one_line(e: &dyn Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_rows_carry_their_fix_under_them() {
        let rows = vec![
            Row { item: "config".into(), outcome: Ok("/etc/coi-bridge.toml".into()) },
            Row { item: "telegram tg".into(), outcome: Err(("refused\nthe token".into(), "give a token".into())) },
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ITEM         STATUS  DETAIL");
        assert_eq!(lines[1], "config       ok      /etc/coi-bridge.toml");
        assert_eq!(lines[2], "telegram tg  FAIL    refused the token");
        assert_eq!(lines[3], "                     fix: give a token");
    }
}
