//! `quiltctl lab` from the outside: up in one process, status, exec and down in others,
//! and nothing left behind, also with the full mesh.

use std::path::Path;
use std::process::{Command, Output};

use quilt_testkit::leaks::{assert_nothing_left, namespaces_of};
use quilt_testkit::netns::privileged_or_skip;

const QUILTCTL: &str = env!("CARGO_BIN_EXE_quiltctl");

fn quiltctl(root: &Path, args: &[&str]) -> Output {
    Command::new(QUILTCTL)
        .args(args)
        .env("QUILT_LAB_ROOT", root)
        .output()
        .unwrap()
}

/// Runs `lab down` when dropped, so a failing test leaves nothing behind either.
struct DownOnDrop<'a>(&'a Path, String);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = quilt_lab::lab::down(self.0, &self.1, true);
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn bin_dir() -> String {
    Path::new(QUILTCTL).parent().unwrap().display().to_string()
}

#[test]
fn lab_up_status_exec_down_across_processes() {
    if !privileged_or_skip("lab_up_status_exec_down_across_processes") {
        return;
    }
    let dir = quilt_testkit::bins::build(&["quilt-mesh-control", "quilt-runtime"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dir.display().to_string(), bin_dir());
    let root = tempfile::tempdir().unwrap();
    let name = format!("cli{}", std::process::id());
    let up = quiltctl(
        root.path(),
        &["lab", "up", "--no-agents", "--nodes", "2", "--name", &name],
    );
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).to_string();
    for stage in ["underlay", "control", "runtimes"] {
        assert!(out.contains(stage), "no progress line for {stage}:\n{out}");
    }
    assert_eq!(namespaces_of(&name).len(), 3);

    let status = quiltctl(root.path(), &["lab", "status", "--json", "--name", &name]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["status"]["control"]["running"], true);
    assert_eq!(v["status"]["nodes"].as_array().unwrap().len(), 2);
    let h1_ip = v["status"]["nodes"][0]["host_ip"]
        .as_str()
        .unwrap()
        .to_string();

    let ping = quiltctl(
        root.path(),
        &[
            "lab", "exec", "--name", &name, "h2", "--", "ping", "-c", "1", "-W", "2", &h1_ip,
        ],
    );
    assert!(ping.status.success(), "{}", text(&ping));
    let fails = quiltctl(
        root.path(),
        &[
            "lab", "exec", "--name", &name, "h2", "--", "sh", "-c", "exit 3",
        ],
    );
    assert_eq!(fails.status.code(), Some(3), "{}", text(&fails));
    let unknown = quiltctl(
        root.path(),
        &["lab", "exec", "--name", &name, "h9", "--", "true"],
    );
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));

    let down = quiltctl(
        root.path(),
        &["lab", "down", "--remove-logs", "--name", &name],
    );
    assert!(down.status.success(), "{}", text(&down));
    assert_nothing_left(&name, root.path());
    let again = quiltctl(root.path(), &["lab", "down", "--name", &name]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains(&format!("no lab {name}")),
        "{}",
        text(&again)
    );
}

#[test]
fn lab_up_three_nodes_full_mesh_then_down_leaves_nothing() {
    if !privileged_or_skip("lab_up_three_nodes_full_mesh_then_down_leaves_nothing") {
        return;
    }
    // QUILT_BIN_DIR (read by quiltctl itself) points the lab at other binaries.
    if std::env::var_os("QUILT_BIN_DIR").is_none() {
        quilt_testkit::bins::build(&[
            "quilt-mesh-control",
            "quilt-runtime",
            "quilt-mesh-agent",
            "quilt-cni",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let root = tempfile::tempdir().unwrap();
    let name = format!("mesh{}", std::process::id());
    let _guard = DownOnDrop(root.path(), name.clone());
    let up = quiltctl(root.path(), &["lab", "up", "--nodes", "3", "--name", &name]);
    let shown = text(&up);
    let logs = std::fs::read_dir(root.path().join(&name).join("logs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    format!(
                        "--- {}\n{}",
                        e.path().display(),
                        quilt_lab::lab::log_tail(&e.path(), 20)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let down = quiltctl(
        root.path(),
        &["lab", "down", "--remove-logs", "--name", &name],
    );
    assert!(up.status.success(), "{shown}\n{logs}");
    assert!(shown.contains("time from start to full mesh"), "{shown}");
    assert!(shown.contains("9 of 9 pairs answer"), "{shown}");
    assert!(down.status.success(), "{}", text(&down));
    assert_nothing_left(&name, root.path());
}
