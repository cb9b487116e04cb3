//! `quiltctl bench control`: the control plane's release binary as a child process on
//! loopback over a fresh SQLite database, measured through [`ControlClient`] (the client
//! every Quilt Mesh program uses): registrations/s and heartbeats/s at a concurrency, the
//! time from one change to each of many open watch streams reading it, and the server's RSS.

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

use super::scratch;
use crate::cli::ControlArgs;

type Watch = Pin<Box<dyn Stream<Item = Result<WatchEvent, ControlError>> + Send>>;

/// Runs the benchmark with the control-plane binary found in `bin_dir`.
pub fn run(args: ControlArgs, bin_dir: &Path) -> anyhow::Result<ExitCode> {
    let binary = bin_dir.join(quilt_lab::lab::CONTROL_BIN);
    if !binary.is_file() {
        bail!(
            "{} not found; build it first: cargo build --release -p quilt-mesh-control",
            binary.display()
        );
    }
    let fd_limit = raise_fd_limit(args.watchers)?;
    let dir = scratch::temp_dir()?;
    let mut server = Server::start(&binary, dir.path(), &args, None)?;
    let rt = tokio::runtime::Runtime::new()?;
    let plain = rt.block_on(measure(&args, &server, fd_limit));
    server.stop();
    let plain = plain?;
    // The same registrations and heartbeats over TLS, in the same run. The server asks
    // for no client certificate: under mutual TLS each node needs its own, naming its
    // host, and one client registers a thousand hosts here.
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let tls = Tls::make(&tls_dir)?;
    let mut server = Server::start(&binary, &tls_dir, &args, Some(&tls))?;
    let secured = rt.block_on(unary_rates(&args, &server, Some(&tls)));
    server.stop();
    let (registrations, heartbeats) = secured?;
    println!();
    println!(
        "over TLS (same run): registrations/s {registrations:.0} ({:.2}x plain, target >= 0.80x), heartbeats/s {heartbeats:.0} ({:.2}x plain)",
        registrations / plain.0,
        heartbeats / plain.1
    );
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
async fn unary_rates(
    args: &ControlArgs,
    server: &Server,
    tls: Option<&Tls>,
) -> anyhow::Result<(f64, f64)> {
    let client = client_of(server, tls)?;
    let started = Instant::now();
    let nodes = register_all(&client, args.nodes, args.concurrency).await?;
    let registrations = rate(args.nodes, started.elapsed());
    let started = Instant::now();
    let beats = heartbeat_for(&client, &nodes, args.concurrency, args.heartbeat_seconds).await?;
    Ok((registrations, rate(beats, started.elapsed())))
}

/// The server process, stopped with SIGTERM when the benchmark ends or is interrupted.
struct Server {
    child: Child,
    url: String,
    binary: PathBuf,
}

impl Server {
    fn start(
        binary: &Path,
        dir: &Path,
        args: &ControlArgs,
        tls: Option<&Tls>,
    ) -> anyhow::Result<Self> {
        let ready = dir.join("ready");
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
            .args(["--listen", "127.0.0.1:0", "--log-level", "error"])
            .args(["--node-prefix-len", "26", "--heartbeat-timeout", "5m"])
            // Every watcher is a connection from this one address.
            .arg("--max-connections-per-client")
            .arg((args.watchers + 2 * args.concurrency + 16).to_string())
            .arg("--max-watchers")
            .arg((args.watchers + 16).to_string())
            .arg("--max-watchers-per-client")
            .arg((args.watchers + 16).to_string())
            .arg("--db-path")
            .arg(dir.join("bench.db"))
            .arg("--ready-file")
            .arg(&ready)
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
            binary: binary.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        server.url = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break format!("{scheme}://{}", text.trim());
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready",
                    binary.display()
                );
            }
            if Instant::now() >= deadline {
                bail!("{} was not ready after 20 s", binary.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                scratch::forget_child(self.pid());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        scratch::forget_child(self.pid());
    }
}

/// The plain run; answers its registrations/s and heartbeats/s for the TLS comparison.
async fn measure(args: &ControlArgs, server: &Server, fd_limit: u64) -> anyhow::Result<(f64, f64)> {
    let pid = server.pid();
    let rss_idle = status_kib(pid, "VmRSS").map_err(anyhow::Error::msg)?;
    println!(
        "quiltctl bench control: {} pid {pid} on {}; open file limit {fd_limit}",
        server.binary.display(),
        server.url
    );
    let client = client_of(server, None)?;

    // 1. registrations
    let started = Instant::now();
    let nodes = register_all(&client, args.nodes, args.concurrency).await?;
    let registrations = rate(args.nodes, started.elapsed());

    // 2. heartbeats
    let started = Instant::now();
    let beats = heartbeat_for(&client, &nodes, args.concurrency, args.heartbeat_seconds).await?;
    let heartbeat_time = started.elapsed();
    let heartbeats = rate(beats, heartbeat_time);

    // 3. fan-out: watchers, then one change
    let revision = client.list().await?.revision;
    let mut watches = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        let watch: Watch = Box::pin(client.watch(revision).await?);
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
    client.register(&node_request(usize::MAX)).await?;
    let mut latencies = Vec::with_capacity(readers.len());
    let mut open = Vec::with_capacity(readers.len());
    for reader in readers {
        let (received, watch) = reader.await??;
        latencies.push(received.saturating_duration_since(t0));
        open.push(watch);
    }

    // 4. memory with every node and every watcher
    let rss = status_kib(pid, "VmRSS").map_err(anyhow::Error::msg)?;
    let hwm = status_kib(pid, "VmHWM").map_err(anyhow::Error::msg)?;
    drop(open);

    let q = |p: f64| quantile(&latencies, p).unwrap_or_default();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let row = |measure: String, result: String, target: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        println!("{measure:<46} {result:>16} {target:>10} {verdict:>7}");
    };
    println!();
    row("measure".into(), "result".into(), "target", None);
    row(
        format!(
            "registrations/s ({} at concurrency {})",
            args.nodes, args.concurrency
        ),
        format!("{registrations:.0}"),
        ">= 2000",
        Some(registrations >= 2000.0),
    );
    row(
        format!(
            "heartbeats/s ({beats} in {:.1} s, conc. {})",
            heartbeat_time.as_secs_f64(),
            args.concurrency
        ),
        format!("{heartbeats:.0}"),
        ">= 10000",
        Some(heartbeats >= 10000.0),
    );
    let n = args.watchers;
    row(format!("fan-out p50 to {n} watchers"), ms(q(0.5)), "", None);
    row(
        format!("fan-out p99 to {n} watchers"),
        ms(q(0.99)),
        "< 100 ms",
        Some(q(0.99) < Duration::from_millis(100)),
    );
    row("fan-out max".into(), ms(q(1.0)), "", None);
    row(
        format!("server RSS, {} nodes + {n} watchers", args.nodes + 1),
        mib(rss),
        "< 50 MB",
        Some(rss * 1024 < 50_000_000),
    );
    row(
        "server peak RSS (VmHWM) / idle RSS at start".into(),
        format!("{} / {}", mib(hwm), mib(rss_idle)),
        "",
        None,
    );
    Ok((registrations, heartbeats))
}

/// Registers `count` nodes from `concurrency` tasks; answers each node's id and token.
async fn register_all(
    client: &Arc<ControlClient>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut nodes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(nodes);
                    }
                    let answer = client
                        .register(&node_request(i))
                        .await
                        .with_context(|| format!("registration {i}"))?;
                    nodes.push((answer.node.node_id, answer.node_token));
                }
            })
        })
        .collect();
    let mut nodes = Vec::with_capacity(count);
    for task in tasks {
        nodes.extend(task.await??);
    }
    Ok(nodes)
}

/// Sends heartbeats, each with its node's token, from `concurrency` tasks for `seconds`;
/// answers how many were accepted.
async fn heartbeat_for(
    client: &Arc<ControlClient>,
    nodes: &[(String, String)],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<usize> {
    let nodes = Arc::new(nodes.to_vec());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, nodes) = (client.clone(), nodes.clone());
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
