//! Reading a `nodes` row: the columns in order, and the row as a [`StoredNode`].

use rusqlite::{Connection, OptionalExtension, Row};

use super::super::StoreError;
use super::super::stored::StoredNode;
use crate::model::Node;

/// The columns every node query selects, in [`raw`]'s order.
pub(super) const COLUMNS: &str = "id, hostname, host_ip, subnet, cpu_cores, ram_mb, vtep_mac, status, registered_at, last_heartbeat_ms, token_sha256, condition, vxlan_port, vni";

pub(super) fn raw(row: &Row<'_>) -> rusqlite::Result<StoredNode> {
    Ok(StoredNode {
        id: row.get(0)?,
        hostname: row.get(1)?,
        host_ip: row.get(2)?,
        subnet: row.get(3)?,
        cpu_cores: row.get(4)?,
        ram_mb: row.get(5)?,
        vtep_mac: row.get(6)?,
        status: row.get(7)?,
        registered_at: row.get(8)?,
        last_heartbeat_ms: row.get(9)?,
        token_sha256: row.get(10)?,
        condition: row.get(11)?,
        vxlan_port: row.get(12)?,
        vni: row.get(13)?,
    })
}

pub(super) fn get_where(
    conn: &Connection,
    clause: &str,
    key: &dyn rusqlite::ToSql,
) -> Result<Option<Node>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM nodes WHERE {clause}");
    let row = conn
        .prepare_cached(&sql)?
        .query_row([key], raw)
        .optional()?;
    row.map(StoredNode::check).transpose()
}
