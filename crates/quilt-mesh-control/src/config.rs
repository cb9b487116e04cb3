//! Command-line flags (each also read from a `QUILT_CONTROL_*` environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use quilt_common::ClusterNetwork;
use quilt_common::defaults;
use quilt_common::flags::control as flags;

/// Where nodes and leases are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One SQLite file: one control plane on one machine.
    Sqlite,
    /// An etcd cluster: several replicas share it, any one serves the whole API.
    Etcd,
}

/// How the control plane runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "quilt-mesh-control",
    version,
    about = "Quilt Mesh control plane: node registry, subnet leases, heartbeats, watch",
    long_about = "Quilt Mesh control plane: node registry, subnet leases, heartbeats, watch.\n\nOne replica over SQLite (the default), or several replicas over one etcd cluster (--store etcd), any of which serves the whole API. `quilt-mesh-control migrate` moves a cluster from SQLite to etcd.",
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where nodes and leases are kept: `sqlite` (--db-path) or `etcd` (--etcd-endpoints).
    #[arg(long = flags::STORE, env = "QUILT_CONTROL_STORE", value_enum, default_value = "sqlite")]
    pub store: StoreKind,

    /// etcd client URLs, comma-separated (`http://10.0.0.1:2379,http://10.0.0.2:2379`); with
    /// --store etcd. Every replica of one cluster names the same etcd cluster and prefix.
    #[arg(long = flags::ETCD_ENDPOINTS, env = "QUILT_CONTROL_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// The etcd key prefix this cluster's keys live under (several clusters can share one
    /// etcd with different prefixes).
    #[arg(long = flags::ETCD_PREFIX, env = "QUILT_CONTROL_ETCD_PREFIX", default_value = "/quilt")]
    pub etcd_prefix: String,

    /// Address to listen on for HTTP.
    #[arg(
        long = flags::LISTEN,
        visible_alias = "bind",
        env = "QUILT_CONTROL_LISTEN",
        default_value = defaults::CONTROL_LISTEN
    )]
    pub listen: SocketAddr,

    /// SQLite database file (created if missing; `-wal` and `-shm` files live beside it).
    #[arg(long = flags::DB_PATH, env = "QUILT_CONTROL_DB_PATH", default_value = "quilt-mesh.db")]
    pub db_path: PathBuf,

    /// The cluster CIDR that node subnets are leased from.
    #[arg(
        long,
        env = "QUILT_CONTROL_CLUSTER_CIDR",
        default_value = defaults::CLUSTER_CIDR
    )]
    pub cluster_cidr: Ipv4Net,

    /// Prefix length of each node's subnet.
    #[arg(long, env = "QUILT_CONTROL_NODE_PREFIX_LEN", default_value_t = 24)]
    pub node_prefix_len: u8,

    /// A node not heard from for this long is marked down (like `30s`, `500ms`, `2m`).
    #[arg(long = flags::HEARTBEAT_TIMEOUT, env = "QUILT_CONTROL_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = quilt_common::duration::parse)]
    pub heartbeat_timeout: Duration,

    /// Token that registering nodes must present as `Authorization: Bearer <token>`.
    /// Without it (or `--join-token-file`) the control plane runs open. Prefer the file:
    /// a command line is readable by every user of the machine.
    #[arg(long = flags::JOIN_TOKEN, env = "QUILT_CONTROL_JOIN_TOKEN", hide_env_values = true, conflicts_with = "join_token_file")]
    pub join_token: Option<String>,

    /// A file holding the join token (mode 0600 or stricter; refused when others can read it).
    #[arg(long = flags::JOIN_TOKEN_FILE, env = "QUILT_CONTROL_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,

    /// PEM certificate (chain) to serve HTTPS with; needs --tls-key. Re-read on SIGHUP
    /// and when a TLS file changes.
    #[arg(long = flags::TLS_CERT, env = "QUILT_CONTROL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = flags::TLS_KEY, env = "QUILT_CONTROL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA: every client must present a certificate it issued (mutual TLS), and a
    /// node's certificate must name the node's host IP to act as that node. Needs
    /// --tls-cert.
    #[arg(long = flags::TLS_CA, env = "QUILT_CONTROL_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Log level or filter (`info`, `debug`, `info,quilt_mesh_control=debug`); RUST_LOG wins.
    #[arg(long = flags::LOG_LEVEL, env = "QUILT_CONTROL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How many recent watch events are kept so watchers can resume from a revision.
    #[arg(long, env = "QUILT_CONTROL_WATCH_HISTORY", default_value_t = 4096)]
    pub watch_history: usize,

    /// Open HTTP connections in all; past it a new connection is answered 503 and closed.
    /// Also kept below the open-file limit (raised to its hard limit at start).
    #[arg(long, env = "QUILT_CONTROL_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,

    /// Open HTTP connections from one client address; past it, 503 and closed.
    #[arg(long, env = "QUILT_CONTROL_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_client: usize,

    /// A watch stream that sent nothing for this long sends a bare newline (a keepalive
    /// line, skipped by NDJSON readers), and names it in `X-Quilt-Keepalive-Ms`: clients
    /// take three silent intervals for a dead replica. Connections that leave data
    /// unacknowledged for two intervals (at least 3 s) are dropped (TCP_USER_TIMEOUT), so
    /// a dead client's watch ends within three intervals of its death.
    #[arg(long, env = "QUILT_CONTROL_WATCH_KEEPALIVE", default_value = "3s", value_parser = quilt_common::duration::parse)]
    pub watch_keepalive: Duration,

    /// Open watch streams in all; past it a new watch is answered 503 (Retry-After).
    #[arg(long, env = "QUILT_CONTROL_MAX_WATCHERS", default_value_t = 2048, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_watchers: usize,

    /// Open watch streams from one client address (an agent needs one); past it, 429.
    #[arg(long, env = "QUILT_CONTROL_MAX_WATCHERS_PER_CLIENT", default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_watchers_per_client: usize,

    /// A connection that sends no complete request head for this long (idle between
    /// requests, or sending headers slowly) is closed.
    #[arg(long, env = "QUILT_CONTROL_IDLE_TIMEOUT", default_value = "60s", value_parser = quilt_common::duration::parse)]
    pub idle_timeout: Duration,

    /// Longest time to read a request's body and answer it (the watch stream excepted);
    /// past it, 408.
    #[arg(long, env = "QUILT_CONTROL_REQUEST_TIMEOUT", default_value = "30s", value_parser = quilt_common::duration::parse)]
    pub request_timeout: Duration,

    /// Once listening, write the bound address as `IP:PORT` and a newline to this file
    /// (written beside it, then renamed into place), so a supervisor or test started with
    /// `--listen 127.0.0.1:0` learns the port without reading the log.
    #[arg(long, env = "QUILT_CONTROL_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Other jobs than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copies a cluster from SQLite into an empty etcd prefix: every node with its id,
    /// subnet, token hash and heartbeat, and the revision, so no node re-registers. Stop
    /// the SQLite control plane first; start the etcd replicas after.
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The SQLite database to read, as `sqlite:PATH`.
    #[arg(long, value_parser = parse_sqlite_source)]
    pub from: PathBuf,
    /// The etcd cluster to write, as `etcd:URL[,URL...]`.
    #[arg(long, value_parser = parse_etcd_target)]
    pub to: EtcdTarget,
    /// The key prefix to write under (it must hold no nodes yet).
    #[arg(long = flags::ETCD_PREFIX, default_value = "/quilt")]
    pub etcd_prefix: String,
    /// The cluster CIDR the database was made for (a different one is refused).
    #[arg(long, default_value = defaults::CLUSTER_CIDR)]
    pub cluster_cidr: Ipv4Net,
    /// The node prefix length the database was made for.
    #[arg(long, default_value_t = 24)]
    pub node_prefix_len: u8,
}

impl MigrateArgs {
    /// The cluster plan being moved.
    pub fn plan(&self) -> Result<ClusterNetwork, ConfigError> {
        Ok(ClusterNetwork::new(
            self.cluster_cidr,
            self.node_prefix_len,
        )?)
    }
}

/// The etcd endpoints of `--to etcd:URLS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget(pub Vec<String>);

fn parse_sqlite_source(value: &str) -> Result<PathBuf, String> {
    match value.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!("{value:?} is not sqlite:PATH")),
    }
}

fn parse_etcd_target(value: &str) -> Result<EtcdTarget, String> {
    let urls: Vec<String> = value
        .strip_prefix("etcd:")
        .unwrap_or_default()
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(format!("{value:?} is not etcd:URL[,URL...]"));
    }
    if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!("etcd endpoint {bad:?} is not an http:// URL"));
    }
    Ok(EtcdTarget(urls))
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cluster(#[from] quilt_common::ClusterError),
    #[error("join token is empty; leave --join-token out to run open")]
    EmptyJoinToken,
    #[error("heartbeat timeout {0:?} is too short; it must be at least 10ms")]
    TimeoutTooShort(Duration),
    #[error(transparent)]
    JoinTokenFile(#[from] quilt_common::secret_file::SecretFileError),
    #[error("--store etcd needs --etcd-endpoints (like http://127.0.0.1:2379)")]
    NoEtcdEndpoints,
    #[error("etcd endpoint {0:?} is not an http:// URL (like http://127.0.0.1:2379)")]
    BadEtcdEndpoint(String),
    #[error("etcd prefix {0:?} must start with / and hold no spaces")]
    BadEtcdPrefix(String),
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Self {
        <Self as clap::Parser>::parse_from(["quilt-mesh-control"])
    }

    /// The join token: from `--join-token-file` (read now), else `--join-token`.
    pub fn join_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match &self.join_token_file {
            Some(path) => Some(quilt_common::secret_file::read(path)?),
            None => self.join_token.clone(),
        };
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::EmptyJoinToken);
        }
        Ok(token)
    }

    /// Checks the flags together and answers the cluster's address plan.
    pub fn validate(&self) -> Result<ClusterNetwork, ConfigError> {
        if self
            .join_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::EmptyJoinToken);
        }
        if self.heartbeat_timeout < Duration::from_millis(10) {
            return Err(ConfigError::TimeoutTooShort(self.heartbeat_timeout));
        }
        if self.store == StoreKind::Etcd {
            if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
                return Err(ConfigError::NoEtcdEndpoints);
            }
            if let Some(bad) = self
                .etcd_endpoints
                .iter()
                .find(|e| !e.trim().starts_with("http://"))
            {
                return Err(ConfigError::BadEtcdEndpoint(bad.clone()));
            }
            check_etcd_prefix(&self.etcd_prefix)?;
        }
        Ok(ClusterNetwork::new(
            self.cluster_cidr,
            self.node_prefix_len,
        )?)
    }
}

/// An etcd prefix: absolute, printable, no spaces.
pub fn check_etcd_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = prefix.starts_with('/')
        && prefix.len() > 1
        && prefix.len() <= 256
        && prefix.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadEtcdPrefix(prefix.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_etcd_store_needs_endpoints_and_a_sane_prefix() {
        let c = Config::parse_from(["x", "--store", "etcd"]);
        assert!(matches!(c.validate(), Err(ConfigError::NoEtcdEndpoints)));
        let c = Config::parse_from([
            "x",
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379,http://127.0.0.1:2479",
        ]);
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert!(c.validate().is_ok());
        let c = Config::parse_from(["x", "--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379"]);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("127.0.0.1:2379")
        );
        let c = Config::parse_from([
            "x",
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://a:1",
            "--etcd-prefix",
            "quilt",
        ]);
        assert!(matches!(c.validate(), Err(ConfigError::BadEtcdPrefix(_))));
    }

    #[test]
    fn migrate_names_its_source_and_target() {
        let c = Config::parse_from([
            "x",
            "migrate",
            "--from",
            "sqlite:/var/lib/quilt/quilt-mesh.db",
            "--to",
            "etcd:http://a:2379,http://b:2379",
        ]);
        let Some(Command::Migrate(m)) = c.command else {
            panic!("not migrate")
        };
        assert_eq!(m.from, PathBuf::from("/var/lib/quilt/quilt-mesh.db"));
        assert_eq!(m.to.0, ["http://a:2379", "http://b:2379"]);
        assert!(
            Config::try_parse_from(["x", "migrate", "--from", "/x.db", "--to", "etcd:http://a:1"])
                .is_err()
        );
        assert!(
            Config::try_parse_from(["x", "migrate", "--from", "sqlite:/x", "--to", "etcd:"])
                .is_err()
        );
    }

    #[test]
    fn durations_use_the_shared_parser() {
        let c = Config::parse_from(["x", "--heartbeat-timeout", "1.5s"]);
        assert_eq!(c.heartbeat_timeout, Duration::from_millis(1500));
        assert!(Config::try_parse_from(["x", "--heartbeat-timeout", "3x"]).is_err());
        assert!(Config::try_parse_from(["x", "--heartbeat-timeout", "0s"]).is_err());
    }

    #[test]
    fn defaults_follow_the_original_and_bind_is_an_alias() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.db_path, PathBuf::from("quilt-mesh.db"));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(c.watch_keepalive, Duration::from_secs(3));
        assert_eq!(
            c.validate().unwrap().subnet_at(1).unwrap().to_string(),
            "10.42.1.0/24"
        );
        let c = Config::parse_from([
            "x",
            "--bind",
            "0.0.0.0:9000",
            "--heartbeat-timeout",
            "500ms",
        ]);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.heartbeat_timeout, Duration::from_millis(500));
        let c = Config::parse_from(["x", "--join-token", " "]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["x", "--node-prefix-len", "8"]);
        assert!(c.validate().unwrap_err().to_string().contains("/8"));
    }
}
