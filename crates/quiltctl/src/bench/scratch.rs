//! What the benchmarks outside a lab make, and its removal: network namespaces and
//! temporary folders are named `qbench-PID-N`, so a SIGINT or SIGTERM removes this run's
//! (and stops the daemons inside them or registered here), and the next run removes what
//! a killed run left behind.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quilt_kernel::netns::{self, OwnedNetns};

const PREFIX: &str = "qbench";

/// Daemons started outside a bench namespace, stopped on interrupt.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Namespaces a phase is done with, deleted only at the end: the kernel tears a
/// namespace down in the background, and a teardown of 10,000 routes would slow the
/// phases measured after it.
static KEPT: Mutex<Vec<OwnedNetns>> = Mutex::new(Vec::new());

/// Keeps `ns` until [`release_kept`] (or an interrupt) deletes it.
pub fn keep(ns: OwnedNetns) {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(ns);
}

/// Deletes the namespaces [`keep`] holds.
pub fn release_kept() {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// A name no other run uses: `qbench-PID-N`.
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh network namespace of this run, deleted when dropped.
pub fn namespace() -> anyhow::Result<OwnedNetns> {
    Ok(OwnedNetns::create(&unique_name())?)
}

/// A fresh temporary folder of this run, removed when dropped.
pub fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{}-", unique_name()))
        .tempdir()
        .context("cannot make a temporary folder")
}

/// Stops `pid` (SIGTERM) if the run is interrupted before [`forget_child`].
pub fn track_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

pub fn forget_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Removes what earlier runs that no longer live left behind, then, on SIGINT or SIGTERM,
/// stops this run's daemons, removes its namespaces and folders and exits with 130.
pub fn prepare() {
    let stale = |pid| pid != std::process::id() && !alive(pid);
    let stopped = kill_daemons_where(stale);
    if stopped > 0 {
        eprintln!("killed {stopped} daemons a killed benchmark left behind");
    }
    let leftovers = remove_where(stale);
    if leftovers > 0 {
        eprintln!("removed {leftovers} namespaces and folders a killed benchmark left behind");
    }
    let _ = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(quilt_common::shutdown::signal_received());
            eprintln!("interrupted: stopping the benchmark's daemons and removing its namespaces");
            for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
            }
            remove_where(|pid| pid == std::process::id());
            std::process::exit(130);
        });
}

/// Stops `child` (SIGTERM, then SIGKILL after 10 s) and forgets it.
pub fn stop(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            forget_child(child.id());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    forget_child(child.id());
}

/// The run (pid) whose folder or namespace `name` is, if it is a bench one.
fn run_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// Kills (SIGKILL) the processes whose command line names a temporary folder of a run
/// that `matches`; answers how many.
fn kill_daemons_where(matches: impl Fn(u32) -> bool) -> usize {
    let needle = format!("{}/{PREFIX}-", std::env::temp_dir().display());
    let mut killed = 0;
    for pid in entries(PathBuf::from("/proc")) {
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let owner = cmdline
            .split(needle.as_str())
            .skip(1)
            .find_map(|rest| run_of(&format!("{PREFIX}-{rest}")));
        if owner.is_some_and(&matches) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

/// Removes every bench namespace and temporary folder whose run's pid matches; answers
/// how many it removed.
fn remove_where(matches: impl Fn(u32) -> bool) -> usize {
    let mut removed = 0;
    for name in entries(netns::path("").as_path().to_path_buf()) {
        if run_of(&name).is_some_and(&matches) {
            drop(OwnedNetns::adopt(&name)); // kills what runs inside, then deletes it
            removed += 1;
        }
    }
    let tmp = std::env::temp_dir();
    for name in entries(tmp.clone()) {
        if run_of(&name).is_some_and(&matches) && std::fs::remove_dir_all(tmp.join(&name)).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn entries(dir: PathBuf) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}
