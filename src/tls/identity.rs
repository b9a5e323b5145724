//! Who is at the other end of a connection, as its certificate says.

use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::raft::NodeId;

/// A node certificate's subject alternative name: `quarry://node/3` is node 3.
pub const NODE_URI_PREFIX: &str = "quarry://node/";
/// An operator certificate's subject alternative name.
pub const ADMIN_URI: &str = "quarry://admin";

/// What a connection may do depends on who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// TLS is off: anyone may call anything (the node says so when it starts).
    Open,
    /// TLS without a client certificate (only when `--client-cert-auth` is off).
    Anonymous,
    /// A certificate a CA vouches for, naming no role.
    Client,
    /// An operator: membership, leadership, snapshots.
    Admin,
    /// A node of the cluster, vouched for by the peer CA.
    Node(NodeId),
}

impl Identity {
    /// Membership, leadership and snapshot calls: operators and nodes (a node relays
    /// an operator's call to the node that carries it out).
    pub fn may_administer(self) -> bool {
        matches!(self, Identity::Open | Identity::Admin | Identity::Node(_))
    }

    /// Raft messages, catch-up and snapshot transfers claiming to come from `node`.
    pub fn may_speak_for(self, node: NodeId) -> bool {
        self == Identity::Open || self == Identity::Node(node)
    }

    /// Bulk transfers between nodes (snapshot images, log catch-up) and relayed calls.
    pub fn is_node(self) -> bool {
        matches!(self, Identity::Open | Identity::Node(_))
    }
}

/// What the listener learned about a connection, handed to every request on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Identity,
    /// The connection's budget of request bytes not yet whole messages
    /// (`server::inflight`).
    pub bytes_in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// Requests open on the connection, for its idle timeout (`server::connections`).
    pub open_requests: std::sync::Arc<OpenRequests>,
}

/// Requests open on one connection, and since when none has been.
#[derive(Debug)]
pub struct OpenRequests {
    count: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<std::time::Instant>,
}

impl Default for OpenRequests {
    fn default() -> Self {
        OpenRequests { count: Default::default(), idle_since: std::sync::Mutex::new(std::time::Instant::now()) }
    }
}

impl OpenRequests {
    pub fn open(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn close(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            *self.idle_since.lock().expect("idle lock") = std::time::Instant::now();
        }
    }

    /// Since when the connection has had no request open, if it has none now.
    pub fn idle_since(&self) -> Option<std::time::Instant> {
        let since = *self.idle_since.lock().expect("idle lock");
        (self.count.load(std::sync::atomic::Ordering::SeqCst) == 0).then_some(since)
    }
}

/// The identity of the connection a request came on. A request that did not come
/// through Quarry's listener has none and is treated as anonymous (fail closed).
pub fn identity_of<T>(request: &tonic::Request<T>) -> Identity {
    request.extensions().get::<ConnInfo>().map_or(Identity::Anonymous, |info| info.identity)
}

/// The role a certificate names in its subject alternative names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedRole {
    Node(NodeId),
    Admin,
    None,
}

/// Reads the role from a certificate's URI names; a certificate that cannot be parsed
/// or names two roles names none.
pub fn named_role(cert: &CertificateDer<'_>) -> NamedRole {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return NamedRole::None;
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return NamedRole::None;
    };
    let roles: Vec<NamedRole> = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if *uri == ADMIN_URI => Some(NamedRole::Admin),
            GeneralName::URI(uri) => {
                let id = uri.strip_prefix(NODE_URI_PREFIX)?.parse::<NodeId>().ok().filter(|&id| id != 0)?;
                Some(NamedRole::Node(id))
            }
            _ => None,
        })
        .collect();
    match roles[..] {
        [role] => role,
        _ => NamedRole::None,
    }
}
