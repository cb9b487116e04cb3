//! What the lab's kernel tests share: unique lab names, the binaries, and the daemon logs for
//! failure messages (the leak checks are the testkit's).

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};

use quilt_lab::LabSpec;
use quilt_testkit::bins;

/// A lab name no other test of this machine uses (at most 24 characters).
pub fn lab_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The control plane and the runtimes, built if needed.
pub fn infra_bins() -> PathBuf {
    bins::build(&["quilt-mesh-control", "quilt-runtime"]).unwrap_or_else(|e| panic!("{e}"))
}

/// Every daemon of the full mesh (from `QUILT_LAB_BIN_DIR` when set), built if needed.
pub fn mesh_bins() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUILT_LAB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    bins::build(&[
        "quilt-mesh-control",
        "quilt-runtime",
        "quilt-mesh-agent",
        "quilt-cni",
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn spec(name: &str, nodes: u16, per_node: u16, bins: &Path, root: &Path) -> LabSpec {
    let mut spec = LabSpec::new(name, nodes, per_node, bins);
    spec.root = root.to_path_buf();
    spec
}

/// The last lines of every daemon log of lab `name`.
pub fn dump_logs(root: &Path, name: &str) -> String {
    let dir = root.join(name).join("logs");
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(|e| e.ok()) {
            out.push_str(&format!(
                "--- {}\n{}\n",
                e.path().display(),
                quilt_lab::lab::log_tail(&e.path(), 20)
            ));
        }
    }
    out
}
