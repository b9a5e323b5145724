//! Who may call what, by the identity TLS proved (`tls::Identity`; without TLS every
//! caller is `Open`). Ordinary clients get Kv, Log and the read-only Admin calls;
//! membership, leadership and snapshots need an operator's or a node's certificate;
//! Raft messages and bulk transfers need the certificate of the node they claim to
//! come from. A refusal is counted and logged (the first, then at powers of two).

use tonic::{Request, Status};

use super::router::Router;
use crate::raft::NodeId;
use crate::tls::{identity_of, Identity, ADMIN_URI, NODE_URI_PREFIX};

/// Membership, leadership and snapshot calls.
pub fn administer<T>(router: &Router, request: &Request<T>, call: &'static str) -> Result<(), Status> {
    let identity = identity_of(request);
    if identity.may_administer() {
        return Ok(());
    }
    Err(refuse(
        router,
        "admin_call",
        format!("{call} needs an operator's certificate ({ADMIN_URI}) or a node's; the caller is {identity:?}"),
    ))
}

/// A peer stream's batch claiming to come from `node`: only that node's certificate,
/// and never a node the registry removed.
pub fn speak_for(router: &Router, identity: Identity, node: NodeId) -> Result<(), Status> {
    if !identity.may_speak_for(node) {
        return Err(refuse(
            router,
            "peer_stream",
            format!("messages from node {node} need a certificate naming {NODE_URI_PREFIX}{node}; the caller is {identity:?}"),
        ));
    }
    if identity != Identity::Open && router.book.is_removed(node) {
        return Err(refuse(router, "peer_stream", format!("node {node} was removed from the cluster")));
    }
    Ok(())
}

/// Counts a refusal, logs it when due, and says why to the caller.
pub fn refuse(router: &Router, what: &'static str, why: String) -> Status {
    if router.metrics().count_refusal(what) {
        tracing::warn!(
            node = router.node,
            "refused: {why} (logged at powers of two; counted in quarry_unauthorized_total)"
        );
    }
    Status::permission_denied(why)
}
