//! What the lab's kernel tests share: unique lab names, the binaries, the daemon logs for
//! failure messages, and readings of every host's tables while something happens (the
//! leak checks are the testkit's).

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use quilt_lab::LabSpec;
use quilt_lab::lab::Lab;
use quilt_lab::tables::{HostTables, TableWatch};
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

/// Every host's tables.
pub fn snapshot(lab: &Lab) -> Vec<HostTables> {
    (1..=lab.state().nodes)
        .map(|h| lab.tables(h).unwrap())
        .collect()
}

pub fn watch_all(lab: &Lab) -> Vec<TableWatch> {
    (1..=lab.state().nodes)
        .map(|h| lab.watch_tables(h).unwrap())
        .collect()
}

/// Runs `during` while another thread reads every host's tables every 50 ms; answers
/// the readings.
pub fn sample_while(lab: &mut Lab, during: impl FnOnce(&mut Lab)) -> Vec<Vec<HostTables>> {
    let hosts: Vec<String> = lab.state().hosts.iter().map(|h| h.netns.clone()).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let reading: Vec<HostTables> = hosts
                    .iter()
                    .map(|ns| HostTables::read(ns).unwrap())
                    .collect();
                samples.push(reading);
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        // Set on the way out even when `during` panics: the scope waits for the sampler,
        // and a sampler that never stopped would hang the test past its teardown.
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = Done(&done);
        during(lab);
        drop(stop);
        sampler.join().unwrap()
    })
}

pub fn assert_unchanged(before: &[HostTables], samples: &[Vec<HostTables>], when: &str) {
    assert!(samples.len() > 10, "only {} readings {when}", samples.len());
    for (k, reading) in samples.iter().enumerate() {
        for (h, (was, is)) in before.iter().zip(reading).enumerate() {
            assert_eq!(
                is,
                was,
                "h{}'s tables differ {when} (reading {k} of {})",
                h + 1,
                samples.len()
            );
        }
    }
}

pub fn wait_full_mesh(lab: &Lab, timeout: Duration, when: &str, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + timeout;
    let mut matrix = lab.ping_matrix();
    while !matrix.full() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        matrix.retry_failed();
    }
    assert!(matrix.full(), "{when}:\n{}\n{}", matrix.render(), logs());
}
