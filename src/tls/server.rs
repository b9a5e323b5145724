//! The listener's side of TLS: the server configuration, reloadable while the node
//! runs, and the identity each accepted connection proves.

use std::io;
use std::sync::{Arc, RwLock};

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::files::{certified_key, roots, TlsSettings};
use super::identity::{named_role, Identity, NamedRole, NODE_URI_PREFIX};
use super::{provider, ClientTls, ALPN_H2};
use crate::raft::NodeId;

/// A node's TLS: what it presents and trusts, for the connections it accepts and the
/// ones it makes. `reload` rereads the files; connections already open keep theirs.
pub struct ServerTls {
    node: NodeId,
    settings: TlsSettings,
    current: RwLock<Arc<Accepting>>,
    /// Shared with every channel this node opens, so reconnections use new files.
    outbound: Arc<RwLock<Arc<ClientConfig>>>,
}

struct Accepting {
    acceptor: TlsAcceptor,
    /// Vouches for node certificates: the peer CA alone.
    peer_verifier: Arc<dyn ClientCertVerifier>,
}

impl ServerTls {
    /// Reads and checks every file; the error is one line naming the file at fault.
    pub fn load(node: NodeId, settings: TlsSettings) -> Result<Arc<ServerTls>, String> {
        let (accepting, outbound) = build(node, &settings)?;
        Ok(Arc::new(ServerTls {
            node,
            settings,
            current: RwLock::new(Arc::new(accepting)),
            outbound: Arc::new(RwLock::new(Arc::new(outbound))),
        }))
    }

    /// Rereads the files (on SIGHUP). On error nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let (accepting, outbound) = build(self.node, &self.settings)?;
        *self.current.write().expect("tls lock") = Arc::new(accepting);
        *self.outbound.write().expect("tls lock") = Arc::new(outbound);
        Ok(())
    }

    /// How this node connects to others.
    pub fn client(&self) -> ClientTls {
        ClientTls::shared(self.outbound.clone())
    }

    /// Completes the handshake of an accepted connection and names who it is.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(TlsStream<TcpStream>, Identity)> {
        let accepting = self.current.read().expect("tls lock").clone();
        let tls = accepting.acceptor.accept(stream).await?;
        let identity = accepting.identity(tls.get_ref().1.peer_certificates());
        Ok((tls, identity))
    }
}

impl Accepting {
    fn identity(&self, certs: Option<&[CertificateDer<'static>]>) -> Identity {
        let Some((end_entity, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Identity::Anonymous;
        };
        match named_role(end_entity) {
            // A client CA's certificate claiming a node's name is only a client's.
            NamedRole::Node(id) => {
                match self.peer_verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
                    Ok(_) => Identity::Node(id),
                    Err(_) => Identity::Client,
                }
            }
            NamedRole::Admin => Identity::Admin,
            NamedRole::None => Identity::Client,
        }
    }
}

fn build(node: NodeId, settings: &TlsSettings) -> Result<(Accepting, ClientConfig), String> {
    let s = settings;
    let served = certified_key(&s.cert_file, &s.key_file)?;
    let own = certified_key(&s.peer_cert_file, &s.peer_key_file)?;
    match own.end_entity_cert().map(named_role) {
        Ok(NamedRole::Node(id)) if id == node => {}
        Ok(NamedRole::Node(id)) => {
            return Err(format!("{} names node {id}, but this is node {node}", s.peer_cert_file.display()))
        }
        _ => {
            return Err(format!(
                "{} does not name this node (a subject alternative name URI {NODE_URI_PREFIX}{node})",
                s.peer_cert_file.display()
            ))
        }
    }
    let peer_roots = Arc::new(roots(&[&s.peer_trusted_ca_file])?);
    let mut all_cas = vec![s.peer_trusted_ca_file.as_path()];
    all_cas.extend(s.trusted_ca_file.as_deref());
    let all_roots = Arc::new(roots(&all_cas)?);

    let verifier_error = |e| format!("cannot verify client certificates: {e}");
    let mut clients = WebPkiClientVerifier::builder_with_provider(all_roots.clone(), provider());
    if !s.client_cert_auth {
        clients = clients.allow_unauthenticated();
    }
    let clients = clients.build().map_err(verifier_error)?;
    let peer_verifier =
        WebPkiClientVerifier::builder_with_provider(peer_roots, provider()).build().map_err(verifier_error)?;

    let protocol_error = |e: rustls::Error| format!("TLS configuration: {e}");
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(protocol_error)?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(served)));
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut outbound = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(protocol_error)?
        .with_root_certificates(all_roots)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(own)));
    outbound.alpn_protocols = vec![ALPN_H2.to_vec()];
    let accepting = Accepting { acceptor: TlsAcceptor::from(Arc::new(server)), peer_verifier };
    Ok((accepting, outbound))
}
