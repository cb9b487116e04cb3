//! Running code inside a network namespace, named (`/run/netns/NAME`, as `ip netns` makes
//! them) or by path. `setns` changes only the calling thread, so the code runs on a thread of its
//! own that ends with it; the caller's thread never changes namespace. [`OwnedNetns`] makes
//! and removes the named namespaces the lab is built from.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::KernelError;

/// Where `ip netns` keeps the namespace called `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `f` on a new thread that has entered network namespace `name`, and returns its
/// result. Sockets `f` opens (netlink, TCP) belong to that namespace for their lifetime.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, KernelError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let netns_path = path(name);
    let file = File::open(&netns_path).map_err(|e| KernelError::Netns {
        name: name.to_string(),
        message: format!("cannot open {}: {e}", netns_path.display()),
    })?;
    run_in_file(name, file, f)
}

/// How long [`check_path`] waits for a namespace path to be looked at before it gives up
/// (a path on a hung file system, say). Looking at a namespace file takes microseconds.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens `netns` and checks that it is a container's network namespace: a network
/// namespace file of the nsfs file system (as `/run/netns/NAME` and `/proc/PID/ns/net`
/// are), and not the namespace this process itself runs in (the host's).
///
/// It never waits on what the path names: the file type and file system are looked at
/// first (a FIFO, socket, device or directory is refused without being opened), and the
/// open itself is non-blocking, so a path swapped for a FIFO in between cannot hold it.
pub fn open_path(netns: &Path) -> Result<File, KernelError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = netns.display().to_string();
    let refuse = |message: String| KernelError::Netns {
        name: shown.clone(),
        message,
    };
    let metadata = std::fs::metadata(netns).map_err(|e| refuse(format!("cannot open: {e}")))?;
    if !metadata.file_type().is_file() {
        return Err(refuse(format!(
            "not a network namespace (a {})",
            file_kind(&metadata.file_type())
        )));
    }
    let fs = nix::sys::statfs::statfs(netns).map_err(|e| refuse(format!("cannot stat: {e}")))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(refuse("not a network namespace".to_string()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(netns)
        .map_err(|e| refuse(format!("cannot open: {e}")))?;
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| refuse(format!("cannot stat: {e}")))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(refuse("not a network namespace".to_string()));
    }
    // An nsfs file of another kind (mnt, pid, ...) is refused by setns with the network
    // type; the probe runs on a thread of its own that ends at once.
    let probe = std::thread::scope(|scope| {
        scope
            .spawn(|| setns(&file, CloneFlags::CLONE_NEWNET))
            .join()
            .unwrap_or(Err(nix::errno::Errno::EINVAL))
    });
    if probe.is_err() {
        return Err(refuse(
            "a namespace but not a network namespace".to_string(),
        ));
    }
    if same_file(&file, Path::new("/proc/self/ns/net")) {
        return Err(refuse(
            "the host's own network namespace, not a container's".to_string(),
        ));
    }
    Ok(file)
}

/// `O_NONBLOCK | O_NOCTTY`: an open that never waits for a writer or takes a terminal.
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits()
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "file that is not a regular file"
    }
}

/// [`open_path`] as a check, on a thread of its own, answered within [`CHECK_TIMEOUT`]:
/// the caller (a tokio task) never waits longer, whatever the path is. A look that is
/// still stuck after that (a hung file system) is abandoned on its thread.
pub async fn check_path(netns: &Path) -> Result<(), KernelError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = netns.to_path_buf();
    let shown = netns.display().to_string();
    std::thread::Builder::new()
        .name("netns-check".into())
        .spawn(move || {
            let _ = tx.send(open_path(&path).map(drop));
        })
        .map_err(|e| KernelError::io("start a thread to check a namespace path", e))?;
    match tokio::time::timeout(CHECK_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(KernelError::Netns {
            name: shown,
            message: "the check of the path failed".to_string(),
        }),
        Err(_) => Err(KernelError::Netns {
            name: shown,
            message: format!("not answered within {CHECK_TIMEOUT:?}"),
        }),
    }
}

fn same_file(file: &File, other: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(other)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Like [`run_in`], for the namespace at `netns` (for example a container's
/// `/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn run_in_path<T, F>(netns: &Path, f: F) -> Result<T, KernelError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = open_path(netns)?;
    run_in_file(&netns.display().to_string(), file, f)
}

fn run_in_file<T, F>(name: &str, file: File, f: F) -> Result<T, KernelError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| KernelError::Netns {
                    name: name.to_string(),
                    message: format!("setns failed: {e}"),
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| KernelError::Netns {
                name: name.to_string(),
                message: "the thread running inside the namespace panicked".to_string(),
            })?
    })
}

/// A network namespace this process created (with `ip netns add`) and deletes when
/// dropped, after killing whatever still runs inside it. The lab builds every host and
/// container from these, so nothing lands in the machine's own namespace; test fixtures
/// on top of it live in the `quilt-testkit` crate.
#[derive(Debug)]
pub struct OwnedNetns {
    name: String,
}

impl OwnedNetns {
    /// Creates namespace `name` with its loopback up; fails if it already exists.
    pub fn create(name: &str) -> Result<Self, KernelError> {
        if path(name).exists() {
            return Err(KernelError::Netns {
                name: name.to_string(),
                message: "already exists".to_string(),
            });
        }
        ip(&["netns", "add", name]).map_err(|message| KernelError::Netns {
            name: name.to_string(),
            message,
        })?;
        let owned = Self {
            name: name.to_string(),
        };
        owned.ip(&["link", "set", "lo", "up"])?;
        Ok(owned)
    }

    /// Takes over an existing namespace (for example one a crashed lab left behind),
    /// so that dropping the value deletes it.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace; the error carries ip's own message.
    pub fn ip(&self, args: &[&str]) -> Result<String, KernelError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full).map_err(|message| KernelError::Other {
            operation: format!("ip {}", full.join(" ")),
            message,
        })
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Kills every process running inside the namespace.
    pub fn kill_all(&self) {
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        self.kill_all();
        if let Err(message) = ip(&["netns", "delete", &self.name]) {
            tracing::warn!(netns = %self.name, %message, "could not delete network namespace");
        }
    }
}

/// Runs `ip ARGS`; on failure answers ip's stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
