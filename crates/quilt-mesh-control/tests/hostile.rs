//! Requests an attacker or a bad day sends, against the server in this process: each is
//! answered with a JSON error or refused, and none makes the server grow, lie or stall.

use std::time::{Duration, Instant};

use quilt_testkit::control::ControlServer;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let s = ControlServer::start(&[]).await;
    let size = async || {
        let r = s.client.get(s.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    };
    // Every label set the loop below may use exists before the baseline is taken.
    let first = Method::from_bytes(b"FIRST").unwrap();
    s.client
        .request(first, s.url("/api/nodes"))
        .send()
        .await
        .unwrap();
    size().await;
    let before = size().await;
    for i in 0..500 {
        let method = Method::from_bytes(format!("M{i:04}X").as_bytes()).unwrap();
        let r = s
            .client
            .request(method, s.url("/api/nodes"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    }
    let after = size().await;
    assert!(!after.contains("M0001X"), "a made-up method became a label");
    assert!(
        after.len() < before.len() + 256,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

/// Sends `raw` on a fresh connection and answers everything the server writes back
/// until it closes the connection (at most 10 s).
async fn exchange(s: &ControlServer, raw: &[u8]) -> String {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and the JSON body of a raw HTTP answer.
fn parse_answer(answer: &str) -> (u16, Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an http answer: {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    (status, json)
}

#[tokio::test]
async fn odd_ids_paths_headers_and_methods_get_bounded_json_errors() {
    let s = ControlServer::start(&[]).await;
    for id in [
        "node-9223372036854775808",
        "node-18446744073709551615",
        "%FF",
        "node-%FF%FE",
    ] {
        let answer = exchange(
            &s,
            format!("GET /api/nodes/{id} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let (status, body) = parse_answer(&answer);
        assert_eq!(status, 404, "{id}: {answer}");
        assert!(
            body["error"].as_str().unwrap().contains("not found"),
            "{body}"
        );
        let answer = exchange(
            &s,
            format!("POST /api/nodes/{id}/heartbeat HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(parse_answer(&answer).0, 404, "{id}: {answer}");
    }
    let big = "a".repeat(20 * 1024);
    let answer = exchange(
        &s,
        format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let (status, body) = parse_answer(&answer);
    assert_eq!(status, 431, "{answer}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let method = "X".repeat(60 * 1024);
    let answer = exchange(
        &s,
        format!("{method} /api/nodes HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.len() < 2048, "{} bytes echoed", answer.len());
}

#[tokio::test]
async fn idle_connections_and_slow_headers_are_closed() {
    let s = ControlServer::start(&["--idle-timeout", "1s"]).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    for stream in [&mut idle, &mut slow] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A connection that sends requests in time is served.
    let r = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408() {
    let s = ControlServer::start(&["--request-timeout", "1s"]).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"POST /api/nodes/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"hostname\":")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer before the client finishes")
        .unwrap();
    let (status, body) = parse_answer(&String::from_utf8_lossy(&answer[..n]));
    assert_eq!(status, 408, "{body}");
    assert_eq!(list_len(&s).await, 0, "nothing registered");
}

async fn list_len(s: &ControlServer) -> usize {
    s.get_json("/api/nodes").await["nodes"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn past_the_connection_caps_a_clear_503_and_health_still_answers_others() {
    let s = ControlServer::start(&[
        "--max-connections",
        "40",
        "--max-connections-per-client",
        "20",
    ])
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = exchange(&s, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (status, body) = parse_answer(&answer);
    assert_eq!(status, 503, "{answer}");
    assert!(
        body["error"].as_str().unwrap().contains("20 connections"),
        "{body}"
    );
    // Another client address is served.
    let other = {
        quilt_tls::install_default_provider();
        reqwest::Client::builder()
    }
    .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
    .no_proxy()
    .build()
    .unwrap();
    let r = other.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
    // Slots come back when connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.client.get(s.url("/health")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_vtep_mac_held_by_another_node_is_refused_409() {
    let s = ControlServer::start(&[]).await;
    let register = async |host_ip: &str, mac: &str| {
        let r = s
            .client
            .post(s.url("/api/nodes/register"))
            .json(&serde_json::json!({"hostname": "h", "host_ip": host_ip, "vtep_mac": mac}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let mac_a = "02:00:00:00:00:0a";
    assert_eq!(register("192.168.1.1", mac_a).await.0, 200);
    let (status, body) = register("192.168.1.2", mac_a).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(mac_a) && error.contains("node-1") && error.contains("192.168.1.1"),
        "{error}"
    );
    assert_eq!(list_len(&s).await, 1, "the refused node was not added");
    // The holder renews with its own MAC; the other node takes one of its own, and may not
    // switch to the holder's later.
    assert_eq!(register("192.168.1.1", mac_a).await.0, 200);
    assert_eq!(register("192.168.1.2", "02:00:00:00:00:0b").await.0, 200);
    assert_eq!(register("192.168.1.2", mac_a).await.0, 409);
    let v = s.get_json("/api/nodes/node-2").await;
    assert_eq!(
        v["vtep_mac"], "02:00:00:00:00:0b",
        "the refused renewal changed nothing"
    );
}

#[tokio::test]
async fn the_join_token_comes_from_a_private_file_never_a_readable_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("join-token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quilt-mesh-control"))
        .args(["--listen", "127.0.0.1:0", "--join-token-file"])
        .arg(&file)
        .arg("--db-path")
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mode 0644") && stderr.contains("join-token"),
        "{stderr}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = ControlServer::start(&["--join-token-file", file.to_str().unwrap()]).await;
    let register = |token: Option<&str>| {
        let mut r = s
            .client
            .post(s.url("/api/nodes/register"))
            .json(&serde_json::json!({"hostname": "h", "host_ip": "10.0.0.1"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(register(None).await.unwrap().status(), 401);
    assert_eq!(register(Some("from-a-file")).await.unwrap().status(), 200);
}

/// Issue 10: watch streams are capped per client address (429) and in all (503), each
/// refusal a JSON error with Retry-After, and a closed stream gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped_per_client_and_in_all() {
    let s = ControlServer::start(&["--max-watchers", "3", "--max-watchers-per-client", "2"]).await;
    let from = |ip: &str| {
        quilt_tls::install_default_provider();
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .no_proxy()
            .build()
            .unwrap()
    };
    let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
    let watch = async |c: &reqwest::Client| c.get(s.url("/api/nodes/watch")).send().await.unwrap();
    let a = watch(&one).await;
    let b = watch(&one).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = watch(&one).await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("client 127.0.0.1 holds the limit of 2 watch streams"),
        "{body}"
    );
    let c = watch(&two).await;
    assert_eq!(c.status(), 200, "another address has its own share");
    let full = watch(&two).await;
    assert_eq!(full.status(), 503);
    let body: Value = full.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 3 watch streams"),
        "{body}"
    );
    // Unary calls are not watches: still served.
    assert_eq!(
        one.get(s.url("/api/nodes")).send().await.unwrap().status(),
        200
    );
    // A stream that ends gives its place back.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = watch(&one).await;
        if again.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((b, c));
}
