//! Where the runtime listens: its unix socket (folder made 0755, a stale socket replaced,
//! a live one refused, mode 0660 and the socket group, removed again on a clean stop)
//! and its TCP address (loopback unless TLS is configured).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::Config;
use crate::caller::SocketGroup;

/// Mode of the runtime's socket: root and the socket group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// Mode of a socket folder the runtime makes.
pub const SOCKET_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "both --grpc-socket and --grpc-addr are off; the runtime would serve nobody (turn one on)"
    )]
    NothingToServe,
    #[error(
        "grpc address {0} is not loopback; serving it needs --tls-cert and --tls-key (or keep it on 127.0.0.1, or --grpc-addr off)"
    )]
    NotLoopbackWithoutTls(SocketAddr),
    #[error("cannot listen on grpc address {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("another quilt-runtime answers on grpc socket {0}; stop it first")]
    InUse(PathBuf),
    #[error("grpc socket path {0} exists and is not a socket; it is left alone")]
    NotASocket(PathBuf),
    #[error("grpc socket {path}: cannot {action}: {source}")]
    Socket {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Group(String),
}

/// The listeners [`crate::run`] serves. A bare TCP listener (as tests bind) serves TCP
/// only.
#[derive(Debug, Default)]
pub struct Listeners {
    pub unix: Option<UnixSocket>,
    pub tcp: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Self {
        Self {
            unix: None,
            tcp: Some(tcp),
        }
    }
}

impl From<UnixSocket> for Listeners {
    fn from(unix: UnixSocket) -> Self {
        Self {
            unix: Some(unix),
            tcp: None,
        }
    }
}

/// Binds what `config` asks for: the unix socket (given to the socket group) and the
/// TCP address.
pub async fn bind(config: &Config) -> Result<Listeners, ListenError> {
    let socket_path = config.grpc_socket.as_on();
    let tcp_addr = config.grpc_addr.as_on();
    if socket_path.is_none() && tcp_addr.is_none() {
        return Err(ListenError::NothingToServe);
    }
    if let Some(addr) = tcp_addr {
        check_tcp_addr(*addr, config.tls_cert.is_some())?;
    }
    let unix = match socket_path {
        Some(path) => {
            let group =
                SocketGroup::resolve(&config.grpc_socket_group).map_err(ListenError::Group)?;
            Some(UnixSocket::bind(path, &group)?)
        }
        None => None,
    };
    let tcp = match tcp_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ListenError::Tcp {
                    addr: *addr,
                    source,
                })?,
        ),
        None => None,
    };
    Ok(Listeners { unix, tcp })
}

/// Refuses a TCP address beyond loopback unless TLS is configured.
pub fn check_tcp_addr(addr: SocketAddr, tls: bool) -> Result<(), ListenError> {
    if addr.ip().is_loopback() || tls {
        Ok(())
    } else {
        Err(ListenError::NotLoopbackWithoutTls(addr))
    }
}

/// The runtime's unix socket; dropping it removes the socket file (when it is still the
/// one this value bound).
#[derive(Debug)]
pub struct UnixSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    inode: (u64, u64),
}

impl UnixSocket {
    /// Binds `path` (making its folder 0755 when missing, replacing a stale socket),
    /// mode 0660, group `group`. Needs a tokio runtime.
    pub fn bind(path: &Path, group: &SocketGroup) -> Result<Self, ListenError> {
        let fail = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| ListenError::Socket {
                path,
                action,
                source,
            }
        };
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty())
            && !folder.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(SOCKET_DIR_MODE)
                .create(folder)
                .map_err(fail("create its folder"))?;
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(fail("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(fail("set mode 0660"))?;
        let meta = std::fs::metadata(path).map_err(fail("read its metadata"))?;
        if meta.gid() != group.gid {
            std::os::unix::fs::chown(path, None, Some(group.gid))
                .map_err(fail("give it to the socket group"))?;
        }
        Ok(Self {
            listener: Some(listener),
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once; the socket file stays until this value drops.
    pub(crate) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the grpc socket");
        }
    }
}

/// Removes a socket file nobody answers on (left by a killed runtime); refuses a live
/// one and anything that is not a socket.
fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Socket {
                path: path.to_path_buf(),
                action: "read its metadata",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing the stale grpc socket of an earlier run");
            std::fs::remove_file(path).map_err(|source| ListenError::Socket {
                path: path.to_path_buf(),
                action: "remove the stale socket",
                source,
            })
        }
        Err(source) => Err(ListenError::Socket {
            path: path.to_path_buf(),
            action: "check whether a runtime answers on it",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_group() -> SocketGroup {
        SocketGroup::resolve(&nix::unistd::getegid().as_raw().to_string()).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_0660_in_a_new_0755_folder_replaces_a_stale_one_and_goes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/quilt/runtime.sock");
        let socket = UnixSocket::bind(&path, &root_group()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), SOCKET_MODE);
        assert_eq!(mode(path.parent().unwrap()), SOCKET_DIR_MODE);
        // A second runtime is refused while the first answers.
        let e = UnixSocket::bind(&path, &root_group()).unwrap_err();
        assert!(matches!(e, ListenError::InUse(_)), "{e}");
        drop(socket);
        assert!(!path.exists(), "the socket file outlived its runtime");

        // A killed run leaves its file; nobody answers on it, so it is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let socket = UnixSocket::bind(&path, &root_group()).unwrap();
        assert_eq!(socket.path(), path);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.sock");
        std::fs::write(&path, "keep me").unwrap();
        let e = UnixSocket::bind(&path, &root_group()).unwrap_err();
        assert!(matches!(e, ListenError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn tcp_beyond_loopback_needs_tls() {
        assert!(check_tcp_addr("127.0.0.1:50051".parse().unwrap(), false).is_ok());
        assert!(check_tcp_addr("[::1]:50051".parse().unwrap(), false).is_ok());
        let e = check_tcp_addr("0.0.0.0:50051".parse().unwrap(), false).unwrap_err();
        assert!(
            e.to_string().contains("0.0.0.0:50051 is not loopback"),
            "{e}"
        );
        assert!(check_tcp_addr("0.0.0.0:50051".parse().unwrap(), true).is_ok());
    }
}
