//! The `imap push` row of `coi-bridge check`: a test mail to the account itself through its SMTP server, and whether Dovecot's push event for it reaches the HTTP listener within a few seconds (this process's own listener, or the running daemon's).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::TryStreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::Loaded;
use crate::transport::push::PushAccount;
use crate::transport::{imap, smtp};

/// How long the check waits for the event (Dovecot posts during LMTP delivery).
pub const WAIT: Duration = Duration::from_secs(5);

/// Where the event is expected.
enum Receiver {
    /// Nothing listens on `[http] listen`: this process does, for the check.
    Own { account: Arc<PushAccount>, token: CancellationToken, server: tokio::task::JoinHandle<anyhow::Result<()>> },
    /// A daemon listens there: its accepted-events counter must move.
    Daemon { addr: std::net::SocketAddr, before: f64 },
}

/// `Ok(detail)` when the event came; else the problem and its fix.
pub async fn row(loaded: &Loaded) -> Result<String, (String, String)> {
    let settings = imap::ImapSettings::from_config(loaded).map_err(|e| (format!("{e:#}"), fix_config()))?;
    let Some(account) = settings.push.clone() else {
        return Ok("off ([imap] push = false): new mail is seen through IDLE".into());
    };
    let listen = loaded.config.http.listen;
    let receiver = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            let running = Arc::new(crate::accounts::Running::new(None));
            running.insert_push(account.clone());
            let state = crate::http::Http::new(Arc::new(crate::metrics::Metrics::new()), running);
            let token = CancellationToken::new();
            let timeouts = crate::http::Timeouts::from_config(&loaded.config.http);
            let server =
                tokio::spawn(crate::http::serve(listener, state, axum::Router::new(), token.clone(), timeouts));
            Receiver::Own { account, token, server }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let addr = crate::http::local_addr(listen);
            let before = accepted(addr).await.map_err(|e| {
                (
                    format!("http.listen {listen} is taken and does not answer /metrics as a coi-bridge: {e:#}"),
                    "stop what listens there, or point http.listen at the running daemon".into(),
                )
            })?;
            Receiver::Daemon { addr, before }
        }
        Err(e) => {
            return Err((format!("cannot listen on http.listen {listen}: {e}"), "pick a free address".into()));
        }
    };
    let message_id = format!("coi-check-push-{}@{}", uuid::Uuid::new_v4().simple(), domain(loaded));
    let sent = send_test_mail(loaded, &message_id).await;
    let arrived = match &receiver {
        _ if sent.is_err() => false,
        Receiver::Own { account, .. } => tokio::time::timeout(WAIT, account.wake.wait()).await.is_ok(),
        Receiver::Daemon { addr, before } => {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if accepted(*addr).await.is_ok_and(|now| now > *before) {
                    break true;
                }
                if tokio::time::Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let where_ = match &receiver {
        Receiver::Own { .. } => format!("at {listen}"),
        Receiver::Daemon { .. } => format!("at the daemon on {listen}"),
    };
    if let Receiver::Own { token, server, .. } = receiver {
        token.cancel();
        let _ = server.await;
    }
    if sent.is_ok()
        && let Err(e) = delete_test_mail(&settings, &message_id).await
    {
        tracing::warn!(error = format!("{e:#}"), %message_id, "check: cannot delete the test mail; delete it by hand");
    }
    match sent {
        Err(e) => Err((format!("cannot send the test mail: {e:#}"), "see the smtp row".into())),
        Ok(()) if arrived => Ok(format!("Dovecot's event for a test mail arrived {where_}")),
        Ok(()) => Err((
            format!("push: no event within {}s {where_} — see docs/OPERATIONS.md", WAIT.as_secs()),
            "configure Dovecot's push_notification (OX driver) to PUT to http://coi:SECRET@<http.listen>/push/dovecot, \
             and set the user's http-notify metadata (docs/OPERATIONS.md, \"Push events\"); IDLE still delivers"
                .into(),
        )),
    }
}

fn fix_config() -> String {
    "check the [imap] section of the config".into()
}

fn domain(loaded: &Loaded) -> String {
    loaded.config.account.address.rsplit('@').next().unwrap_or("localhost").to_owned()
}

/// A plain mail from the account to itself: Dovecot announces it when LMTP delivers it.
async fn send_test_mail(loaded: &Loaded, message_id: &str) -> anyhow::Result<()> {
    let addr = &loaded.config.account.address;
    let mailbox: lettre::Address = addr.parse().with_context(|| format!("account.address {addr}"))?;
    let envelope = lettre::address::Envelope::new(Some(mailbox.clone()), vec![mailbox])?;
    let date = chrono::Utc::now().to_rfc2822();
    let raw = format!(
        "From: <{addr}>\r\nTo: <{addr}>\r\nSubject: coi-bridge check: push event\r\nDate: {date}\r\n\
         Message-ID: <{message_id}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         A test mail of coi-bridge check ([imap] push); the check deletes it again.\r\n"
    );
    let transport = smtp::transport(loaded)?;
    let sent = transport.send_raw(&envelope, raw.as_bytes()).await.map_err(|e| anyhow!("{e}"));
    transport.close_idle(Duration::ZERO).await;
    sent.map(drop)
}

/// Deletes the test mail from the watched folder again.
async fn delete_test_mail(settings: &imap::ImapSettings, message_id: &str) -> anyhow::Result<()> {
    let mut session = imap::connect(settings).await?;
    session.select(&settings.folder).await?;
    let uids = session.uid_search(format!("HEADER Message-ID \"<{message_id}>\"")).await?;
    if !uids.is_empty() {
        let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?.try_collect::<Vec<_>>().await?;
        session.uid_expunge(&set).await?.try_collect::<Vec<_>>().await?;
    }
    let _ = session.logout().await;
    Ok(())
}

/// The daemon's `coi_bridge_push_events_total{result="accepted"}`.
async fn accepted(addr: std::net::SocketAddr) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut out = Vec::new();
        // A scrape is small; at most 4 MiB is read.
        s.take(4 << 20).read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), ask).await.context("no answer in time")??;
    anyhow::ensure!(text.starts_with("HTTP/1.") && text.contains("coi_bridge_"), "not a coi-bridge /metrics");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("coi_bridge_push_events_total{result=\"accepted\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}
