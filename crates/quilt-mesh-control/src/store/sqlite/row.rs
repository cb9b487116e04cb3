//! Reading a `nodes` row: the columns in order, the row as stored, and its checks into a
//! [`Node`] (a bad value is [`StoreError::Corrupt`], naming the node and the value).

use ipnet::Ipv4Net;
use rusqlite::{Connection, OptionalExtension, Row};

use super::super::StoreError;
use crate::model::{
    Condition, Node, NodeId, NodeStatus, TokenHash, Vxlan, hostname_from_stored, parse_mac,
};

/// The columns every node query selects, in [`raw`]'s order.
pub(super) const COLUMNS: &str = "id, hostname, host_ip, subnet, cpu_cores, ram_mb, vtep_mac, status, registered_at, last_heartbeat_ms, token_sha256, condition, vxlan_port, vni";

/// A row as stored, before checking it.
pub(super) struct RawNode {
    id: u64,
    hostname: String,
    host_ip: String,
    subnet: String,
    cpu_cores: u32,
    ram_mb: u64,
    vtep_mac: Option<String>,
    status: String,
    registered_at: u64,
    last_heartbeat_ms: u64,
    token_sha256: String,
    condition: Option<String>,
    vxlan_port: Option<u16>,
    vni: Option<u32>,
}

pub(super) fn raw(row: &Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
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

impl RawNode {
    pub(super) fn check(self) -> Result<Node, StoreError> {
        let id = NodeId::new(self.id);
        let bad = |what: &str, value: &str| {
            StoreError::Corrupt(format!("node {id} has {what} {value:?}"))
        };
        Ok(Node {
            id,
            host_ip: self
                .host_ip
                .parse()
                .map_err(|_| bad("host_ip", &self.host_ip))?,
            subnet: self
                .subnet
                .parse::<Ipv4Net>()
                .map_err(|_| bad("subnet", &self.subnet))?,
            vtep_mac: match &self.vtep_mac {
                Some(m) => Some(parse_mac(m).map_err(|_| bad("vtep_mac", m))?),
                None => None,
            },
            vxlan: Vxlan {
                port: self.vxlan_port,
                vni: self.vni,
            },
            status: NodeStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?,
            hostname: hostname_from_stored(self.hostname),
            cpu_cores: self.cpu_cores,
            ram_mb: self.ram_mb,
            registered_at: self.registered_at,
            last_heartbeat_ms: self.last_heartbeat_ms,
            token_hash: TokenHash::from_stored(self.token_sha256),
            condition: match &self.condition {
                Some(c) => Some(Condition::from_stored(c).ok_or_else(|| bad("condition", c))?),
                None => None,
            },
        })
    }
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
    row.map(RawNode::check).transpose()
}
