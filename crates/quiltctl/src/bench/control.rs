//! `quiltctl bench control`: the control plane's release binary as child processes on
//! loopback, measured through [`ControlClient`] (the client every Quilt Mesh program uses):
//! registrations/s and heartbeats/s at a concurrency, the time from one change to each of
//! many open watch streams reading it, and the servers' RSS.
//!
//! By default one server over a fresh SQLite database, then the same over TLS. With
//! `--store etcd`, the SQLite server and then replicas over an etcd cluster started for
//! the run ([`super::etcd`]), the load spread over the replicas, etcd's revisions per
//! heartbeat, and the ratio etcd/SQLite of each figure. `--growth` is in [`super::growth`].

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use quilt_api::types::{EventType, RegisterRequest, WatchEvent};
use quilt_api::{ControlClient, ControlError};
use quilt_lab::bench::quantile;
use quilt_lab::process::status_kib;
use serde_json::{Value, json};

use super::etcd::EtcdMembers;
use super::scratch;
use crate::cli::{BenchStore, ControlArgs};

type Watch = Pin<Box<dyn Stream<Item = Result<WatchEvent, ControlError>> + Send>>;

/// The cluster every measurement but `--growth` runs: room for 60,000 nodes.
const CLUSTER_CIDR: &str = "10.0.0.0/8";
const NODE_PREFIX_LEN: u8 = 24;

/// The etcd key prefix of the replicas.
const ETCD_PREFIX: &str = "/quilt-bench";

/// Runs the benchmark with the control-plane binary found in `bin_dir`.
pub fn run(args: ControlArgs, bin_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let binary = bin_dir.join(quilt_lab::lab::CONTROL_BIN);
    if !binary.is_file() {
        bail!(
            "{} not found; build it first: cargo build --release -p quilt-mesh-control",
            binary.display()
        );
    }
    let fd_limit = raise_fd_limit(args.watchers)?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = scratch::temp_dir()?;
    let spec = Spec {
        binary: &binary,
        args: &args,
        cidr: CLUSTER_CIDR,
        prefix: NODE_PREFIX_LEN,
    };
    if args.growth {
        return super::growth::run(&spec, dir.path(), &rt, json);
    }
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "quiltctl bench control: {}; open file limit {fd_limit}",
        binary.display()
    ));
    let sqlite = {
        let mut plane = Plane::sqlite(&spec, &dir.path().join("sqlite"), None)?;
        say(format!("SQLite: {}", plane.describe()));
        let figures = rt.block_on(measure(&args, &plane));
        plane.stop();
        figures?
    };
    match args.store {
        BenchStore::Sqlite => {
            // The same registrations and heartbeats over TLS, in the same run. The server
            // asks for no client certificate: under mutual TLS each node needs its own,
            // naming its host, and one client registers a thousand hosts here.
            let tls_dir = dir.path().join("tls");
            std::fs::create_dir_all(&tls_dir)?;
            let tls = Tls::make(&tls_dir)?;
            let mut plane = Plane::sqlite(&spec, &tls_dir, Some(&tls))?;
            let secured = rt.block_on(unary_rates(&args, &plane));
            plane.stop();
            let (registrations, heartbeats) = secured?;
            if json {
                println!(
                    "{}",
                    json!({"sqlite": sqlite.to_json(),
                           "tls": {"registrations_per_s": registrations, "heartbeats_per_s": heartbeats,
                                   "registrations_ratio": registrations / sqlite.registrations,
                                   "heartbeats_ratio": heartbeats / sqlite.heartbeats}})
                );
            } else {
                print_sqlite(&args, &sqlite);
                println!();
                println!(
                    "over TLS (same run): registrations/s {registrations:.0} ({:.2}x plain, target >= 0.80x), heartbeats/s {heartbeats:.0} ({:.2}x plain)",
                    registrations / sqlite.registrations,
                    heartbeats / sqlite.heartbeats
                );
            }
        }
        BenchStore::Etcd => {
            let mut plane = Plane::etcd(
                &spec,
                &dir.path().join("etcd"),
                args.replicas,
                args.etcd_members,
                &rt,
            )?;
            say(format!(
                "etcd: {} replicas over {} members: {}",
                args.replicas,
                args.etcd_members,
                plane.describe()
            ));
            let figures = rt.block_on(measure(&args, &plane));
            plane.stop();
            let etcd = figures?;
            if json {
                println!(
                    "{}",
                    json!({"sqlite": sqlite.to_json(), "etcd": etcd.to_json(),
                           "replicas": args.replicas, "etcd_members": args.etcd_members,
                           "ratios": ratios_json(&sqlite, &etcd)})
                );
            } else {
                print_compared(&args, &sqlite, &etcd);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A CA and the server's certificate (for 127.0.0.1) for a benchmark's TLS run.
pub(super) struct Tls {
    pub(super) ca: PathBuf,
    pub(super) server: quilt_tls::Identity,
}

impl Tls {
    pub(super) fn make(dir: &Path) -> anyhow::Result<Tls> {
        use quilt_lab::pki::{self, Subject};
        pki::init(dir, 1, true)?;
        let issue = |name: &str| {
            pki::issue(
                dir,
                &Subject {
                    name: name.into(),
                    ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
                    dns: vec![],
                    days: 1,
                },
                true,
            )
            .map(|i| quilt_tls::Identity {
                cert: i.cert,
                key: i.key,
            })
        };
        Ok(Tls {
            ca: dir.join(pki::CA_CERT),
            server: issue("server")?,
        })
    }
}

/// How the servers of one measurement are started.
pub(super) struct Spec<'a> {
    pub(super) binary: &'a Path,
    /// For the connection and watcher caps, sized to the load.
    pub(super) args: &'a ControlArgs,
    pub(super) cidr: &'a str,
    pub(super) prefix: u8,
}

/// The servers of one measurement (one over SQLite, or replicas over etcd), a client of
/// each, and the etcd cluster they share.
pub(super) struct Plane {
    servers: Vec<Server>,
    pub(super) clients: Vec<Arc<ControlClient>>,
    pub(super) etcd: Option<EtcdMembers>,
}

impl Plane {
    /// One server over a fresh SQLite database in `dir`, over TLS when `tls` is given.
    pub(super) fn sqlite(spec: &Spec, dir: &Path, tls: Option<&Tls>) -> anyhow::Result<Plane> {
        std::fs::create_dir_all(dir)?;
        let db: Vec<OsString> = vec!["--db-path".into(), dir.join("bench.db").into()];
        let server = Server::start(spec, &dir.join("ready"), &db, tls)?;
        Ok(Plane {
            clients: vec![client_of(&server, tls)?],
            servers: vec![server],
            etcd: None,
        })
    }

    /// `replicas` servers over a fresh etcd cluster of `members` with data dirs in `dir`.
    pub(super) fn etcd(
        spec: &Spec,
        dir: &Path,
        replicas: usize,
        members: usize,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Plane> {
        std::fs::create_dir_all(dir)?;
        let etcd = EtcdMembers::start(dir, members, rt)?;
        let mut plane = Plane {
            servers: Vec::new(),
            clients: Vec::new(),
            etcd: None,
        };
        for i in 0..replicas {
            let store: Vec<OsString> = vec![
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoints_flag().into(),
                "--etcd-prefix".into(),
                ETCD_PREFIX.into(),
            ];
            let server = Server::start(spec, &dir.join(format!("ready-{i}")), &store, None)?;
            plane.clients.push(client_of(&server, None)?);
            plane.servers.push(server);
        }
        plane.etcd = Some(etcd);
        Ok(plane)
    }

    /// `pid N on URL` of each server.
    fn describe(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("pid {} on {}", s.pid(), s.url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The largest RSS (or other `/proc/PID/status` figure) of the servers, KiB.
    fn largest(&self, field: &str) -> anyhow::Result<u64> {
        let mut largest = 0;
        for server in &self.servers {
            largest = largest.max(status_kib(server.pid(), field).map_err(anyhow::Error::msg)?);
        }
        Ok(largest)
    }

    /// Stops the servers, then etcd.
    pub(super) fn stop(&mut self) {
        for server in &mut self.servers {
            scratch::stop(&mut server.child);
        }
        self.servers.clear();
        if let Some(etcd) = &mut self.etcd {
            etcd.stop();
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client of `server`, over TLS when `tls` is given.
fn client_of(server: &Server, tls: Option<&Tls>) -> anyhow::Result<Arc<ControlClient>> {
    Ok(Arc::new(
        ControlClient::builder([server.url.clone()])
            .no_proxy()
            .tls(tls.map(|t| quilt_api::ClientTls {
                ca: t.ca.clone(),
                identity: None,
            }))
            .build()?,
    ))
}

/// Registrations/s and heartbeats/s of `args.nodes` nodes, as [`measure`] takes them.
async fn unary_rates(args: &ControlArgs, plane: &Plane) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let nodes = register_all(&plane.clients, 0..args.nodes, args.concurrency).await?;
    let registrations = rate(args.nodes, started.elapsed());
    let started = Instant::now();
    let beats = heartbeat_for(
        &plane.clients,
        &nodes,
        args.concurrency,
        args.heartbeat_seconds,
    )
    .await?;
    Ok((registrations, rate(beats, started.elapsed())))
}

/// A server process, stopped with SIGTERM when the benchmark ends or is interrupted.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts the binary of `spec` with `store` flags; it writes its address to `ready`.
    fn start(
        spec: &Spec,
        ready: &Path,
        store: &[OsString],
        tls: Option<&Tls>,
    ) -> anyhow::Result<Self> {
        let binary = spec.binary;
        let args = spec.args;
        let tls_args: Vec<&std::ffi::OsStr> = match tls {
            Some(t) => vec![
                "--tls-cert".as_ref(),
                t.server.cert.as_os_str(),
                "--tls-key".as_ref(),
                t.server.key.as_os_str(),
            ],
            None => Vec::new(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let child = Command::new(binary)
            .args(&tls_args)
            .args(store)
            .args(["--listen", "127.0.0.1:0", "--log-level", "error"])
            .args(["--cluster-cidr", spec.cidr])
            .arg("--node-prefix-len")
            .arg(spec.prefix.to_string())
            .args(["--heartbeat-timeout", "5m"])
            // Every watcher is a connection from this one address.
            .arg("--max-connections-per-client")
            .arg((args.watchers + 2 * args.concurrency + 16).to_string())
            .arg("--max-watchers")
            .arg((args.watchers + 16).to_string())
            .arg("--max-watchers-per-client")
            .arg((args.watchers + 16).to_string())
            .arg("--ready-file")
            .arg(ready)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        scratch::track_child(child.id());
        let mut server = Server {
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        server.url = loop {
            if let Ok(text) = std::fs::read_to_string(ready) {
                break format!("{scheme}://{}", text.trim());
            }
            if let Some(status) = server.child.try_wait()? {
                scratch::forget_child(server.pid());
                bail!(
                    "{} exited with {status} before it was ready",
                    binary.display()
                );
            }
            if Instant::now() >= deadline {
                scratch::stop(&mut server.child);
                bail!("{} was not ready after 20 s", binary.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// What one measurement found.
pub(super) struct Figures {
    nodes: usize,
    registrations: f64,
    beats: usize,
    heartbeat_time: Duration,
    heartbeats: f64,
    /// From the change to each watcher reading it.
    fanout: Vec<Duration>,
    rss_kib: u64,
    hwm_kib: u64,
    idle_kib: u64,
    /// etcd's revisions over the heartbeat phase, per heartbeat accepted.
    revisions_per_heartbeat: Option<f64>,
    etcd_rss_kib: Option<u64>,
    /// etcd alone, in the same run: registration-shaped transactions per second.
    etcd_baseline_txns: Option<f64>,
}

impl Figures {
    fn fanout(&self, q: f64) -> Duration {
        quantile(&self.fanout, q).unwrap_or_default()
    }

    fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "nodes": self.nodes,
            "registrations_per_s": self.registrations,
            "heartbeats": self.beats,
            "heartbeat_seconds": self.heartbeat_time.as_secs_f64(),
            "heartbeats_per_s": self.heartbeats,
            "watchers": self.fanout.len(),
            "fanout_p50_ms": ms(self.fanout(0.5)),
            "fanout_p99_ms": ms(self.fanout(0.99)),
            "fanout_max_ms": ms(self.fanout(1.0)),
            "server_rss_kib": self.rss_kib,
            "server_peak_rss_kib": self.hwm_kib,
            "server_idle_rss_kib": self.idle_kib,
            "etcd_revisions_per_heartbeat": self.revisions_per_heartbeat,
            "etcd_rss_kib": self.etcd_rss_kib,
            "etcd_baseline_txns_per_s": self.etcd_baseline_txns,
        })
    }
}

/// Registrations, heartbeats, fan-out and memory of `plane`, the load spread over its
/// servers (caller `k` and watcher `k` go to server `k mod n`).
async fn measure(args: &ControlArgs, plane: &Plane) -> anyhow::Result<Figures> {
    let idle_kib = plane.largest("VmRSS")?;
    let clients = &plane.clients;
    // 0. etcd alone, on the same cluster: the most registrations it could carry.
    let etcd_baseline_txns = match &plane.etcd {
        Some(etcd) => Some(
            etcd.registration_shaped_txns(args.nodes, args.concurrency)
                .await?,
        ),
        None => None,
    };

    // 1. registrations
    let started = Instant::now();
    let nodes = register_all(clients, 0..args.nodes, args.concurrency).await?;
    let registrations = rate(args.nodes, started.elapsed());

    // 2. heartbeats, with etcd's revision before and after
    let revision_before = match &plane.etcd {
        Some(etcd) => Some(etcd.revision().await?),
        None => None,
    };
    let started = Instant::now();
    let beats = heartbeat_for(clients, &nodes, args.concurrency, args.heartbeat_seconds).await?;
    let heartbeat_time = started.elapsed();
    let heartbeats = rate(beats, heartbeat_time);
    let revisions_per_heartbeat = match (&plane.etcd, revision_before) {
        (Some(etcd), Some(before)) => Some((etcd.revision().await? - before) as f64 / beats as f64),
        _ => None,
    };

    // 3. fan-out: watchers, then one change
    let mut revisions = Vec::with_capacity(clients.len());
    for client in clients {
        revisions.push(client.list().await?.revision);
    }
    let mut watches = Vec::with_capacity(args.watchers);
    for w in 0..args.watchers {
        let k = w % clients.len();
        let watch: Watch = Box::pin(clients[k].watch(revisions[k]).await?);
        watches.push(watch);
    }
    let readers: Vec<_> = watches
        .into_iter()
        .map(|mut watch| {
            tokio::spawn(async move {
                let event = watch.next().await.context("a watch stream ended")??;
                let received = Instant::now();
                if event.kind != EventType::Added {
                    bail!("a watcher read {:?} first, not the new node", event.kind);
                }
                anyhow::Ok((received, watch)) // kept open until the RSS is read
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    clients[0].register(&node_request(usize::MAX)).await?;
    let mut fanout = Vec::with_capacity(readers.len());
    let mut open = Vec::with_capacity(readers.len());
    for reader in readers {
        let (received, watch) = reader.await??;
        fanout.push(received.saturating_duration_since(t0));
        open.push(watch);
    }

    // 4. memory with every node and every watcher
    let rss_kib = plane.largest("VmRSS")?;
    let hwm_kib = plane.largest("VmHWM")?;
    let etcd_rss_kib = plane.etcd.as_ref().map(EtcdMembers::rss_kib);
    drop(open);
    Ok(Figures {
        nodes: args.nodes,
        registrations,
        beats,
        heartbeat_time,
        heartbeats,
        fanout,
        rss_kib,
        hwm_kib,
        idle_kib,
        revisions_per_heartbeat,
        etcd_baseline_txns,
        etcd_rss_kib,
    })
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The SQLite server's figures against its targets.
fn print_sqlite(args: &ControlArgs, f: &Figures) {
    let row = |measure: String, result: String, target: &str, ok: Option<bool>| {
        println!("{measure:<46} {result:>16} {target:>10} {:>7}", verdict(ok));
    };
    println!();
    row("measure".into(), "result".into(), "target", None);
    row(
        format!(
            "registrations/s ({} at concurrency {})",
            f.nodes, args.concurrency
        ),
        format!("{:.0}", f.registrations),
        ">= 2000",
        Some(f.registrations >= 2000.0),
    );
    row(
        format!(
            "heartbeats/s ({} in {:.1} s, conc. {})",
            f.beats,
            f.heartbeat_time.as_secs_f64(),
            args.concurrency
        ),
        format!("{:.0}", f.heartbeats),
        ">= 10000",
        Some(f.heartbeats >= 10000.0),
    );
    let n = f.fanout.len();
    row(
        format!("fan-out p50 to {n} watchers"),
        ms(f.fanout(0.5)),
        "",
        None,
    );
    row(
        format!("fan-out p99 to {n} watchers"),
        ms(f.fanout(0.99)),
        "< 100 ms",
        Some(f.fanout(0.99) < Duration::from_millis(100)),
    );
    row("fan-out max".into(), ms(f.fanout(1.0)), "", None);
    row(
        format!("server RSS, {} nodes + {n} watchers", f.nodes + 1),
        mib(f.rss_kib),
        "< 50 MB",
        Some(f.rss_kib * 1024 < 50_000_000),
    );
    row(
        "server peak RSS (VmHWM) / idle RSS at start".into(),
        format!("{} / {}", mib(f.hwm_kib), mib(f.idle_kib)),
        "",
        None,
    );
}

/// etcd over SQLite for each figure (for times: etcd's time over SQLite's).
fn ratios_json(sqlite: &Figures, etcd: &Figures) -> Value {
    let secs = |d: Duration| d.as_secs_f64();
    json!({
        "registrations": etcd.registrations / sqlite.registrations,
        "heartbeats": etcd.heartbeats / sqlite.heartbeats,
        "fanout_p50": secs(etcd.fanout(0.5)) / secs(sqlite.fanout(0.5)),
        "fanout_p99": secs(etcd.fanout(0.99)) / secs(sqlite.fanout(0.99)),
        "fanout_max": secs(etcd.fanout(1.0)) / secs(sqlite.fanout(1.0)),
        "server_rss": etcd.rss_kib as f64 / sqlite.rss_kib as f64,
    })
}

/// SQLite and etcd side by side, the ratio, and etcd's targets.
fn print_compared(args: &ControlArgs, sqlite: &Figures, etcd: &Figures) {
    let row = |measure: &str, s: String, e: String, ratio: String, target: &str, ok| {
        println!(
            "{measure:<40} {s:>12} {e:>12} {ratio:>11} {target:>10} {:>7}",
            verdict(ok)
        );
    };
    let x = |r: f64| format!("{r:.2}x");
    let time_ratio =
        |q: f64| x(etcd.fanout(q).as_secs_f64() / sqlite.fanout(q).as_secs_f64().max(1e-9));
    let n = etcd.fanout.len();
    println!();
    println!(
        "etcd: {} replicas over {} etcd members, the load spread over the replicas",
        args.replicas, args.etcd_members
    );
    row(
        "measure",
        "SQLite".into(),
        "etcd".into(),
        "etcd/SQLite".into(),
        "target",
        None,
    );
    row(
        &format!(
            "registrations/s ({}, conc. {})",
            etcd.nodes, args.concurrency
        ),
        format!("{:.0}", sqlite.registrations),
        format!("{:.0}", etcd.registrations),
        x(etcd.registrations / sqlite.registrations),
        ">= 1000",
        Some(etcd.registrations >= 1000.0),
    );
    row(
        &format!(
            "heartbeats/s ({:.0} s, conc. {})",
            etcd.heartbeat_time.as_secs_f64(),
            args.concurrency
        ),
        format!("{:.0}", sqlite.heartbeats),
        format!("{:.0}", etcd.heartbeats),
        x(etcd.heartbeats / sqlite.heartbeats),
        "",
        None,
    );
    row(
        &format!("fan-out p50 to {n} watchers"),
        ms(sqlite.fanout(0.5)),
        ms(etcd.fanout(0.5)),
        time_ratio(0.5),
        "",
        None,
    );
    row(
        &format!("fan-out p99 to {n} watchers"),
        ms(sqlite.fanout(0.99)),
        ms(etcd.fanout(0.99)),
        time_ratio(0.99),
        "< 200 ms",
        Some(etcd.fanout(0.99) < Duration::from_millis(200)),
    );
    row(
        "fan-out max",
        ms(sqlite.fanout(1.0)),
        ms(etcd.fanout(1.0)),
        time_ratio(1.0),
        "",
        None,
    );
    if let Some(baseline) = etcd.etcd_baseline_txns {
        row(
            &format!(
                "etcd alone: node-shaped txns/s (conc. {})",
                args.concurrency
            ),
            "-".into(),
            format!("{baseline:.0}"),
            String::new(),
            "",
            None,
        );
        row(
            "registrations / etcd alone",
            "-".into(),
            x(etcd.registrations / baseline),
            String::new(),
            "",
            None,
        );
    }
    let per_beat = etcd.revisions_per_heartbeat.unwrap_or(f64::NAN);
    row(
        &format!("etcd writes per heartbeat ({} beats)", etcd.beats),
        "-".into(),
        format!("{per_beat:.3}"),
        String::new(),
        "<= 1",
        Some(per_beat <= 1.0),
    );
    row(
        "server RSS (etcd: the largest replica)",
        mib(sqlite.rss_kib),
        mib(etcd.rss_kib),
        x(etcd.rss_kib as f64 / sqlite.rss_kib as f64),
        "< 50 MB",
        Some(etcd.rss_kib * 1024 < 50_000_000),
    );
    row(
        "etcd members' RSS, added up",
        "-".into(),
        mib(etcd.etcd_rss_kib.unwrap_or(0)),
        String::new(),
        "",
        None,
    );
}

/// Registers nodes `range` from `concurrency` tasks, task `t` through `clients[t mod n]`;
/// answers each node's id and token.
pub(super) async fn register_all(
    clients: &[Arc<ControlClient>],
    range: Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (client, next) = (clients[t % clients.len()].clone(), next.clone());
            tokio::spawn(async move {
                let mut nodes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return anyhow::Ok(nodes);
                    }
                    let answer = client
                        .register(&node_request(i))
                        .await
                        .with_context(|| format!("registration {i} through {:?}", client.urls()))?;
                    nodes.push((answer.node.node_id, answer.node_token));
                }
            })
        })
        .collect();
    let mut nodes = Vec::with_capacity(range.len());
    for task in tasks {
        nodes.extend(task.await??);
    }
    Ok(nodes)
}

/// Sends heartbeats, each with its node's token, from `concurrency` tasks for `seconds`
/// (task `t` through `clients[t mod n]`); answers how many were accepted.
async fn heartbeat_for(
    clients: &[Arc<ControlClient>],
    nodes: &[(String, String)],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<usize> {
    let nodes = Arc::new(nodes.to_vec());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, nodes) = (clients[worker % clients.len()].clone(), nodes.clone());
            tokio::spawn(async move {
                let (mut i, mut sent) = (worker, 0);
                while Instant::now() < deadline {
                    let (id, token) = &nodes[i % nodes.len()];
                    client.heartbeat(id, token, None).await?;
                    sent += 1;
                    i += concurrency;
                }
                anyhow::Ok(sent)
            })
        })
        .collect();
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok(sent)
}

/// Node `i` of the benchmark (`usize::MAX`: the change the watchers wait for).
fn node_request(i: usize) -> RegisterRequest {
    if i == usize::MAX {
        return RegisterRequest::new("the-change", "10.250.0.1");
    }
    RegisterRequest {
        hostname: format!("bench-{i}"),
        host_ip: format!("10.{}.{}.{}", 100 + i / 60000, (i / 250) % 240, i % 250 + 1),
        cpu_cores: Some(4),
        ram_mb: Some(8192),
        vtep_mac: Some(format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256)),
        subnet: None,
        vxlan_port: None,
        vni: None,
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Raises the soft open-file limit to the hard one: each watcher holds a socket here and
/// one in the server (which inherits the limit).
fn raise_fd_limit(watchers: usize) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < 2 * watchers as u64 + 256 {
        bail!(
            "open file limit {soft} is too low for {watchers} watchers; raise it (ulimit -n 8192)"
        );
    }
    Ok(soft)
}
