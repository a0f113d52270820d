//! SMTP connections kept open between mails, with TCP_NODELAY: one connect, TLS handshake, EHLO and AUTH per burst instead of per mail.
//!
//! lettre's `AsyncSmtpTransport` opened a new connection for every mail and left Nagle's
//! algorithm on; lettre writes the body and the final `.` in two writes, so the server's
//! delayed ACK held each mail back by about 40 ms (#14). Here lettre's connection type
//! does the protocol over a socket we open ourselves. Up to [`KEEP`] connections stay open
//! while mails flow and are closed after [`IDLE_CLOSE`] without one: an account that sends
//! nothing holds no connection (#12).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Security;

/// Connections kept open at most (the SMTP worker sends up to this many mails at once).
pub const KEEP: usize = 4;
/// A kept connection unused this long is closed (Postfix drops idle clients after 300 s).
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// A kept connection unused this long is checked with NOOP before a mail goes over it.
const CHECK_AFTER: Duration = Duration::from_secs(2);
/// Connect, TLS handshake, greeting, EHLO and AUTH together.
const CONNECT_TIME: Duration = Duration::from_secs(60);
/// One mail's transaction (MAIL, RCPT, DATA): a minute plus a second per 100 kB.
fn send_time(bytes: usize) -> Duration {
    Duration::from_secs(60 + (bytes / 100_000) as u64)
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// For STARTTLS (lettre upgrades the socket).
    pub starttls: Option<TlsParameters>,
    /// For implicit TLS (we wrap the socket before the greeting).
    pub rustls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub hello: ClientId,
    pub credentials: Option<Credentials>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("auth", &self.credentials.is_some())
            .finish()
    }
}

/// Why a mail did not go: a server reply (lettre's error, with its class), or no reply at
/// all (connect refused, reset, timed out).
#[derive(Debug)]
pub enum SendError {
    Smtp(lettre::transport::smtp::Error),
    NoReply(String),
}

impl SendError {
    /// A 5xx reply: sending again will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_permanent())
    }

    /// A 4xx reply: try again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_transient())
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp(e) => write!(f, "{e}"),
            Self::NoReply(e) => write!(f, "no answer from the SMTP server: {e}"),
        }
    }
}

impl From<lettre::transport::smtp::Error> for SendError {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Self::Smtp(e)
    }
}

/// Kept connections to one SMTP server.
pub struct Client {
    server: Server,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Connections opened, for the tests.
    opened: std::sync::atomic::AtomicU64,
    /// Where a new connection's setup time goes (`hop_seconds{hop="smtp_connect"}`).
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(server: Server) -> Self {
        Self { server, idle: Mutex::new(Vec::new()), opened: Default::default(), metrics: None }
    }

    /// Records each new connection's setup time in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A client for a plaintext server without AUTH (tests).
    pub fn plain(host: &str, port: u16) -> Self {
        Self::new(Server {
            host: host.into(),
            port,
            security: Security::Plain,
            starttls: None,
            rustls: None,
            hello: ClientId::Domain("localhost".into()),
            credentials: None,
        })
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one mail over a kept connection, or a new one. A connection that failed is
    /// dropped; one that sent is kept for the next mail. A kept connection the server
    /// closed meanwhile (no reply at all) costs one more try on a new connection, not a
    /// retry in the outbox's backoff.
    pub async fn send_raw(&self, envelope: &Envelope, email: &[u8]) -> Result<Response, SendError> {
        let (conn, kept) = self.take().await?;
        match self.send_on(conn, envelope, email).await {
            Err(e) if kept && !e.is_permanent() && !e.is_transient() => {
                tracing::debug!(error = %e, "a kept SMTP connection failed; sending on a new one");
                let conn = self.open().await?;
                self.send_on(conn, envelope, email).await
            }
            other => other,
        }
    }

    async fn send_on(
        &self,
        mut conn: AsyncSmtpConnection,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, SendError> {
        match tokio::time::timeout(send_time(email.len()), conn.send(envelope, email)).await {
            Ok(Ok(reply)) => {
                self.put(conn);
                Ok(reply)
            }
            // lettre aborted the connection (it sends QUIT after a refusal); not kept.
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(SendError::NoReply(format!("no reply within {:?}", send_time(email.len())))),
        }
    }

    /// Whether the server answers (a kept connection's NOOP, or a new connection).
    pub async fn test_connection(&self) -> bool {
        self.check().await.is_ok()
    }

    /// Connects (TLS, EHLO, AUTH as configured), or says why not.
    pub async fn check(&self) -> Result<(), SendError> {
        let (conn, _) = self.take().await?;
        self.put(conn);
        Ok(())
    }

    /// Whether a connection is kept open.
    pub fn keeps_any(&self) -> bool {
        !self.idle.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Closes (QUIT) the kept connections unused for `unused` or longer; whether any are
    /// still kept.
    pub async fn close_idle(&self, unused: Duration) -> bool {
        let stale: Vec<AsyncSmtpConnection> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (stale, keep): (Vec<_>, Vec<_>) = idle.drain(..).partition(|(_, at)| at.elapsed() >= unused);
            *idle = keep;
            stale.into_iter().map(|(c, _)| c).collect()
        };
        for mut c in stale {
            // QUIT politely, but never wait long for it.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.quit()).await;
        }
        self.keeps_any()
    }

    /// A kept connection still alive (and `true`), or a new one.
    async fn take(&self) -> Result<(AsyncSmtpConnection, bool), SendError> {
        loop {
            let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some((mut conn, at)) = kept else { break };
            if conn.has_broken() || at.elapsed() >= IDLE_CLOSE {
                continue;
            }
            if at.elapsed() < CHECK_AFTER {
                return Ok((conn, true));
            }
            if tokio::time::timeout(Duration::from_secs(10), conn.test_connected()).await.unwrap_or(false) {
                return Ok((conn, true));
            }
        }
        Ok((self.open().await?, false))
    }

    /// A new connection, within [`CONNECT_TIME`].
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let started = Instant::now();
        match tokio::time::timeout(CONNECT_TIME, self.connect()).await {
            Ok(r) => {
                if let (Ok(_), Some(m)) = (&r, &self.metrics) {
                    m.hop("smtp_connect", started.elapsed());
                }
                r
            }
            Err(_) => Err(SendError::NoReply(format!("connecting took longer than {CONNECT_TIME:?}"))),
        }
    }

    fn put(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let s = &self.server;
        let tcp = socket(&s.host, s.port).await?;
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stream: Box<dyn AsyncTokioStream> = match (&s.security, &s.rustls) {
            (Security::Tls, Some(config)) => {
                let tls = super::super::tls::wrap(config.clone(), &s.host, tcp)
                    .await
                    .map_err(|e| SendError::NoReply(format!("{e:#}")))?;
                Box::new(Wrapped(tls))
            }
            (Security::Tls, None) => return Err(SendError::NoReply("implicit TLS without a TLS setup".into())),
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &s.hello).await?;
        if s.security == Security::Starttls {
            let Some(params) = s.starttls.clone() else {
                return Err(SendError::NoReply("STARTTLS without a TLS setup".into()));
            };
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SendError::NoReply(format!(
                    "{} does not offer STARTTLS (smtp.security = \"starttls\"); set smtp.security = \"tls\" for \
                     implicit TLS, or \"plain\" only on a trusted network",
                    s.host
                )));
            }
            conn.starttls(params, &s.hello).await?;
        }
        if let Some(credentials) = &s.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await?;
        }
        Ok(conn)
    }
}

/// A TCP connection to the server with Nagle's algorithm off.
async fn socket(host: &str, port: u16) -> Result<TcpStream, SendError> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| SendError::NoReply(format!("connect to {host}:{port}: {e}")))?;
    // lettre writes the body and the final "." in two writes: with Nagle on, the second
    // waits for the server's delayed ACK of the first (about 40 ms a mail).
    tcp.set_nodelay(true).map_err(|e| SendError::NoReply(format!("TCP_NODELAY: {e}")))?;
    Ok(tcp)
}

/// An implicit-TLS stream lettre can drive.
#[derive(Debug)]
struct Wrapped(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for Wrapped {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for Wrapped {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wrapped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
