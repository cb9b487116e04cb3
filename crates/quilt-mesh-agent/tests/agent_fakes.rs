//! The agent against a real control plane and a real runtime (both in this process,
//! over real sockets), with fake kernels: peers come and go, the device vanishes, and
//! the agent keeps the entries and routes right. No root needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use quilt_api::ControlClient;
use quilt_api::types::RegisterRequest;
use quilt_kernel::fake::FakeKernel;
use quilt_kernel::fake_overlay::FakeOverlay;
use quilt_kernel::firewall::fake::FakeFirewall;
use quilt_kernel::firewall::{ForeignChain, Observed};
use quilt_kernel::overlay::{FdbEntry, Mac, Neighbour, Overlay};
use quilt_testkit::control::ControlServer;
use quilt_testkit::fake_runtime::FakeRuntime;
use quilt_testkit::wait::eventually;
use tokio::sync::oneshot;

/// A control plane and a runtime (fake kernel) in this process; stopped on drop.
struct Cluster {
    control: String,
    runtime: SocketAddr,
    dir: tempfile::TempDir,
    servers: (ControlServer, FakeRuntime),
}

async fn cluster() -> Cluster {
    cluster_with(None).await
}

/// A cluster whose runtime kernel also holds an operator's route for `foreign_route`.
async fn cluster_with(foreign_route: Option<&str>) -> Cluster {
    let control = ControlServer::start(&["--heartbeat-timeout", "60s"]).await;
    let kernel = FakeKernel::new();
    if let Some(destination) = foreign_route {
        kernel.insert_route(quilt_kernel::Route {
            destination: destination.parse().unwrap(),
            interface: "vxlan100".into(),
            gateway: None,
            protocol: 4,
        });
    }
    let runtime = FakeRuntime::start(&[], kernel).await;
    Cluster {
        control: control.base.clone(),
        runtime: runtime.addr,
        dir: tempfile::tempdir().unwrap(),
        servers: (control, runtime),
    }
}

/// Runs the agent in this process with `overlay` as its kernel; answers its stop
/// switch and its task.
fn start_agent(
    config: quilt_mesh_agent::Config,
    overlay: &FakeOverlay,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    start_agent_with(config, overlay, &FakeFirewall::default())
}

/// [`start_agent`] with `firewall` as its nftables.
fn start_agent_with(
    config: quilt_mesh_agent::Config,
    overlay: &FakeOverlay,
    firewall: &FakeFirewall,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(quilt_mesh_agent::run(
        config,
        overlay.clone(),
        firewall.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    (stop, agent)
}

/// The agent's flags for `cluster` (host 192.168.77.11), plus `extra`.
fn agent_config(cluster: &Cluster, hostname: &str, extra: &[&str]) -> quilt_mesh_agent::Config {
    let runtime = format!("http://{}", cluster.runtime);
    let state_dir = cluster.dir.path().join("agent");
    let mut args = vec![
        "quilt-mesh-agent",
        "--control-plane",
        &cluster.control,
        "--host-ip",
        "192.168.77.11",
        "--hostname",
        hostname,
        "--runtime-addr",
        &runtime,
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    quilt_mesh_agent::Config::parse_from(args)
}

fn control_client(control: &str) -> ControlClient {
    ControlClient::builder([control])
        .no_proxy()
        .build()
        .unwrap()
}

async fn register_peer(control: &str, n: u8) -> String {
    let request = RegisterRequest {
        hostname: format!("peer{n}"),
        host_ip: format!("192.168.77.{}", 20 + n),
        cpu_cores: None,
        ram_mb: None,
        vtep_mac: Some(format!("02:00:00:00:00:{n:02x}")),
        subnet: None,
        vxlan_port: None,
        vni: None,
    };
    let answer = control_client(control).register(&request).await.unwrap();
    answer.node.node_id
}

async fn hostnames(control: &str) -> Vec<String> {
    let list = control_client(control).list().await.unwrap();
    list.nodes.into_iter().map(|n| n.hostname).collect()
}

async fn routes(runtime: SocketAddr) -> Vec<(String, String)> {
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
        .map(|r| (r.destination, r.gateway))
        .collect();
    routes.sort();
    routes
}

fn peer_entries(n: u8, subnet_octet: u8) -> (Neighbour, FdbEntry) {
    let mac: Mac = format!("02:00:00:00:00:{n:02x}").parse().unwrap();
    (
        Neighbour {
            ip: Ipv4Addr::new(10, 42, subnet_octet, 0),
            mac,
        },
        FdbEntry {
            mac,
            destination: Ipv4Addr::new(192, 168, 77, 20 + n),
            port: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_its_peers_and_repairs_its_device() {
    let cluster = cluster().await;
    // Two peers before the agent starts; they lease 10.42.1.0 and 10.42.2.0.
    register_peer(&cluster.control, 1).await;
    let second = register_peer(&cluster.control, 2).await;

    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let config = agent_config(
        &cluster,
        "self",
        &["--heartbeat-interval", "200ms", "--resync-interval", "3s"],
    );
    let (stop_agent, agent) = start_agent(config, &overlay);

    // The device, then both peers' entries and routes.
    let (n1, f1) = peer_entries(1, 1);
    let (n2, f2) = peer_entries(2, 2);
    eventually(Duration::from_secs(10), "both peers in place", async || {
        overlay.neighbours_of("vxlan100").len() == 2
            && overlay.fdb_of("vxlan100").len() == 2
            && routes(cluster.runtime).await.len() == 2
    })
    .await;
    assert_eq!(overlay.neighbours_of("vxlan100"), vec![n1, n2]);
    assert_eq!(overlay.fdb_of("vxlan100"), vec![f1, f2]);
    assert_eq!(
        routes(cluster.runtime).await,
        vec![
            ("10.42.1.0/24".to_string(), "10.42.1.0".to_string()),
            ("10.42.2.0/24".to_string(), "10.42.2.0".to_string())
        ]
    );
    let created = overlay
        .operations()
        .into_iter()
        .find(|o| o.starts_with("create vxlan100"))
        .unwrap();
    assert!(
        created.contains("vni 100 port 4789 local 192.168.77.11 dev eth0 mtu 1450"),
        "{created}"
    );

    // An address of a subnet this node no longer holds is removed at the next resync.
    overlay.add_address_by_hand("vxlan100", "10.42.99.0/32".parse().unwrap());
    eventually(
        Duration::from_secs(6),
        "the stale address removed",
        async || {
            overlay
                .operations()
                .iter()
                .any(|o| o == "del address 10.42.99.0/32 on vxlan100")
        },
    )
    .await;

    // A peer that leaves loses its route, neighbour and FDB entry.
    let deleted = control_client(&cluster.control)
        .delete_node(&second)
        .await
        .unwrap();
    assert_eq!(deleted.node_id, second);
    eventually(
        Duration::from_secs(3),
        "the gone peer removed",
        async || {
            overlay.neighbours_of("vxlan100") == vec![n1]
                && overlay.fdb_of("vxlan100") == vec![f1]
                && routes(cluster.runtime).await.len() == 1
        },
    )
    .await;

    // A new peer arrives through the watch.
    // It leases the subnet the gone peer freed.
    register_peer(&cluster.control, 4).await;
    let (n4, f4) = peer_entries(4, 2);
    let in_place = async || {
        overlay.neighbours_of("vxlan100") == vec![n1, n4]
            && overlay.fdb_of("vxlan100") == vec![f1, f4]
            && routes(cluster.runtime).await
                == vec![
                    ("10.42.1.0/24".to_string(), "10.42.1.0".to_string()),
                    ("10.42.2.0/24".to_string(), "10.42.2.0".to_string()),
                ]
    };
    eventually(Duration::from_secs(3), "the new peer added", in_place).await;

    // The device is deleted by hand: rebuilt with its address and every entry.
    overlay.remove_device("vxlan100");
    eventually(Duration::from_secs(5), "the device rebuilt", async || {
        overlay.has_device("vxlan100") && in_place().await
    })
    .await;
    assert_eq!(
        overlay.addresses("vxlan100").await.unwrap(),
        vec!["10.42.3.0/32".parse::<ipnet::Ipv4Net>().unwrap()],
        "this node's subnet .0/32 is back on the device"
    );

    // SIGTERM-like stop: everything stays in place.
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    assert!(overlay.has_device("vxlan100"));
    assert_eq!(routes(cluster.runtime).await.len(), 2);
    drop(cluster.servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_on_exit_removes_what_the_agent_made_and_deregisters() {
    let cluster = cluster().await;
    register_peer(&cluster.control, 1).await;
    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let metrics_port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let config = agent_config(
        &cluster,
        "leaver",
        &["--leave-on-exit", "--metrics-addr", &metrics_addr],
    );
    let (stop_agent, agent) = start_agent(config, &overlay);
    eventually(Duration::from_secs(10), "the peer in place", async || {
        routes(cluster.runtime).await.len() == 1 && overlay.neighbours_of("vxlan100").len() == 1
    })
    .await;
    // The runtime answers the route before the agent has counted the peer: poll.
    let scrape = async || {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually(Duration::from_secs(5), "the peer counted", async || {
        scrape().await.contains("quilt_agent_peers 1")
    })
    .await;
    let metrics = scrape().await;
    for expected in [
        "quilt_agent_peers 1",
        "quilt_agent_watch_reconnects_total",
        "quilt_agent_repairs_total",
        "quilt_agent_peer_convergence_seconds_bucket",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }

    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    assert!(
        !overlay.has_device("vxlan100"),
        "the device went with the agent"
    );
    assert!(
        routes(cluster.runtime).await.is_empty(),
        "the routes went with the agent"
    );
    assert_eq!(
        hostnames(&cluster.control).await,
        vec!["peer1"],
        "the agent deregistered"
    );
    drop(cluster.servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_link_is_left_alone_and_one_refused_route_holds_up_no_other_peer() {
    // The runtime's kernel holds an operator's route for the first peer's subnet.
    let cluster = cluster_with(Some("10.42.1.0/24")).await;
    register_peer(&cluster.control, 1).await;
    register_peer(&cluster.control, 2).await;

    // First an operator's link called vxlan100: the agent must refuse to touch it.
    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    overlay.add_foreign_link("vxlan100");
    let (stop_agent, agent) = start_agent(agent_config(&cluster, "careful", &[]), &overlay);
    // Registration comes just before the device; once it is done, give the agent more
    // than one retry at the device, then check it changed nothing at all.
    eventually(Duration::from_secs(5), "the agent registered", async || {
        hostnames(&cluster.control)
            .await
            .iter()
            .any(|h| h == "careful")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        overlay.operations().is_empty(),
        "{:?}",
        overlay.operations()
    );
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();

    // Without it, the agent builds its own; the refused route to peer 1 does not stop
    // peer 2's route.
    overlay.remove_device("vxlan100");
    let (stop_agent, agent) = start_agent(agent_config(&cluster, "careful", &[]), &overlay);
    eventually(
        Duration::from_secs(10),
        "peer 2's route in place",
        async || {
            routes(cluster.runtime).await
                == vec![("10.42.2.0/24".to_string(), "10.42.2.0".to_string())]
        },
    )
    .await;
    assert_eq!(
        overlay.neighbours_of("vxlan100").len(),
        2,
        "entries for both peers"
    );
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    drop(cluster.servers);
}

/// The runtime's gRPC client for `runtime`.
async fn runtime_client(
    runtime: SocketAddr,
) -> quilt_proto::quilt_runtime_client::QuiltRuntimeClient<tonic::transport::Channel> {
    quilt_proto::connect::connect(&runtime.to_string(), Default::default())
        .await
        .unwrap()
}

/// A free loopback port for the agent's metrics and health endpoint.
fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The agent's own node as the control plane lists it.
async fn own_node(control: &str) -> Option<quilt_api::types::NodeInfo> {
    let list = control_client(control).list().await.unwrap();
    list.nodes.into_iter().find(|n| n.hostname == "self")
}

/// `GET /health` of the agent: status code and body.
async fn agent_health(addr: SocketAddr) -> (u16, String) {
    let answer = {
        quilt_tls::install_default_provider();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
    .get(format!("http://{addr}/health"))
    .send()
    .await
    .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Issue 11, point 13: the node is deleted while its agent is away and a newcomer takes
/// its subnet; the node's containers keep their addresses. The returning agent is held
/// with a condition the operator sees (node list, agent /health), and joins on its own
/// once the operator frees the old subnet (here: deletes the newcomer), or once the
/// containers are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_subnet_was_taken_is_held_visibly_and_recovers_when_the_operator_acts() {
    let cluster = cluster().await;
    let health_addr = free_loopback_addr();
    let health_flag = health_addr.to_string();
    let config = || {
        agent_config(
            &cluster,
            "self",
            &[
                "--heartbeat-interval",
                "200ms",
                "--metrics-addr",
                &health_flag,
            ],
        )
    };
    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let (stop_agent, agent) = start_agent(config(), &overlay);
    eventually(Duration::from_secs(10), "the node joins", async || {
        own_node(&cluster.control).await.is_some()
    })
    .await;
    let first = own_node(&cluster.control).await.unwrap();
    assert_eq!(first.subnet.to_string(), "10.42.1.0/24");
    let mut runtime = runtime_client(cluster.runtime).await;
    eventually(
        Duration::from_secs(10),
        "the runtime configured",
        async || {
            runtime
                .clone()
                .allocate_ip(quilt_proto::AllocateIpRequest {
                    owner: "container-a".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .success
        },
    )
    .await;

    // Away: the operator deletes the node and a newcomer takes 10.42.1.0/24.
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
    let operator = control_client(&cluster.control);
    operator.delete_node(&first.node_id).await.unwrap();
    let newcomer = register_peer(&cluster.control, 1).await;

    // Back: leased another subnet, refused by the runtime, held and saying so.
    let (stop_agent, agent) = start_agent(config(), &overlay);
    eventually(
        Duration::from_secs(10),
        "the condition reported",
        async || {
            own_node(&cluster.control)
                .await
                .and_then(|n| n.condition)
                .is_some_and(|c| c.reason == "SubnetInUse")
        },
    )
    .await;
    let held = own_node(&cluster.control).await.unwrap();
    assert_eq!(held.subnet.to_string(), "10.42.2.0/24");
    let message = held.condition.unwrap().message;
    assert!(
        message.contains("10.42.2.0/24") && message.contains("10.42.1.0/24"),
        "{message}"
    );
    let (status, body) = agent_health(health_addr).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("degraded") && body.contains("SubnetInUse"),
        "{body}"
    );
    assert!(
        routes(cluster.runtime).await.is_empty(),
        "a held node programs no peer"
    );

    // The operator deletes the newcomer: the node asks for its old subnet and gets it.
    operator.delete_node(&newcomer).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the old subnet back, condition gone",
        async || {
            own_node(&cluster.control)
                .await
                .is_some_and(|n| n.subnet.to_string() == "10.42.1.0/24" && n.condition.is_none())
        },
    )
    .await;
    let (status, body) = agent_health(health_addr).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();

    // Again, but this time the containers go: the runtime takes the new subnet.
    let me = own_node(&cluster.control).await.unwrap();
    operator.delete_node(&me.node_id).await.unwrap();
    let newcomer = register_peer(&cluster.control, 1).await;
    let (stop_agent, agent) = start_agent(config(), &overlay);
    eventually(Duration::from_secs(10), "held again", async || {
        own_node(&cluster.control)
            .await
            .and_then(|n| n.condition)
            .is_some()
    })
    .await;
    let released = runtime
        .release_ip(quilt_proto::ReleaseIpRequest {
            owner: "container-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.success, "{}", released.error);
    eventually(
        Duration::from_secs(15),
        "joined on the new subnet",
        async || {
            own_node(&cluster.control)
                .await
                .is_some_and(|n| n.subnet.to_string() != "10.42.1.0/24" && n.condition.is_none())
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the newcomer is a peer",
        async || {
            routes(cluster.runtime).await
                == vec![("10.42.1.0/24".to_string(), "10.42.1.0".to_string())]
        },
    )
    .await;
    let _ = newcomer;
    assert_eq!(agent_health(health_addr).await.0, 200);
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
}

/// Issue 10: an agent joins a control plane that requires mutual TLS, with the
/// certificate `quiltctl certs` made for its host; a certificate naming another host is
/// refused and leaves no node behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_joins_over_mutual_tls_only_with_a_certificate_naming_its_host() {
    use quilt_lab::pki::{self, Subject};
    let pki_dir = tempfile::tempdir().unwrap();
    let certs = pki_dir.path().join("pki");
    pki::init(&certs, pki::CA_DAYS, false).unwrap();
    let issue = |name: &str, ip: &str| {
        pki::issue(
            &certs,
            &Subject {
                name: name.into(),
                ips: vec![ip.parse().unwrap()],
                dns: vec![],
                days: 30,
            },
            false,
        )
        .unwrap()
    };
    let server = issue("control", "127.0.0.1");
    let own = issue("self", "192.168.77.11");
    let other = issue("other", "192.168.77.99");
    let ca = certs.join(pki::CA_CERT);
    let path = |p: &std::path::Path| p.display().to_string();
    let control = ControlServer::start(&[
        "--heartbeat-timeout",
        "60s",
        "--tls-cert",
        &path(&server.cert),
        "--tls-key",
        &path(&server.key),
        "--tls-ca",
        &path(&ca),
    ])
    .await;
    let https = control.base.replace("http://", "https://");
    let runtime = FakeRuntime::start(&[], FakeKernel::new()).await;
    let cluster = Cluster {
        control: https.clone(),
        runtime: runtime.addr,
        dir: tempfile::tempdir().unwrap(),
        servers: (control, runtime),
    };
    let operator = ControlClient::builder([https.as_str()])
        .no_proxy()
        .tls(Some(quilt_api::ClientTls {
            ca: ca.clone(),
            identity: Some(quilt_tls::Identity {
                cert: own.cert.clone(),
                key: own.key.clone(),
            }),
        }))
        .build()
        .unwrap();
    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);

    // Another host's certificate: refused, nothing registered.
    let (ca_flag, wrong_cert, wrong_key) = (path(&ca), path(&other.cert), path(&other.key));
    let refused = agent_config(
        &cluster,
        "self",
        &[
            "--tls-ca",
            &ca_flag,
            "--tls-cert",
            &wrong_cert,
            "--tls-key",
            &wrong_key,
        ],
    );
    let (stop_agent, agent) = start_agent(refused, &overlay);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(operator.list().await.unwrap().nodes.is_empty());
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();

    // Its own certificate: it joins and stays up.
    let (cert, key) = (path(&own.cert), path(&own.key));
    let config = agent_config(
        &cluster,
        "self",
        &[
            "--tls-ca",
            &ca_flag,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--heartbeat-interval",
            "200ms",
        ],
    );
    let (stop_agent, agent) = start_agent(config, &overlay);
    eventually(
        Duration::from_secs(10),
        "the node registered over mTLS",
        async || {
            operator
                .list()
                .await
                .unwrap()
                .nodes
                .iter()
                .any(|n| n.hostname == "self")
        },
    )
    .await;
    let node = operator.list().await.unwrap().nodes.remove(0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = operator.list().await.unwrap().nodes.remove(0);
    assert_eq!(
        later.node_id, node.node_id,
        "heartbeats, no re-registration"
    );
    assert_eq!(later.status, quilt_api::types::Status::Up);
    stop_agent.send(()).unwrap();
    agent.await.unwrap().unwrap();
}

/// The members set of the fake firewall's table, if the table exists.
fn allowed(firewall: &FakeFirewall) -> Option<Vec<String>> {
    let table = firewall.state().table?;
    Some(table.members?.iter().map(|m| m.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vxlan_allow_list_follows_the_peers_and_a_deleted_table_comes_back() {
    let cluster = cluster().await;
    let overlay = FakeOverlay::new();
    overlay.add_underlay("eth0", Ipv4Addr::new(192, 168, 77, 11), 1500);
    let firewall = FakeFirewall::default();
    // As Docker leaves a host: iptables' FORWARD chain exists.
    firewall.set_state(Observed {
        forward_chain: Some(ForeignChain::DockerUser),
        ..Default::default()
    });
    let config = agent_config(
        &cluster,
        "fw-node",
        &["--resync-interval", "500ms", "--leave-on-exit"],
    );
    let (stop, agent) = start_agent_with(config, &overlay, &firewall);
    let peer = register_peer(&cluster.control, 1).await;
    eventually(Duration::from_secs(10), "the allow-list", async || {
        allowed(&firewall) == Some(vec!["192.168.77.21".to_string()])
    })
    .await;
    let state = firewall.state();
    let layout = state.table.as_ref().unwrap().rules.clone();
    assert!(
        layout.iter().any(|(_, c)| c.contains("masquerade 10.42.")),
        "{layout:?}"
    );
    assert_eq!(state.marked.len(), 4, "{state:?}");
    assert!(
        state
            .marked
            .iter()
            .all(|r| r.chain == ForeignChain::DockerUser)
    );

    // A second peer is added by element, a deleted one removed by element.
    register_peer(&cluster.control, 2).await;
    eventually(Duration::from_secs(10), "the allow-list", async || {
        allowed(&firewall).is_some_and(|m| m.len() == 2)
    })
    .await;
    control_client(&cluster.control)
        .delete_node(&peer)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the allow-list", async || {
        allowed(&firewall) == Some(vec!["192.168.77.22".to_string()])
    })
    .await;
    assert!(firewall.batches().iter().any(|b| {
        b.iter()
            .any(|op| matches!(op, quilt_kernel::firewall::FirewallOp::DeleteMembers(_)))
    }));

    // Someone deletes the table: the next resync makes it again.
    let mut deleted = firewall.state();
    deleted.table = None;
    firewall.set_state(deleted);
    eventually(Duration::from_secs(10), "the allow-list", async || {
        allowed(&firewall) == Some(vec!["192.168.77.22".to_string()])
    })
    .await;

    // Leaving takes the table and the marked rules away, and nothing else.
    stop.send(()).unwrap();
    agent.await.unwrap().unwrap();
    let state = firewall.state();
    assert!(
        state.table.is_none() && state.marked.is_empty(),
        "{state:?}"
    );
    assert_eq!(state.forward_chain, Some(ForeignChain::DockerUser));
}
