//! Desired state on disk: the node subnet, the managed routes and the container
//! address allocations, in `runtime.db` (SQLite) inside the state folder.
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed transaction is in the WAL
//! before the call returns, so a crash of the process (kill -9) loses nothing that was
//! acknowledged. A power loss may drop the last transactions, but it also drops every
//! kernel route and container; the agent re-drives routes from the control plane.
//!
//! Checkpoints are the caller's: automatic WAL checkpoints are off, so a commit never
//! fsyncs and stays a few page writes into the OS; [`Store::checkpoint`] (which fsyncs)
//! is called from the reconcile pass, off the worker.
//!
//! Blocking: every call here is synchronous. Async code does not call it directly: the
//! core goes through its one store helper (see [`crate::core`]), and the server opens
//! the store on a blocking thread.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::model::{Attachment, DesiredState, ManagedRoute};

/// What can go wrong with the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state dir {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        io: std::io::Error,
    },
    /// An existing state file that is not a runtime database; it is never replaced by a
    /// new one (that would silently forget the node's subnet, routes and containers).
    #[error(
        "state file {} exists but is not a quilt-runtime database ({reason}); it is left as it is: restore it from a backup, or move it away to start with empty state",
        path.display()
    )]
    NotADatabase { path: PathBuf, reason: String },
    #[error("cannot read state file {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        io: std::io::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The state file's name inside the state folder.
pub const FILE_NAME: &str = "runtime.db";

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE routes (destination TEXT PRIMARY KEY, interface TEXT NOT NULL, gateway TEXT);
     CREATE TABLE allocations (owner TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE);",
    // Container attachments; each holds the allocation of its owner (see crate::model::owner).
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

/// The open state database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens `runtime.db` in `dir` and brings its schema up to date. Where no file exists
    /// a new database is made (under another name, then renamed into place, so a crash
    /// never leaves a half-made one); an existing file that is not a runtime database
    /// (empty, not SQLite, no schema) is refused and left untouched.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|io| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            io,
        })?;
        let path = dir.join(FILE_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {
                check_header(&path)?;
                owner_only(&path)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
            Err(io) => return Err(StoreError::Unreadable { path, io }),
        }
        let not_a_database = |e: rusqlite::Error| StoreError::NotADatabase {
            path: path.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(not_a_database)?;
        if version == 0 {
            return Err(StoreError::NotADatabase {
                path,
                reason: "an SQLite database without the runtime's schema".into(),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        migrate(&mut self.conn)
    }

    /// Copies the WAL into the database file where no reader needs it (a passive
    /// checkpoint, which fsyncs), so the WAL stops growing.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Reads the whole desired state. Rows that no longer parse are skipped with a warning.
    pub fn load(&self) -> Result<DesiredState, StoreError> {
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
                        ManagedRoute {
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
                        Attachment {
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

    pub fn set_subnet(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES ('subnet', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![subnet.to_string()],
        )?;
        Ok(())
    }

    /// Records `routes` as desired, in one transaction.
    pub fn put_routes(&mut self, routes: &[&ManagedRoute]) -> Result<(), StoreError> {
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
        Ok(tx.commit()?)
    }

    pub fn delete_route(&self, destination: Ipv4Net) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM routes WHERE destination = ?1",
            params![destination.to_string()],
        )?;
        Ok(())
    }

    pub fn put_allocation(&self, owner: &str, address: Ipv4Addr) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO allocations (owner, address) VALUES (?1, ?2)",
            params![owner, address.to_string()],
        )?;
        Ok(())
    }

    pub fn delete_allocation(&self, owner: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM allocations WHERE owner = ?1", params![owner])?;
        Ok(())
    }

    /// Records an attachment (replacing one for the same container and ifname).
    pub fn put_attachment(&self, a: &Attachment) -> Result<(), StoreError> {
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
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM attachments WHERE container_id = ?1 AND ifname = ?2",
            params![container_id, ifname],
        )?;
        tx.execute("DELETE FROM allocations WHERE owner = ?1", params![owner])?;
        Ok(tx.commit()?)
    }
}

/// Applies the migrations `conn` has not had yet.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (index, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Refuses a state file that cannot be an SQLite database: empty, or without the header.
fn check_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let unreadable = |io| StoreError::Unreadable {
        path: path.to_path_buf(),
        io,
    };
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    let reason = match head.len() {
        0 => "it is empty (0 bytes)".to_string(),
        _ if head.as_slice() != SQLITE_HEADER => {
            "it does not start with the SQLite header".to_string()
        }
        _ => return Ok(()),
    };
    Err(StoreError::NotADatabase {
        path: path.to_path_buf(),
        reason,
    })
}

/// Makes a new database at `path` with the current schema: built under a temporary name
/// in the same folder and renamed into place.
/// Makes a state file an older version left readable by others 0600.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |io| StoreError::Unreadable {
        path: path.to_path_buf(),
        io,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(unreadable)?;
        tracing::info!(path = %path.display(), "state database made readable by its owner only");
    }
    Ok(())
}

fn create(path: &Path) -> Result<(), StoreError> {
    let fresh = path.with_extension("db.new");
    let _ = std::fs::remove_file(&fresh);
    {
        // Owner only, like every state file (SQLite gives -wal and -shm the same mode).
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(|io| StoreError::Unreadable {
                path: fresh.clone(),
                io,
            })?;
        let mut conn = Connection::open(&fresh)?;
        migrate(&mut conn)?;
    }
    std::fs::rename(&fresh, path).map_err(|io| StoreError::Unreadable {
        path: path.to_path_buf(),
        io,
    })?;
    tracing::info!(path = %path.display(), "created a new state database");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes 40 transactions of 100 routes each, checkpointing after each when
    /// `checkpoint`; answers the size of the WAL file then.
    fn wal_size_after_writes(checkpoint: bool) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        for round in 0..40u32 {
            let routes: Vec<ManagedRoute> = (0..100u32)
                .map(|i| ManagedRoute {
                    destination: Ipv4Net::new(
                        Ipv4Addr::from(0x0a00_0000 + ((round * 100 + i) << 8)),
                        24,
                    )
                    .unwrap(),
                    interface: "vxlan100".into(),
                    gateway: None,
                })
                .collect();
            store
                .put_routes(&routes.iter().collect::<Vec<_>>())
                .unwrap();
            if checkpoint {
                store.checkpoint().unwrap();
            }
        }
        std::fs::metadata(dir.path().join(format!("{FILE_NAME}-wal")))
            .unwrap()
            .len()
    }

    #[test]
    fn the_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join(FILE_NAME);
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(mode(&path), 0o600, "an open file is made private");
    }

    #[test]
    fn a_checkpoint_keeps_the_wal_from_growing() {
        let unchecked = wal_size_after_writes(false);
        let checked = wal_size_after_writes(true);
        assert!(
            checked * 4 < unchecked,
            "checkpointed WAL {checked} bytes, unchecked {unchecked} bytes"
        );
    }

    #[test]
    fn a_file_that_is_not_a_runtime_database_is_refused_and_left_alone() {
        let foreign = {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("foreign.db");
            Connection::open(&path)
                .unwrap()
                .execute_batch("CREATE TABLE t (x INTEGER);")
                .unwrap();
            std::fs::read(&path).unwrap()
        };
        let random: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        for (content, reason) in [
            (Vec::new(), "empty (0 bytes)"),
            (random, "SQLite header"),
            (foreign, "without the runtime's schema"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(FILE_NAME);
            std::fs::write(&path, &content).unwrap();
            let err = Store::open(dir.path()).err().expect("refused").to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(reason), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "{reason}: changed");
        }
    }

    #[test]
    fn a_new_database_is_made_only_where_no_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .set_subnet("10.42.1.0/24".parse().unwrap())
            .unwrap();
        let reopened = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(reopened.subnet, Some("10.42.1.0/24".parse().unwrap()));
        assert!(!dir.path().join("runtime.db.new").exists());
    }

    #[test]
    fn state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("quilt-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let route = ManagedRoute {
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

    #[test]
    fn a_state_dir_that_cannot_be_made_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let dir = file.path().join("state");
        let Err(err) = Store::open(&dir) else {
            panic!("a folder under a regular file cannot be made");
        };
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot create state dir {}", dir.display())
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the io error is kept"
        );
    }
}
