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

use crate::request::RouteRequest;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE routes (destination TEXT PRIMARY KEY, interface TEXT NOT NULL, gateway TEXT);
     CREATE TABLE allocations (owner TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE);",
];

/// Everything the runtime wants to be true, as loaded from disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub subnet: Option<Ipv4Net>,
    pub routes: BTreeMap<Ipv4Net, RouteRequest>,
    pub allocations: BTreeMap<String, Ipv4Addr>,
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
        let applied: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
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
                .query_row("SELECT value FROM settings WHERE key = 'subnet'", [], |r| r.get::<_, String>(0))
                .optional()?
                .and_then(|s| s.parse().ok()),
            ..DesiredState::default()
        };
        let mut routes = self.conn.prepare("SELECT destination, interface, gateway FROM routes")?;
        let rows = routes.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
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
        let mut allocations = self.conn.prepare("SELECT owner, address FROM allocations")?;
        let rows = allocations.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (owner, address) = row?;
            match address.parse() {
                Ok(address) => {
                    state.allocations.insert(owner, address);
                }
                Err(_) => tracing::warn!(%owner, %address, "skipping unreadable allocation in state"),
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
        self.conn
            .execute("DELETE FROM routes WHERE destination = ?1", params![destination.to_string()])?;
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
        self.conn.execute("DELETE FROM allocations WHERE owner = ?1", params![owner])?;
        Ok(())
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
            store.put_allocation("c1", Ipv4Addr::new(10, 42, 1, 2)).unwrap();
            assert!(store.put_allocation("c2", Ipv4Addr::new(10, 42, 1, 2)).is_err(), "address is unique");
        }
        let state = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(state.subnet, Some("10.42.1.0/24".parse().unwrap()));
        assert_eq!(state.routes.get(&route.destination), Some(&route));
        assert_eq!(state.allocations.get("c1"), Some(&Ipv4Addr::new(10, 42, 1, 2)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
