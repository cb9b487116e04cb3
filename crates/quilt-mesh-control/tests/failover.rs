//! Failover between control-plane replicas, with real processes and real sockets: a
//! paused replica (SIGSTOP) is left within the failover timeout, one answering 503 at once,
//! a watch on a paused replica ends within three keepalive intervals, and the keepalive
//! lines are on the wire. Every measured time is printed.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quilt_api::types::{EventType, RegisterRequest};
use quilt_api::{ControlClient, ControlError};
use quilt_testkit::control::{ControlBinary, ControlServer};
use quilt_testkit::replica::{Mode, ReplicaProxy, UNAVAILABLE_MESSAGE};

const BINARY: &str = env!("CARGO_BIN_EXE_quilt-mesh-control");

/// A generous bound for what should take about the failover timeout (2 s), on a noisy
/// 2-core machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

fn client(urls: &[&str]) -> ControlClient {
    ControlClient::builder(urls.iter().map(|u| u.to_string()))
        .no_proxy()
        .build()
        .unwrap()
}

/// Pauses (SIGSTOP) the process until dropped (SIGCONT).
struct Paused(Pid);

impl Paused {
    fn pause(server: &ControlBinary) -> Paused {
        let pid = Pid::from_raw(i32::try_from(server.child.id()).unwrap());
        kill(pid, Signal::SIGSTOP).unwrap();
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_is_left_for_the_next_within_the_failover_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = ControlBinary::start(Path::new(BINARY), &dir.path().join("a.db"), &[]);
    let b = ControlBinary::start(Path::new(BINARY), &dir.path().join("b.db"), &[]);
    let both = client(&[&a.base, &b.base]);
    // Two SQLite replicas share nothing: the host registers with each, each gives a token.
    let request = RegisterRequest::new("n1", "192.168.6.1");
    both.register(&request).await.unwrap();
    let on_b = client(&[&b.base]).register(&request).await.unwrap();
    assert_eq!(both.list().await.unwrap().nodes.len(), 1, "through a");

    let paused = Paused::pause(&a);
    let started = Instant::now();
    both.heartbeat(&on_b.node.node_id, &on_b.node_token, None)
        .await
        .expect("the heartbeat reaches b");
    let heartbeat_took = started.elapsed();
    let started = Instant::now();
    let list = both.list().await.expect("the list comes from b");
    let next_call_took = started.elapsed();
    println!(
        "paused replica: heartbeat through the next replica in {heartbeat_took:?}; the next call (b preferred) in {next_call_took:?}"
    );
    assert_eq!(list.nodes[0].node_id, on_b.node.node_id);
    assert!(
        heartbeat_took < FAILOVER_BOUND,
        "failover took {heartbeat_took:?}"
    );
    assert!(
        next_call_took < Duration::from_secs(2),
        "the call after a switch starts with the replica that answered: {next_call_took:?}"
    );
    drop(paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answering_503_is_skipped_at_once_and_503_everywhere_is_a_refusal() {
    let s = ControlServer::start(&[]).await;
    let down = ReplicaProxy::start(&s.base).await;
    down.set(Mode::Unavailable);
    let also_down = ReplicaProxy::start(&s.base).await;
    also_down.set(Mode::Unavailable);

    let c = client(&[&down.base, &s.base]);
    let started = Instant::now();
    let answer = c
        .register(&RegisterRequest::new("n1", "192.168.6.1"))
        .await
        .unwrap();
    c.heartbeat(&answer.node.node_id, &answer.node_token, None)
        .await
        .unwrap();
    let took = started.elapsed();
    println!("503 replica skipped: register and heartbeat through the next in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "a 503 moves on at once, not after the failover timeout: {took:?}"
    );
    assert_eq!(down.requests("POST /api/nodes/register").len(), 1);
    assert!(
        down.requests("POST /api/nodes/").len() == 1,
        "after the switch the heartbeat went straight to the live replica: {:?}",
        down.seen()
    );

    let nowhere = client(&[&down.base, &also_down.base]);
    let started = Instant::now();
    match nowhere.list().await {
        Err(ControlError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status.as_u16(), 503);
            assert_eq!(message, UNAVAILABLE_MESSAGE);
        }
        other => panic!("503 from every replica is the refusal it is: {other:?}"),
    }
    println!("503 from every replica: refused in {:?}", started.elapsed());
    assert_eq!(also_down.requests("GET /api/nodes").len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_paused_replica_ends_within_three_keepalives_and_resumes_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--watch-keepalive", "300ms"];
    let a = ControlBinary::start(Path::new(BINARY), &dir.path().join("a.db"), &args);
    let b = ControlBinary::start(Path::new(BINARY), &dir.path().join("b.db"), &args);
    let both = client(&[&a.base, &b.base]);
    both.register(&RegisterRequest::new("n1", "192.168.6.1"))
        .await
        .unwrap();
    let mut events = Box::pin(both.watch(0).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the registration arrives")
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, EventType::Added);
    // An idle stream lives on keepalives: five intervals with no event end nothing.
    let idle = tokio::time::timeout(Duration::from_millis(1500), events.next()).await;
    assert!(idle.is_err(), "the idle stream stays open: {idle:?}");

    let paused = Paused::pause(&a);
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream of a paused replica ends");
    let ended_after = started.elapsed();
    println!(
        "watch on a paused replica (keepalive 300ms): ended after {ended_after:?} with {end:?}"
    );
    match end {
        Some(Err(ControlError::WatchSilent { url, silent })) => {
            assert!(url.starts_with(&a.base), "{url}");
            assert_eq!(silent, Duration::from_millis(900));
        }
        other => panic!("a silent stream ends with WatchSilent: {other:?}"),
    }
    assert!(
        ended_after < Duration::from_secs(3),
        "ended after {ended_after:?}"
    );
    assert!(events.next().await.is_none(), "and then ends");

    // Watching again goes straight to b, which the stream's end made preferred.
    let started = Instant::now();
    let mut events = Box::pin(both.watch(0).await.unwrap());
    let reopened = started.elapsed();
    println!("watch opened again on the next replica in {reopened:?}");
    assert!(reopened < Duration::from_secs(2), "{reopened:?}");
    let on_b = client(&[&b.base])
        .register(&RegisterRequest::new("n2", "192.168.6.2"))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("b's event arrives")
        .unwrap()
        .unwrap();
    assert_eq!(event.node.node_id, on_b.node.node_id);
    assert_eq!(event.node.host_ip.to_string(), "192.168.6.2");
    drop(paused);
}

#[tokio::test]
async fn keepalive_lines_are_on_the_wire_and_named_in_a_header() {
    let s = ControlServer::start(&["--watch-keepalive", "100ms"]).await;
    let mut r = s
        .client
        .get(s.url("/api/nodes/watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-quilt-keepalive-ms"], "100");
    let started = Instant::now();
    let mut body = Vec::new();
    while body.iter().filter(|b| **b == b'\n').count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("keepalive lines arrive")
            .unwrap()
            .expect("the stream stays open");
        body.extend_from_slice(&chunk);
    }
    println!(
        "3 keepalive lines (100ms interval) in {:?}",
        started.elapsed()
    );
    assert!(
        body.iter().all(|b| *b == b'\n'),
        "keepalives are bare newlines: {:?}",
        String::from_utf8_lossy(&body)
    );
    // An event among the keepalives is a whole JSON line.
    s.register("n1", "192.168.6.1").await;
    let line = loop {
        if let Some(end) = body.iter().rposition(|b| *b == b'\n')
            && let Some(line) = body[..end].split(|b| *b == b'\n').find(|l| !l.is_empty())
        {
            break line.to_vec();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("the event arrives")
            .unwrap()
            .expect("the stream stays open");
        body.extend_from_slice(&chunk);
    };
    let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(event["type"], "added");

    let default = ControlServer::start(&[]).await;
    let r = default
        .client
        .get(default.url("/api/nodes/watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-quilt-keepalive-ms"],
        "3000",
        "3 s by default"
    );
    drop(r);
    default.stop().await;
    s.stop().await;
}
