//! `quilt-mesh-control migrate --from sqlite:PATH --to etcd:URLS`: moves a cluster from
//! one machine to etcd without any node noticing more than a pause.
//!
//! Every node is copied with its id, subnet lease, token hash, VTEP MAC, status and last
//! heartbeat; node ids go on after the highest one SQLite handed out; and the revision
//! base is set so that etcd's next revision is the API revision after SQLite's last one, so
//! agents resume their watch where they were. The target prefix must hold no nodes: a
//! migration never merges two clusters. The SQLite control plane must be stopped first (the
//! database is read as it is on disk); start the etcd replicas after.

use std::path::Path;

use anyhow::{Context, bail};
use quilt_etcd::EtcdClient;
use quilt_etcd::ops::{self, absent};
use quilt_etcd::pb::TxnRequest;

use crate::config::{MigrateArgs, check_etcd_prefix};
use crate::model::Node;
use crate::store::etcd::keys::Keys;
use crate::store::stored::StoredNode;
use crate::store::{EtcdStore, SqliteStore, Store};

/// Nodes written per transaction (each is up to five keys; etcd allows 128 per transaction).
const NODES_PER_TXN: usize = 20;

/// What a migration copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub nodes: usize,
    /// The API revision the etcd cluster carries on from.
    pub revision: u64,
    pub next_node_id: u64,
}

/// Runs `migrate` as the command line asked.
pub async fn run(args: &MigrateArgs) -> anyhow::Result<Migrated> {
    let plan = args.plan()?;
    check_etcd_prefix(&args.etcd_prefix)?;
    let (nodes, revision, next_node_id) = read_sqlite(&args.from, plan).await?;
    let client = EtcdClient::new(&args.to.0, Default::default())?;
    let keys = Keys::new(&args.etcd_prefix);
    ensure_empty(&client, &keys).await?;
    // Opening records the plan (or refuses a different one).
    EtcdStore::open(client.clone(), &args.etcd_prefix, plan)
        .await
        .with_context(|| format!("cannot use etcd prefix {}", args.etcd_prefix))?;
    for batch in nodes.chunks(NODES_PER_TXN) {
        write_nodes(&client, &keys, plan, batch).await?;
    }
    // The revision base goes last: the write of it is the revision SQLite ended at.
    let answer = client
        .txn(TxnRequest {
            compare: vec![absent(keys.next_node_id())],
            success: vec![
                ops::put(keys.next_node_id(), next_node_id.to_string()),
                ops::read(ops::get(keys.plan())),
            ],
            failure: vec![],
        })
        .await?;
    if !answer.succeeded {
        bail!(
            "another writer used etcd prefix {} during the migration; it is not a copy of the database any more, so empty the prefix and migrate again",
            args.etcd_prefix
        );
    }
    let last = answer.header.map_or(0, |h| h.revision);
    let base = i64::try_from(revision).context("revision too large")? - (last + 1);
    client
        .txn(TxnRequest {
            success: vec![ops::put(keys.revision_base(), base.to_string())],
            ..Default::default()
        })
        .await?;
    Ok(Migrated {
        nodes: nodes.len(),
        revision,
        next_node_id,
    })
}

/// Every node, the revision and the next node id of the database at `path`.
async fn read_sqlite(
    path: &Path,
    plan: quilt_common::ClusterNetwork,
) -> anyhow::Result<(Vec<Node>, u64, u64)> {
    if !path.exists() {
        bail!("database {} does not exist", path.display());
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut store = SqliteStore::open(&path, plan)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let (nodes, revision) = store.list()?;
        let next = store.next_node_id()?;
        anyhow::Ok((nodes, revision, next))
    })
    .await
    .context("reading the database panicked")?
}

/// Refuses a prefix that already holds nodes or ids.
async fn ensure_empty(client: &EtcdClient, keys: &Keys) -> anyhow::Result<()> {
    let answer = client
        .range(quilt_etcd::pb::RangeRequest {
            count_only: true,
            ..ops::with_prefix(keys.nodes())
        })
        .await?;
    let ids = client.range(ops::get(keys.next_node_id())).await?;
    if answer.count > 0 || !ids.kvs.is_empty() {
        bail!(
            "etcd prefix {} already holds a cluster ({} nodes); migrate into an empty prefix (or name another with --etcd-prefix)",
            keys.prefix(),
            answer.count
        );
    }
    Ok(())
}

async fn write_nodes(
    client: &EtcdClient,
    keys: &Keys,
    plan: quilt_common::ClusterNetwork,
    nodes: &[Node],
) -> anyhow::Result<()> {
    let mut compare = Vec::new();
    let mut success = Vec::new();
    for node in nodes {
        let id = node.id.number().to_string();
        let index = plan.index_of(node.subnet).with_context(|| {
            format!(
                "node {} holds subnet {}, outside the plan",
                node.id, node.subnet
            )
        })?;
        compare.push(absent(keys.node(node.id)));
        compare.push(absent(keys.lease(index)));
        success.push(ops::put(
            keys.node(node.id),
            serde_json::to_vec(&StoredNode::of(node))?,
        ));
        success.push(ops::put(keys.host(node.host_ip), id.clone()));
        success.push(ops::put(keys.lease(index), id.clone()));
        success.push(ops::put(
            keys.heartbeat(node.id),
            node.last_heartbeat_ms.to_string(),
        ));
        if let Some(mac) = node.vtep_mac {
            success.push(ops::put(keys.mac(mac), id));
        }
    }
    let answer = client
        .txn(TxnRequest {
            compare,
            success,
            failure: vec![],
        })
        .await?;
    if !answer.succeeded {
        bail!(
            "etcd prefix {} got nodes from another writer during the migration; empty it and migrate again",
            keys.prefix()
        );
    }
    Ok(())
}
