//! The server notices a dead client: a watcher in its own namespace loses its link (no
//! reset, no FIN, nothing acknowledged any more), and the control plane drops the
//! connection within three keepalive intervals of the loss (the next keepalive, then two
//! intervals of TCP_USER_TIMEOUT), so the watch slot and the connection are given back. Two namespaces of the test's own, joined by a veth.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use quilt_testkit::netns::{OwnedNetns, block_on_in, privileged_or_skip, unique_name};
use tokio::sync::oneshot;

/// `quilt_control_watchers` as the server in `server_ns` at `port` reports it.
fn watchers(server_ns: &str, port: u16) -> u64 {
    block_on_in(server_ns, async || {
        let text = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("quilt_control_watchers "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no quilt_control_watchers in {text}"))
    })
}

#[test]
fn a_watch_to_a_client_that_vanished_is_dropped_within_three_keepalives() {
    if !privileged_or_skip("a_watch_to_a_client_that_vanished_is_dropped_within_three_keepalives") {
        return;
    }
    quilt_tls::install_default_provider();
    let server_ns = OwnedNetns::create(&unique_name("qmc-srv")).unwrap();
    let client_ns = OwnedNetns::create(&unique_name("qmc-cli")).unwrap();
    server_ns
        .ip(&[
            "link",
            "add",
            "vs",
            "type",
            "veth",
            "peer",
            "name",
            "vc",
            "netns",
            client_ns.name(),
        ])
        .unwrap();
    server_ns
        .ip(&["addr", "add", "10.99.0.1/24", "dev", "vs"])
        .unwrap();
    server_ns.ip(&["link", "set", "vs", "up"]).unwrap();
    client_ns
        .ip(&["addr", "add", "10.99.0.2/24", "dev", "vc"])
        .unwrap();
    client_ns.ip(&["link", "set", "vc", "up"]).unwrap();

    // The control plane, inside its namespace on a thread of its own.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quilt-mesh.db");
    let (port_tx, port_rx) = mpsc::channel();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let name = server_ns.name().to_string();
    let server = std::thread::spawn(move || {
        block_on_in(&name, async move || {
            let config = quilt_mesh_control::Config::parse_from([
                "quilt-mesh-control",
                "--db-path",
                db.to_str().unwrap(),
                "--watch-keepalive",
                "2s",
            ]);
            let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            quilt_mesh_control::run(config, listener, async {
                let _ = server_stopped.await;
            })
            .await
            .unwrap();
        })
    });
    let port = port_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    // A watcher in the other namespace, holding its stream open until released.
    let (open_tx, open_rx) = mpsc::channel();
    let (release, released) = oneshot::channel::<()>();
    let name = client_ns.name().to_string();
    let client = std::thread::spawn(move || {
        block_on_in(&name, async move || {
            let mut r = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("http://10.99.0.1:{port}/api/nodes/watch"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["x-quilt-keepalive-ms"], "2000");
            let first = r.chunk().await.unwrap().unwrap();
            assert_eq!(&first[..], b"\n", "a keepalive arrives");
            open_tx.send(()).unwrap();
            let _ = released.await;
            drop(r);
        })
    });
    open_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(watchers(server_ns.name(), port), 1);

    // The client's machine vanishes: its link goes down, nothing is acknowledged.
    client_ns.ip(&["link", "set", "vc", "down"]).unwrap();
    let started = Instant::now();
    while watchers(server_ns.name(), port) != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the dead client's watch is still open after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped_after = started.elapsed();
    println!("dead client (keepalive 2s): its watch dropped by the server after {dropped_after:?}");
    assert!(
        dropped_after < Duration::from_secs(9),
        "within 3 keepalive intervals (6 s) and some slack: {dropped_after:?}"
    );

    release.send(()).unwrap();
    client.join().unwrap();
    stop_server.send(()).unwrap();
    server.join().unwrap();
}
