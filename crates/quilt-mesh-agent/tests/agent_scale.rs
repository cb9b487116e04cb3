//! A resync with 1,000 peers makes a bounded number of runtime calls, not one per
//! peer: the agent against an in-process control plane (in-memory store) and runtime
//! (fake kernel), with a fake overlay. The calls are counted from the runtime's own
//! per-RPC metrics. No root needed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use quilt_api::ControlClient;
use quilt_api::types::RegisterRequest;
use quilt_kernel::fake::FakeKernel;
use quilt_kernel::fake_overlay::FakeOverlay;
use quilt_testkit::control::ControlServer;
use quilt_testkit::fake_runtime::FakeRuntime;
use quilt_testkit::wait::eventually;
use tokio::sync::oneshot;

const PEERS: usize = 1000;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The runtime's RPC counts by method (all results), from its `/metrics`.
async fn rpc_counts(metrics: SocketAddr) -> BTreeMap<String, u64> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("quilt_runtime_rpc_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("method=\""))
            .unwrap()
            .trim_end_matches('"')
            .to_string();
        *counts.entry(method).or_default() += value.trim().parse::<u64>().unwrap();
    }
    counts
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_with_a_thousand_peers_makes_a_bounded_number_of_runtime_calls() {
    let dir = tempfile::tempdir().unwrap();
    // /26 subnets so that 1,001 nodes fit in 10.42.0.0/16.
    let control_server =
        ControlServer::start_in_memory(&["--node-prefix-len", "26", "--heartbeat-timeout", "600s"])
            .await;
    let control = control_server.base.clone();
    // The runtime, on a fake kernel, with its metrics endpoint.
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let runtime_server = FakeRuntime::start(
        &[
            "--node-prefix-len",
            "26",
            "--metrics-addr",
            &metrics.to_string(),
        ],
        FakeKernel::new(),
    )
    .await;
    let runtime = runtime_server.addr;

    // 1,000 peers, registered before the agent starts.
    let client = ControlClient::builder([control.as_str()])
        .no_proxy()
        .build()
        .unwrap();
    futures::stream::iter(0..PEERS)
        .for_each_concurrent(16, |n| {
            let client = &client;
            async move {
                let request = RegisterRequest {
                    hostname: format!("peer{n}"),
                    host_ip: format!("192.168.{}.{}", 100 + n / 200, 10 + n % 200),
                    cpu_cores: None,
                    ram_mb: None,
                    vtep_mac: Some(format!("02:00:00:00:{:02x}:{:02x}", n / 256, n % 256)),
                    subnet: None,
                    vxlan_port: None,
                    vni: None,
                };
                client.register(&request).await.unwrap();
            }
        })
        .await;

    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let runtime_addr = format!("http://{runtime}");
    let state_dir = dir.path().join("agent");
    let config = quilt_mesh_agent::Config::parse_from([
        "quilt-mesh-agent",
        "--control-plane",
        &control,
        "--host-ip",
        "192.168.77.11",
        "--hostname",
        "self",
        "--runtime-addr",
        &runtime_addr,
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--resync-interval",
        "1s",
    ]);
    let (stop_agent, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(quilt_mesh_agent::run(
        config,
        overlay.clone(),
        quilt_kernel::firewall::fake::FakeFirewall::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // Converged: every peer's entries on the device and its route in one InjectRoutes.
    eventually(
        Duration::from_secs(60),
        "1,000 peers in place",
        async || {
            overlay.neighbours_of("vxlan100").len() == PEERS
                && overlay.fdb_of("vxlan100").len() == PEERS
                && rpc_counts(metrics).await.contains_key("InjectRoutes")
        },
    )
    .await;
    let initial = rpc_counts(metrics).await;
    println!(
        "initial sync with {PEERS} peers: {} runtime calls {initial:?}",
        total(&initial)
    );
    assert!(total(&initial) < 20, "{initial:?}");
    assert_eq!(initial["InjectRoutes"], 1, "{initial:?}");
    assert!(!initial.contains_key("InjectRoute"), "{initial:?}");

    // Resyncs of the converged agent: each reads the runtime's routes and changes nothing.
    eventually(Duration::from_secs(20), "two resyncs", async || {
        let now = rpc_counts(metrics).await;
        now.get("ListRoutes").copied().unwrap_or(0) >= initial["ListRoutes"] + 2
    })
    .await;
    let after = rpc_counts(metrics).await;
    let resyncs = delta(&after, &initial);
    let passes = resyncs["ListRoutes"];
    println!(
        "{passes} resyncs of the converged agent: {} runtime calls {resyncs:?}",
        total(&resyncs)
    );
    assert_eq!(
        resyncs.keys().collect::<Vec<_>>(),
        vec!["ListRoutes"],
        "a converged resync only lists: {resyncs:?}"
    );

    // And the routes are all there.
    let mut runtime_client = quilt_proto::connect::connect(&runtime_addr, Default::default())
        .await
        .unwrap();
    let routes = runtime_client
        .list_routes(quilt_proto::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert_eq!(routes.len(), PEERS);
    assert!(
        routes
            .iter()
            .all(|r| r.in_kernel && r.via_interface == "vxlan100")
    );

    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    drop((control_server, runtime_server));
}
