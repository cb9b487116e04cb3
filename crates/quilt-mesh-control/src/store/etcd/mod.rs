//! The etcd store: every replica of the control plane reads and writes the same keys (see
//! [`keys`]), so any replica serves the whole API.
//!
//! Every write is one transaction guarded by compares, so replicas racing each other can
//! never both win: a new node's lease key is created only if absent (two replicas never hand
//! out one subnet), its host key likewise (one host IP, one node), and a change to a node
//! only if the node's key has not changed since it was read; a loser reads again and retries.
//! A heartbeat that changes nothing watchers see is one small write (`P/heartbeats/<id>`).
//! Marking a silent node down compares both the node's key and its heartbeat key with what
//! was read, so of all replicas checking at once exactly one marks it down, and a
//! heartbeat that landed meanwhile wins over all of them.
//!
//! Revisions are etcd's, plus the base a migration from SQLite set (so they keep growing
//! from where SQLite was). Watchers learn changes from etcd's watch ([`feed`]), which carries
//! every replica's writes in revision order, not from this replica's own results.
//!
//! The [`Store`] calls are synchronous (the registry threads make them); each one blocks on
//! the runtime that opened the store. A replica runs several calls at once on handles of
//! one store ([`Store::more_handles`]): they share the free-lease hint, the block of node
//! ids and the set of subnets being leased right now, so they do not race each other for
//! one subnet; racing other replicas, the compares decide as always. (The registry's
//! duplicate-MAC check is a read before the write, not a compare: two hosts registering
//! one MAC at the same moment through two handles, as through two replicas, both get it.)
//!
//! Each replica also keeps the lease, host and MAC keys in memory (`known`: loaded at
//! open, kept from the feed and its own writes), as a guess that the compares check. A
//! host it does not know becomes a node in one transaction with no read before it; when
//! the compares fail (another replica took the host or the subnet), the registration
//! reads in full: one read (its host key and a page of lease keys from the hint,
//! together) and one write. A heartbeat
//! reuses the read that authorized it and writes only if the node's key is unchanged
//! since. When other registrations are under way, the
//! subnet is drawn at random among the lowest free ones rather than the lowest itself, so
//! replicas registering at once seldom try the same one; alone, a store leases the lowest.

pub mod feed;
pub mod keys;
pub(crate) mod known;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quilt_common::ClusterNetwork;
use quilt_etcd::ops::{self, absent, unchanged_since};
use quilt_etcd::pb::{KeyValue, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse};
use quilt_etcd::{EtcdClient, EtcdError};

use super::stored::StoredNode;
use super::write_health::Backend;
use super::{
    Change, ChangeKind, MarkDown, Registration, Revision, Store, StoreError, WriteHealth, exhausted,
};
use crate::model::{Condition, MacAddr, NewNode, Node, NodeId, NodeStatus, TokenHash};
use keys::Keys;
use known::{Known, Seen};

pub use feed::Feed;

/// How many node ids a replica takes at once (one contended write per block, not per node).
const ID_BLOCK: u64 = 64;

/// How many times a write that lost a race is read and tried again.
const MAX_ATTEMPTS: usize = 32;

/// After a call found etcd unavailable, calls fail at once for this long (the health probe
/// and the next call after it try again), so a queue of requests does not wait on etcd's
/// timeouts one by one.
const FAST_FAIL: Duration = Duration::from_millis(300);

/// How many of etcd's latest revisions a replica reads again when it starts, so that its
/// watchers can resume from a revision handed out before it started.
const REPLAY_REVISIONS: i64 = 20_000;

/// How many lease keys one read looks at when it searches for a free subnet.
const LEASE_PAGE: i64 = 256;

/// Among how many of the lowest free subnets one is drawn when other registrations are
/// under way (see the module docs).
const SPREAD: usize = 128;

/// The same when the subnet is drawn from what the replica knows (no page to read): wider,
/// so that replicas registering at once seldom draw the same one.
const KNOWN_SPREAD: usize = 512;

/// What the store and its feed share: the lowest subnet index that may be free.
#[derive(Debug)]
pub(crate) struct Hint {
    free_from: AtomicU64,
}

impl Hint {
    /// A lease was let go (here or by another replica, as the feed saw).
    pub(crate) fn freed(&self, index: u64) {
        self.free_from.fetch_min(index.max(1), Ordering::Relaxed);
    }
}

/// The plan as stored in `P/plan`.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct StoredPlan {
    cluster_cidr: String,
    node_prefix_len: u8,
}

pub struct EtcdStore {
    client: EtcdClient,
    runtime: tokio::runtime::Handle,
    keys: Keys,
    plan: ClusterNetwork,
    /// Added to etcd's revisions to make the API's.
    base: i64,
    hint: Arc<Hint>,
    /// Leases, hosts and MACs as this replica last saw them (shared by handles and feed).
    known: Arc<Known>,
    /// Node ids taken from `P/next-node-id` and not handed out yet (shared by handles).
    ids: Arc<Mutex<Range<u64>>>,
    /// Subnet indices some handle of this store is leasing right now.
    leasing: Arc<Mutex<BTreeSet<u64>>>,
    /// Draws among free subnets.
    draws: RandomState,
    health: WriteHealth,
    unavailable_since: Option<(Instant, String)>,
    /// The node [`Store::get`] read last, for the heartbeat that follows it in one job.
    last_read: Option<Read>,
}

/// A subnet index one handle is leasing; other handles pass it by until this drops.
struct Leasing {
    index: u64,
    set: Arc<Mutex<BTreeSet<u64>>>,
}

impl Drop for Leasing {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.index);
    }
}

/// A lock that a panicked holder did not spoil: every value under these locks stays
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The revision an etcd answer's header names.
fn header_revision(header: Option<&quilt_etcd::pb::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// The `i`-th read of a transaction's answer.
fn read_answer(answer: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    use quilt_etcd::pb::response_op::Response;
    match answer.responses.get(i)?.response.as_ref()? {
        Response::ResponseRange(range) => Some(range),
        _ => None,
    }
}

fn first_kv(answer: &TxnResponse, i: usize) -> Option<&KeyValue> {
    read_answer(answer, i)?.kvs.first()
}

fn decode_node(kv: &KeyValue) -> Result<Node, StoreError> {
    let stored: StoredNode = serde_json::from_slice(&kv.value).map_err(|e| {
        StoreError::Corrupt(format!(
            "etcd key {} does not hold a node: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    stored.check()
}

fn encode_node(node: &Node) -> Vec<u8> {
    serde_json::to_vec(&StoredNode::of(node)).expect("a stored node serializes")
}

fn decode_number(kv: &KeyValue) -> Result<u64, StoreError> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "etcd key {} holds {:?}, not a number",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            ))
        })
}

/// A node as read, with the revision of its key (for the compare of the write after).
#[derive(Clone)]
struct Read {
    node: Node,
    mod_revision: i64,
}

impl EtcdStore {
    /// Opens the cluster under `prefix` through `client`: records `plan` on first use and
    /// refuses a different one later. Answers the store and the feed that tells watchers
    /// about every change from now on.
    pub async fn open(
        client: EtcdClient,
        prefix: &str,
        plan: ClusterNetwork,
    ) -> Result<(EtcdStore, Feed), StoreError> {
        let keys = Keys::new(prefix);
        let wanted = StoredPlan {
            cluster_cidr: plan.cidr().to_string(),
            node_prefix_len: plan.node_prefix_len(),
        };
        let plan_json = serde_json::to_vec(&wanted).expect("a plan serializes");
        let answer = client
            .txn(TxnRequest {
                compare: vec![absent(keys.plan())],
                success: vec![
                    ops::put(keys.plan(), plan_json),
                    ops::read(ops::get(keys.revision_base())),
                ],
                failure: vec![
                    ops::read(ops::get(keys.plan())),
                    ops::read(ops::get(keys.revision_base())),
                ],
            })
            .await
            .map_err(|e| unavailable_or_backend(&e))?;
        if !answer.succeeded {
            let stored = first_kv(&answer, 0)
                .and_then(|kv| serde_json::from_slice::<StoredPlan>(&kv.value).ok());
            match stored {
                Some(stored) if stored == wanted => {}
                Some(stored) => {
                    return Err(StoreError::PlanMismatch {
                        stored_cidr: stored.cluster_cidr,
                        stored_prefix: stored.node_prefix_len.to_string(),
                        cidr: plan.cidr(),
                        prefix: plan.node_prefix_len(),
                    });
                }
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "etcd key {} does not hold a cluster plan",
                        keys.plan()
                    )));
                }
            }
        }
        let base_kv = first_kv(&answer, 1);
        // Revisions before the base was set (by a migration) are not the API's.
        let base_set_at = base_kv.map_or(0, |kv| kv.mod_revision);
        let base = match base_kv {
            Some(kv) => std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "etcd key {} does not hold a number",
                        keys.revision_base()
                    ))
                })?,
            None => 0,
        };
        let hint = Arc::new(Hint {
            free_from: AtomicU64::new(1),
        });
        let health = WriteHealth::new(Backend::Etcd);
        let known = Arc::new(load_known(&client, &keys).await?);
        let started_at = header_revision(answer.header.as_ref());
        let replay_after = (started_at - REPLAY_REVISIONS).max(base_set_at).max(0);
        let feed = Feed::new(
            client.clone(),
            keys.clone(),
            base,
            replay_after,
            hint.clone(),
            known.clone(),
            health.clone(),
        );
        tracing::info!(endpoints = ?client.urls(), prefix = keys.prefix(), etcd_revision = started_at, revision_base = base, "using etcd");
        let store = EtcdStore {
            client,
            runtime: tokio::runtime::Handle::current(),
            keys,
            plan,
            base,
            hint,
            known,
            ids: Arc::new(Mutex::new(0..0)),
            leasing: Arc::new(Mutex::new(BTreeSet::new())),
            draws: RandomState::new(),
            health,
            unavailable_since: None,
            last_read: None,
        };
        Ok((store, feed))
    }

    fn api_revision(&self, etcd_revision: i64) -> Revision {
        u64::try_from(etcd_revision.saturating_add(self.base)).unwrap_or(0)
    }

    fn change(&self, answer: &TxnResponse, kind: ChangeKind, node: Node) -> Change {
        Change {
            revision: self.api_revision(header_revision(answer.header.as_ref())),
            kind,
            node,
        }
    }

    /// Runs one transaction, blocking; an unavailable etcd fails fast for a moment after
    /// it was last found so.
    fn txn(&mut self, request: TxnRequest) -> Result<TxnResponse, StoreError> {
        if let Some((since, error)) = &self.unavailable_since
            && since.elapsed() < FAST_FAIL
        {
            return Err(StoreError::Unavailable(error.clone()));
        }
        match self.runtime.block_on(self.client.txn(request)) {
            Ok(answer) => {
                if self.unavailable_since.take().is_some() {
                    self.health.worked();
                }
                Ok(answer)
            }
            Err(e) => {
                let error = unavailable_or_backend(&e);
                if let StoreError::Unavailable(message) = &error {
                    self.health.failed(message);
                    self.unavailable_since = Some((Instant::now(), message.clone()));
                }
                Err(error)
            }
        }
    }

    /// Reads, all at one revision.
    fn read(&mut self, ranges: Vec<RangeRequest>) -> Result<TxnResponse, StoreError> {
        self.txn(TxnRequest {
            success: ranges.into_iter().map(ops::read).collect(),
            ..Default::default()
        })
    }

    /// Reads that only guide a write whose compares decide (is this host known, which
    /// leases look free, who holds this MAC): served by the member asked from what it
    /// holds (etcd's serializable reads: no round to the leader and its followers), so
    /// they may miss the newest writes. A write built on a stale one fails its compares
    /// and the caller reads again, in full.
    fn read_hint(&mut self, ranges: Vec<RangeRequest>) -> Result<TxnResponse, StoreError> {
        self.read(
            ranges
                .into_iter()
                .map(|range| RangeRequest {
                    serializable: true,
                    ..range
                })
                .collect(),
        )
    }

    /// Node `id` with the revision of its key, and its last heartbeat filled in.
    fn read_node(&mut self, id: NodeId) -> Result<Option<Read>, StoreError> {
        let answer = self.read(vec![
            ops::get(self.keys.node(id)),
            ops::get(self.keys.heartbeat(id)),
        ])?;
        let Some(kv) = first_kv(&answer, 0) else {
            return Ok(None);
        };
        let mut node = decode_node(kv)?;
        if let Some(heartbeat) = first_kv(&answer, 1) {
            node.last_heartbeat_ms = node.last_heartbeat_ms.max(decode_number(heartbeat)?);
        }
        Ok(Some(Read {
            node,
            mod_revision: kv.mod_revision,
        }))
    }

    /// The next node id, from this replica's block (a new block taken when it runs out).
    fn take_id(&mut self) -> Result<NodeId, StoreError> {
        // Held while a block is taken, so handles take one block, not one each.
        let ids = self.ids.clone();
        let mut ids = lock(&ids);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(id) = ids.next() {
                return Ok(NodeId::new(id));
            }
            let key = self.keys.next_node_id();
            let answer = self.read(vec![ops::get(key.clone())])?;
            let (start, seen) = match first_kv(&answer, 0) {
                Some(kv) => (decode_number(kv)?, kv.mod_revision),
                None => (1, 0),
            };
            let end = start + ID_BLOCK;
            let taken = self.txn(TxnRequest {
                compare: vec![unchanged_since(key.clone(), seen)],
                success: vec![ops::put(key, end.to_string())],
                failure: vec![],
            })?;
            if taken.succeeded {
                *ids = start..end;
            }
        }
        Err(conflicting("taking a block of node ids"))
    }

    /// Gives back an id taken for a registration that lost its race.
    fn give_back(&mut self, id: NodeId) {
        let mut ids = lock(&self.ids);
        if id.number() + 1 == ids.start {
            ids.start = id.number();
        }
    }

    /// A read of up to [`LEASE_PAGE`] lease keys from index `from` on.
    fn lease_page(&self, from: u64) -> RangeRequest {
        ops::keys_between(
            self.keys.lease(from),
            quilt_etcd::ops::prefix_end(self.keys.leases().as_bytes()),
            LEASE_PAGE,
        )
    }

    /// A free subnet index, marked as being leased by this handle: the lowest one at or
    /// above the hint (from the first subnet again if the hint finds none), or, when
    /// other registrations of this store are under way or `contended` (the last try lost
    /// a race), one drawn among the [`SPREAD`] lowest. `page` is the read of
    /// [`Self::lease_page`] from `from`, when the caller made it already.
    fn pick_free(
        &mut self,
        mut from: u64,
        mut page: Option<RangeResponse>,
        contended: bool,
    ) -> Result<Leasing, StoreError> {
        let hinted = from;
        let mut from_the_start = from == 1;
        let mut lowest_unused = None;
        loop {
            if self.plan.subnet_at(from).is_none() {
                if from_the_start {
                    return Err(exhausted(&self.plan));
                }
                from = 1;
                from_the_start = true;
                page = None;
                continue;
            }
            let read = match page.take() {
                Some(read) => read,
                None => {
                    let answer = self.read(vec![self.lease_page(from)])?;
                    read_answer(&answer, 0).cloned().unwrap_or_default()
                }
            };
            let used: Vec<u64> = read
                .kvs
                .iter()
                .filter_map(|kv| self.keys.lease_index(&kv.key))
                .filter(|used| *used >= from)
                .collect();
            // The page shows every used index below `end`; past it, the next page tells.
            let end = match (read.more, used.last()) {
                (true, Some(last)) => last + 1,
                _ => u64::MAX,
            };
            let mut leasing = lock(&self.leasing);
            let spread = if contended || !leasing.is_empty() {
                SPREAD
            } else {
                1
            };
            let mut free = Vec::new();
            let mut candidate = from;
            let mut used_at = 0;
            while candidate < end && free.len() < spread {
                if self.plan.subnet_at(candidate).is_none() {
                    break;
                }
                while used_at < used.len() && used[used_at] < candidate {
                    used_at += 1;
                }
                if used.get(used_at) != Some(&candidate) {
                    lowest_unused.get_or_insert(candidate);
                    if !leasing.contains(&candidate) {
                        free.push(candidate);
                    }
                }
                candidate += 1;
            }
            if free.is_empty() {
                drop(leasing);
                from = candidate;
                continue;
            }
            let chosen = free[(self.draws.hash_one(Instant::now()) % free.len() as u64) as usize];
            leasing.insert(chosen);
            drop(leasing);
            if let Some(lowest) = lowest_unused {
                // Unless a lease was let go meanwhile (the hint went down): keep that.
                let _ = self.hint.free_from.compare_exchange(
                    hinted,
                    lowest,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            return Ok(Leasing {
                index: chosen,
                set: self.leasing.clone(),
            });
        }
    }

    /// A wished subnet's index when it is in the plan, not the first one, and free now.
    fn free_wish(&mut self, new: &NewNode) -> Result<Option<u64>, StoreError> {
        let Some(index) = new
            .wanted_subnet
            .and_then(|subnet| self.plan.index_of(subnet))
            .filter(|index| *index >= 1)
        else {
            return Ok(None);
        };
        let answer = self.read(vec![ops::get(self.keys.lease(index))])?;
        Ok(first_kv(&answer, 0).is_none().then_some(index))
    }

    /// Renews node `id` (which holds `new.host_ip`); `None` when another write came between
    /// the read and the write.
    fn renew(
        &mut self,
        id: NodeId,
        new: &NewNode,
        token_hash: &TokenHash,
        now_ms: u64,
    ) -> Result<Option<Registration>, StoreError> {
        let Some(Read {
            node: old,
            mod_revision,
        }) = self.read_node(id)?
        else {
            return Err(StoreError::Corrupt(format!(
                "etcd key {} names node {id}, which does not exist",
                self.keys.host(new.host_ip)
            )));
        };
        let mut node = old.renewed(new, token_hash.clone(), now_ms);
        let mut compare = vec![unchanged_since(self.keys.node(id), mod_revision)];
        let mut success = Vec::new();
        if let Some(index) = self.free_wish(new)?
            && let Some(subnet) = self.plan.subnet_at(index)
            && subnet != old.subnet
        {
            compare.push(absent(self.keys.lease(index)));
            success.push(ops::put(self.keys.lease(index), id.number().to_string()));
            if let Some(previous) = self.plan.index_of(old.subnet) {
                success.push(ops::delete(self.keys.lease(previous)));
            }
            node.subnet = subnet;
        }
        if node.vtep_mac != old.vtep_mac {
            if let Some(mac) = old.vtep_mac {
                success.push(ops::delete(self.keys.mac(mac)));
            }
            if let Some(mac) = node.vtep_mac {
                success.push(ops::put(self.keys.mac(mac), id.number().to_string()));
            }
        }
        success.push(ops::put(self.keys.node(id), encode_node(&node)));
        success.push(ops::put(self.keys.heartbeat(id), now_ms.to_string()));
        let answer = self.txn(TxnRequest {
            compare,
            success,
            failure: vec![],
        })?;
        if !answer.succeeded {
            return Ok(None);
        }
        if node.subnet != old.subnet
            && let Some(previous) = self.plan.index_of(old.subnet)
        {
            self.hint.freed(previous);
            self.known.note(Seen::Lease(previous), false);
            if let Some(now) = self.plan.index_of(node.subnet) {
                self.known.note(Seen::Lease(now), true);
            }
        }
        if node.vtep_mac != old.vtep_mac {
            if let Some(mac) = old.vtep_mac {
                self.known.note(Seen::Mac(mac, id), false);
            }
            if let Some(mac) = node.vtep_mac {
                self.known.note(Seen::Mac(mac, id), true);
            }
        }
        let change = old
            .differs_for_watchers(&node)
            .then(|| self.change(&answer, ChangeKind::Updated, node.clone()));
        Ok(Some(Registration {
            node,
            created: false,
            change,
        }))
    }

    /// Creates a node for `new.host_ip`; `None` when another replica took the host IP or
    /// the subnet first. `page` is a read of the lease keys from `from`, made with the
    /// read that found the host IP free.
    fn create(
        &mut self,
        new: &NewNode,
        token_hash: &TokenHash,
        now_ms: u64,
        (from, page): (u64, RangeResponse),
        contended: bool,
    ) -> Result<Option<Registration>, StoreError> {
        let wish = self.free_wish(new)?;
        let leasing = match wish {
            Some(_) => None,
            None => Some(self.pick_free(from, Some(page), contended)?),
        };
        let index = match (wish, &leasing) {
            (Some(index), _) => index,
            (None, Some(leasing)) => leasing.index,
            (None, None) => unreachable!("a subnet is wished or being leased"),
        };
        match self.attempt_creation(new, token_hash, now_ms, index)? {
            Some((answer, node)) => Ok(Some(self.created(&answer, node, index, wish.is_none()))),
            None => Ok(None),
        }
    }

    /// Creates a node for `new.host_ip` from what this replica knows, without reading
    /// first: one transaction whose compares (host and lease keys absent) decide. `None`
    /// when they fail; what they found is noted, and the caller reads in full.
    fn create_unread(
        &mut self,
        new: &NewNode,
        token_hash: &TokenHash,
        now_ms: u64,
    ) -> Result<Option<Registration>, StoreError> {
        let leasing = self.pick_known_free()?;
        let index = leasing.index;
        match self.attempt_creation(new, token_hash, now_ms, index)? {
            Some((answer, node)) => Ok(Some(self.created(&answer, node, index, true))),
            None => Ok(None),
        }
    }

    /// One try at making the node for `new` with lease `index`: the transaction whose
    /// compares (host and lease keys absent) decide. `None` when they fail; what they
    /// found is noted for the next pick.
    fn attempt_creation(
        &mut self,
        new: &NewNode,
        token_hash: &TokenHash,
        now_ms: u64,
        index: u64,
    ) -> Result<Option<(TxnResponse, Node)>, StoreError> {
        let subnet = self
            .plan
            .subnet_at(index)
            .ok_or_else(|| exhausted(&self.plan))?;
        let id = self.take_id()?;
        let node = new.leased(id, subnet, token_hash.clone(), now_ms);
        let answer = self.txn(TxnRequest {
            compare: vec![
                absent(self.keys.host(node.host_ip)),
                absent(self.keys.lease(index)),
            ],
            success: self.creation(&node, index),
            failure: vec![
                ops::read(ops::get(self.keys.host(node.host_ip))),
                ops::read(ops::get(self.keys.lease(index))),
            ],
        })?;
        if answer.succeeded {
            return Ok(Some((answer, node)));
        }
        self.give_back(id);
        if let Some(kv) = first_kv(&answer, 0) {
            let holder = NodeId::new(decode_number(kv)?);
            self.known.note(Seen::Host(node.host_ip, holder), true);
        }
        if first_kv(&answer, 1).is_some() {
            self.known.note(Seen::Lease(index), true);
        }
        Ok(None)
    }

    /// The writes that make `node` with lease `index`.
    fn creation(&self, node: &Node, index: u64) -> Vec<RequestOp> {
        let id = node.id.number().to_string();
        let mut success = vec![
            ops::put(self.keys.node(node.id), encode_node(node)),
            ops::put(self.keys.host(node.host_ip), id.clone()),
            ops::put(self.keys.lease(index), id.clone()),
            ops::put(
                self.keys.heartbeat(node.id),
                node.last_heartbeat_ms.to_string(),
            ),
        ];
        if let Some(mac) = node.vtep_mac {
            success.push(ops::put(self.keys.mac(mac), id));
        }
        success
    }

    /// Notes a node just created with lease `index` (`searched`: the lowest free one was
    /// looked for, not wished) and answers its registration.
    fn created(
        &mut self,
        answer: &TxnResponse,
        node: Node,
        index: u64,
        searched: bool,
    ) -> Registration {
        self.known.note(Seen::Lease(index), true);
        self.known.note(Seen::Host(node.host_ip, node.id), true);
        if let Some(mac) = node.vtep_mac {
            self.known.note(Seen::Mac(mac, node.id), true);
        }
        if searched {
            // Everything below the lowest free one was taken; so is it now.
            let _ = self.hint.free_from.compare_exchange(
                index,
                index + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let change = self.change(answer, ChangeKind::Added, node.clone());
        Registration {
            node,
            created: true,
            change: Some(change),
        }
    }

    /// A subnet index that looks free to this replica, marked as being leased by this
    /// handle: the lowest from the hint, or one drawn among the [`KNOWN_SPREAD`] lowest
    /// while other registrations of this store are under way.
    fn pick_known_free(&mut self) -> Result<Leasing, StoreError> {
        let hinted = self.hint.free_from.load(Ordering::Relaxed).max(1);
        let mut leasing = lock(&self.leasing);
        let spread = if leasing.is_empty() { 1 } else { KNOWN_SPREAD };
        let (mut free, mut lowest) = self.known.free(&self.plan, hinted, spread, &leasing);
        if free.is_empty() && hinted > 1 {
            (free, lowest) = self.known.free(&self.plan, 1, spread, &leasing);
        }
        if free.is_empty() {
            return Err(exhausted(&self.plan));
        }
        let chosen = free[(self.draws.hash_one(Instant::now()) % free.len() as u64) as usize];
        leasing.insert(chosen);
        drop(leasing);
        if let Some(lowest) = lowest {
            let _ = self.hint.free_from.compare_exchange(
                hinted,
                lowest,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Ok(Leasing {
            index: chosen,
            set: self.leasing.clone(),
        })
    }

    /// Writes `node` (read at `mod_revision`) with its new status or condition.
    fn write_node(
        &mut self,
        node: &Node,
        mod_revision: i64,
        extra: Vec<quilt_etcd::pb::Compare>,
        mut also: Vec<RequestOp>,
    ) -> Result<Option<TxnResponse>, StoreError> {
        let mut compare = vec![unchanged_since(self.keys.node(node.id), mod_revision)];
        compare.extend(extra);
        also.push(ops::put(self.keys.node(node.id), encode_node(node)));
        let answer = self.txn(TxnRequest {
            compare,
            success: also,
            failure: vec![],
        })?;
        Ok(answer.succeeded.then_some(answer))
    }

    /// Every node with its heartbeat filled in, each with its key's revision and its
    /// heartbeat key's (0: none), at one revision.
    fn read_all(&mut self) -> Result<(Vec<(Read, i64)>, i64), StoreError> {
        let answer = self.read(vec![
            ops::with_prefix(self.keys.nodes()),
            ops::with_prefix(self.keys.heartbeats()),
        ])?;
        let heartbeats: HashMap<Vec<u8>, (u64, i64)> = read_answer(&answer, 1)
            .map(|r| r.kvs.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|kv| Ok((kv.key.clone(), (decode_number(kv)?, kv.mod_revision))))
            .collect::<Result<_, StoreError>>()?;
        let mut nodes = Vec::new();
        for kv in read_answer(&answer, 0)
            .map(|r| r.kvs.as_slice())
            .unwrap_or_default()
        {
            let mut node = decode_node(kv)?;
            let heartbeat = heartbeats.get(self.keys.heartbeat(node.id).as_bytes());
            let heartbeat_revision = heartbeat.map_or(0, |(_, rev)| *rev);
            if let Some((ms, _)) = heartbeat {
                node.last_heartbeat_ms = node.last_heartbeat_ms.max(*ms);
            }
            nodes.push((
                Read {
                    node,
                    mod_revision: kv.mod_revision,
                },
                heartbeat_revision,
            ));
        }
        Ok((nodes, header_revision(answer.header.as_ref())))
    }
}

/// Every lease, host and MAC key under `keys`, read at one revision.
async fn load_known(client: &EtcdClient, keys: &Keys) -> Result<Known, StoreError> {
    let answer = client
        .txn(TxnRequest {
            success: vec![
                ops::read(RangeRequest {
                    keys_only: true,
                    ..ops::with_prefix(keys.leases())
                }),
                ops::read(ops::with_prefix(keys.hosts())),
                ops::read(ops::with_prefix(keys.macs())),
            ],
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable_or_backend(&e))?;
    let kvs = |i| {
        read_answer(&answer, i)
            .map(|r| r.kvs.as_slice())
            .unwrap_or_default()
    };
    let leases = kvs(0).iter().filter_map(|kv| keys.lease_index(&kv.key));
    let mut hosts = Vec::new();
    for kv in kvs(1) {
        if let keys::KeyKind::Host(ip) = keys.kind(&kv.key) {
            hosts.push((ip, NodeId::new(decode_number(kv)?)));
        }
    }
    let mut macs = Vec::new();
    for kv in kvs(2) {
        if let keys::KeyKind::Mac(mac) = keys.kind(&kv.key) {
            macs.push((mac, NodeId::new(decode_number(kv)?)));
        }
    }
    Ok(Known::loaded(
        leases,
        hosts,
        macs,
        header_revision(answer.header.as_ref()),
    ))
}

/// An etcd error as a store error: unavailable (503, try again) or anything else.
fn unavailable_or_backend(e: &EtcdError) -> StoreError {
    match e {
        EtcdError::Unavailable(_) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn conflicting(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "{what} kept losing races with other replicas' writes ({MAX_ATTEMPTS} attempts); try again"
    ))
}

impl Store for EtcdStore {
    fn revision(&mut self) -> Result<Revision, StoreError> {
        let answer = self.read(vec![RangeRequest {
            count_only: true,
            ..ops::get(self.keys.plan())
        }])?;
        Ok(self.api_revision(header_revision(answer.header.as_ref())))
    }

    fn register(
        &mut self,
        new: &NewNode,
        token_hash: TokenHash,
        now_ms: u64,
    ) -> Result<Registration, StoreError> {
        // A host this replica does not know, with no wish: one transaction, no read first.
        if new.wanted_subnet.is_none()
            && self.known.host(new.host_ip).is_none()
            && let Some(registration) = self.create_unread(new, &token_hash, now_ms)?
        {
            return Ok(registration);
        }
        for attempt in 0..MAX_ATTEMPTS {
            // One round trip: the host's key, and the leases from the hint in case it is
            // new; as a hint the first time (the write's compares decide), in full after.
            let from = self.hint.free_from.load(Ordering::Relaxed).max(1);
            let reads = vec![ops::get(self.keys.host(new.host_ip)), self.lease_page(from)];
            let answer = if attempt == 0 {
                self.read_hint(reads)?
            } else {
                self.read(reads)?
            };
            let done = match first_kv(&answer, 0) {
                Some(kv) => {
                    let id = NodeId::new(decode_number(kv)?);
                    self.renew(id, new, &token_hash, now_ms)?
                }
                None => {
                    let page = read_answer(&answer, 1).cloned().unwrap_or_default();
                    self.create(new, &token_hash, now_ms, (from, page), attempt > 0)?
                }
            };
            if let Some(registration) = done {
                return Ok(registration);
            }
        }
        Err(conflicting(&format!("registering host {}", new.host_ip)))
    }

    fn heartbeat(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Option<Change>, StoreError> {
        // The read that authorized this heartbeat, if it was of this node: any change
        // since fails the compare below and the node is read again.
        let mut cached = self.last_read.take().filter(|read| read.node.id == id);
        for _ in 0..MAX_ATTEMPTS {
            let read = match cached.take() {
                Some(read) => Some(read),
                None => self.read_node(id)?,
            };
            let Some(Read { node, mod_revision }) = read else {
                return Err(StoreError::NotFound(id));
            };
            let beat = ops::put(self.keys.heartbeat(id), now_ms.to_string());
            if node.status == NodeStatus::Up && node.condition.as_ref() == condition {
                let answer = self.txn(TxnRequest {
                    compare: vec![unchanged_since(self.keys.node(id), mod_revision)],
                    success: vec![beat],
                    failure: vec![],
                })?;
                if answer.succeeded {
                    return Ok(None);
                }
                continue; // changed, marked down or deleted since the read
            }
            let updated = Node {
                status: NodeStatus::Up,
                condition: condition.cloned(),
                last_heartbeat_ms: now_ms,
                ..node
            };
            if let Some(answer) = self.write_node(&updated, mod_revision, vec![], vec![beat])? {
                return Ok(Some(self.change(&answer, ChangeKind::Updated, updated)));
            }
        }
        Err(conflicting(&format!("the heartbeat of node {id}")))
    }

    fn get(&mut self, id: NodeId) -> Result<Option<Node>, StoreError> {
        let read = self.read_node(id)?;
        self.last_read = read.clone();
        Ok(read.map(|read| read.node))
    }

    fn mac_holder(&mut self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        // The registry's check before a registration: best effort already (see the
        // module docs), so what this replica knows is enough to pass a MAC nobody holds.
        let Some(id) = self.known.mac(mac) else {
            return Ok(None);
        };
        Ok(self.get(id)?.filter(|node| node.vtep_mac == Some(mac)))
    }

    fn list(&mut self) -> Result<(Vec<Node>, Revision), StoreError> {
        let (nodes, revision) = self.read_all()?;
        Ok((
            nodes.into_iter().map(|(read, _)| read.node).collect(),
            self.api_revision(revision),
        ))
    }

    fn delete(&mut self, id: NodeId) -> Result<Change, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(Read { node, mod_revision }) = self.read_node(id)? else {
                return Err(StoreError::NotFound(id));
            };
            let index = self.plan.index_of(node.subnet);
            let mut success = vec![
                ops::delete(self.keys.node(id)),
                ops::delete(self.keys.host(node.host_ip)),
                ops::delete(self.keys.heartbeat(id)),
            ];
            if let Some(index) = index {
                success.push(ops::delete(self.keys.lease(index)));
            }
            if let Some(mac) = node.vtep_mac {
                success.push(ops::delete(self.keys.mac(mac)));
            }
            let answer = self.txn(TxnRequest {
                compare: vec![unchanged_since(self.keys.node(id), mod_revision)],
                success,
                failure: vec![],
            })?;
            if answer.succeeded {
                if let Some(index) = index {
                    self.hint.freed(index);
                    self.known.note(Seen::Lease(index), false);
                }
                self.known.note(Seen::Host(node.host_ip, id), false);
                if let Some(mac) = node.vtep_mac {
                    self.known.note(Seen::Mac(mac, id), false);
                }
                return Ok(self.change(&answer, ChangeKind::Deleted, node));
            }
        }
        Err(conflicting(&format!("deleting node {id}")))
    }

    fn mark_down(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError> {
        let candidates: Vec<(Read, i64)> = match which {
            MarkDown::SilentSince(_) => self.read_all()?.0,
            MarkDown::Node(id) => {
                let answer = self.read(vec![
                    ops::get(self.keys.node(id)),
                    ops::get(self.keys.heartbeat(id)),
                ])?;
                match first_kv(&answer, 0) {
                    None => Vec::new(),
                    Some(kv) => vec![(
                        Read {
                            node: decode_node(kv)?,
                            mod_revision: kv.mod_revision,
                        },
                        first_kv(&answer, 1).map_or(0, |hb| hb.mod_revision),
                    )],
                }
            }
        };
        let mut changes = Vec::new();
        for (Read { node, mod_revision }, heartbeat_revision) in candidates {
            if node.status != NodeStatus::Up || !which.selects(&node) {
                continue;
            }
            let down = Node {
                status: NodeStatus::Down,
                ..node
            };
            // A heartbeat since the read, or another replica marking it first, wins.
            let heartbeat_unchanged = vec![unchanged_since(
                self.keys.heartbeat(down.id),
                heartbeat_revision,
            )];
            let compare = match which {
                MarkDown::SilentSince(_) => heartbeat_unchanged,
                MarkDown::Node(_) => vec![],
            };
            if let Some(answer) = self.write_node(&down, mod_revision, compare, vec![])? {
                changes.push(self.change(&answer, ChangeKind::Updated, down));
            }
        }
        Ok(changes)
    }

    fn count_by_status(&mut self) -> Result<(u64, u64), StoreError> {
        let answer = self.read(vec![ops::with_prefix(self.keys.nodes())])?;
        let mut up_down = (0, 0);
        for kv in read_answer(&answer, 0)
            .map(|r| r.kvs.as_slice())
            .unwrap_or_default()
        {
            match decode_node(kv)?.status {
                NodeStatus::Up => up_down.0 += 1,
                NodeStatus::Down => up_down.1 += 1,
            }
        }
        Ok(up_down)
    }

    fn write_health(&self) -> WriteHealth {
        self.health.clone()
    }

    fn more_handles(&mut self, wanted: usize) -> Vec<Box<dyn Store>> {
        (0..wanted)
            .map(|_| {
                Box::new(EtcdStore {
                    client: self.client.clone(),
                    runtime: self.runtime.clone(),
                    keys: self.keys.clone(),
                    plan: self.plan,
                    base: self.base,
                    hint: self.hint.clone(),
                    known: self.known.clone(),
                    ids: self.ids.clone(),
                    leasing: self.leasing.clone(),
                    draws: RandomState::new(),
                    health: self.health.clone(),
                    unavailable_since: None,
                    last_read: None,
                }) as Box<dyn Store>
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;
    use quilt_testkit::etcd::{EtcdCluster, etcd_or_skip};

    /// A runtime for the stores' calls; the test thread itself blocks on it, as the
    /// registry thread does.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn open(
        rt: &tokio::runtime::Runtime,
        cluster: &EtcdCluster,
        prefix: &str,
        plan: ClusterNetwork,
    ) -> EtcdStore {
        rt.block_on(async {
            let client = EtcdClient::new(&cluster.endpoints(), Default::default()).unwrap();
            EtcdStore::open(client, prefix, plan).await.unwrap().0
        })
    }

    #[test]
    fn behaves_like_a_store() {
        if !etcd_or_skip("etcd store contract") {
            return;
        }
        let rt = runtime();
        let cluster = rt.block_on(EtcdCluster::start(1));
        let mut n = 0;
        contract::run_all(|plan| {
            n += 1;
            Box::new(open(&rt, &cluster, &format!("/contract-{n}"), plan))
        });
    }

    #[test]
    fn replicas_racing_never_share_a_subnet_or_a_host() {
        if !etcd_or_skip("etcd store race") {
            return;
        }
        let rt = runtime();
        let cluster = rt.block_on(EtcdCluster::start(1));
        let plan = contract::plan("10.50.0.0/16", 24);
        let stores: Vec<EtcdStore> = (0..3).map(|_| open(&rt, &cluster, "/race", plan)).collect();
        let token = || crate::model::NodeToken::generate().unwrap().hash();
        let results: Vec<Vec<Node>> = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .into_iter()
                .enumerate()
                .map(|(r, mut store)| {
                    scope.spawn(move || {
                        // Every replica registers the same 60 hosts, and 20 of its own.
                        let mut got = Vec::new();
                        for i in 0..60u32 {
                            let ip = format!("10.1.0.{}", i + 1);
                            got.push(
                                store
                                    .register(&contract::new_node("h", &ip), token(), 1)
                                    .unwrap()
                                    .node,
                            );
                        }
                        for i in 0..20u32 {
                            let ip = format!("10.2.{r}.{}", i + 1);
                            got.push(
                                store
                                    .register(&contract::new_node("h", &ip), token(), 1)
                                    .unwrap()
                                    .node,
                            );
                        }
                        got
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut check = open(&rt, &cluster, "/race", plan);
        let (nodes, _) = check.list().unwrap();
        assert_eq!(nodes.len(), 60 + 3 * 20, "one node per host IP");
        let subnets: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.subnet).collect();
        assert_eq!(subnets.len(), nodes.len(), "no subnet leased twice");
        let ids: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids.len(), nodes.len(), "no id handed out twice");
        for got in &results {
            for node in got {
                let stored = nodes.iter().find(|n| n.host_ip == node.host_ip).unwrap();
                assert_eq!(
                    (stored.id, stored.subnet),
                    (node.id, node.subnet),
                    "every replica answered the same node for {}",
                    node.host_ip
                );
            }
        }
    }

    #[test]
    fn a_silent_node_is_marked_down_by_exactly_one_replica() {
        if !etcd_or_skip("etcd mark down once") {
            return;
        }
        let rt = runtime();
        let cluster = rt.block_on(EtcdCluster::start(1));
        let plan = contract::plan("10.42.0.0/16", 24);
        let mut stores: Vec<EtcdStore> =
            (0..3).map(|_| open(&rt, &cluster, "/once", plan)).collect();
        let token = || crate::model::NodeToken::generate().unwrap().hash();
        for i in 0..10u32 {
            let ip = format!("10.1.0.{}", i + 1);
            stores[0]
                .register(&contract::new_node("h", &ip), token(), 1000)
                .unwrap();
        }
        let changes: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .iter_mut()
                .map(|store| {
                    scope.spawn(move || store.mark_down(MarkDown::SilentSince(5000)).unwrap().len())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(changes, 10, "each silent node marked down once in all");
        assert_eq!(stores[1].count_by_status().unwrap(), (0, 10));
    }

    #[test]
    fn a_different_plan_is_refused() {
        if !etcd_or_skip("etcd plan") {
            return;
        }
        let rt = runtime();
        let cluster = rt.block_on(EtcdCluster::start(1));
        open(&rt, &cluster, "/plan", contract::plan("10.42.0.0/16", 24));
        let err = rt.block_on(async {
            let client = EtcdClient::new(&cluster.endpoints(), Default::default()).unwrap();
            EtcdStore::open(client, "/plan", contract::plan("10.43.0.0/16", 24))
                .await
                .err()
                .unwrap()
        });
        assert!(matches!(err, StoreError::PlanMismatch { .. }), "{err}");
        assert!(err.to_string().contains("10.43.0.0/16"), "{err}");
    }
}
