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
/// in `ca_file`. One per CA file content for the whole process: every account with the
/// same trust shares it (its root store and session cache are about 100 kB each; a
/// daemon of many accounts kept one per account).
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = match ca_file {
        Some(path) => Some(ca_digest(path)?),
        None => None,
    };
    shared(&CONFIGS, key, || build(ca_file))
}

/// The SHA-256 of a CA file's bytes: a changed file (SIGHUP) gets a config of its own.
pub fn ca_digest(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("ca_file: cannot read {}", path.display()))?;
    Ok(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into())
}

/// A process-wide cache of TLS setups (see [`shared`]).
pub type Cache<K, V> = std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<K, V>>>;

static CONFIGS: Cache<Option<[u8; 32]>, Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// The value cached under `key`, made by `make` the first time.
pub fn shared<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Cache<K, V>,
    key: K,
    make: impl FnOnce() -> anyhow::Result<V>,
) -> anyhow::Result<V> {
    let map = cache.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = map.get(&key) {
        return Ok(v.clone());
    }
    let v = make()?;
    map.insert(key, v.clone());
    Ok(v)
}

fn build(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate from openssl (which the mail test servers need anyway).
    fn self_signed(dir: &Path, name: &str) -> Vec<u8> {
        let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pem")));
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        std::fs::read(cert).expect("the certificate")
    }

    /// Accounts with the same trust share one config; another CA file content gets its own.
    #[test]
    fn one_config_per_ca_file_content_is_shared() {
        let a = client_config(None).expect("webpki roots");
        let b = client_config(None).expect("again");
        assert!(Arc::ptr_eq(&a, &b), "the same config for every account without a CA file");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, self_signed(dir.path(), "ca.test")).expect("write");
        let c = client_config(Some(&ca)).expect("with a CA");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&c, &client_config(Some(&ca)).expect("again")), "shared by content");
        std::fs::write(&ca, self_signed(dir.path(), "other.test")).expect("rewrite");
        assert!(!Arc::ptr_eq(&c, &client_config(Some(&ca)).expect("changed file")), "a changed file is read anew");
    }
}
