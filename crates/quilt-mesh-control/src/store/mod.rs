//! Where nodes and leases live: the [`Store`] trait and its implementations.
//!
//! - [`sqlite`]: the durable store of one machine (one file, WAL, schema migrations).
//! - [`etcd`]: the store several replicas share, on an etcd cluster.
//! - [`memory`]: the same behaviour in memory, for tests.
//! - `stored`: a node as a store keeps it, and its checks.
//! - [`write_health`]: whether writes work, for `/health` and the log.
//!
//! A store is owned by one thread (see [`crate::registry`]) and called synchronously, so
//! methods take `&mut self`. Every change that watchers must see comes back as a
//! [`Change`] carrying the revision the store gave it in the same transaction, so the
//! revision counter survives restarts with the data. The etcd store makes its calls with
//! `Handle::block_on` on the registry thread and takes revisions from etcd.

pub mod etcd;
pub mod memory;
pub mod sqlite;
pub(crate) mod stored;
pub mod write_health;

use ipnet::Ipv4Net;
use quilt_common::ClusterNetwork;

use crate::model::{Condition, MacAddr, NewNode, Node, NodeId, NodeStatus, TokenHash};

pub use etcd::EtcdStore;
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;
pub use write_health::WriteHealth;

/// A position in the history of changes: it grows by one for every [`Change`].
pub use quilt_api::types::Revision;

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Updated,
    Deleted,
}

/// One change that watchers are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub kind: ChangeKind,
    /// The node after the change (before it, for a deletion).
    pub node: Node,
}

/// The result of a registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node: Node,
    /// True for a new node, false when a known `host_ip` registered again.
    pub created: bool,
    /// The change watchers see, if anything they care about changed.
    pub change: Option<Change>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node {0} not found")]
    NotFound(NodeId),
    #[error(
        "subnet pool exhausted: all {leasable} node subnets of cluster cidr {cluster} (/{prefix} each, the first one reserved) are leased"
    )]
    Exhausted {
        cluster: Ipv4Net,
        prefix: u8,
        leasable: u64,
    },
    #[error(
        "database was created for cluster cidr {stored_cidr} with /{stored_prefix} node subnets, not {cidr} with /{prefix}; start with the original plan or a new database"
    )]
    PlanMismatch {
        stored_cidr: String,
        stored_prefix: String,
        cidr: Ipv4Net,
        prefix: u8,
    },
    #[error("database holds a bad record: {0}")]
    Corrupt(String),
    #[error(
        "database file {} is not a Quilt Mesh database: {why}; restore it from a backup, or move it away to start a new cluster",
        path.display()
    )]
    NotOurs {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("database error: {0}")]
    Backend(String),
    /// The store cannot be reached now (etcd lost quorum or every member is down); try
    /// again later.
    #[error(
        "the control plane's store is unavailable, so changes are refused until it is back (the data plane keeps forwarding): {0}"
    )]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Nodes and their subnet leases.
pub trait Store: Send + 'static {
    /// The revision of the last change.
    fn revision(&mut self) -> Result<Revision, StoreError>;

    /// Registers a node, or renews the one already holding `new.host_ip`: a renewal
    /// keeps its id and subnet, replaces its token hash with `token_hash` (so a credential is
    /// never handed to a second caller; the old one stops working), updates the other
    /// fields (a missing `vtep_mac` keeps the old one), marks it up and sets its
    /// heartbeat to `now_ms`. A new node gets `token_hash` and the lowest free subnet, never
    /// the cluster's first one. `new.wanted_subnet`, when free, is leased instead: to a
    /// new node in place of the lowest free subnet, to a renewal in place of its own
    /// (whose lease is then let go); a taken one is ignored.
    fn register(
        &mut self,
        new: &NewNode,
        token_hash: TokenHash,
        now_ms: u64,
    ) -> Result<Registration, StoreError>;

    /// Records a heartbeat and the node's `condition` (none: healthy). A node that was
    /// down comes back up, and a condition other than the recorded one is kept: either
    /// is a change.
    fn heartbeat(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Option<Change>, StoreError>;

    fn get(&mut self, id: NodeId) -> Result<Option<Node>, StoreError>;

    /// A node whose VTEP MAC is `mac`, if there is one.
    fn mac_holder(&mut self, mac: MacAddr) -> Result<Option<Node>, StoreError>;

    /// Every node, ordered by id, and the revision the list is current at.
    fn list(&mut self) -> Result<(Vec<Node>, Revision), StoreError>;

    /// Removes a node; its subnet becomes free.
    fn delete(&mut self, id: NodeId) -> Result<Change, StoreError>;

    /// Marks down the up nodes `which` selects (a node already down is no change); the
    /// nodes keep their leases, and a heartbeat or registration brings them back.
    fn mark_down(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError>;

    /// How many nodes are up and how many are down.
    fn count_by_status(&mut self) -> Result<(u64, u64), StoreError>;

    /// Writes anything held back in memory (such as recent heartbeat times); the
    /// registry calls this when it has been idle for a while.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether writes work, shared with whoever reports health.
    fn write_health(&self) -> WriteHealth {
        WriteHealth::default()
    }

    /// Up to `wanted` more handles on this same store, for the registry to run jobs on at
    /// once, each on a thread of its own; none (the default) for a store that takes one
    /// writer. A store that hands them out guards every write against writers racing it
    /// (as etcd's does against other replicas), and publishes its changes through a feed.
    fn more_handles(&mut self, _wanted: usize) -> Vec<Box<dyn Store>> {
        Vec::new()
    }
}

/// Which up nodes [`Store::mark_down`] marks down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkDown {
    /// Every up node whose last heartbeat is older than this (unix ms): the monitor.
    SilentSince(u64),
    /// This one node: it deregistered.
    Node(NodeId),
}

impl MarkDown {
    /// Whether `node` (up or not) is selected.
    pub fn selects(&self, node: &Node) -> bool {
        match *self {
            MarkDown::SilentSince(cutoff_ms) => node.last_heartbeat_ms < cutoff_ms,
            MarkDown::Node(id) => node.id == id,
        }
    }
}

/// The lowest free lease index (the first subnet, index 0, is never leased), given the
/// indices in use in ascending order.
pub(crate) fn lowest_free_index(used_ascending: impl IntoIterator<Item = u64>) -> u64 {
    let mut candidate = 1;
    for used in used_ascending {
        if used < candidate {
            continue;
        }
        if used > candidate {
            break;
        }
        candidate += 1;
    }
    candidate
}

/// The error for a full pool.
pub(crate) fn exhausted(plan: &ClusterNetwork) -> StoreError {
    StoreError::Exhausted {
        cluster: plan.cidr(),
        prefix: plan.node_prefix_len(),
        leasable: plan.subnet_count() - 1,
    }
}

/// Counts nodes by status.
pub(crate) fn count<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> (u64, u64) {
    nodes
        .into_iter()
        .fold((0, 0), |(up, down), n| match n.status {
            NodeStatus::Up => (up + 1, down),
            NodeStatus::Down => (up, down + 1),
        })
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every store must have; each implementation runs these. Revisions are
    //! only compared (they grow), never counted: etcd's grow by more than one per change.

    use super::*;
    use crate::model::{parse_hostname, parse_mac};

    pub fn plan(cidr: &str, prefix: u8) -> ClusterNetwork {
        ClusterNetwork::new(cidr.parse().unwrap(), prefix).unwrap()
    }

    pub fn new_node(host: &str, ip: &str) -> NewNode {
        NewNode {
            hostname: parse_hostname(host).unwrap(),
            host_ip: ip.parse().unwrap(),
            cpu_cores: 4,
            ram_mb: 8192,
            vtep_mac: None,
            vxlan: Default::default(),
            wanted_subnet: None,
        }
    }

    fn wishing(host: &str, ip: &str, subnet: &str) -> NewNode {
        NewNode {
            wanted_subnet: Some(subnet.parse().unwrap()),
            ..new_node(host, ip)
        }
    }

    pub fn a_wished_subnet_is_leased_only_when_free(s: &mut dyn Store) {
        let a = s
            .register(&wishing("a", "10.0.0.1", "10.42.9.0/24"), token(), 1000)
            .unwrap();
        assert_eq!(
            a.node.subnet.to_string(),
            "10.42.9.0/24",
            "a new node gets its free wish"
        );
        let b = s
            .register(&wishing("b", "10.0.0.2", "10.42.9.0/24"), token(), 1000)
            .unwrap();
        assert_eq!(
            b.node.subnet.to_string(),
            "10.42.1.0/24",
            "a taken wish is ignored"
        );
        let again = s
            .register(&wishing("b", "10.0.0.2", "10.42.9.0/24"), token(), 2000)
            .unwrap();
        assert_eq!(again.node.subnet.to_string(), "10.42.1.0/24");
        assert!(again.change.is_none(), "nothing watchers see changed");
        let moved = s
            .register(&wishing("b", "10.0.0.2", "10.42.5.0/24"), token(), 3000)
            .unwrap();
        assert_eq!(
            moved.node.subnet.to_string(),
            "10.42.5.0/24",
            "a renewal moves to its free wish"
        );
        let change = moved.change.expect("a moved lease is a change");
        assert_eq!(
            (change.kind, change.node.subnet),
            (ChangeKind::Updated, moved.node.subnet)
        );
        let c = s
            .register(&new_node("c", "10.0.0.3"), token(), 4000)
            .unwrap();
        assert_eq!(
            c.node.subnet.to_string(),
            "10.42.1.0/24",
            "the lease let go is free again"
        );
        let kept = s
            .register(&new_node("b", "10.0.0.2"), token(), 5000)
            .unwrap();
        assert_eq!(
            kept.node.subnet.to_string(),
            "10.42.5.0/24",
            "no wish keeps the lease"
        );
    }

    pub fn a_condition_is_kept_until_a_heartbeat_clears_it(s: &mut dyn Store) {
        use crate::model::parse_condition;
        let a = s
            .register(&new_node("a", "10.0.0.1"), token(), 1000)
            .unwrap()
            .node;
        let held = parse_condition("SubnetInUse", "runtime keeps 10.42.7.0/24").unwrap();
        let change = s
            .heartbeat(a.id, 2000, Some(&held))
            .unwrap()
            .expect("a new condition is a change");
        assert_eq!(change.node.condition.as_ref(), Some(&held));
        assert!(
            s.heartbeat(a.id, 3000, Some(&held)).unwrap().is_none(),
            "the same again is not"
        );
        assert_eq!(
            s.get(a.id).unwrap().unwrap().condition.as_ref(),
            Some(&held)
        );
        let renewed = s
            .register(&new_node("a", "10.0.0.1"), token(), 3500)
            .unwrap();
        assert_eq!(
            renewed.node.condition.as_ref(),
            Some(&held),
            "registering keeps it"
        );
        let cleared = s
            .heartbeat(a.id, 4000, None)
            .unwrap()
            .expect("clearing is a change");
        assert_eq!(cleared.node.condition, None);
        assert_eq!(s.list().unwrap().0[0].condition, None);
    }

    fn token() -> TokenHash {
        crate::model::NodeToken::generate().unwrap().hash()
    }

    pub fn leases_start_at_the_second_subnet_and_fill_gaps(s: &mut dyn Store) {
        let a = s
            .register(&new_node("a", "10.0.0.1"), token(), 1000)
            .unwrap();
        let b = s
            .register(&new_node("b", "10.0.0.2"), token(), 1000)
            .unwrap();
        let c = s
            .register(&new_node("c", "10.0.0.3"), token(), 1000)
            .unwrap();
        assert_eq!(a.node.subnet.to_string(), "10.42.1.0/24");
        assert_eq!(b.node.subnet.to_string(), "10.42.2.0/24");
        assert_eq!(c.node.subnet.to_string(), "10.42.3.0/24");
        assert!(a.created && b.created && c.created);
        let added = c.change.as_ref().unwrap().revision;
        assert!(added > b.change.as_ref().unwrap().revision);
        let gone = s.delete(b.node.id).unwrap();
        assert_eq!(gone.kind, ChangeKind::Deleted);
        assert!(gone.revision > added, "revisions grow");
        assert!(s.get(b.node.id).unwrap().is_none());
        let d = s
            .register(&new_node("d", "10.0.0.4"), token(), 1000)
            .unwrap();
        assert_eq!(d.node.subnet.to_string(), "10.42.2.0/24");
        assert_ne!(d.node.id, b.node.id, "ids are never reused");
        let (nodes, rev) = s.list().unwrap();
        assert!(
            rev >= d.change.as_ref().unwrap().revision,
            "a list is current"
        );
        let ids: Vec<_> = nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![a.node.id, c.node.id, d.node.id]);
        assert!(matches!(s.delete(b.node.id), Err(StoreError::NotFound(_))));
    }

    pub fn the_same_host_ip_gets_its_lease_back(s: &mut dyn Store) {
        let first = s
            .register(&new_node("a", "10.0.0.1"), token(), 1000)
            .unwrap();
        s.mark_down(MarkDown::SilentSince(5000)).unwrap();
        let mut again = new_node("a-renamed", "10.0.0.1");
        again.vtep_mac = Some(parse_mac("02:00:00:00:00:01").unwrap());
        let second = s.register(&again, token(), 9000).unwrap();
        assert!(!second.created);
        assert_eq!(second.node.id, first.node.id);
        assert_eq!(second.node.subnet, first.node.subnet);
        assert_ne!(
            second.node.token_hash, first.node.token_hash,
            "a renewal rotates the token: the old one stops working"
        );
        assert_eq!(second.node.hostname.as_str(), "a-renamed");
        assert_eq!(second.node.status, NodeStatus::Up);
        assert_eq!(second.node.last_heartbeat_ms, 9000);
        assert_eq!(second.change.unwrap().kind, ChangeKind::Updated);
        // the same registration again changes nothing watchers see
        let third = s
            .register(&new_node("a-renamed", "10.0.0.1"), token(), 9500)
            .unwrap();
        assert!(third.change.is_none());
        assert_eq!(
            third.node.vtep_mac, again.vtep_mac,
            "a missing vtep_mac keeps the old one"
        );
    }

    pub fn a_tiny_cluster_runs_out_cleanly(s: &mut dyn Store) {
        let subnets: Vec<String> = (1..=3)
            .map(|i| {
                s.register(&new_node("n", &format!("10.0.0.{i}")), token(), 0)
                    .unwrap()
                    .node
                    .subnet
                    .to_string()
            })
            .collect();
        assert_eq!(subnets, ["10.99.1.0/24", "10.99.2.0/24", "10.99.3.0/24"]);
        let rev = s.revision().unwrap();
        let err = s
            .register(&new_node("n", "10.0.0.9"), token(), 0)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Exhausted { leasable: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.99.0.0/22"), "{err}");
        assert_eq!(s.list().unwrap().0.len(), 3, "a refusal creates nothing");
        assert!(s.revision().unwrap() >= rev);
        // a known host_ip still renews when the pool is full
        assert!(s.register(&new_node("n", "10.0.0.2"), token(), 0).is_ok());
    }

    pub fn heartbeats_and_the_monitor_flip_status(s: &mut dyn Store) {
        let a = s
            .register(&new_node("a", "10.0.0.1"), token(), 1000)
            .unwrap()
            .node;
        let b = s
            .register(&new_node("b", "10.0.0.2"), token(), 1000)
            .unwrap()
            .node;
        let rev = s.revision().unwrap();
        assert!(
            s.heartbeat(a.id, 3000, None).unwrap().is_none(),
            "a heartbeat alone is no change"
        );
        let down = s.mark_down(MarkDown::SilentSince(2000)).unwrap();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].node.id, b.id);
        assert_eq!(down[0].node.status, NodeStatus::Down);
        assert!(down[0].revision > rev);
        assert!(
            s.mark_down(MarkDown::SilentSince(2000)).unwrap().is_empty(),
            "down stays down quietly"
        );
        assert_eq!(s.count_by_status().unwrap(), (1, 1));
        let up = s.heartbeat(b.id, 4000, None).unwrap().unwrap();
        assert_eq!(
            (up.kind, up.node.status),
            (ChangeKind::Updated, NodeStatus::Up)
        );
        assert!(up.revision > down[0].revision);
        assert_eq!(s.get(b.id).unwrap().unwrap().last_heartbeat_ms, 4000);
        assert!(matches!(
            s.heartbeat(NodeId::new(999), 1, None),
            Err(StoreError::NotFound(_))
        ));
    }

    pub fn a_node_marked_down_by_id_keeps_its_lease(s: &mut dyn Store) {
        let a = s
            .register(&new_node("a", "10.0.0.1"), token(), 1000)
            .unwrap()
            .node;
        let b = s
            .register(&new_node("b", "10.0.0.2"), token(), 1000)
            .unwrap()
            .node;
        let rev = s.revision().unwrap();
        s.heartbeat(a.id, 1500, None).unwrap();
        let down = s.mark_down(MarkDown::Node(a.id)).unwrap();
        assert_eq!(down.len(), 1, "only the node named");
        assert_eq!(
            (down[0].node.id, down[0].node.status),
            (a.id, NodeStatus::Down)
        );
        assert!(down[0].revision > rev);
        assert_eq!(down[0].node.subnet, a.subnet, "the lease stays");
        assert!(s.mark_down(MarkDown::Node(a.id)).unwrap().is_empty());
        assert_eq!(s.get(b.id).unwrap().unwrap().status, NodeStatus::Up);
        let listed = s.list().unwrap().0;
        assert_eq!(listed.len(), 2, "a node marked down stays listed");
        let up = s.heartbeat(a.id, 2000, None).unwrap().unwrap();
        assert_eq!(up.node.status, NodeStatus::Up);
        assert!(up.revision > down[0].revision);
        s.mark_down(MarkDown::Node(a.id)).unwrap();
        let again = s
            .register(&new_node("a", "10.0.0.1"), token(), 3000)
            .unwrap();
        assert_eq!(
            (again.node.id, again.node.subnet, again.node.status),
            (a.id, a.subnet, NodeStatus::Up)
        );
        assert!(
            s.mark_down(MarkDown::Node(NodeId::new(999)))
                .unwrap()
                .is_empty()
        );
    }

    pub fn the_vxlan_device_is_kept_and_renewed_field_by_field(s: &mut dyn Store) {
        use crate::model::Vxlan;
        let mut new = new_node("a", "10.0.0.1");
        new.vxlan = Vxlan {
            port: Some(8472),
            vni: Some(7),
        };
        let a = s.register(&new, token(), 1000).unwrap().node;
        assert_eq!(s.get(a.id).unwrap().unwrap().vxlan, new.vxlan);
        // A renewal that names no port keeps the old one; a new VNI is an event.
        new.vxlan = Vxlan {
            port: None,
            vni: Some(9),
        };
        let renewed = s.register(&new, token(), 2000).unwrap();
        let want = Vxlan {
            port: Some(8472),
            vni: Some(9),
        };
        assert_eq!(renewed.node.vxlan, want);
        assert!(renewed.change.is_some(), "a changed vni is news to peers");
        assert_eq!(s.list().unwrap().0[0].vxlan, want);
    }

    pub fn the_holder_of_a_mac_is_found(s: &mut dyn Store) {
        let mac = parse_mac("02:00:00:00:00:0a").unwrap();
        let mut new = new_node("a", "10.0.0.1");
        new.vtep_mac = Some(mac);
        let a = s.register(&new, token(), 1000).unwrap().node;
        s.register(&new_node("b", "10.0.0.2"), token(), 1000)
            .unwrap();
        assert_eq!(s.mac_holder(mac).unwrap().map(|n| n.id), Some(a.id));
        let other = parse_mac("02:00:00:00:00:0b").unwrap();
        assert_eq!(s.mac_holder(other).unwrap(), None);
        s.delete(a.id).unwrap();
        assert_eq!(s.mac_holder(mac).unwrap(), None);
    }

    pub fn run_all(mut make: impl FnMut(ClusterNetwork) -> Box<dyn Store>) {
        the_holder_of_a_mac_is_found(make(plan("10.42.0.0/16", 24)).as_mut());
        a_node_marked_down_by_id_keeps_its_lease(make(plan("10.42.0.0/16", 24)).as_mut());
        the_vxlan_device_is_kept_and_renewed_field_by_field(
            make(plan("10.42.0.0/16", 24)).as_mut(),
        );
        leases_start_at_the_second_subnet_and_fill_gaps(make(plan("10.42.0.0/16", 24)).as_mut());
        the_same_host_ip_gets_its_lease_back(make(plan("10.42.0.0/16", 24)).as_mut());
        a_tiny_cluster_runs_out_cleanly(make(plan("10.99.0.0/22", 24)).as_mut());
        heartbeats_and_the_monitor_flip_status(make(plan("10.42.0.0/16", 24)).as_mut());
        a_wished_subnet_is_leased_only_when_free(make(plan("10.42.0.0/16", 24)).as_mut());
        a_condition_is_kept_until_a_heartbeat_clears_it(make(plan("10.42.0.0/16", 24)).as_mut());
    }

    #[test]
    fn lowest_free_index_skips_the_first_subnet_and_fills_gaps() {
        assert_eq!(lowest_free_index([]), 1);
        assert_eq!(lowest_free_index([1, 2, 3]), 4);
        assert_eq!(lowest_free_index([1, 3]), 2);
        assert_eq!(lowest_free_index([0, 2]), 1);
    }
}
