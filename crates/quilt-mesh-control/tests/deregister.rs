//! `POST /api/nodes/{id}/deregister`, the original agents' graceful shutdown: down at
//! once with one watch event, still listed with its lease, back on a heartbeat or a
//! registration, authorized as a heartbeat is.

mod common;

use std::time::Duration;

use common::EventReader;
use quilt_testkit::control::ControlServer;
use serde_json::Value;

async fn post(s: &ControlServer, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = s.client.post(s.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn node(s: &ControlServer, id: &str) -> Value {
    s.get_json(&format!("/api/nodes/{id}")).await
}

#[tokio::test]
async fn a_deregistered_node_is_down_at_once_keeps_its_lease_and_comes_back() {
    let s = ControlServer::start(&["--heartbeat-timeout", "60s"]).await;
    let a = s.register("a", "10.0.0.1").await;
    let b = s.register("b", "10.0.0.2").await;
    let token = a["node_token"].as_str().unwrap().to_string();
    let revision = s.get_json("/api/nodes").await["revision"].as_u64().unwrap();
    let mut events = EventReader::new(
        s.client
            .get(s.url(&format!("/api/nodes/watch?since={revision}")))
            .send()
            .await
            .unwrap(),
    );

    let (code, answer) = post(&s, "/api/nodes/node-1/deregister", Some(&token)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "down");
    let event = events.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event["type"], "updated");
    assert_eq!(event["revision"].as_u64(), Some(revision + 1));
    assert_eq!(event["node"]["node_id"], "node-1");
    assert_eq!(event["node"]["status"], "down");
    let listed = s.get_json("/api/nodes").await;
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 2, "still listed");
    let now = node(&s, "node-1").await;
    assert_eq!(
        (now["status"].as_str(), &now["subnet"]),
        (Some("down"), &a["subnet"])
    );
    assert_eq!(
        node(&s, "node-2").await["status"],
        "up",
        "only the one named"
    );

    // Twice is harmless and no event.
    let (code, _) = post(&s, "/api/nodes/node-1/deregister", Some(&token)).await;
    assert_eq!(code, 200);

    // The next heartbeat brings it back: one event, same subnet.
    let (code, _) = post(&s, "/api/nodes/node-1/heartbeat", Some(&token)).await;
    assert_eq!(code, 200);
    let event = events.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (event["revision"].as_u64(), event["node"]["status"].as_str()),
        (Some(revision + 2), Some("up")),
        "deregistering twice made no second event: {event}"
    );
    assert_eq!(node(&s, "node-1").await["subnet"], a["subnet"]);

    // A registration brings it back too, with its id and subnet.
    let b_token = b["node_token"].as_str().unwrap().to_string();
    let (code, _) = post(&s, "/api/nodes/node-2/deregister", Some(&b_token)).await;
    assert_eq!(code, 200);
    let again = s.register("b", "10.0.0.2").await;
    assert_eq!(
        (&again["node_id"], &again["subnet"], &again["status"]),
        (&b["node_id"], &b["subnet"], &Value::from("up"))
    );
    s.stop().await;
}

#[tokio::test]
async fn deregister_is_authorized_as_a_heartbeat() {
    let s = ControlServer::start(&["--join-token", "join-secret"]).await;
    let register = |host_ip: &'static str| {
        s.client
            .post(s.url("/api/nodes/register"))
            .bearer_auth("join-secret")
            .json(&serde_json::json!({"hostname": "h", "host_ip": host_ip}))
            .send()
    };
    let a: Value = register("10.0.0.1").await.unwrap().json().await.unwrap();
    let b: Value = register("10.0.0.2").await.unwrap().json().await.unwrap();
    let a_token = a["node_token"].as_str().unwrap();
    let b_token = b["node_token"].as_str().unwrap();

    let (code, body) = post(&s, "/api/nodes/node-1/deregister", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(&s, "/api/nodes/node-1/deregister", Some(b_token)).await;
    assert_eq!(code, 403, "another node's token: {body}");
    let (code, body) = post(&s, "/api/nodes/node-1/deregister", Some("join-secret")).await;
    assert_eq!(code, 403, "the join token is not the node's: {body}");
    assert_eq!(
        node(&s, "node-1").await["status"],
        "up",
        "refusals change nothing"
    );

    let (code, body) = post(&s, "/api/nodes/node-9/deregister", Some(a_token)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("node-9"), "{body}");
    let (code, _) = post(&s, "/api/nodes/garbage/deregister", Some(a_token)).await;
    assert_eq!(code, 404);

    let r = s
        .client
        .get(s.url("/api/nodes/node-1/deregister"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    let (code, _) = post(&s, "/api/nodes/node-1/deregister", Some(a_token)).await;
    assert_eq!(code, 200);
    assert_eq!(node(&s, "node-1").await["status"], "down");
    s.stop().await;
}
