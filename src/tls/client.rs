//! The connecting side of TLS, for nodes (to their peers) and for quarryctl,
//! quarry-bench and the Rust client (etcdctl's `--cacert --cert --key`).

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::files::{certified_key, roots};
use super::{provider, ALPN_H2};

/// How to connect: in plain text, or over TLS with a configuration that may be
/// replaced while channels live (each reconnection takes the current one).
#[derive(Clone, Default)]
pub struct ClientTls(Option<Arc<RwLock<Arc<ClientConfig>>>>);

impl ClientTls {
    /// Plain text.
    pub fn plain() -> ClientTls {
        ClientTls(None)
    }

    pub(super) fn shared(config: Arc<RwLock<Arc<ClientConfig>>>) -> ClientTls {
        ClientTls(Some(config))
    }

    /// TLS when a CA is given: the nodes' certificates are checked against `cacert`,
    /// and `cert` with `key` (both or neither) is presented as the client's.
    pub fn from_files(cacert: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTls, String> {
        let Some(cacert) = cacert else {
            return match (cert, key) {
                (None, None) => Ok(ClientTls::plain()),
                _ => Err("--cert and --key need --cacert, the CA that signed the nodes' certificates".into()),
            };
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some(certified_key(cert, key)?),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        ClientTls::build(roots(&[cacert])?, identity)
    }

    /// The same from PEM text: a CA certificate, and a certificate with its key.
    pub fn from_pem(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<ClientTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.map_err(|e| format!("CA certificate: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
        }
        let identity = match identity {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
                let key = provider().key_provider.load_private_key(key).map_err(|e| format!("key: {e}"))?;
                Some(CertifiedKey::new(chain, key))
            }
            None => None,
        };
        ClientTls::build(roots, identity)
    }

    fn build(roots: RootCertStore, identity: Option<CertifiedKey>) -> Result<ClientTls, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ClientTls(Some(Arc::new(RwLock::new(Arc::new(config))))))
    }

    /// A channel to `endpoint`, connected lazily: over TLS when on, the server's
    /// certificate checked against the endpoint's host (an IP address or a name).
    /// Connecting (TCP, and the TLS handshake) is bounded by `CONNECT_TIMEOUT`.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        let Some(current) = &self.0 else {
            return endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
        };
        let current = current.clone();
        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            let config = current.read().expect("tls lock").clone();
            connect(uri, config)
        }))
    }

    /// A channel to `endpoint`, connected now (the handshake done) or an error.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        let Some(current) = &self.0 else {
            return endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await;
        };
        let current = current.clone();
        endpoint
            .connect_with_connector(tower::service_fn(move |uri: Uri| {
                let config = current.read().expect("tls lock").clone();
                connect(uri, config)
            }))
            .await
    }
}

/// How long making a connection may take. Over TLS the bound is kept here, inside the
/// connector, so that a node that accepts TCP but never finishes a handshake (a
/// stopped process) fails the attempt as a connection error (`UNAVAILABLE`, which
/// callers retry elsewhere), not as tonic's outer timeout (`UNKNOWN`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect(uri: Uri, config: Arc<ClientConfig>) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake(uri, config)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no TLS connection within the connect timeout")),
    }
}

async fn handshake(uri: Uri, config: Arc<ClientConfig>) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, port)).await?;
    // As on plain connections (transport::endpoint): small frames leave at once.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_owned()).map_err(|_| invalid("not a host name or address"))?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(TokioIo::new(tls))
}
