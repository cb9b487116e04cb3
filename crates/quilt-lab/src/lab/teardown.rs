//! Removing what a lab made: processes, namespaces, files; every failure collected,
//! none stopping the rest.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use quilt_kernel::netns::{self, OwnedNetns};

use super::daemons::reap;
use crate::LabError;
use crate::process::{self};
use crate::state::LabState;

/// Stops every process and removes every namespace and file of the lab; answers what
/// could not be removed. Best effort: one failure does not stop the rest.
pub(super) fn teardown(
    state: &LabState,
    mut namespaces: Vec<OwnedNetns>,
    children: &mut [Child],
    remove_logs: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    // Agents first (they would otherwise repair what goes away), then runtimes, then
    // the control-plane replicas, then etcd.
    let mut targets: Vec<(u32, String)> = Vec::new();
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.agent_pid?, h.netns.clone()))),
    );
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.runtime_pid?, h.netns.clone()))),
    );
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.control_pid?, h.netns.clone()))),
    );
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.etcd_pid?, h.netns.clone()))),
    );
    let left = process::stop_all(&targets, Duration::from_secs(3), &mut |p| reap(children, p));
    errors.extend(left.iter().map(|p| format!("process {p} did not exit")));

    // Namespaces this process holds, in reverse creation order, then any other the
    // record names (a crashed `up`, or `down` from another process). Dropping an
    // OwnedNetns kills what still runs inside and deletes it.
    while let Some(ns) = namespaces.pop() {
        drop(ns);
    }
    for name in &state.namespaces {
        if netns::path(name).exists() {
            drop(OwnedNetns::adopt(name));
        }
    }
    for name in &state.namespaces {
        if netns::path(name).exists() {
            errors.push(format!("network namespace {name} is still there"));
        }
    }
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }

    let data = state.dir.join("data");
    if data.exists()
        && let Err(e) = std::fs::remove_dir_all(&data)
    {
        errors.push(format!("cannot remove {}: {e}", data.display()));
    }
    if remove_logs
        && state.log_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&state.log_dir)
    {
        errors.push(format!("cannot remove {}: {e}", state.log_dir.display()));
    }
    if errors.is_empty() {
        // The record goes last, so a failed teardown can be retried.
        let _ = std::fs::remove_file(state.state_path());
        // Removes the lab folder when nothing else (kept logs) is in it.
        let _ = std::fs::remove_dir(&state.dir);
    }
    errors
}

/// Tears down lab `name` under `root` from its state file (another process ran `up`,
/// or `up` crashed).
pub fn down(root: &Path, name: &str, remove_logs: bool) -> Result<LabState, LabError> {
    let state = LabState::load(root, name)?;
    let errors = teardown(&state, Vec::new(), &mut [], remove_logs);
    if errors.is_empty() {
        Ok(state)
    } else {
        Err(LabError::Teardown(errors))
    }
}
