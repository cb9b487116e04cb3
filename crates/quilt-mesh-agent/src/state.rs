//! What the agent keeps across restarts, in `agent.json` in the state folder: it holds
//! the node token, so it is written readable by root only (0600) and atomically
//! (temporary file, fsync, rename), and a file an older version left readable by others
//! is made 0600 when it is loaded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use quilt_common::mac::Mac;
use serde::{Deserialize, Serialize};

/// Why the state could not be loaded or saved; names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is there but is not a state (bad JSON, or a `vtep_mac` that is not a
    /// MAC): an error, never a made-up MAC that another node may claim too.
    #[error("state file {} is not readable: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot make a random mac for {}: {source}", path.display())]
    RandomMac {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The VXLAN device's MAC: stable, so peers' entries stay right across restarts.
    pub vtep_mac: Mac,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_token: Option<String>,
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("agent.json")
}

/// Loads the state, or makes a fresh one with a new random MAC.
pub fn load_or_create(dir: &Path) -> Result<AgentState, StateError> {
    let file = path(dir);
    match std::fs::read(&file) {
        Ok(bytes) => {
            make_private(&file)?;
            serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path: file, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = AgentState {
                vtep_mac: Mac::random_local()
                    .map_err(|source| StateError::RandomMac { path: file, source })?,
                node_id: None,
                node_token: None,
                subnet: None,
            };
            save(dir, &state)?;
            Ok(state)
        }
        Err(source) => Err(StateError::Read { path: file, source }),
    }
}

/// Writes the state atomically, readable by its owner only.
pub fn save(dir: &Path, state: &AgentState) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|source| StateError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(state).expect("the state is plain data");
    let file = path(dir);
    quilt_common::secret_file::write(&file, &json).map_err(|e| StateError::Write {
        path: file,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Makes `file` readable by its owner only, if it is not already.
fn make_private(file: &Path) -> Result<(), StateError> {
    let write_error = |source| StateError::Write {
        path: file.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(file)
        .map_err(write_error)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(file = %file.display(), mode = format!("{mode:04o}"), "the state file holds the node token and was readable by others; it is now 0600");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mut second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.vtep_mac, second.vtep_mac);
        second.node_id = Some("node-3".into());
        save(dir.path(), &second).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), second);
    }

    #[test]
    fn the_file_holding_the_token_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let mut state = load_or_create(dir.path()).unwrap();
        state.node_token = Some("t0ken".into());
        save(dir.path(), &state).unwrap();
        let file = dir.path().join("agent.json");
        assert_eq!(mode(&file), 0o600);
        // A file an older version left 0644 is tightened when loaded.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), state);
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.json"), "{nope").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("agent.json"), "{err}");
    }

    #[test]
    fn a_corrupt_mac_is_an_error_naming_the_file_and_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.json"), r#"{"vtep_mac":"zz"}"#).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("agent.json") && err.contains("\"zz\" is not a MAC"),
            "{err}"
        );
    }
}
