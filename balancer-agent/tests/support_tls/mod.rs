//! Certificates made by a test (a CA and leaves it signs) and gRPC
//! channels to gateway listeners: TLS verifying the CA and the name the
//! client asked for (SNI), or cleartext HTTP/2, with any `:authority`.

#![allow(dead_code, reason = "each test binary uses part of the support")]

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::{api::core::v1::Secret, ByteString};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names, wildcards allowed).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// The `kubernetes.io/tls` Secret `namespace/name` holding it.
    pub fn secret(&self, namespace: &str, name: &str) -> serde_json::Value {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some(namespace.into());
        s.type_ = Some("kubernetes.io/tls".into());
        s.data = Some(
            [
                ("tls.crt".to_owned(), ByteString(self.cert.clone().into_bytes())),
                ("tls.key".to_owned(), ByteString(self.key.clone().into_bytes())),
            ]
            .into(),
        );
        let mut v = serde_json::to_value(&s).expect("a Secret serializes");
        v["apiVersion"] = "v1".into();
        v["kind"] = "Secret".into();
        v
    }
}

/// A TLS channel to `addr` that asks for `host` (SNI and `:authority`)
/// and trusts only `ca_pem`: connecting fails unless the listener shows a
/// certificate for `host` signed by that CA.
pub async fn tls_channel(addr: SocketAddr, host: &str, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    Endpoint::from_shared(format!("https://{addr}"))?
        .origin(format!("https://{host}").parse().expect("origin"))
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

/// A cleartext HTTP/2 channel to `addr` whose calls carry `:authority`
/// `host`.
pub async fn h2c_channel(addr: SocketAddr, host: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .origin(format!("http://{host}").parse().expect("origin"))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("h2c connect")
}
