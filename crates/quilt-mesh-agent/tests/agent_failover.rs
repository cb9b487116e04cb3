//! The agent across control-plane replicas: three URLs (a dead one, then two replica
//! stand-ins in front of one real control plane, so they share state as replicas on etcd
//! do), a real runtime over a fake kernel, a fake overlay. A replica going silent, then
//! 503 from every replica, then one coming back: the agent registers once, lists once,
//! resumes its watch from the last revision, and never removes or re-adds anything on the
//! node. No root needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;
use quilt_api::ControlClient;
use quilt_api::types::RegisterRequest;
use quilt_kernel::fake::FakeKernel;
use quilt_kernel::fake_overlay::FakeOverlay;
use quilt_testkit::control::ControlServer;
use quilt_testkit::fake_runtime::FakeRuntime;
use quilt_testkit::replica::{Mode, ReplicaProxy};
use quilt_testkit::wait::eventually;
use tokio::sync::oneshot;

async fn register_peer(control: &str, n: u8) {
    let mut request = RegisterRequest::new(format!("peer{n}"), format!("192.168.77.{}", 20 + n));
    request.vtep_mac = Some(format!("02:00:00:00:00:{n:02x}"));
    ControlClient::builder([control])
        .no_proxy()
        .build()
        .unwrap()
        .register(&request)
        .await
        .unwrap();
}

async fn routes(runtime: SocketAddr) -> Vec<String> {
    let mut client = quilt_proto::connect::connect(&runtime.to_string(), Default::default())
        .await
        .unwrap();
    let mut routes: Vec<_> = client
        .list_routes(quilt_proto::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes
        .into_iter()
        .map(|r| r.destination)
        .collect();
    routes.sort();
    routes
}

/// A loopback port nobody listens on: bound, then closed.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The request lines both replicas saw, with `prefix`, in `mode` if given.
fn requests(replicas: &[&ReplicaProxy], prefix: &str, mode: Option<Mode>) -> Vec<String> {
    replicas
        .iter()
        .flat_map(|r| r.seen())
        .filter(|s| mode.is_none_or(|m| s.mode == m) && s.request.starts_with(prefix))
        .map(|s| s.request)
        .collect()
}

/// Full node lists (`GET /api/nodes`, not the watch) both replicas saw.
fn lists(replicas: &[&ReplicaProxy]) -> usize {
    requests(replicas, "GET /api/nodes", None)
        .iter()
        .filter(|r| *r == "GET /api/nodes")
        .count()
}

/// A control plane (with `control_args`) behind two replica stand-ins, a runtime, two
/// peers, and the agent given a dead URL and both replicas, with both peers in place.
struct Mesh {
    control: ControlServer,
    p1: ReplicaProxy,
    p2: ReplicaProxy,
    runtime: FakeRuntime,
    overlay: FakeOverlay,
    stop: oneshot::Sender<()>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn mesh(control_args: &[&str]) -> Mesh {
    let mut args = vec!["--heartbeat-timeout", "60s"];
    args.extend_from_slice(control_args);
    let control = ControlServer::start(&args).await;
    let p1 = ReplicaProxy::start(&control.base).await;
    let p2 = ReplicaProxy::start(&control.base).await;
    let runtime = FakeRuntime::start(&[], FakeKernel::new()).await;
    register_peer(&control.base, 1).await;
    register_peer(&control.base, 2).await;

    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{},{},{}", dead_url().await, p1.base, p2.base);
    let config = quilt_mesh_agent::Config::parse_from([
        "quilt-mesh-agent",
        "--control-plane",
        &urls,
        "--host-ip",
        "192.168.77.11",
        "--hostname",
        "self",
        "--runtime-addr",
        &runtime.url(),
        "--state-dir",
        dir.path().join("agent").to_str().unwrap(),
        "--heartbeat-interval",
        "200ms",
        "--resync-interval",
        "10m",
    ]);
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(quilt_mesh_agent::run(
        config,
        overlay.clone(),
        quilt_kernel::firewall::fake::FakeFirewall::default(),
        async {
            let _ = stopped.await;
        },
    ));
    // The first URL is dead: the agent registers and watches through the next.
    eventually(Duration::from_secs(10), "both peers in place", async || {
        overlay.neighbours_of("vxlan100").len() == 2 && routes(runtime.addr).await.len() == 2
    })
    .await;
    // The watch opens right after the list that put the peers in place.
    eventually(
        Duration::from_secs(5),
        "the watch open through p1",
        async || !p1.requests("GET /api/nodes/watch").is_empty(),
    )
    .await;
    assert_eq!(p1.requests("POST /api/nodes/register").len(), 1);
    assert_eq!(p1.requests("GET /api/nodes/watch").len(), 1);
    Mesh {
        control,
        p1,
        p2,
        runtime,
        overlay,
        stop,
        agent,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_and_rides_out_503_everywhere_without_touching_the_node() {
    let Mesh {
        control,
        p1,
        p2,
        runtime,
        overlay,
        stop,
        agent,
        _dir,
    } = mesh(&["--watch-keepalive", "300ms"]).await;
    let both = [&p1, &p2];
    let in_place = overlay.operations().len();

    // 1. The replica in use goes silent (a paused machine): the watch ends after three
    // keepalives and resumes on the next replica from the last revision; no list.
    p1.set(Mode::Silent);
    let started = Instant::now();
    register_peer(&control.base, 3).await;
    eventually(Duration::from_secs(10), "peer 3 through p2", async || {
        routes(runtime.addr).await.len() == 3
    })
    .await;
    let took = started.elapsed();
    println!(
        "replica went silent: a new peer's route in place through the next one after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let resumed = p2.requests("GET /api/nodes/watch?since=");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_ne!(
        resumed[0], "GET /api/nodes/watch?since=0",
        "resumed from the revision seen"
    );
    eventually(
        Duration::from_secs(5),
        "heartbeats through p2",
        async || {
            p2.requests("POST /api/nodes/")
                .iter()
                .any(|r| r.ends_with("/heartbeat"))
        },
    )
    .await;

    // 2. Every replica answers 503 (the store lost quorum) for a while: nothing on the
    // node changes, no registration, heartbeats and watches keep being tried.
    p1.set(Mode::Unavailable);
    p2.set(Mode::Unavailable);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!agent.is_finished(), "the agent runs on");
    assert_eq!(routes(runtime.addr).await.len(), 3);
    let refused = requests(&both, "", Some(Mode::Unavailable));
    let heartbeats = refused.iter().filter(|r| r.ends_with("/heartbeat")).count();
    let watches = refused
        .iter()
        .filter(|r| r.starts_with("GET /api/nodes/watch"))
        .count();
    println!(
        "3 s of 503 everywhere: {heartbeats} heartbeats and {watches} watch attempts refused, {} requests in all",
        refused.len()
    );
    assert!(heartbeats >= 2 && watches >= 2, "{refused:?}");
    assert!(
        refused.iter().all(|r| !r.contains("register")),
        "no registration while the control plane answers 503: {refused:?}"
    );

    // 3. One replica comes back: the agent recovers by itself, from the last revision.
    p2.set(Mode::Forward);
    let started = Instant::now();
    register_peer(&control.base, 4).await;
    eventually(
        Duration::from_secs(15),
        "peer 4 after recovery",
        async || routes(runtime.addr).await.len() == 4,
    )
    .await;
    println!(
        "503 ended: a new peer's route in place after {:?}",
        started.elapsed()
    );

    assert_eq!(
        requests(&both, "POST /api/nodes/register", None).len(),
        1,
        "registered once"
    );
    assert_eq!(
        lists(&both),
        1,
        "listed once, at start: every watch resumed from a revision"
    );
    let since_in_place: Vec<String> = overlay.operations()[in_place..].to_vec();
    assert!(
        since_in_place
            .iter()
            .all(|o| !o.starts_with("del") && !o.starts_with("delete")),
        "nothing removed on the node: {since_in_place:?}"
    );
    assert!(
        since_in_place.iter().all(|o| !o.contains("192.168.77.21")
            && !o.contains("192.168.77.22")
            && !o.contains(":01 ")
            && !o.contains(":02 ")),
        "the first peers' entries untouched (no churn): {since_in_place:?}"
    );
    assert_eq!(
        routes(runtime.addr).await,
        [
            "10.42.1.0/24",
            "10.42.2.0/24",
            "10.42.4.0/24",
            "10.42.5.0/24"
        ]
    );

    stop.send(()).unwrap();
    agent.await.unwrap().unwrap();
    drop(control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_heartbeats_off_a_paused_replica_before_its_keepalives_run_out() {
    // The default keepalive (3 s): silence alone would end the watch only after 9 s.
    let m = mesh(&[]).await;
    m.p1.set(Mode::Silent);
    let started = Instant::now();
    register_peer(&m.control.base, 3).await;
    eventually(Duration::from_secs(10), "peer 3 through p2", async || {
        routes(m.runtime.addr).await.len() == 3
    })
    .await;
    let took = started.elapsed();
    println!(
        "replica paused (keepalive 3s): a new peer's route in place through the next one after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(lists(&[&m.p1, &m.p2]), 1, "no list: the watch resumed");
    m.stop.send(()).unwrap();
    m.agent.await.unwrap().unwrap();
}
