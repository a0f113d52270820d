//! TLS client setup shared by IMAP and SMTP: Mozilla's roots plus an optional operator CA, never "skip verification".

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A rustls client config trusting the webpki roots and, if given, the PEM certificates
/// in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .with_context(|| format!("ca_file {}: not a PEM certificate file", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("ca_file {}: holds no certificate", path.display());
        }
        for cert in certs {
            roots.add(cert).with_context(|| format!("ca_file {}: certificate rejected", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Wraps an open TCP stream in TLS for `host`, verifying its certificate.
pub async fn wrap(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name =
        ServerName::try_from(host.to_owned()).with_context(|| format!("{host:?} is not a valid TLS server name"))?;
    TlsConnector::from(config).connect(name, tcp).await.with_context(|| format!("TLS handshake with {host} failed"))
}
