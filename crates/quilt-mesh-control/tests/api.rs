//! The HTTP API over real HTTP: every endpoint, every error status, leases under
//! concurrency, exhaustion, heartbeat timeout, the watch stream and the auth matrix.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::EventReader;
use ipnet::Ipv4Net;
use quilt_testkit::control::ControlServer;
use serde_json::{Value, json};

const NODE_FIELDS: &[&str] = &[
    "node_id",
    "hostname",
    "host_ip",
    "subnet",
    "cpu_cores",
    "ram_mb",
    "status",
    "registered_at",
    "last_heartbeat",
    "vtep_mac",
];

async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn list(s: &ControlServer) -> Value {
    let r = s.client.get(s.url("/api/nodes")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn register_list_get_heartbeat_delete() {
    let s = ControlServer::start(&[]).await;
    let a = s.register("node-a", "192.168.1.10").await;
    assert_eq!(a["node_id"], "node-1");
    assert_eq!(
        a["subnet"], "10.42.1.0/24",
        "leases start at the cluster's second subnet"
    );
    assert_eq!(a["node_token"].as_str().unwrap().len(), 64);
    assert_eq!(a["status"], "up");
    assert_eq!(a["cluster_cidr"], "10.42.0.0/16");
    assert_eq!(a["created"], true);
    let b = s.register("node-b", "192.168.1.11").await;
    assert_eq!(b["subnet"], "10.42.2.0/24");

    let listed = list(&s).await;
    assert_eq!(listed["revision"], 2);
    let nodes = listed["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let mut keys: Vec<&str> = nodes[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = NODE_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(
        keys, expected,
        "node fields are exactly the documented ones"
    );
    assert_eq!(nodes[0]["host_ip"], "192.168.1.10");
    assert_eq!(nodes[0]["cpu_cores"], 2);
    assert_eq!(nodes[0]["ram_mb"], 2048);
    assert_eq!(nodes[0]["vtep_mac"], Value::Null);
    assert!(
        nodes[0]["registered_at"].as_u64().unwrap() > 1_600_000_000,
        "unix seconds"
    );

    let (code, got) = status_and_json(
        s.client
            .get(s.url("/api/nodes/node-2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, got["hostname"].as_str()), (200, Some("node-b")));

    let r = s
        .client
        .post(s.url("/api/nodes/node-1/heartbeat"))
        .send()
        .await
        .unwrap();
    let (code, hb) = status_and_json(r).await;
    assert_eq!((code, hb["status"].as_str()), (200, Some("up")));

    let (code, gone) = status_and_json(
        s.client
            .delete(s.url("/api/nodes/node-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, gone["subnet"].as_str()), (200, Some("10.42.1.0/24")));
    for (method, path) in [
        (reqwest::Method::GET, "/api/nodes/node-1"),
        (reqwest::Method::DELETE, "/api/nodes/node-1"),
        (reqwest::Method::POST, "/api/nodes/node-1/heartbeat"),
        (reqwest::Method::GET, "/api/nodes/node-77"),
        (reqwest::Method::GET, "/api/nodes/not-an-id"),
        (reqwest::Method::POST, "/api/nodes/garbage/heartbeat"),
    ] {
        let (code, body) = status_and_json(
            s.client
                .request(method.clone(), s.url(path))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 404, "{method} {path}");
        assert!(
            body["error"].as_str().unwrap().contains("not found"),
            "{body}"
        );
    }

    let c = s.register("node-c", "192.168.1.12").await;
    assert_eq!(c["node_id"], "node-3", "ids are not reused");
    assert_eq!(
        c["subnet"], "10.42.1.0/24",
        "a freed subnet is reused, lowest first"
    );
    s.stop().await;
}

#[tokio::test]
async fn registering_again_returns_the_same_lease_updated() {
    let s = ControlServer::start(&[]).await;
    let first = s.register("node-a", "10.1.0.5").await;
    let r = s
        .client
        .post(s.url("/api/nodes/register"))
        .json(&json!({"hostname": "node-a2", "host_ip": "10.1.0.5", "cpu_cores": 8, "ram_mb": 1, "vtep_mac": "02:42:AC:11:00:02"}))
        .send()
        .await
        .unwrap();
    let (code, again) = status_and_json(r).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["node_id"], first["node_id"]);
    assert_eq!(again["subnet"], first["subnet"]);
    // The credential is rotated: the old token stops working, the new one works.
    assert_ne!(again["node_token"], first["node_token"]);
    let id = first["node_id"].as_str().unwrap();
    for (token, expected) in [(&first["node_token"], 403), (&again["node_token"], 200)] {
        let r = s
            .client
            .post(s.url(&format!("/api/nodes/{id}/heartbeat")))
            .bearer_auth(token.as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected);
    }
    assert_eq!(again["created"], false);
    assert_eq!(again["hostname"], "node-a2");
    assert_eq!(again["cpu_cores"], 8);
    assert_eq!(again["vtep_mac"], "02:42:ac:11:00:02");
    let listed = list(&s).await;
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(listed["revision"], 2);
    s.stop().await;
}

#[tokio::test]
async fn refusals_have_the_right_status_name_the_field_and_create_nothing() {
    let s = ControlServer::start(&[]).await;
    let post = |body: String| {
        s.client
            .post(s.url("/api/nodes/register"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"hostname\": ".into(), 400, "malformed json"),
        ("".into(), 400, "empty"),
        (
            r#"{"host_ip":"10.0.0.1"}"#.into(),
            422,
            "hostname is missing",
        ),
        (
            r#"{"hostname":"a","host_ip":"999.1.1.1"}"#.into(),
            422,
            r#"host_ip "999.1.1.1" is not an IPv4 address"#,
        ),
        (
            r#"{"hostname":"a","host_ip":"127.0.0.1"}"#.into(),
            422,
            "host_ip 127.0.0.1 is a loopback address",
        ),
        (
            r#"{"hostname":"a","host_ip":"0.0.0.0"}"#.into(),
            422,
            "host_ip 0.0.0.0",
        ),
        (
            r#"{"hostname":"a","host_ip":"239.1.1.1"}"#.into(),
            422,
            "multicast",
        ),
        (
            r#"{"hostname":"a","host_ip":"255.255.255.255"}"#.into(),
            422,
            "broadcast",
        ),
        (
            r#"{"hostname":"bad_name","host_ip":"10.0.0.1"}"#.into(),
            422,
            "hostname \"bad_name\"",
        ),
        (
            format!(
                r#"{{"hostname":"{}","host_ip":"10.0.0.1"}}"#,
                "a".repeat(254)
            ),
            422,
            "more than 253",
        ),
        (
            r#"{"hostname":"a","host_ip":"10.0.0.1","vtep_mac":"01:00:5e:00:00:01"}"#.into(),
            422,
            "vtep_mac",
        ),
        (
            r#"{"hostname":"a","host_ip":"10.0.0.1","cpu_cores":"four"}"#.into(),
            422,
            "cpu_cores",
        ),
        (
            r#"{"hostname":"a","host_ip":"10.0.0.1","extra":1}"#.into(),
            422,
            "unknown field \"extra\"",
        ),
        (
            format!(
                r#"{{"hostname":"a","host_ip":"10.0.0.1","pad":"{}"}}"#,
                "x".repeat(65 * 1024)
            ),
            413,
            "larger than the limit of 65536 bytes",
        ),
    ];
    for (body, status, expected) in cases {
        let (code, answer) = status_and_json(post(body.clone()).await.unwrap()).await;
        let msg = answer["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(code, status, "{}: {msg}", common_excerpt(&body));
        assert!(msg.contains(expected), "{}: {msg}", common_excerpt(&body));
    }
    // A body without a content type is still read (old clients), and content-length
    // over the limit is refused before it is read.
    let r = s
        .client
        .post(s.url("/api/nodes/register"))
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let listed = list(&s).await;
    assert_eq!(
        listed["nodes"].as_array().unwrap().len(),
        0,
        "refusals create nothing"
    );
    assert_eq!(listed["revision"], 0);
    s.stop().await;
}

fn common_excerpt(s: &str) -> String {
    s.chars().take(80).collect()
}

#[tokio::test]
async fn unknown_paths_methods_health_and_metrics() {
    let s = ControlServer::start(&[]).await;
    let (code, body) = status_and_json(s.client.get(s.url("/nope")).send().await.unwrap()).await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("/nope"));
    let (code, body) =
        status_and_json(s.client.put(s.url("/api/nodes")).send().await.unwrap()).await;
    assert_eq!(code, 405);
    assert!(body["error"].as_str().unwrap().contains("PUT"));

    let (code, body) = status_and_json(s.client.get(s.url("/health")).send().await.unwrap()).await;
    assert_eq!((code, body), (200, json!({"status": "ok"})));

    s.register("a", "10.0.0.1").await;
    let r = s
        .client
        .post(s.url("/api/nodes/node-1/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let watch = s
        .client
        .get(s.url("/api/nodes/watch"))
        .send()
        .await
        .unwrap();
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for expected in [
        "quilt_control_nodes{status=\"up\"} 1",
        "quilt_control_nodes{status=\"down\"} 0",
        "quilt_control_registrations_total{result=\"created\"} 1",
        "quilt_control_heartbeats_total 1",
        "quilt_control_watchers 1",
        "quilt_control_revision 1",
        "quilt_control_http_request_duration_seconds_bucket{",
        "route=\"/api/nodes/register\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    drop(watch);
    s.stop().await;
}

#[tokio::test]
async fn three_hundred_concurrent_registrations_get_distinct_subnets() {
    // A /16 in /26s holds 1023 leases (a /16 in /24s holds only 255: see the next tests).
    // 300 requests at once may open 300 connections from one address: above the default
    // per-client cap (256), which is not what this test is about.
    let s = ControlServer::start(&[
        "--node-prefix-len",
        "26",
        "--max-connections-per-client",
        "512",
    ])
    .await;
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let client = s.client.clone();
        let url = s.url("/api/nodes/register");
        tasks.push(tokio::spawn(async move {
            let ip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
            let r = client
                .post(url)
                .json(&json!({"hostname": format!("n{i}"), "host_ip": ip}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
    let mut subnets = HashSet::new();
    let mut ids = HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        let subnet: Ipv4Net = v["subnet"].as_str().unwrap().parse().unwrap();
        assert!(
            cluster.contains(&subnet) && subnet.prefix_len() == 26,
            "{subnet}"
        );
        assert_ne!(
            subnet.to_string(),
            "10.42.0.0/26",
            "the first subnet is never leased"
        );
        subnets.insert(subnet);
        ids.insert(v["node_id"].as_str().unwrap().to_string());
    }
    assert_eq!(subnets.len(), 300);
    assert_eq!(ids.len(), 300);
    // lowest free first: exactly the first 300 leasable subnets
    let last: Ipv4Net = "10.42.75.0/26".parse().unwrap();
    assert_eq!(subnets.iter().max(), Some(&last));
    s.stop().await;
}

#[tokio::test]
async fn a_tiny_cluster_gives_three_leases_then_a_clear_503() {
    let s =
        ControlServer::start(&["--cluster-cidr", "10.99.0.0/22", "--node-prefix-len", "24"]).await;
    let mut got = Vec::new();
    for i in 1..=3 {
        got.push(s.register("n", &format!("10.0.0.{i}")).await["subnet"].clone());
    }
    assert_eq!(
        got,
        [
            json!("10.99.1.0/24"),
            json!("10.99.2.0/24"),
            json!("10.99.3.0/24")
        ]
    );
    for _ in 0..2 {
        let r = s
            .client
            .post(s.url("/api/nodes/register"))
            .json(&json!({"hostname": "n", "host_ip": "10.0.0.4"}))
            .send()
            .await
            .unwrap();
        let (code, body) = status_and_json(r).await;
        assert_eq!(code, 503);
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("exhausted") && msg.contains("10.99.0.0/22"),
            "{msg}"
        );
    }
    assert_eq!(list(&s).await["nodes"].as_array().unwrap().len(), 3);
    // a known node still renews
    assert_eq!(s.register("n", "10.0.0.2").await["subnet"], "10.99.2.0/24");
    s.stop().await;
}

#[tokio::test]
async fn the_pool_of_a_slash_16_runs_out_without_wrapping() {
    let s = ControlServer::start(&[]).await;
    for i in 0..255u32 {
        s.register("n", &format!("10.7.{}.{}", i / 200, i % 200 + 1))
            .await;
    }
    let r = s
        .client
        .post(s.url("/api/nodes/register"))
        .json(&json!({"hostname": "n", "host_ip": "10.8.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let listed = list(&s).await;
    let subnets: HashSet<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets.len(), 255);
    assert!(!subnets.contains("10.42.0.0/24"));
    assert!(subnets.contains("10.42.255.0/24"));
    s.stop().await;
}

#[tokio::test]
async fn a_silent_node_goes_down_in_time_and_comes_back_with_a_heartbeat() {
    let timeout = Duration::from_millis(800);
    let s = ControlServer::start(&["--heartbeat-timeout", "800ms"]).await;
    let mut events = EventReader::new(
        s.client
            .get(s.url("/api/nodes/watch"))
            .send()
            .await
            .unwrap(),
    );
    s.register("alive", "10.0.0.1").await;
    let registered = Instant::now();
    s.register("silent", "10.0.0.2").await;
    assert_eq!(
        events.next_within(Duration::from_secs(5)).await.unwrap()["type"],
        "added"
    );
    assert_eq!(
        events.next_within(Duration::from_secs(5)).await.unwrap()["type"],
        "added"
    );

    // node-1 keeps sending heartbeats; node-2 says nothing.
    let client = s.client.clone();
    let url = s.url("/api/nodes/node-1/heartbeat");
    let beating = tokio::spawn(async move {
        loop {
            let r = client.post(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let down = events.next_within(Duration::from_secs(5)).await.unwrap();
    let detected = registered.elapsed();
    assert_eq!(down["type"], "updated");
    assert_eq!(down["node"]["node_id"], "node-2");
    assert_eq!(down["node"]["status"], "down");
    assert!(detected >= timeout, "not before the timeout: {detected:?}");
    assert!(
        detected <= timeout * 3 / 2,
        "detected within 1.5 x the timeout: {detected:?}"
    );
    let listed = list(&s).await;
    assert_eq!(listed["nodes"][0]["status"], "up");
    assert_eq!(listed["nodes"][1]["status"], "down");

    let r = s
        .client
        .post(s.url("/api/nodes/node-2/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let up = events.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (
            up["node"]["node_id"].as_str(),
            up["node"]["status"].as_str()
        ),
        (Some("node-2"), Some("up"))
    );
    assert_eq!(list(&s).await["nodes"][1]["status"], "up");
    beating.abort();
    s.stop().await;
}

#[tokio::test]
async fn every_watcher_sees_every_event_in_order_and_can_resume() {
    let s = ControlServer::start(&[]).await;
    let start = list(&s).await["revision"].as_u64().unwrap();
    let mut watchers = Vec::new();
    for _ in 0..5 {
        let r = s
            .client
            .get(s.url(&format!("/api/nodes/watch?since={start}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        watchers.push(EventReader::new(r));
    }
    let a = s.register("a", "10.0.0.1").await;
    s.register("b", "10.0.0.2").await;
    let token = a["node_token"].as_str().unwrap().to_string();
    // a heartbeat alone is not an event
    let r = s
        .client
        .post(s.url("/api/nodes/node-1/heartbeat"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .post(s.url("/api/nodes/register"))
        .json(&json!({"hostname": "a", "host_ip": "10.0.0.1", "vtep_mac": "02:00:00:00:00:01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.client
            .delete(s.url("/api/nodes/node-2"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let expected = [
        ("added", "node-1"),
        ("added", "node-2"),
        ("updated", "node-1"),
        ("deleted", "node-2"),
    ];
    for w in &mut watchers {
        for (i, (kind, node)) in expected.iter().enumerate() {
            let e = w.next_within(Duration::from_secs(5)).await.unwrap();
            assert_eq!(e["revision"].as_u64().unwrap(), start + 1 + i as u64);
            assert_eq!(e["type"], *kind);
            assert_eq!(e["node"]["node_id"], *node);
        }
    }
    // resuming from the first event's revision replays the rest
    let mut resumed = EventReader::new(
        s.client
            .get(s.url(&format!("/api/nodes/watch?since={}", start + 1)))
            .send()
            .await
            .unwrap(),
    );
    for (i, (kind, _)) in expected.iter().enumerate().skip(1) {
        let e = resumed.next_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (e["revision"].as_u64().unwrap(), e["type"].as_str().unwrap()),
            (start + 1 + i as u64, *kind)
        );
    }

    let (code, body) = status_and_json(
        s.client
            .get(s.url("/api/nodes/watch?since=abc"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("since \"abc\""));
    let (code, _) = status_and_json(
        s.client
            .get(s.url("/api/nodes/watch?since=999"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        code, 410,
        "a revision from the future means the client must list again"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_revision_older_than_the_history_is_gone() {
    let s = ControlServer::start(&["--watch-history", "2"]).await;
    for i in 1..=4 {
        s.register("n", &format!("10.0.0.{i}")).await;
    }
    let r = s
        .client
        .get(s.url("/api/nodes/watch?since=1"))
        .send()
        .await
        .unwrap();
    let (code, body) = status_and_json(r).await;
    assert_eq!(code, 410);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("list the nodes again"),
        "{body}"
    );
    let mut ok = EventReader::new(
        s.client
            .get(s.url("/api/nodes/watch?since=2"))
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(
        ok.next_within(Duration::from_secs(5)).await.unwrap()["revision"],
        3
    );
    assert_eq!(
        ok.next_within(Duration::from_secs(5)).await.unwrap()["revision"],
        4
    );
    s.stop().await;
}

#[tokio::test]
async fn watch_streams_end_when_the_server_stops() {
    let s = ControlServer::start(&[]).await;
    let mut w = EventReader::new(
        s.client
            .get(s.url("/api/nodes/watch"))
            .send()
            .await
            .unwrap(),
    );
    s.stop().await;
    assert!(w.next_within(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn the_auth_matrix() {
    let s = ControlServer::start(&["--join-token", "join-secret"]).await;
    let register = |token: Option<&'static str>, ip: &'static str| {
        let mut rb = s
            .client
            .post(s.url("/api/nodes/register"))
            .json(&json!({"hostname": "n", "host_ip": ip}));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    let r = register(None, "10.0.0.1").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        register(Some("wrong"), "10.0.0.1").await.unwrap().status(),
        401
    );
    let (_, a) = status_and_json(register(Some("join-secret"), "10.0.0.1").await.unwrap()).await;
    let (_, b) = status_and_json(register(Some("join-secret"), "10.0.0.2").await.unwrap()).await;
    let a_token = a["node_token"].as_str().unwrap().to_string();
    let b_token = b["node_token"].as_str().unwrap().to_string();
    assert_eq!(
        list(&s).await["nodes"].as_array().unwrap().len(),
        2,
        "refused registrations created nothing"
    );

    let heartbeat = |token: Option<String>| {
        let mut rb = s.client.post(s.url("/api/nodes/node-1/heartbeat"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    assert_eq!(heartbeat(None).await.unwrap().status(), 401);
    assert_eq!(
        heartbeat(Some("join-secret".into()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        heartbeat(Some(b_token.clone())).await.unwrap().status(),
        403
    );
    assert_eq!(
        heartbeat(Some(a_token.clone())).await.unwrap().status(),
        200
    );
    let r = s
        .client
        .post(s.url("/api/nodes/node-1/heartbeat"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let delete = |id: &str, token: Option<String>| {
        let mut rb = s.client.delete(s.url(&format!("/api/nodes/{id}")));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    assert_eq!(delete("node-1", None).await.unwrap().status(), 401);
    assert_eq!(
        delete("node-1", Some("wrong".into()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        delete("node-1", Some(b_token.clone()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        delete("node-1", Some(a_token)).await.unwrap().status(),
        200,
        "a node may leave"
    );
    assert_eq!(
        delete("node-2", Some("join-secret".into()))
            .await
            .unwrap()
            .status(),
        200,
        "the operator may remove a node"
    );
    assert_eq!(list(&s).await["nodes"].as_array().unwrap().len(), 0);
    s.stop().await;

    // Open mode: no token is fine (the original clients send none), a wrong one is not.
    let s = ControlServer::start(&[]).await;
    let a = s.register("n", "10.0.0.1").await;
    let hb = |token: Option<&str>| {
        let mut rb = s.client.post(s.url("/api/nodes/node-1/heartbeat"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t.to_string());
        }
        rb.send()
    };
    assert_eq!(hb(None).await.unwrap().status(), 200);
    assert_eq!(
        hb(Some(a["node_token"].as_str().unwrap()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(hb(Some("wrong")).await.unwrap().status(), 403);
    let r = s
        .client
        .delete(s.url("/api/nodes/node-1"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    s.stop().await;
}
