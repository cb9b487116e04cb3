//! What the agent keeps across restarts, in `agent.json` in the state folder, written
//! atomically (temporary file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use quilt_kernel::overlay::Mac;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The VXLAN device's MAC: stable, so peers' entries stay right across restarts.
    pub vtep_mac: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_token: Option<String>,
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
}

impl AgentState {
    pub fn mac(&self) -> Mac {
        self.vtep_mac.parse().unwrap_or(Mac([2, 0, 0, 0, 0, 1]))
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join("agent.json")
}

/// Loads the state, or makes a fresh one with a new random MAC.
pub fn load_or_create(dir: &Path) -> anyhow::Result<AgentState> {
    use anyhow::Context;
    let file = path(dir);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let state: AgentState = serde_json::from_slice(&bytes)
                .with_context(|| format!("state file {} is not readable", file.display()))?;
            state
                .vtep_mac
                .parse::<Mac>()
                .map_err(|e| anyhow::anyhow!("state file {}: vtep_mac {e}", file.display()))?;
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = AgentState {
                vtep_mac: Mac::random_local()?.to_string(),
                node_id: None,
                node_token: None,
                subnet: None,
            };
            save(dir, &state)?;
            Ok(state)
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read state file {}: {e}",
            file.display()
        )),
    }
}

/// Writes the state atomically.
pub fn save(dir: &Path, state: &AgentState) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    let file = path(dir);
    let temp = dir.join("agent.json.tmp");
    {
        let mut out = std::fs::File::create(&temp)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        out.write_all(&serde_json::to_vec_pretty(state)?)?;
        out.sync_all()?;
    }
    std::fs::rename(&temp, &file).with_context(|| format!("cannot replace {}", file.display()))?;
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
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.json"), "{nope").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("agent.json"), "{err}");
    }
}
