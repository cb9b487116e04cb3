//! Leak checks for tests that start labs or daemons: namespaces and live processes that
//! outlived what should have removed them.

use std::path::Path;
use std::time::{Duration, Instant};

/// Namespaces under `/run/netns` whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces of lab `name` still present (`qlab-NAME-*`).
pub fn namespaces_of(name: &str) -> Vec<String> {
    namespaces_with_prefix(&format!("qlab-{name}-"))
}

/// Live (not zombie, not already gone) processes whose command line mentions `needle`,
/// as `PID: CMDLINE` (a lab's daemons carry its root folder in their flags).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in proc_dir.filter_map(|e| e.ok()) {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.is_empty()
            || stat
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

/// Asserts that lab `name` left no namespace, and (within 5 s, for processes still
/// exiting) no live process mentioning `root`.
pub fn assert_nothing_left(name: &str, root: &Path) {
    assert_eq!(
        namespaces_of(name),
        Vec::<String>::new(),
        "namespaces of lab {name} left"
    );
    let needle = root.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<String>::new(),
        "processes mentioning {needle} left"
    );
}
