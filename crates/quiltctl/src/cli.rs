//! The command line: global flags, operator commands and the lab.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;

/// quiltctl: the Quilt Mesh operator CLI. Asks the control plane about nodes and leases,
/// a runtime about its routes, and builds a whole multi-host lab on this machine.
#[derive(Debug, Parser)]
#[command(name = "quiltctl", version, about, long_about = None)]
pub struct Cli {
    /// Control plane URL; repeat (or separate with commas) to fall back to the next one
    /// when one does not answer.
    #[arg(
        long,
        global = true,
        env = "QUILT_CONTROL_PLANE",
        value_delimiter = ',',
        default_value = quilt_common::defaults::CONTROL_URL
    )]
    pub control_plane: Vec<String>,

    /// The control plane's join token (needed to delete nodes when one is configured).
    #[arg(long, global = true, env = "QUILT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// PEM CA that issued the control planes' certificates, for https:// URLs.
    #[arg(long = "tls-ca", global = true, env = "QUILT_TLS_CA")]
    pub control_tls_ca: Option<std::path::PathBuf>,

    /// PEM certificate to present to a control plane started with --tls-ca; needs
    /// --tls-key and --tls-ca.
    #[arg(long = "tls-cert", global = true, env = "QUILT_TLS_CERT", requires_all = ["control_tls_key", "control_tls_ca"])]
    pub control_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long = "tls-key",
        global = true,
        env = "QUILT_TLS_KEY",
        requires = "control_tls_cert"
    )]
    pub control_tls_key: Option<std::path::PathBuf>,

    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// quiltctl's own log level (error, warn, info, debug, trace).
    #[arg(
        long,
        global = true,
        env = "QUILTCTL_LOG_LEVEL",
        default_value = "warn"
    )]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Operator(OperatorCommand),
    /// A multi-host lab on this machine, out of network namespaces (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Measure on a lab or namespaces of its own, torn down after (needs root; use release
    /// builds of the daemons for figures worth quoting).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// A certificate authority for the cluster's TLS: a CA, then one certificate per
    /// control plane, node or runtime (each serves as server and as client).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

/// `quiltctl certs ...`: files in one folder (0700), every key 0600.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA: DIR/ca.pem (give it to every daemon and client as --tls-ca) and
    /// DIR/ca-key.pem (keep it here; it signs every certificate).
    Init {
        /// The folder for the CA and the certificates it issues; created 0700.
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = quilt_lab::pki::CA_DAYS)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME-key.pem, signed by the CA in DIR, for server and
    /// client use. A node's certificate must name its host IP (--ip), or the control plane
    /// refuses it as that node.
    Issue {
        /// The folder holding the CA (see `certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's name: its common name and file name.
        #[arg(long)]
        name: String,
        /// An IP address the certificate names; repeat for several.
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// A DNS name the certificate names; repeat for several.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = quilt_lab::pki::CERT_DAYS)]
        days: u32,
        /// Replace an existing certificate of this name (to rotate it).
        #[arg(long)]
        force: bool,
    },
}

/// The commands that ask running daemons (a control plane, a runtime).
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// List nodes: id, hostname, host IP, subnet, status, last heartbeat age.
    Nodes,
    /// Act on one node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The routes a runtime manages, and whether the kernel has each.
    Routes {
        /// The runtime's gRPC address: its unix socket (`unix:/PATH` or `/PATH`),
        /// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT` (with --runtime-tls-ca).
        #[arg(
            long,
            env = "QUILT_RUNTIME_ADDR",
            default_value = quilt_common::defaults::RUNTIME_URL
        )]
        runtime: String,
        /// PEM CA that issued an https:// runtime's certificate.
        #[arg(long = "runtime-tls-ca", env = "QUILT_RUNTIME_TLS_CA")]
        tls_ca: Option<std::path::PathBuf>,
        /// PEM client certificate for a runtime started with --tls-ca.
        #[arg(
            long = "runtime-tls-cert",
            env = "QUILT_RUNTIME_TLS_CERT",
            requires = "tls_key"
        )]
        tls_cert: Option<std::path::PathBuf>,
        /// PEM private key of --runtime-tls-cert.
        #[arg(
            long = "runtime-tls-key",
            env = "QUILT_RUNTIME_TLS_KEY",
            requires = "tls_cert"
        )]
        tls_key: Option<std::path::PathBuf>,
    },
    /// Control plane health, node counts, subnet leases used and free.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// From starting the agent on a new host to the first ping answered from every
    /// existing container to a container on it; each run adds one host. p50 and p99.
    Convergence(ConvergenceArgs),
    /// iperf3 throughput and ping round trips, container to container across hosts
    /// against host to host on the underlay, in the same run.
    Dataplane(DataplaneArgs),
    /// Route programming through quilt-runtime's gRPC API (InjectRoutes in batches,
    /// concurrent and sequential InjectRoute) against `ip -batch` in the same run, in
    /// namespaces of its own; also the runtime's RSS with every route in place.
    Runtime(RuntimeArgs),
    /// The control plane's release binary on loopback over a fresh database:
    /// registrations/s, heartbeats/s, the time from one change to many watchers reading
    /// it, and its RSS with every node and watcher; with --store etcd, also replicas over
    /// a real etcd cluster in the same run, with etcd's writes per heartbeat and the
    /// ratios to SQLite; with --growth, registrations/s block by block up to 20,000 nodes.
    Control(ControlArgs),
    /// Container attach and detach through the quilt-cni binary, as a container engine
    /// runs it, against quilt-runtime in a host namespace of its own: calls/s, p50, p99.
    Cni(CniArgs),
}

/// The lab a benchmark builds.
#[derive(Debug, Clone, Args)]
pub struct BenchLab {
    /// The bench lab's name; its namespaces are called qlab-NAME-*.
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// Folder of lab state.
    #[arg(long, env = "QUILT_LAB_ROOT", default_value = quilt_lab::state::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Folder holding the daemons; the folder of quiltctl itself by default.
    #[arg(long, env = "QUILT_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Log level of the lab's daemons.
    #[arg(long, default_value = "info")]
    pub daemon_log_level: String,
}

#[derive(Debug, Args)]
pub struct ConvergenceArgs {
    #[command(flatten)]
    pub lab: BenchLab,
    /// Runs, each joining one new host.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
    /// Hosts (one container each) in the mesh before the first run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub hosts: u16,
    /// Longest a run may take.
    #[arg(long, default_value = "30s", value_parser = quilt_common::duration::parse)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Folder holding quilt-runtime; the folder of quiltctl itself by default.
    #[arg(long, env = "QUILT_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// How many routes to program.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub routes: u32,
    /// Routes per InjectRoutes call.
    #[arg(long, default_value_t = 500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub batch: usize,
    /// Concurrent single InjectRoute calls in the throughput run.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub concurrency: usize,
    /// Sequential single calls measured for latency.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub latency_calls: u32,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Folder holding quilt-mesh-control; the folder of quiltctl itself by default.
    #[arg(long, env = "QUILT_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Nodes to register.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=14_000))]
    pub nodes: usize,
    /// Concurrent callers for registrations and heartbeats.
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub concurrency: usize,
    /// Seconds of heartbeats.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub heartbeat_seconds: u64,
    /// Open watch streams that wait for one change.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20_000))]
    pub watchers: usize,
    /// What the control plane keeps its state in. `sqlite`: one server over a fresh
    /// database, then the same registrations and heartbeats over TLS. `etcd`: the SQLite
    /// server first, then --replicas servers over an etcd cluster of --etcd-members
    /// started for the run (Debian's `etcd` on loopback ports), the same load spread over
    /// the replicas, and the ratio etcd/SQLite of every figure.
    #[arg(long, value_enum, default_value_t = BenchStore::Sqlite)]
    pub store: BenchStore,
    /// Control-plane replicas over etcd (with --store etcd).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=9))]
    pub replicas: usize,
    /// Members of the etcd cluster started for the run (with --store etcd).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=7))]
    pub etcd_members: usize,
    /// Measure instead whether a registration costs as much in a big cluster as in a
    /// small one: register --growth-nodes nodes on a 10.0.0.0/8 cluster (/24 each) in
    /// blocks of --growth-block and print registrations/s per block, on SQLite and, with
    /// --store etcd, on the replicas too. Target: the last block within 1.5x of the first.
    #[arg(long)]
    pub growth: bool,
    /// Nodes registered with --growth.
    #[arg(long, default_value_t = 20_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=60_000))]
    pub growth_nodes: usize,
    /// Nodes per timed block with --growth.
    #[arg(long, default_value_t = 2_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=60_000))]
    pub growth_block: usize,
}

/// The store of `quiltctl bench control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    Sqlite,
    Etcd,
}

#[derive(Debug, Args)]
pub struct CniArgs {
    /// Folder holding quilt-runtime and quilt-cni; the folder of quiltctl itself by default.
    #[arg(long, env = "QUILT_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Containers (namespaces) attached, then detached, one at a time.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=250))]
    pub containers: u16,
}

#[derive(Debug, Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    pub lab: BenchLab,
    /// Seconds per iperf3 test.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub seconds: u32,
    /// iperf3 rounds, each underlay then overlay; medians are compared.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Pings per round-trip measurement, 10 ms apart.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub pings: u32,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node and free its subnet lease.
    Delete {
        /// The node id, for example node-3.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The control plane's cluster CIDR (the API does not tell it; for the lease count).
    #[arg(long, env = "QUILT_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// The control plane's node prefix length.
    #[arg(long, env = "QUILT_NODE_PREFIX_LEN", default_value_t = 24)]
    pub node_prefix_len: u8,
}

/// Which lab, and where labs keep their state.
#[derive(Debug, Clone, Args)]
pub struct LabTarget {
    /// The lab's name; its namespaces are called qlab-NAME-*.
    #[arg(long, env = "QUILT_LAB_NAME", default_value = "demo")]
    pub name: String,
    /// Folder of lab state (state.json, daemon data, logs by default).
    #[arg(long, env = "QUILT_LAB_ROOT", default_value = quilt_lab::state::DEFAULT_ROOT)]
    pub root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab, wait for the full mesh, print nodes, containers and the matrix.
    /// Exits 0 only when every container reaches every other.
    Up(LabUpArgs),
    /// Nodes, daemons, containers of a running lab.
    Status {
        #[command(flatten)]
        target: LabTarget,
        /// Also ping between every pair of containers and print the matrix.
        #[arg(long)]
        ping: bool,
    },
    /// Run a command inside a lab container (c1-1), host (h1) or the switch (sw).
    Exec {
        #[command(flatten)]
        target: LabTarget,
        /// `c<host>-<n>`, `h<host>` or `sw`.
        member: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop every process of the lab and delete every namespace (also after a crash).
    Down {
        #[command(flatten)]
        target: LabTarget,
        /// Delete the daemon logs too (kept by default).
        #[arg(long)]
        remove_logs: bool,
    },
    /// Stop or start one host's agent, to watch the mesh react.
    Agent {
        #[command(flatten)]
        target: LabTarget,
        #[arg(value_parser = ["stop", "start"])]
        action: String,
        /// The host: 2 or h2.
        host: String,
    },
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub target: LabTarget,
    /// Hosts (1-200).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Containers per host (0-50).
    #[arg(long, default_value_t = 1)]
    pub containers_per_node: u16,
    /// Folder holding quilt-mesh-control, quilt-runtime, quilt-mesh-agent, quilt-cni;
    /// the folder of quiltctl itself by default.
    #[arg(long, env = "QUILT_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where daemon logs go (default: ROOT/NAME/logs).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The control plane's heartbeat timeout in the lab.
    #[arg(long, default_value = "6s", value_parser = quilt_common::duration::parse)]
    pub heartbeat_timeout: Duration,
    /// The agents' heartbeat interval in the lab.
    #[arg(long, default_value = "2s", value_parser = quilt_common::duration::parse)]
    pub heartbeat_interval: Duration,
    /// The agents' full resync interval in the lab.
    #[arg(long, default_value = "60s", value_parser = quilt_common::duration::parse)]
    pub resync_interval: Duration,
    /// The runtimes' reconcile interval in the lab.
    #[arg(long, default_value = "5s", value_parser = quilt_common::duration::parse)]
    pub reconcile_interval: Duration,
    /// How long to wait for registration and for the full mesh.
    #[arg(long, default_value = "90s", value_parser = quilt_common::duration::parse)]
    pub timeout: Duration,
    /// Log level of the lab's daemons.
    #[arg(long, default_value = "info")]
    pub daemon_log_level: String,
    /// Only the underlay, the control plane and the runtimes: no agents, no containers.
    #[arg(long)]
    pub no_agents: bool,

    /// The old plain mode: the control plane over HTTP without client certificates.
    /// By default the lab makes a CA and a certificate per host (under the lab's folder,
    /// `data/pki/`, removed by `lab down`) and runs the control plane with mutual TLS and a join token.
    #[arg(long)]
    pub insecure: bool,

    /// Control-plane replicas, one per host on hosts 1..=N. One runs over SQLite; with 2
    /// or more, each of those hosts also runs an etcd member (Debian's etcd-server) and the
    /// replicas share that etcd cluster; every agent is given every replica's URL.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub control_replicas: u16,

    /// Add an outside network (203.0.113.0/24, namespace qlab-NAME-out) beyond a router on
    /// the switch (qlab-NAME-rt, the hosts' default gateway): what containers reach
    /// through the agents' masquerade.
    #[arg(long)]
    pub outside: bool,

    /// Give host N iptables' FORWARD chain with policy drop before its daemons start, as
    /// Docker leaves a host (repeatable).
    #[arg(long = "forward-drop-host", value_name = "N")]
    pub forward_drop_hosts: Vec<u16>,

    /// MTU of the underlay's links (hosts' uplinks, switch ports); the agents derive the
    /// overlay MTU from it (9000 gives 8950).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub underlay_mtu: Option<u32>,
}
