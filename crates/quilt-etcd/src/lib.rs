//! quilt-etcd: what the control plane needs of etcd, and nothing more.
//!
//! - [`pb`]: the etcd v3 API subset in `proto/`, generated at build time without a system
//!   `protoc` (which is why this is not the `etcd-client` crate: its build needs one).
//! - [`client`]: [`EtcdClient`], calls to a list of members with failover between them.
//! - [`ops`]: building keys ranges, reads, writes and compares for transactions.
//! - [`member`]: the flags that start a real etcd member, for the lab and the tests.

pub mod client;
pub mod member;
pub mod ops;

/// The generated etcd v3 messages and clients.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    /// etcd's storage messages: keys with revisions, watch events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's gRPC services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub use etcdserverpb::*;
    pub use mvccpb::{Event, KeyValue, event::EventType};
}

pub use client::{EtcdClient, EtcdError, WatchStream};
