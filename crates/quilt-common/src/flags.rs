//! The daemons' command-line flag names, shared by their clap configurations and by the
//! programs that start them (the lab), so that a renamed flag is renamed for both and a
//! removed one breaks the build of its callers.

/// `--NAME` for the flag `name`.
pub fn arg(name: &str) -> String {
    format!("--{name}")
}

/// quilt-mesh-control's flags.
pub mod control {
    pub const LISTEN: &str = "listen";
    pub const DB_PATH: &str = "db-path";
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat-timeout";
    pub const JOIN_TOKEN: &str = "join-token";
    pub const JOIN_TOKEN_FILE: &str = "join-token-file";
    pub const LOG_LEVEL: &str = "log-level";
    pub const TLS_CERT: &str = "tls-cert";
    pub const TLS_KEY: &str = "tls-key";
    pub const TLS_CA: &str = "tls-ca";
    pub const STORE: &str = "store";
    pub const ETCD_ENDPOINTS: &str = "etcd-endpoints";
    pub const ETCD_PREFIX: &str = "etcd-prefix";
}

/// quilt-runtime's flags.
pub mod runtime {
    pub const GRPC_ADDR: &str = "grpc-addr";
    pub const GRPC_SOCKET: &str = "grpc-socket";
    pub const GRPC_SOCKET_GROUP: &str = "grpc-socket-group";
    pub const TLS_CERT: &str = "tls-cert";
    pub const TLS_KEY: &str = "tls-key";
    pub const TLS_CA: &str = "tls-ca";
    pub const STATE_DIR: &str = "state-dir";
    pub const RECONCILE_INTERVAL: &str = "reconcile-interval";
    pub const LOG_LEVEL: &str = "log-level";
}

/// quilt-mesh-agent's flags.
pub mod agent {
    pub const CONTROL_PLANE: &str = "control-plane";
    pub const HOST_IP: &str = "host-ip";
    pub const HOSTNAME: &str = "hostname";
    pub const RUNTIME_ADDR: &str = "runtime-addr";
    /// The original agents' name for `--runtime-addr`, accepted as an alias.
    pub const QUILT_RUNTIME: &str = "quilt-runtime";
    pub const RUNTIME_TLS_CA: &str = "runtime-tls-ca";
    pub const RUNTIME_TLS_CERT: &str = "runtime-tls-cert";
    pub const RUNTIME_TLS_KEY: &str = "runtime-tls-key";
    pub const UNDERLAY_INTERFACE: &str = "underlay-interface";
    pub const STATE_DIR: &str = "state-dir";
    pub const JOIN_TOKEN: &str = "join-token";
    pub const JOIN_TOKEN_FILE: &str = "join-token-file";
    pub const TLS_CA: &str = "tls-ca";
    pub const TLS_CERT: &str = "tls-cert";
    pub const TLS_KEY: &str = "tls-key";
    pub const HEARTBEAT_INTERVAL: &str = "heartbeat-interval";
    pub const RESYNC_INTERVAL: &str = "resync-interval";
    pub const LOG_LEVEL: &str = "log-level";
    pub const MASQUERADE: &str = "masquerade";
    pub const MTU: &str = "mtu";
    pub const CLUSTER_CIDR: &str = "cluster-cidr";
    pub const LEAVE_ON_EXIT: &str = "leave-on-exit";
}

#[cfg(test)]
mod tests {
    #[test]
    fn arg_is_the_long_form() {
        assert_eq!(super::arg(super::control::DB_PATH), "--db-path");
    }
}
