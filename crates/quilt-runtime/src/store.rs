//! Desired state on disk: the node subnet, the managed routes and the container
//! address allocations, in `runtime.db` (SQLite) inside the state folder.
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed transaction is in the WAL
//! before the call returns, so a crash of the process (kill -9) loses nothing that was
//! acknowledged. A power loss may drop the last transactions, but it also drops every
//! kernel route and container; the agent re-drives routes from the control plane.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use rusqlite::{Connection, OptionalExtension, params};

use crate::attach::AttachmentRecord;
use crate::request::RouteRequest;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE routes (destination TEXT PRIMARY KEY, interface TEXT NOT NULL, gateway TEXT);
     CREATE TABLE allocations (owner TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE);",
    // Container attachments; each holds the allocation of its owner (see crate::attach).
    "CREATE TABLE attachments (
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        netns TEXT NOT NULL,
        host_ifname TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL,
        gateway TEXT NOT NULL,
        mac TEXT NOT NULL,
        host_mac TEXT NOT NULL,
        mtu INTEGER NOT NULL,
        PRIMARY KEY (container_id, ifname)
     );",
];

/// Everything the runtime wants to be true, as loaded from disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub subnet: Option<Ipv4Net>,
    pub routes: BTreeMap<Ipv4Net, RouteRequest>,
    pub allocations: BTreeMap<String, Ipv4Addr>,
    /// Container attachments by (container id, ifname).
    pub attachments: BTreeMap<(String, String), AttachmentRecord>,
}

/// The open state database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `runtime.db` in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, rusqlite::Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create state dir {}: {e}", dir.display())),
            )
        })?;
        let conn = Connection::open(dir.join("runtime.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), rusqlite::Error> {
        let applied: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (index, migration) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(applied).unwrap_or(0))
        {
            let tx = self.conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", (index + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Reads the whole desired state. Rows that no longer parse are skipped with a warning.
    pub fn load(&self) -> Result<DesiredState, rusqlite::Error> {
        let mut state = DesiredState {
            subnet: self
                .conn
                .query_row("SELECT value FROM settings WHERE key = 'subnet'", [], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .and_then(|s| s.parse().ok()),
            ..DesiredState::default()
        };
        let mut routes = self
            .conn
            .prepare("SELECT destination, interface, gateway FROM routes")?;
        let rows = routes.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for row in rows {
            let (destination, interface, gateway) = row?;
            match destination.parse::<Ipv4Net>() {
                Ok(destination) => {
                    let gateway = gateway.and_then(|g| g.parse().ok());
                    state.routes.insert(
                        destination,
                        RouteRequest {
                            destination,
                            interface,
                            gateway,
                        },
                    );
                }
                Err(_) => tracing::warn!(%destination, "skipping unreadable route in state"),
            }
        }
        let mut allocations = self
            .conn
            .prepare("SELECT owner, address FROM allocations")?;
        let rows =
            allocations.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (owner, address) = row?;
            match address.parse() {
                Ok(address) => {
                    state.allocations.insert(owner, address);
                }
                Err(_) => {
                    tracing::warn!(%owner, %address, "skipping unreadable allocation in state")
                }
            }
        }
        let mut attachments = self.conn.prepare(
            "SELECT container_id, ifname, netns, host_ifname, address, gateway, mac, host_mac, mtu FROM attachments",
        )?;
        let rows = attachments.query_map([], |r| {
            Ok((
                [
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ],
                r.get::<_, u32>(8)?,
            ))
        })?;
        for row in rows {
            let (
                [
                    container_id,
                    ifname,
                    netns,
                    host_ifname,
                    address,
                    gateway,
                    mac,
                    host_mac,
                ],
                mtu,
            ) = row?;
            match (address.parse(), gateway.parse()) {
                (Ok(address), Ok(gateway)) => {
                    state.attachments.insert(
                        (container_id.clone(), ifname.clone()),
                        AttachmentRecord {
                            container_id,
                            ifname,
                            netns: netns.into(),
                            host_ifname,
                            address,
                            gateway,
                            mac,
                            host_mac,
                            mtu,
                        },
                    );
                }
                _ => {
                    tracing::warn!(%container_id, %ifname, "skipping unreadable attachment in state")
                }
            }
        }
        Ok(state)
    }

    pub fn set_subnet(&self, subnet: Ipv4Net) -> Result<(), rusqlite::Error> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES ('subnet', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![subnet.to_string()],
        )?;
        Ok(())
    }

    /// Records `routes` as desired, in one transaction.
    pub fn put_routes(&mut self, routes: &[&RouteRequest]) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO routes (destination, interface, gateway) VALUES (?1, ?2, ?3)
                 ON CONFLICT(destination) DO UPDATE SET interface = excluded.interface, gateway = excluded.gateway",
            )?;
            for route in routes {
                insert.execute(params![
                    route.destination.to_string(),
                    route.interface,
                    route.gateway.map(|g| g.to_string())
                ])?;
            }
        }
        tx.commit()
    }

    pub fn delete_route(&self, destination: Ipv4Net) -> Result<(), rusqlite::Error> {
        self.conn.execute(
            "DELETE FROM routes WHERE destination = ?1",
            params![destination.to_string()],
        )?;
        Ok(())
    }

    pub fn put_allocation(&self, owner: &str, address: Ipv4Addr) -> Result<(), rusqlite::Error> {
        self.conn.execute(
            "INSERT INTO allocations (owner, address) VALUES (?1, ?2)",
            params![owner, address.to_string()],
        )?;
        Ok(())
    }

    pub fn delete_allocation(&self, owner: &str) -> Result<(), rusqlite::Error> {
        self.conn
            .execute("DELETE FROM allocations WHERE owner = ?1", params![owner])?;
        Ok(())
    }

    /// Records an attachment (replacing one for the same container and ifname).
    pub fn put_attachment(&self, a: &AttachmentRecord) -> Result<(), rusqlite::Error> {
        self.conn.execute(
            "INSERT OR REPLACE INTO attachments
                (container_id, ifname, netns, host_ifname, address, gateway, mac, host_mac, mtu)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                a.container_id,
                a.ifname,
                a.netns.display().to_string(),
                a.host_ifname,
                a.address.to_string(),
                a.gateway.to_string(),
                a.mac,
                a.host_mac,
                a.mtu
            ],
        )?;
        Ok(())
    }

    /// Forgets an attachment and the allocation of `owner`, in one transaction.
    pub fn delete_attachment(
        &mut self,
        container_id: &str,
        ifname: &str,
        owner: &str,
    ) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM attachments WHERE container_id = ?1 AND ifname = ?2",
            params![container_id, ifname],
        )?;
        tx.execute("DELETE FROM allocations WHERE owner = ?1", params![owner])?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("quilt-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let route = RouteRequest {
            destination: "10.42.2.0/24".parse().unwrap(),
            interface: "vxlan100".into(),
            gateway: Some(Ipv4Addr::new(10, 42, 2, 0)),
        };
        {
            let mut store = Store::open(&dir).unwrap();
            store.set_subnet("10.42.1.0/24".parse().unwrap()).unwrap();
            store.put_routes(&[&route]).unwrap();
            store
                .put_allocation("c1", Ipv4Addr::new(10, 42, 1, 2))
                .unwrap();
            assert!(
                store
                    .put_allocation("c2", Ipv4Addr::new(10, 42, 1, 2))
                    .is_err(),
                "address is unique"
            );
        }
        let state = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(state.subnet, Some("10.42.1.0/24".parse().unwrap()));
        assert_eq!(state.routes.get(&route.destination), Some(&route));
        assert_eq!(
            state.allocations.get("c1"),
            Some(&Ipv4Addr::new(10, 42, 1, 2))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
