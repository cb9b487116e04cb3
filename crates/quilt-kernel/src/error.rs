//! Errors of kernel operations, each naming the object and the value that failed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("a route for {destination} already exists (proto {protocol})")]
    RouteExists { destination: Ipv4Net, protocol: u8 },
    #[error(
        "nexthop {id} for gateway {gateway} already exists and belongs to route protocol {protocol}, not ours"
    )]
    ForeignNexthop {
        id: u32,
        gateway: Ipv4Addr,
        protocol: u8,
    },
    #[error("{operation} failed: {message} (errno {errno})")]
    Netlink {
        operation: String,
        errno: i32,
        message: String,
    },
    #[error("{operation} failed: {message}")]
    Other { operation: String, message: String },
    #[error("network namespace {name}: {message}")]
    Netns { name: String, message: String },
}

impl KernelError {
    /// The positive errno of a netlink failure, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn from_rtnetlink(operation: impl Into<String>, err: rtnetlink::Error) -> Self {
        let operation = operation.into();
        match err {
            rtnetlink::Error::NetlinkError(msg) => {
                let errno = msg.code.map(|c| -c.get()).unwrap_or(0);
                KernelError::Netlink {
                    operation,
                    errno,
                    message: std::io::Error::from_raw_os_error(errno).to_string(),
                }
            }
            other => KernelError::Other {
                operation,
                message: other.to_string(),
            },
        }
    }

    /// The refusal of [`crate::Kernel::ensure_bridge`] when a link called `name` exists
    /// and is not a bridge: one place, so the real kernel and the fake say the same.
    pub(crate) fn not_a_bridge(name: &str) -> Self {
        KernelError::Other {
            operation: format!("set up bridge {name}"),
            message: format!("{name} exists and is not a bridge; it is left alone"),
        }
    }

    pub(crate) fn from_errno(operation: impl Into<String>, errno: i32) -> Self {
        KernelError::Netlink {
            operation: operation.into(),
            errno,
            message: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    pub(crate) fn io(operation: impl Into<String>, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => Self::from_errno(operation, errno),
            None => KernelError::Other {
                operation: operation.into(),
                message: err.to_string(),
            },
        }
    }
}
