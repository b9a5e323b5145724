//! Cluster membership.
//!
//! The members (id, address, voter or learner) and the change in progress live in the
//! *member registry*: a record under a reserved key, replicated by its group like any
//! key. Every node follows it ([`follow_registry`]): its address book and its peer
//! streams take in the registry's members and drop its removed ids (and learn a peer's
//! address from the peer's own batches, see [`AddressBook`]). A member change is coordinated by the leader of the
//! registry's group (`changes.rs`): it records the change, drives every group through
//! it at that group's leader, then records the result. Each step looks at the current
//! state first, so a change interrupted by a crash resumes when it is run again.

pub mod changes;
pub mod leaders;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::raft::NodeId;
use crate::state::BuiltinState;

use super::router::Router;

pub use view::{node_status, GroupView};

/// Keys starting with this prefix are Quarry's own records; clients cannot use them.
pub const SYSTEM_KEY_PREFIX: &[u8] = b"\xff\xff";
/// Where the member registry is kept.
pub const REGISTRY_KEY: &[u8] = b"\xff\xffquarry/members";
/// How often a node re-reads the registry from its own replica.
const FOLLOW_PERIOD: Duration = Duration::from_millis(500);

pub fn is_system_key(key: &[u8]) -> bool {
    key.starts_with(SYSTEM_KEY_PREFIX)
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub address: SocketAddr,
    /// False while a learner: replicated to, not counted for quorum.
    pub voter: bool,
}

/// A member change under way; recorded so that only one runs at a time and an
/// interrupted one can be finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Add { node: NodeId },
    Remove { node: NodeId },
    Replace { old: NodeId, new: NodeId },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add { node } => write!(f, "adding node {node}"),
            Change::Remove { node } => write!(f, "removing node {node}"),
            Change::Replace { old, new } => write!(f, "replacing node {old} with node {new}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registry {
    pub members: BTreeMap<NodeId, Member>,
    pub change: Option<Change>,
    /// Ids removed from the cluster; never reused (a stale message from the old node
    /// must not pass for the new one's).
    #[serde(default)]
    pub removed: BTreeSet<NodeId>,
}

impl Registry {
    /// Before any member change the registry is not written: the founding members,
    /// all voters, are the cluster.
    pub fn founding(book: &BTreeMap<NodeId, SocketAddr>) -> Registry {
        let members = book.iter().map(|(&id, &address)| (id, Member { address, voter: true })).collect();
        Registry { members, change: None, removed: BTreeSet::new() }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a registry always serializes"))
    }

    pub fn decode(data: &[u8]) -> Result<Registry, String> {
        serde_json::from_slice(data).map_err(|e| format!("member registry unreadable: {e}"))
    }

    pub fn voters(&self) -> Vec<NodeId> {
        self.members.iter().filter(|(_, m)| m.voter).map(|(&id, _)| id).collect()
    }

    pub fn addresses(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.members.iter().map(|(&id, m)| (id, m.address)).collect()
    }
}

/// Where each member listens, shared by everything that dials peers. Filled from
/// `--initial-cluster`, the registry, and the peers' own batches (a node whose registry
/// copy is behind still learns a new member's address when it first hears from it);
/// members the registry says were removed are forgotten and not learned again.
#[derive(Clone, Default)]
pub struct AddressBook(Arc<RwLock<Book>>);

#[derive(Default)]
struct Book {
    addresses: BTreeMap<NodeId, SocketAddr>,
    removed: BTreeSet<NodeId>,
}

impl AddressBook {
    pub fn new(addresses: BTreeMap<NodeId, SocketAddr>) -> Self {
        AddressBook(Arc::new(RwLock::new(Book { addresses, removed: BTreeSet::new() })))
    }

    /// Whether the registry says `node` was removed (it may not come back).
    pub fn is_removed(&self, node: NodeId) -> bool {
        self.0.read().expect("address book lock").removed.contains(&node)
    }

    pub fn get(&self, node: NodeId) -> Option<SocketAddr> {
        self.0.read().expect("address book lock").addresses.get(&node).copied()
    }

    pub fn all(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.0.read().expect("address book lock").addresses.clone()
    }

    /// Records a peer's address from its own batch; whether it was new.
    pub fn learn(&self, node: NodeId, address: SocketAddr) -> bool {
        let mut book = self.0.write().expect("address book lock");
        if book.removed.contains(&node) || book.addresses.contains_key(&node) {
            return false;
        }
        book.addresses.insert(node, address);
        true
    }

    /// Takes in the registry's members and removals (never forgetting `own`); the
    /// nodes forgotten.
    fn follow(&self, registry: &Registry, own: NodeId) -> Vec<NodeId> {
        let mut book = self.0.write().expect("address book lock");
        book.addresses.extend(registry.addresses());
        let forgotten: Vec<NodeId> =
            registry.removed.iter().copied().filter(|&n| n != own && book.addresses.remove(&n).is_some()).collect();
        book.removed.clone_from(&registry.removed);
        forgotten
    }
}

/// The registry as this node's replica has it (possibly a little stale), or `None`
/// before the first member change.
async fn local_registry(router: &Router) -> Result<Option<Registry>, String> {
    let group = router.group_of(REGISTRY_KEY);
    let query = Box::new(|s: &BuiltinState| s.get(REGISTRY_KEY).map(|v| v.value.clone()).unwrap_or_default());
    let data = router.read_internal(group, query, true).await.map_err(|e| e.to_string())?;
    if data.is_empty() {
        return Ok(None);
    }
    Registry::decode(&data).map(Some)
}

/// Keeps the address book and the peer streams in step with the registry, for as long
/// as the node runs.
pub fn follow_registry(router: Router) {
    for node in router.book.all().into_keys() {
        router.connect(node);
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(FOLLOW_PERIOD).await;
            let registry = match local_registry(&router).await {
                Ok(Some(registry)) => registry,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(node = router.node, "member registry: {e}");
                    continue;
                }
            };
            for gone in router.book.follow(&registry, router.node) {
                router.links.disconnect(gone);
            }
            for node in registry.members.keys() {
                router.connect(*node);
            }
        }
    });
}
