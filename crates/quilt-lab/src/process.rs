//! Daemons and commands inside lab namespaces (`ip netns exec`), and stopping them again
//! by pid, only when the pid still runs inside the namespace it was started in.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::LabError;

/// A command that runs `program` inside namespace `netns`, as a container engine or a
/// service manager on that host would start it.
pub fn command_in(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// Starts a daemon in `netns`, its stdout and stderr appended to `log`. It gets a process
/// group of its own, so a ctrl-c meant for quiltctl does not reach it.
pub fn spawn_daemon(
    netns: &str,
    program: &Path,
    args: &[OsString],
    log: &Path,
) -> Result<Child, LabError> {
    let operation = || format!("start {} in {netns}", program.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::setup(operation(), format!("log {}: {e}", log.display())))?;
    let err_file = file
        .try_clone()
        .map_err(|e| LabError::setup(operation(), e))?;
    command_in(netns, program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::setup(operation(), e))
}

/// The output of a bounded command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with `stdin`, killing it after `timeout`.
pub fn run_bounded(
    mut command: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = pipe.write_all(data);
    }
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::scope(|scope| {
        let out = scope.spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err = scope.spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        // The waiter wakes the moment the child exits; past the deadline it is killed.
        let (done, exited) = std::sync::mpsc::channel();
        let waiter = scope.spawn(move || {
            let status = child.wait();
            let _ = done.send(());
            status
        });
        let killed = match exited.recv_timeout(timeout) {
            Ok(()) => false,
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                true
            }
        };
        let status = waiter.join().expect("the waiter does not panic");
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if killed {
            return Err(format!("killed after {:.1} s", timeout.as_secs_f64()));
        }
        status
            .map(|status| Output {
                status,
                stdout,
                stderr,
            })
            .map_err(|e| format!("cannot wait: {e}"))
    })
}

/// (device, inode) of a namespace file.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether process `pid` exists and lives in network namespace `netns`.
pub fn runs_in(pid: u32, netns: &str) -> bool {
    let want = ns_id(&quilt_kernel::netns::path(netns));
    let have = ns_id(&Path::new("/proc").join(pid.to_string()).join("ns/net"));
    want.is_some() && want == have && !is_zombie(pid)
}

/// Whether `pid` is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS").ok()
}

/// A KiB figure of `/proc/PID/status`, such as `VmRSS` or `VmHWM` (the peak).
pub fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path} has no {field} figure"))
}

/// Sends SIGTERM to every pid that still runs inside its namespace, waits up to `grace`
/// for them to exit, then SIGKILLs the rest. `reap` waits for those that are our own
/// children. Answers the pids that could not be stopped.
pub fn stop_all(
    targets: &[(u32, String)],
    grace: Duration,
    reap: &mut dyn FnMut(u32) -> bool,
) -> Vec<u32> {
    let live: Vec<u32> = targets
        .iter()
        .filter(|(pid, ns)| runs_in(*pid, ns))
        .map(|(pid, _)| *pid)
        .collect();
    for pid in &live {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let gone = |pid: u32, reap: &mut dyn FnMut(u32) -> bool| reap(pid) || !alive(pid);
    let deadline = Instant::now() + grace;
    let mut remaining = live;
    while !remaining.is_empty() && Instant::now() < deadline {
        remaining.retain(|pid| !gone(*pid, reap));
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in &remaining {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !remaining.is_empty() && Instant::now() < deadline {
        remaining.retain(|pid| !gone(*pid, reap));
        std::thread::sleep(Duration::from_millis(20));
    }
    remaining
}

/// Sends SIGKILL to `pid` if it still runs inside `netns` and waits up to 5 s for it to
/// be gone; answers whether it is.
pub fn kill_now(pid: u32, netns: &str, reap: &mut dyn FnMut(u32) -> bool) -> bool {
    if runs_in(pid, netns) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if reap(pid) || !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
