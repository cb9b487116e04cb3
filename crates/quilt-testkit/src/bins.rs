//! Finding the workspace's binaries from any crate's tests. Cargo builds
//! `CARGO_BIN_EXE_*` only for the test's own package, so tests find the others in the same
//! target folder, after asking cargo to build them (a no-op when they are fresh, as after
//! `cargo build --workspace` or `cargo nextest run --workspace`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The target folder of the running test binary (`target/debug` for `target/debug/deps/x`).
pub fn target_dir_of_current_test() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no folder", exe.display()))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The test client `quilt-rpc-probe` of quilt-testkit, built once per test process.
pub fn probe() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| testkit_binary("quilt-rpc-probe"))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `original-control` of quilt-testkit (a stand-in for the original control plane),
/// built once per test process.
pub fn original_control() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| testkit_binary("original-control"))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Builds quilt-testkit's binary `name`; answers its path.
fn testkit_binary(name: &str) -> Result<PathBuf, String> {
    let dir = target_dir_of_current_test()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "quilt-testkit", "--bin", name])
        .status();
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing (cargo build: {status:?})",
            path.display()
        ))
    }
}

/// Builds the binaries of `packages` (each package's binary of the same name, with the
/// cargo running the tests when known) and answers the folder holding them; an error
/// names every missing binary.
pub fn build(packages: &[&str]) -> Result<PathBuf, String> {
    let dir = target_dir_of_current_test()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.arg("build").arg("--quiet");
    for p in packages {
        command.args(["-p", p, "--bin", p]);
    }
    let status = command.status();
    let missing: Vec<String> = packages
        .iter()
        .map(|p| dir.join(p))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "binaries missing: {} (cargo build: {status:?}); run `cargo build --workspace` first",
            missing.join(", ")
        ))
    }
}

/// The binary of package `name` (its binary of the same name), built once per test process
/// with [`build`]; panics with the reason when it cannot be had.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        build(&[name]).unwrap_or_else(|e| panic!("{e}"));
        built.push(name.to_string());
    }
    let dir = target_dir_of_current_test().unwrap_or_else(|e| panic!("{e}"));
    Path::new(&dir).join(name)
}
