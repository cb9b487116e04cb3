//! The runtime's metrics endpoint counts what the RPCs did (in-process, fake kernel).

use clap::Parser;
use quilt_kernel::fake::FakeKernel;
use quilt_proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn get_metrics(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_routes_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let config = quilt_runtime::Config::parse_from([
        "quilt-runtime",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1450);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(quilt_runtime::run(config, listener, kernel, async {
        let _ = stopped.await;
    }));

    let mut client = quilt_proto::connect::connect(&grpc.to_string(), Default::default())
        .await
        .unwrap();
    client
        .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
            subnet: "10.42.1.0/24".into(),
        })
        .await
        .unwrap();
    for (dest, gw) in [
        ("10.42.2.0/24", "10.42.2.0"),
        ("10.42.3.0/24", "10.42.3.0"),
        ("8.8.8.0/24", ""),
    ] {
        client
            .inject_route(pb::InjectRouteRequest {
                destination: dest.into(),
                via_interface: "vxlan100".into(),
                gateway: gw.into(),
            })
            .await
            .unwrap();
    }
    client
        .allocate_ip(pb::AllocateIpRequest { owner: "c1".into() })
        .await
        .unwrap();

    let text = get_metrics(metrics_port).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for expected in [
        "quilt_runtime_managed_routes 2",
        "quilt_runtime_allocated_ips 1",
        r#"quilt_runtime_rpc_requests_total{method="InjectRoute",result="ok"} 2"#,
        r#"quilt_runtime_rpc_requests_total{method="InjectRoute",result="refused"} 1"#,
        r#"quilt_runtime_rpc_duration_seconds_count{method="InjectRoute"} 3"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let reconcile_runs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("quilt_runtime_reconcile_runs_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("quilt_runtime_reconcile_runs_total in the metrics");
    assert!(
        reconcile_runs >= 1.0,
        "the start-up reconcile is counted: {reconcile_runs}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
