//! Mutual TLS (rustls) on every connection Quarry accepts or makes, and the identity
//! a verified certificate gives its holder.
//!
//! One listener serves clients, operators and peers, so a node presents one server
//! certificate (`--cert-file`) to all of them and verifies client certificates
//! against both the client CA (`--trusted-ca-file`) and the peer CA
//! (`--peer-trusted-ca-file`). A certificate names its role in a subject alternative
//! name of type URI: `quarry://node/<id>` for a node (honoured only when the peer CA
//! vouches for the certificate), `quarry://admin` for an operator. Any other
//! certificate a CA vouches for is an ordinary client's.

mod certs;
mod client;
mod files;
mod identity;
mod server;

pub use certs::{Authority, Holder, Issued, Validity};
pub use client::ClientTls;
pub use files::TlsSettings;
pub use identity::{identity_of, ConnInfo, Identity, OpenRequests, ADMIN_URI, NODE_URI_PREFIX};
pub use server::ServerTls;

use std::sync::Arc;

/// The one crypto provider Quarry uses (ring: no C toolchain beyond what ring needs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// gRPC runs over HTTP/2, which TLS peers agree on by ALPN (grpcio insists on it).
const ALPN_H2: &[u8] = b"h2";
