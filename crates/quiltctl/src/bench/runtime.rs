//! `quiltctl bench runtime`: route programming through quilt-runtime's gRPC API against
//! `ip -batch`, in network namespaces this command makes and removes. Prints routes/s for
//! both, their ratio, single-call InjectRoute latency p50/p99, and the runtime's RSS.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quilt_kernel::netns::{self, OwnedNetns};
use quilt_proto as pb;
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

use super::scratch;
use crate::cli::RuntimeArgs;

/// The benchmark's runtime listens on a unix socket in its state folder, as a node's
/// does by default (and on no TCP port).
const SOCKET_NAME: &str = "runtime.sock";

/// Runs the benchmark with the runtime binary found in `bin_dir`.
pub fn run(args: RuntimeArgs, bin_dir: &Path) -> anyhow::Result<ExitCode> {
    quilt_lab::lab::preflight(bin_dir, false, false)?;
    let runtime_bin = bin_dir.join(quilt_lab::lab::RUNTIME_BIN);
    println!(
        "quiltctl bench runtime: {} routes, batch {}, concurrency {}",
        args.routes, args.batch, args.concurrency
    );

    // Baselines: ip -batch with nexthop objects (what the runtime programs) and with
    // per-route onlink gateways (what naive overlays program).
    let baseline = ip_batch(args.routes, true)?;
    let onlink = ip_batch(args.routes, false)?;
    println!(
        "ip -batch, nexthop objects : {:>9.0} routes/s ({:.3} s)",
        rate(args.routes, baseline),
        baseline.as_secs_f64()
    );
    println!(
        "ip -batch, onlink gateways : {:>9.0} routes/s ({:.3} s)",
        rate(args.routes, onlink),
        onlink.as_secs_f64()
    );

    // The runtime, batched.
    let batched = with_runtime(&runtime_bin, |runtime| {
        Box::pin(async move {
            let started = Instant::now();
            let mut client = runtime.client;
            let routes: Vec<_> = (0..args.routes).map(route_request).collect();
            for chunk in routes.chunks(args.batch) {
                let answer = client
                    .inject_routes(pb::InjectRoutesRequest {
                        routes: chunk.to_vec(),
                    })
                    .await?
                    .into_inner();
                if let Some(failed) = answer.results.iter().find(|r| !r.success) {
                    bail!("InjectRoutes refused a route: {}", failed.error);
                }
            }
            Ok(started.elapsed())
        })
    })?;
    println!(
        "quilt-runtime InjectRoutes : {:>9.0} routes/s ({:.3} s)  ratio to ip -batch nexthop {:.2}x",
        rate(args.routes, batched.0),
        batched.0.as_secs_f64(),
        baseline.as_secs_f64() / batched.0.as_secs_f64()
    );

    // The runtime, single calls: throughput at concurrency, then latency one at a time,
    // then RSS with every route in place.
    let concurrency = args.concurrency;
    let latency_calls = args.latency_calls;
    let total = args.routes;
    let (single, latencies, rss_kb, round_trips) = with_runtime(&runtime_bin, move |runtime| {
        Box::pin(async move {
            let BenchRuntime {
                client,
                channel,
                pid,
                ..
            } = runtime;
            let started = Instant::now();
            let per_task = total.div_ceil(concurrency as u32);
            let mut tasks = Vec::new();
            for t in 0..concurrency as u32 {
                let mut client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (t * per_task)..((t + 1) * per_task).min(total) {
                        let r = client.inject_route(route_request(i)).await?.into_inner();
                        if !r.success {
                            bail!("InjectRoute refused: {}", r.error);
                        }
                    }
                    anyhow::Ok(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let single = started.elapsed();
            let rss_kb =
                quilt_lab::process::status_kib(pid, "VmRSS").map_err(anyhow::Error::msg)?;
            let mut client = client;
            let mut latencies = Vec::with_capacity(latency_calls as usize);
            for i in 0..latency_calls {
                let request = route_request(total + i);
                let t = Instant::now();
                let r = client.inject_route(request).await?.into_inner();
                latencies.push(t.elapsed());
                if !r.success {
                    bail!("InjectRoute refused: {}", r.error);
                }
            }
            // The anchor: the same connection's round trip for an RPC that does no work.
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let mut round_trips = Vec::with_capacity(latency_calls as usize);
            for _ in 0..latency_calls {
                let t = Instant::now();
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                round_trips.push(t.elapsed());
            }
            Ok((single, latencies, rss_kb, round_trips))
        })
    })?
    .0;
    let mut latencies = latencies;
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "quilt-runtime InjectRoute  : {:>9.0} routes/s ({:.3} s, {} concurrent callers)  ratio to ip -batch nexthop {:.2}x",
        rate(args.routes, single),
        single.as_secs_f64(),
        args.concurrency,
        baseline.as_secs_f64() / single.as_secs_f64()
    );
    println!(
        "InjectRoute latency, one call at a time: p50 {:.0} us, p99 {:.0} us (target p50 < 200 us)",
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6
    );
    let mut round_trips = round_trips;
    round_trips.sort();
    let rt =
        |q: f64| round_trips[((round_trips.len() as f64 * q) as usize).min(round_trips.len() - 1)];
    println!(
        "anchor, gRPC round trip doing no work (health Check), same connection: p50 {:.0} us, p99 {:.0} us",
        rt(0.50).as_secs_f64() * 1e6,
        rt(0.99).as_secs_f64() * 1e6
    );
    println!(
        "quilt-runtime RSS with {} routes: {:.1} MB (target < 15 MB)",
        args.routes,
        rss_kb as f64 / 1024.0
    );

    // TLS on and off, same run: one call at a time over loopback TCP, plain and TLS.
    let mut p50 = Vec::new();
    for transport in [Transport::Tcp, Transport::Tls] {
        let calls = args.latency_calls;
        let (mut latencies,) = with_runtime_over(&runtime_bin, transport, move |runtime| {
            Box::pin(async move {
                let mut client = runtime.client;
                let mut latencies = Vec::with_capacity(calls as usize);
                for i in 0..calls {
                    let t = Instant::now();
                    let r = client.inject_route(route_request(i)).await?.into_inner();
                    latencies.push(t.elapsed());
                    if !r.success {
                        bail!("InjectRoute refused: {}", r.error);
                    }
                }
                Ok(latencies)
            })
        })?;
        latencies.sort();
        p50.push(latencies[latencies.len() / 2]);
    }
    println!(
        "InjectRoute p50 over loopback TCP, TLS off / on (same run): {:.0} us / {:.0} us, TLS costs {:.2}x",
        p50[0].as_secs_f64() * 1e6,
        p50[1].as_secs_f64() * 1e6,
        p50[1].as_secs_f64() / p50[0].as_secs_f64()
    );
    scratch::release_kept();
    Ok(ExitCode::SUCCESS)
}

fn rate(n: u32, d: Duration) -> f64 {
    f64::from(n) / d.as_secs_f64()
}

/// Route `i`: 10.X.Y.0/24 via 10.X.Y.0 over vxlan100, inside cluster 10.0.0.0/8.
fn route_request(i: u32) -> pb::InjectRouteRequest {
    let gateway = Ipv4Addr::from(0x0A00_0000 + ((i + 256) << 8));
    pb::InjectRouteRequest {
        destination: format!("{gateway}/24"),
        via_interface: "vxlan100".into(),
        gateway: gateway.to_string(),
    }
}

/// A namespace with `underlay0` (one end of a veth pair, 192.168.60.1/24) and `vxlan100`
/// (VNI 100, UDP 4789, nolearning) over it, all up.
pub(super) fn bench_host() -> anyhow::Result<OwnedNetns> {
    let ns = scratch::namespace()?;
    for args in [
        "link add underlay0 type veth peer name underlay0p",
        "addr add 192.168.60.1/24 dev underlay0",
        "link set underlay0 up",
        "link set underlay0p up",
        "link add vxlan100 type vxlan id 100 local 192.168.60.1 dev underlay0 dstport 4789 nolearning",
        "link set vxlan100 up",
    ] {
        ns.ip(&args.split(' ').collect::<Vec<_>>())?;
    }
    Ok(ns)
}

/// Programs `n` routes with one `ip -batch` run in a fresh namespace; answers its time.
fn ip_batch(n: u32, nexthops: bool) -> anyhow::Result<Duration> {
    let ns = bench_host()?;
    let mut script = String::new();
    for i in 0..n {
        let r = route_request(i);
        if nexthops {
            let id = i + 1;
            script.push_str(&format!(
                "nexthop add id {id} via {} dev vxlan100 onlink\n",
                r.gateway
            ));
            script.push_str(&format!("route add {} nhid {id}\n", r.destination));
        } else {
            script.push_str(&format!(
                "route add {} via {} dev vxlan100 onlink\n",
                r.destination, r.gateway
            ));
        }
    }
    let path = std::env::temp_dir().join(format!("{}.batch", ns.name()));
    std::fs::write(&path, script)?;
    let started = Instant::now();
    let status = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-batch"])
        .arg(&path)
        .status()?;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&path);
    scratch::keep(ns);
    if !status.success() {
        bail!("ip -batch failed");
    }
    Ok(elapsed)
}

pub(super) type BenchFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>;

/// A runtime [`with_runtime`] started, as its benchmark sees it.
pub(super) struct BenchRuntime {
    /// A client from inside the runtime's namespace.
    pub client: QuiltRuntimeClient<Channel>,
    pub channel: Channel,
    pub pid: u32,
    /// The namespace the runtime runs in (the host).
    pub netns: String,
    /// The runtime's unix socket, as a client address.
    pub address: String,
}

/// The node subnet [`with_runtime`] configures.
pub(super) const SUBNET: &str = "10.0.0.0/24";

/// Starts quilt-runtime in a fresh namespace with node subnet [`SUBNET`], runs `f` from
/// inside it, and stops it; answers `f`'s result.
pub(super) fn with_runtime<T: Send + 'static>(
    bin: &Path,
    f: impl FnOnce(BenchRuntime) -> BenchFuture<T> + Send,
) -> anyhow::Result<(T,)> {
    with_runtime_over(bin, Transport::Unix, f)
}

/// How the benchmark reaches its runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// The unix socket in its state folder, as a node's agent does by default.
    Unix,
    /// TCP on the namespace's loopback, in plain text.
    Tcp,
    /// TCP on the namespace's loopback, with TLS (a CA and certificate made for the run).
    Tls,
}

/// [`with_runtime`] over `transport`.
pub(super) fn with_runtime_over<T: Send + 'static>(
    bin: &Path,
    transport: Transport,
    f: impl FnOnce(BenchRuntime) -> BenchFuture<T> + Send,
) -> anyhow::Result<(T,)> {
    let ns = bench_host()?;
    let state = scratch::temp_dir()?;
    let socket = state.path().join(SOCKET_NAME);
    let tcp = "127.0.0.1:50051";
    let mut listen: Vec<std::ffi::OsString> = Vec::new();
    let mut tls = quilt_proto::connect::TlsOptions::default();
    let address = match transport {
        Transport::Unix => {
            listen.extend([
                "--grpc-addr".into(),
                "off".into(),
                "--grpc-socket".into(),
                socket.clone().into(),
            ]);
            format!("unix:{}", socket.display())
        }
        Transport::Tcp => {
            listen.extend([
                "--grpc-addr".into(),
                tcp.into(),
                "--grpc-socket".into(),
                "off".into(),
            ]);
            format!("http://{tcp}")
        }
        Transport::Tls => {
            let certs = state.path().join("pki");
            let made = super::control::Tls::make(&certs)?;
            listen.extend([
                "--grpc-addr".into(),
                tcp.into(),
                "--grpc-socket".into(),
                "off".into(),
                "--tls-cert".into(),
                made.server.cert.into(),
                "--tls-key".into(),
                made.server.key.into(),
            ]);
            tls.ca = Some(made.ca);
            format!("https://{tcp}")
        }
    };
    let mut child: Child = ns
        .command(bin)
        .args(&listen)
        .args([
            "--cluster-cidr",
            "10.0.0.0/8",
            "--node-prefix-len",
            "24",
            "--log-level",
            "warn",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(Stdio::null())
        .spawn()
        .context("start quilt-runtime")?;
    let pid = child.id();
    let netns_name = ns.name().to_string();
    let result = netns::run_in(ns.name(), move || {
        // One thread: the client does little per call, and a second worker would only
        // add cross-thread wake-ups to every measured round trip.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut connected = None;
            for _ in 0..200 {
                let endpoint = quilt_proto::connect::endpoint_with(
                    &address,
                    quilt_proto::connect::Timeouts::default(),
                    &tls,
                )?;
                match endpoint.connect().await {
                    Ok(channel) => {
                        connected = Some(channel);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                }
            }
            let channel = connected.context("quilt-runtime did not answer")?;
            let mut client = QuiltRuntimeClient::new(channel.clone());
            let answer = client
                .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                    subnet: SUBNET.into(),
                })
                .await?
                .into_inner();
            if !answer.success {
                bail!("ConfigureNodeSubnet: {}", answer.error);
            }
            f(BenchRuntime {
                client,
                channel,
                pid,
                netns: netns_name,
                address: address.clone(),
            })
            .await
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    scratch::keep(ns);
    let _ = std::io::stdout().flush();
    Ok((result??,))
}
