//! The database file's shape: the numbered schema migrations, the cluster plan it was
//! made for, and the checks that an existing file is a Quilt Mesh database at all.

use std::path::Path;

use quilt_common::ClusterNetwork;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::super::{Revision, StoreError};

/// Schema migrations in order; the position (from 1) is the version.
const MIGRATIONS: &[&str] = &[
    // 1: nodes, leases and the counters
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );
     CREATE TABLE nodes (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        hostname          TEXT    NOT NULL,
        host_ip           TEXT    NOT NULL UNIQUE,
        subnet            TEXT    NOT NULL UNIQUE,
        subnet_index      INTEGER NOT NULL UNIQUE CHECK (subnet_index >= 1),
        cpu_cores         INTEGER NOT NULL,
        ram_mb            INTEGER NOT NULL,
        vtep_mac          TEXT,
        status            TEXT    NOT NULL CHECK (status IN ('up', 'down')),
        registered_at     INTEGER NOT NULL,
        last_heartbeat_ms INTEGER NOT NULL,
        token             TEXT    NOT NULL
     );
     CREATE INDEX nodes_status_heartbeat ON nodes (status, last_heartbeat_ms);
     INSERT INTO meta (key, value) VALUES ('revision', '0');",
    // 2: finding the node that holds a VTEP MAC (registrations refuse a taken one)
    "CREATE INDEX nodes_vtep_mac ON nodes (vtep_mac);",
    // 3: what a node's agent reports as wrong (reason, newline, message), if anything
    "ALTER TABLE nodes ADD COLUMN condition TEXT;",
    // 4: node tokens are kept only as their SHA-256 (quilt_sha256 is registered by
    //    `migrate`, see `register_functions`)
    "ALTER TABLE nodes RENAME COLUMN token TO token_sha256;
     UPDATE nodes SET token_sha256 = quilt_sha256(token_sha256);",
    // 5: the VXLAN port and VNI a node registered (absent for the original agents)
    "ALTER TABLE nodes ADD COLUMN vxlan_port INTEGER;
     ALTER TABLE nodes ADD COLUMN vni INTEGER;",
];

/// SQL functions the migrations use: `quilt_sha256(text)`, the lowercase hex SHA-256
/// of a node token, as [`crate::model::TokenHash::of`] makes it.
fn register_functions(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "quilt_sha256",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let token: String = ctx.get(0)?;
            Ok(crate::model::TokenHash::of(&token).as_str().to_string())
        },
    )?;
    Ok(())
}

/// The 16 bytes every SQLite database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses an existing `path` that is not an SQLite database file.
pub(super) fn check_is_sqlite(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let not_ours = |why: String| StoreError::NotOurs {
        path: path.to_path_buf(),
        why,
    };
    let mut file =
        std::fs::File::open(path).map_err(|e| not_ours(format!("it cannot be read: {e}")))?;
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(not_ours(format!("it cannot be read: {e}"))),
        }
    }
    if read == 0 {
        return Err(not_ours("it is empty (0 bytes)".into()));
    }
    if read < header.len() || &header != SQLITE_HEADER {
        return Err(not_ours("it is not an SQLite database".into()));
    }
    Ok(())
}

pub(super) fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    register_functions(conn)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
         )",
    )?;
    let applied: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(StoreError::Backend(format!(
            "database schema version {applied} is newer than this program knows ({known}); use a newer quilt-mesh-control"
        )));
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, crate::model::now_ms() / 1000],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

pub(super) fn check_plan(conn: &mut Connection, plan: ClusterNetwork) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let get = |key: &str| -> Result<Option<String>, StoreError> {
        Ok(tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    };
    let cidr = plan.cidr().to_string();
    let prefix = plan.node_prefix_len().to_string();
    match (get("cluster_cidr")?, get("node_prefix_len")?) {
        (Some(stored_cidr), Some(stored_prefix)) => {
            if stored_cidr != cidr || stored_prefix != prefix {
                return Err(StoreError::PlanMismatch {
                    stored_cidr,
                    stored_prefix,
                    cidr: plan.cidr(),
                    prefix: plan.node_prefix_len(),
                });
            }
        }
        _ => {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('cluster_cidr', ?1), ('node_prefix_len', ?2)",
                params![cidr, prefix],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn read_revision(conn: &Connection) -> Result<Revision, StoreError> {
    let text: String =
        conn.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
            r.get(0)
        })?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("revision {text:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::store::SqliteStore;
    use crate::store::contract::plan;

    /// Opening `contents` written to a file answers the refusal's message.
    fn refusal_of(contents: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quilt-mesh.db");
        std::fs::write(&path, contents).unwrap();
        let message = SqliteStore::open(&path, plan("10.42.0.0/16", 24))
            .unwrap_err()
            .to_string();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            contents,
            "the refused file is left as it was"
        );
        message
    }

    #[test]
    fn an_existing_file_that_is_not_ours_is_refused_never_made_new() {
        let empty = refusal_of(b"");
        assert!(
            empty.contains("is not a Quilt Mesh database: it is empty (0 bytes)"),
            "{empty}"
        );
        assert!(empty.contains("quilt-mesh.db"), "{empty}");
        let noise = refusal_of(&[0x5a; 4096]);
        assert!(noise.contains("it is not an SQLite database"), "{noise}");

        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("other.db");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
            .unwrap();
        let message = SqliteStore::open(&foreign, plan("10.42.0.0/16", 24))
            .unwrap_err()
            .to_string();
        assert!(message.contains("without Quilt Mesh's tables"), "{message}");

        // Where no file exists, a new database is made; opened again, it is ours.
        let fresh = dir.path().join("new.db");
        drop(SqliteStore::open(&fresh, plan("10.42.0.0/16", 24)).unwrap());
        SqliteStore::open(&fresh, plan("10.42.0.0/16", 24)).unwrap();
    }

    #[test]
    fn a_version_3_database_keeps_its_nodes_and_loses_its_plain_tokens() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quilt-mesh.db");
        let plain = "0123456789abcdef0123456789abcdef";
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .unwrap();
            for (version, sql) in (1..).zip(&MIGRATIONS[..3]) {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO nodes (hostname, host_ip, subnet, subnet_index, cpu_cores, ram_mb, status,
                 registered_at, last_heartbeat_ms, token) VALUES ('a', '10.0.0.1', '10.42.1.0/24', 1, 1, 1, 'up', 1, 1000, ?1)",
                [plain],
            )
            .unwrap();
        }
        {
            let mut store = SqliteStore::open(&path, plan("10.42.0.0/16", 24)).unwrap();
            let (nodes, _) = store.list().unwrap();
            assert_eq!(nodes.len(), 1);
            assert!(
                nodes[0].token_hash.matches(plain),
                "the old token still works"
            );
            assert!(!nodes[0].token_hash.matches("another"));
        }
        let bytes = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("quilt-mesh.db-wal")).unwrap_or_default();
        for file in [&bytes, &wal] {
            assert!(
                !file.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "the plain token is still on disk"
            );
        }
    }
}
