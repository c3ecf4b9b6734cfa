//! TLS for gateway listeners: certificates from PEM (files or a Secret's
//! bytes), the certificate a client's SNI names, and certificate files
//! re-read when they change.
//!
//! One listener may hold several certificates: the client's SNI picks the
//! first one whose names (subject alternative names, wildcards included)
//! cover it; a client without SNI, or naming none of them, gets the first.
//! ALPN offers `h2` only: gRPC needs nothing else.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tracing::{info, warn};

use crate::model::CertificateSource;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: cannot read {path}")]
    Read {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate in it")]
    NoCertificate { what: String },
    #[error("{what}: the certificate does not parse: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the key")]
    NoKey { what: String },
    #[error("{what}: the private key does not fit the certificate: {reason}")]
    BadKey { what: String, reason: String },
}

/// The crypto the agent uses: rustls' ring provider (no process-wide
/// default is installed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, checked (the key matches the first
/// certificate, which parses as an end-entity certificate).
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(first) = chain.first() else {
        return Err(TlsError::NoCertificate { what: what.to_owned() });
    };
    webpki::EndEntityCert::try_from(first).map_err(|e| TlsError::BadCertificate {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey { what: what.to_owned() })?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::BadKey {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(key))
}

/// Reads a certificate source: the PEM bytes of the chain and the key.
pub fn read(source: &CertificateSource) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    match source {
        CertificateSource::Files { cert, key } => {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|e| TlsError::Read {
                    what: source.to_string(),
                    path: path.to_owned(),
                    source: e,
                })
            };
            Ok((read(cert)?, read(key)?))
        }
        CertificateSource::Pem { cert, key, .. } => Ok((cert.to_vec(), key.to_vec())),
    }
}

/// Loads a certificate source.
pub fn load(source: &CertificateSource) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert, key) = read(source)?;
    certified_key(&cert, &key, &source.to_string())
}

/// The certificates of one listener; each can be replaced while the
/// listener runs (new handshakes get the new one).
#[derive(Debug)]
pub struct Certificates {
    keys: RwLock<Vec<Arc<CertifiedKey>>>,
}

impl Certificates {
    pub fn new(keys: Vec<Arc<CertifiedKey>>) -> Arc<Self> {
        Arc::new(Certificates {
            keys: RwLock::new(keys),
        })
    }

    /// Replaces them all.
    pub fn set(&self, keys: Vec<Arc<CertifiedKey>>) {
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Replaces the `i`-th.
    pub fn replace(&self, i: usize, key: Arc<CertifiedKey>) {
        if let Ok(mut k) = self.keys.write() {
            if let Some(slot) = k.get_mut(i) {
                *slot = key;
            }
        }
    }

    /// The certificate for a client that sent `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.read().ok()?;
        let named = sni
            .and_then(|s| ServerName::try_from(s.to_owned()).ok())
            .and_then(|name| keys.iter().find(|k| covers(k, &name)));
        named.or(keys.first()).cloned()
    }

    /// The server side of a TLS connection: these certificates, ALPN `h2`.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert
        .first()
        .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Keeps `certs` in step with the files of `sources` (the `i`-th source
/// feeds the `i`-th certificate): re-read every `interval`; a changed pair
/// that loads replaces the certificate for new connections, one that does
/// not is logged once and the last good one stays. Sources that are not
/// files are left alone. Runs until dropped.
pub async fn watch_files(sources: Vec<CertificateSource>, certs: Arc<Certificates>, interval: Duration) {
    let mut seen: Vec<Option<(Vec<u8>, Vec<u8>)>> = sources.iter().map(|s| read(s).ok()).collect();
    let mut failed: Vec<Option<String>> = vec![None; sources.len()];
    loop {
        tokio::time::sleep(interval).await;
        for (i, source) in sources.iter().enumerate() {
            if !matches!(source, CertificateSource::Files { .. }) {
                continue;
            }
            let now = match read(source) {
                Ok(bytes) => bytes,
                Err(e) => {
                    report(&mut failed[i], e);
                    continue;
                }
            };
            if seen[i].as_ref() == Some(&now) {
                continue;
            }
            match certified_key(&now.0, &now.1, &source.to_string()) {
                Ok(key) => {
                    info!(certificate = %source, "certificate reloaded");
                    certs.replace(i, key);
                    failed[i] = None;
                    seen[i] = Some(now);
                }
                // A pair caught between its two writes loads at the next look.
                Err(e) => report(&mut failed[i], e),
            }
        }
    }
}

fn report(last: &mut Option<String>, e: TlsError) {
    let e = crate::error::Chain(&e).to_string();
    if last.as_ref() != Some(&e) {
        warn!(error = %e, "certificate reload refused; the last good certificate stays in use");
        *last = Some(e);
    }
}
