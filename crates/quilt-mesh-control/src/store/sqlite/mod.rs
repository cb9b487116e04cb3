//! The durable [`Store`]: one SQLite file in WAL mode.
//!
//! - Schema changes are numbered migrations, each applied once in a transaction and
//!   recorded in `schema_migrations`.
//! - `nodes.subnet`, `nodes.subnet_index` and `nodes.host_ip` are UNIQUE, so the
//!   database itself refuses to hand a subnet out twice.
//! - Every write is one `BEGIN IMMEDIATE` transaction that also advances the revision
//!   counter kept in `meta`, so revisions keep growing across restarts.
//! - `synchronous=NORMAL`: in WAL mode a commit is in the OS once `COMMIT` returns, so
//!   a killed process (kill -9, a panic) loses nothing it acknowledged; only a power
//!   loss or kernel crash can lose the last commits, never corrupt the file.
//! - The file is created readable by its owner only. Node tokens are never in it, only
//!   their SHA-256 (`token_sha256`; migration 4 hashed the tokens older versions kept).
//! - Heartbeat times of up nodes are soft state: they are kept in memory and written in
//!   one transaction at most [`HEARTBEAT_FLUSH`] apart (and before any other write, and
//!   when the store closes). A kill -9 can lose up to that much heartbeat time, which
//!   the monitor's start-up grace period covers; status changes are written at once.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use quilt_common::ClusterNetwork;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

mod row;
mod schema;

use super::stored::StoredNode;
use super::{
    Change, ChangeKind, MarkDown, Registration, Revision, Store, StoreError, WriteHealth, exhausted,
};
use crate::model::{Condition, MacAddr, NewNode, Node, NodeId, NodeStatus, TokenHash};
use row::{COLUMNS, get_where, raw};
use schema::{check_is_sqlite, check_plan, has_table, migrate, read_revision};

/// The lowest free lease index at or above `from` (every index below `from` is leased):
/// a walk of the `subnet_index` UNIQUE index from there to the first gap. With `from`
/// kept just past the last lease given, a registration reads one row, however many nodes
/// there are (a query for the lowest gap of the whole table read them all).
fn lowest_free_from(tx: &Transaction<'_>, from: u64) -> Result<u64, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT subnet_index FROM nodes WHERE subnet_index >= ?1 ORDER BY subnet_index",
    )?;
    let mut rows = stmt.query([from])?;
    let mut candidate = from.max(1);
    while let Some(row) = rows.next()? {
        let used: u64 = row.get(0)?;
        if used > candidate {
            break;
        }
        if used == candidate {
            candidate += 1;
        }
    }
    Ok(candidate)
}

/// Longest time a heartbeat stays only in memory.
pub const HEARTBEAT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

pub struct SqliteStore {
    conn: Connection,
    plan: ClusterNetwork,
    revision: Revision,
    /// Heartbeat times (unix ms) of up nodes not yet written.
    pending: HashMap<NodeId, u64>,
    /// Statuses decided while writes failed, already published, not yet written.
    unwritten: HashMap<NodeId, NodeStatus>,
    health: WriteHealth,
    last_flush: std::time::Instant,
    /// The recorded condition of every node that has one, so a heartbeat that repeats it
    /// stays in memory.
    conditions: HashMap<NodeId, Condition>,
    /// Every lease index below this is taken: where the search for a free one starts.
    free_from: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("plan", &self.plan)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and
    /// checks that it was made for the same cluster plan.
    ///
    /// A new database is made only where no file exists: an existing file that is not a
    /// Quilt Mesh database (empty, not SQLite, another program's SQLite) is refused, so a
    /// damaged or truncated file never silently starts a new cluster.
    pub fn open(path: &Path, plan: ClusterNetwork) -> Result<Self, StoreError> {
        let existed = path.exists();
        if existed {
            check_is_sqlite(path)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                StoreError::Backend(format!("cannot open database file {}: {e}", path.display()))
            })?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.set_prepared_statement_cache_capacity(32);
        if existed && !has_table(&conn, "schema_migrations")? {
            return Err(StoreError::NotOurs {
                path: path.to_path_buf(),
                why: "it is an SQLite database without Quilt Mesh's tables".into(),
            });
        }
        migrate(&mut conn)?;
        check_plan(&mut conn, plan)?;
        let revision = read_revision(&conn)?;
        let conditions = read_conditions(&conn)?;
        Ok(Self {
            conn,
            plan,
            revision,
            pending: HashMap::new(),
            unwritten: HashMap::new(),
            health: WriteHealth::default(),
            last_flush: std::time::Instant::now(),
            conditions,
            free_from: 1,
        })
    }

    /// The id the next new node would get: ids are never reused, so past every id
    /// ever handed out (deleted nodes' too).
    pub fn next_node_id(&mut self) -> Result<u64, StoreError> {
        let handed_out: Option<u64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'nodes'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let highest: Option<u64> = self
            .conn
            .query_row("SELECT MAX(id) FROM nodes", [], |r| r.get(0))?;
        Ok(handed_out.max(highest).unwrap_or(0) + 1)
    }

    /// Writes what is held in memory (heartbeat times, and statuses decided while writes
    /// failed, with the revision they took) in one transaction; a failure is recorded in
    /// the store's [`WriteHealth`].
    pub fn flush_heartbeats(&mut self) -> Result<(), StoreError> {
        self.last_flush = std::time::Instant::now();
        if self.pending.is_empty() && self.unwritten.is_empty() {
            return Ok(());
        }
        match self.write_soft_state() {
            Ok(()) => {
                self.pending.clear();
                self.unwritten.clear();
                self.health.worked();
                Ok(())
            }
            Err(e) => {
                self.health.failed(&e);
                Err(e)
            }
        }
    }

    fn write_soft_state(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE nodes SET last_heartbeat_ms = MAX(last_heartbeat_ms, ?1) WHERE id = ?2",
            )?;
            for (id, ms) in &self.pending {
                stmt.execute(params![ms, id.number()])?;
            }
            let mut stmt = tx.prepare_cached("UPDATE nodes SET status = ?1 WHERE id = ?2")?;
            for (id, status) in &self.unwritten {
                stmt.execute(params![status.as_str(), id.number()])?;
            }
        }
        if !self.unwritten.is_empty() {
            advance_revision(&tx, self.revision, 0)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks down, in memory only, the up nodes `which` selects: what the monitor (or a
    /// node leaving) decides while writes fail. The changes take revisions as written
    /// ones do and are written with them once writes work again.
    fn mark_down_unwritten(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError> {
        let (nodes, _) = self.list()?;
        let mut changes = Vec::new();
        for mut node in nodes {
            if node.status != NodeStatus::Up || !which.selects(&node) {
                continue;
            }
            node.status = NodeStatus::Down;
            self.unwritten.insert(node.id, NodeStatus::Down);
            self.revision += 1;
            changes.push(Change {
                revision: self.revision,
                kind: ChangeKind::Updated,
                node,
            });
        }
        Ok(changes)
    }

    /// Shows heartbeat times and statuses not yet written.
    fn overlay(&self, mut node: Node) -> Node {
        if let Some(ms) = self.pending.get(&node.id) {
            node.last_heartbeat_ms = node.last_heartbeat_ms.max(*ms);
        }
        if let Some(status) = self.unwritten.get(&node.id) {
            node.status = *status;
        }
        node
    }

    fn begin(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

/// Writes the revision reached after `count` more changes; the caller commits.
fn advance_revision(
    tx: &Transaction<'_>,
    current: Revision,
    count: u64,
) -> Result<Revision, StoreError> {
    let next = current + count;
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'revision'")?
        .execute([next.to_string()])?;
    Ok(next)
}

/// Every recorded condition, by node.
fn read_conditions(conn: &Connection) -> Result<HashMap<NodeId, Condition>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, condition FROM nodes WHERE condition IS NOT NULL")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, stored)| Some((NodeId::new(id), Condition::from_stored(&stored)?)))
        .collect())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush_heartbeats() {
            tracing::error!(error = %e, "cannot write the last heartbeat times");
        }
    }
}

impl Store for SqliteStore {
    fn revision(&mut self) -> Result<Revision, StoreError> {
        Ok(self.revision)
    }

    fn register(
        &mut self,
        new: &NewNode,
        token_hash: TokenHash,
        now_ms: u64,
    ) -> Result<Registration, StoreError> {
        self.flush_heartbeats()?;
        let plan = self.plan;
        let current = self.revision;
        let mut free_from = self.free_from;
        let tx = self.begin()?;
        let host_ip = new.host_ip.to_string();
        let vtep_mac = new.vtep_mac.map(|m| m.to_string());
        let wanted = match new.wanted_subnet.and_then(|s| plan.index_of(s)) {
            Some(index) if index >= 1 => {
                let taken = tx
                    .prepare_cached("SELECT 1 FROM nodes WHERE subnet_index = ?1")?
                    .query_row([index], |_| Ok(()))
                    .optional()?
                    .is_some();
                (!taken).then_some(index)
            }
            _ => None,
        };
        let (node, created, kind) = if let Some(old) = get_where(&tx, "host_ip = ?1", &host_ip)? {
            let mut node = old.renewed(new, token_hash, now_ms);
            let mut index = plan.index_of(old.subnet);
            if let Some(wanted) = wanted
                && let Some(subnet) = plan.subnet_at(wanted)
            {
                node.subnet = subnet;
                // The old lease is let go: the search for a free one starts there now.
                if let Some(old_index) = index {
                    free_from = free_from.min(old_index);
                }
                index = Some(wanted);
            }
            let index = index.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "node {} has subnet {} outside the plan",
                    old.id, old.subnet
                ))
            })?;
            tx.prepare_cached(
                "UPDATE nodes SET hostname = ?1, cpu_cores = ?2, ram_mb = ?3, vtep_mac = ?4,
                 status = 'up', last_heartbeat_ms = ?5, token_sha256 = ?7, subnet = ?8, subnet_index = ?9,
                 vxlan_port = ?10, vni = ?11
                 WHERE id = ?6",
            )?
            .execute(params![
                node.hostname.as_str(),
                node.cpu_cores,
                node.ram_mb,
                node.vtep_mac.map(|m| m.to_string()),
                now_ms,
                node.id.number(),
                node.token_hash.as_str(),
                node.subnet.to_string(),
                index,
                node.vxlan.port,
                node.vxlan.vni
            ])?;
            let kind = old
                .differs_for_watchers(&node)
                .then_some(ChangeKind::Updated);
            (node, false, kind)
        } else {
            let index: u64 = match wanted {
                Some(index) => index,
                None => {
                    let index = lowest_free_from(&tx, free_from)?;
                    free_from = index + 1;
                    index
                }
            };
            let subnet = plan.subnet_at(index).ok_or_else(|| exhausted(&plan))?;
            tx.prepare_cached(
                "INSERT INTO nodes (hostname, host_ip, subnet, subnet_index, cpu_cores, ram_mb, vtep_mac, status,
                 registered_at, last_heartbeat_ms, token_sha256, vxlan_port, vni)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'up', ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                new.hostname.as_str(),
                host_ip,
                subnet.to_string(),
                index,
                new.cpu_cores,
                new.ram_mb,
                vtep_mac,
                now_ms / 1000,
                now_ms,
                token_hash.as_str(),
                new.vxlan.port,
                new.vxlan.vni
            ])?;
            let id = NodeId::new(
                u64::try_from(tx.last_insert_rowid())
                    .map_err(|_| StoreError::Corrupt("negative node id".into()))?,
            );
            let node = new.leased(id, subnet, token_hash, now_ms);
            (node, true, Some(ChangeKind::Added))
        };
        let revision = match kind {
            Some(_) => advance_revision(&tx, current, 1)?,
            None => current,
        };
        tx.commit()?;
        self.revision = revision;
        self.free_from = free_from;
        Ok(Registration {
            change: kind.map(|kind| Change {
                revision,
                kind,
                node: node.clone(),
            }),
            node,
            created,
        })
    }

    fn heartbeat(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Option<Change>, StoreError> {
        if self.unwritten.get(&id) == Some(&NodeStatus::Down)
            || self.conditions.get(&id) != condition
        {
            return self.bring_up(id, now_ms, condition).map(Some);
        }
        // The common case, an up node, only touches memory.
        if let Some(ms) = self.pending.get_mut(&id) {
            *ms = (*ms).max(now_ms);
        } else {
            let status: Option<String> = self
                .conn
                .prepare_cached("SELECT status FROM nodes WHERE id = ?1")?
                .query_row([id.number()], |r| r.get(0))
                .optional()?;
            match status.as_deref() {
                None => return Err(StoreError::NotFound(id)),
                Some("up") => {
                    self.pending.insert(id, now_ms);
                }
                Some(_) => return self.bring_up(id, now_ms, condition).map(Some),
            }
        }
        if self.last_flush.elapsed() >= HEARTBEAT_FLUSH {
            // A failure is recorded and retried; the heartbeat itself is taken.
            let _ = self.flush_heartbeats();
        }
        Ok(None)
    }

    fn mac_holder(&mut self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        Ok(get_where(&self.conn, "vtep_mac = ?1", &mac.to_string())?.map(|n| self.overlay(n)))
    }

    fn get(&mut self, id: NodeId) -> Result<Option<Node>, StoreError> {
        Ok(get_where(&self.conn, "id = ?1", &id.number())?.map(|n| self.overlay(n)))
    }

    fn list(&mut self) -> Result<(Vec<Node>, Revision), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"))?;
        let raws = stmt.query_map([], raw)?.collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        let nodes = raws
            .into_iter()
            .map(|r| r.check().map(|n| self.overlay(n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((nodes, self.revision))
    }

    fn delete(&mut self, id: NodeId) -> Result<Change, StoreError> {
        self.flush_heartbeats()?;
        let current = self.revision;
        let tx = self.begin()?;
        let node = get_where(&tx, "id = ?1", &id.number())?.ok_or(StoreError::NotFound(id))?;
        tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?
            .execute([id.number()])?;
        let revision = advance_revision(&tx, current, 1)?;
        tx.commit()?;
        self.revision = revision;
        self.conditions.remove(&id);
        if let Some(freed) = self.plan.index_of(node.subnet) {
            self.free_from = self.free_from.min(freed);
        }
        Ok(Change {
            revision,
            kind: ChangeKind::Deleted,
            node,
        })
    }

    fn mark_down(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError> {
        // Liveness is decided even when nothing can be written.
        if self.flush_heartbeats().is_err() {
            return self.mark_down_unwritten(which);
        }
        match self.mark_down_written(which) {
            Ok(changes) => Ok(changes),
            Err(e) => {
                self.health.failed(&e);
                self.mark_down_unwritten(which)
            }
        }
    }

    fn count_by_status(&mut self) -> Result<(u64, u64), StoreError> {
        if !self.unwritten.is_empty() {
            return Ok(super::count(&self.list()?.0));
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT COALESCE(SUM(status = 'up'), 0), COALESCE(SUM(status = 'down'), 0) FROM nodes",
        )?;
        Ok(stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // A failure is in the write health, logged there at a bounded rate.
        let _ = self.flush_heartbeats();
        Ok(())
    }

    fn write_health(&self) -> WriteHealth {
        self.health.clone()
    }
}

impl SqliteStore {
    fn mark_down_written(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError> {
        let (filter, value) = match which {
            MarkDown::SilentSince(cutoff_ms) => ("last_heartbeat_ms < ?1", cutoff_ms),
            MarkDown::Node(id) => ("id = ?1", id.number()),
        };
        let current = self.revision;
        let tx = self.begin()?;
        let stale = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM nodes WHERE status = 'up' AND {filter} ORDER BY id"
            ))?;
            let raws = stmt
                .query_map([value], raw)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(StoredNode::check)
                .collect::<Result<Vec<_>, _>>()?
        };
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut stmt = tx.prepare_cached("UPDATE nodes SET status = 'down' WHERE id = ?1")?;
            for node in &stale {
                stmt.execute([node.id.number()])?;
            }
        }
        let revision = advance_revision(&tx, current, stale.len() as u64)?;
        tx.commit()?;
        self.revision = revision;
        Ok((current + 1..)
            .zip(stale)
            .map(|(revision, mut node)| {
                node.status = NodeStatus::Down;
                Change {
                    revision,
                    kind: ChangeKind::Updated,
                    node,
                }
            })
            .collect())
    }
}

impl SqliteStore {
    /// Marks a node up with `condition` on its heartbeat: a change. Coming up is published
    /// even when it cannot be written yet; a condition is kept only once written (the next
    /// heartbeat tries again).
    fn bring_up(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Change, StoreError> {
        match self.bring_up_written(id, now_ms, condition) {
            Err(StoreError::NotFound(id)) => Err(StoreError::NotFound(id)),
            Err(e) => {
                self.health.failed(&e);
                let node = get_where(&self.conn, "id = ?1", &id.number())?
                    .ok_or(StoreError::NotFound(id))?;
                self.unwritten.insert(id, NodeStatus::Up);
                self.pending.insert(id, now_ms);
                self.revision += 1;
                Ok(Change {
                    revision: self.revision,
                    kind: ChangeKind::Updated,
                    node: self.overlay(node),
                })
            }
            Ok(change) => {
                self.unwritten.remove(&id);
                match condition {
                    Some(c) => self.conditions.insert(id, c.clone()),
                    None => self.conditions.remove(&id),
                };
                Ok(change)
            }
        }
    }

    fn bring_up_written(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Change, StoreError> {
        self.flush_heartbeats()?;
        let current = self.revision;
        let tx = self.begin()?;
        let changed = tx
            .prepare_cached(
                "UPDATE nodes SET last_heartbeat_ms = ?1, status = 'up', condition = ?3 WHERE id = ?2",
            )?
            .execute(params![now_ms, id.number(), condition.map(Condition::to_stored)])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id));
        }
        let node = get_where(&tx, "id = ?1", &id.number())?.ok_or(StoreError::NotFound(id))?;
        let revision = advance_revision(&tx, current, 1)?;
        tx.commit()?;
        self.revision = revision;
        Ok(Change {
            revision,
            kind: ChangeKind::Updated,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{self, new_node, plan};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "quilt-mesh-control-{tag}-{}-{}",
                std::process::id(),
                crate::model::now_ms()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn behaves_like_a_store() {
        let dir = TempDir::new("contract");
        let mut n = 0;
        contract::run_all(|plan| {
            n += 1;
            Box::new(SqliteStore::open(&dir.0.join(format!("{n}.db")), plan).unwrap())
        });
    }

    #[test]
    fn leases_and_revisions_survive_reopening() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("q.db");
        let p = plan("10.42.0.0/16", 24);
        let (a, rev) = {
            let mut s = SqliteStore::open(&path, p).unwrap();
            let a = s
                .register(
                    &new_node("a", "10.0.0.1"),
                    crate::model::NodeToken::generate().unwrap().hash(),
                    1000,
                )
                .unwrap();
            s.register(
                &new_node("b", "10.0.0.2"),
                crate::model::NodeToken::generate().unwrap().hash(),
                1000,
            )
            .unwrap();
            (a.node, s.revision().unwrap())
        };
        let mut s = SqliteStore::open(&path, p).unwrap();
        assert_eq!(s.revision().unwrap(), rev);
        assert_eq!(s.get(a.id).unwrap().unwrap(), a);
        let a = s.get(a.id).unwrap().unwrap();
        assert!(s.heartbeat(a.id, 7000, None).unwrap().is_none());
        let held = crate::model::parse_condition("SubnetInUse", "kept").unwrap();
        assert!(s.heartbeat(a.id, 7000, Some(&held)).unwrap().is_some());
        drop(s);
        let mut s = SqliteStore::open(&path, p).unwrap();
        let reopened = s.get(a.id).unwrap().unwrap();
        assert_eq!(
            reopened.last_heartbeat_ms, 7000,
            "closing writes heartbeat times"
        );
        assert_eq!(
            reopened.condition,
            Some(held.clone()),
            "a condition survives"
        );
        assert!(
            s.heartbeat(a.id, 7100, Some(&held)).unwrap().is_none(),
            "the reopened store knows the condition it holds"
        );
        let c = s
            .register(
                &new_node("c", "10.0.0.3"),
                crate::model::NodeToken::generate().unwrap().hash(),
                1000,
            )
            .unwrap();
        assert_eq!(c.node.subnet.to_string(), "10.42.3.0/24");
        assert_eq!(
            c.change.unwrap().revision,
            rev + 2,
            "the condition took one revision"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_a_database_made_for_another_plan() {
        let dir = TempDir::new("plan");
        let path = dir.0.join("q.db");
        drop(SqliteStore::open(&path, plan("10.42.0.0/16", 24)).unwrap());
        let err = SqliteStore::open(&path, plan("10.43.0.0/16", 24))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.42.0.0/16") && err.contains("10.43.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn the_schema_refuses_a_duplicate_subnet() {
        let dir = TempDir::new("unique");
        let mut s = SqliteStore::open(&dir.0.join("q.db"), plan("10.42.0.0/16", 24)).unwrap();
        s.register(
            &new_node("a", "10.0.0.1"),
            crate::model::NodeToken::generate().unwrap().hash(),
            0,
        )
        .unwrap();
        let dup = s.conn.execute(
            "INSERT INTO nodes (hostname, host_ip, subnet, subnet_index, cpu_cores, ram_mb, status, registered_at,
             last_heartbeat_ms, token_sha256) VALUES ('b', '10.0.0.2', '10.42.1.0/24', 2, 0, 0, 'up', 0, 0, 't')",
            [],
        );
        let err = dup
            .expect_err("a second node on the same subnet")
            .to_string();
        assert!(
            err.contains("UNIQUE constraint failed: nodes.subnet"),
            "{err}"
        );
    }
}
