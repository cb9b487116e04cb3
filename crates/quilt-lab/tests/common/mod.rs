//! What the lab's kernel tests share: unique names, the binaries, checks that nothing
//! is left behind, and the daemon logs for failure messages.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quilt_lab::{LabSpec, bins};

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
    bins::build_for_tests(&["quilt-mesh-control", "quilt-runtime"])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every daemon of the full mesh (from `QUILT_LAB_BIN_DIR` when set), built if needed.
pub fn mesh_bins() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUILT_LAB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    bins::build_for_tests(&[
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

/// Lab namespaces still present.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("qlab-{name}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

pub fn assert_nothing_left(name: &str, root: &Path) {
    assert_eq!(namespaces_of(name), Vec::<String>::new(), "namespaces left");
    let deadline = Instant::now() + Duration::from_secs(5);
    let needle = root.display().to_string();
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<String>::new(),
        "processes left"
    );
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
