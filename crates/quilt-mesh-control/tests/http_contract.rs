//! Checks the server against the written contract, docs/http-api.md: every endpoint in
//! its table is routed (not 404 or 405), answers with a documented success status, and
//! the JSON shapes of the examples match what the server sends.

use quilt_testkit::control::ControlServer;
use serde_json::Value;

const CONTRACT: &str = include_str!("../../../docs/http-api.md");

/// (method, path, documented answer) for each row of the endpoint table.
fn endpoints() -> Vec<(String, String, String)> {
    let section = CONTRACT
        .split("## Endpoints")
        .nth(1)
        .expect("docs/http-api.md has an Endpoints section");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | method | path | auth | body | answer |
            if cells.len() < 6 || !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&cells[1]) {
                return None;
            }
            Some((
                cells[1].to_string(),
                cells[2].trim_matches('`').to_string(),
                cells[5].to_string(),
            ))
        })
        .collect()
}

/// The first json code block after `heading`.
fn example(heading: &str) -> String {
    CONTRACT
        .split(heading)
        .nth(1)
        .and_then(|rest| rest.split("```json").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("{heading} has a json example"))
        .to_string()
}

#[tokio::test]
async fn every_documented_endpoint_is_routed_and_answers_as_documented() {
    let table = endpoints();
    assert!(table.len() >= 8, "the table lists the endpoints: {table:?}");
    let s = ControlServer::start(&[]).await;
    let node = s.register("doc", "10.0.0.1").await;
    let id = node["node_id"].as_str().unwrap();

    // DELETE last, so the node exists for every other row.
    let mut rows = table.clone();
    rows.sort_by_key(|(m, _, _)| m == "DELETE");
    for (method, path, answer) in rows {
        let url = s.url(&path.replace("{id}", id));
        let method: reqwest::Method = method.parse().unwrap();
        let mut request = s.client.request(method.clone(), &url);
        if path == "/api/nodes/register" {
            // the documented example request
            request = request.body(example("### RegisterRequest"));
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} is not routed: {status}"
        );
        let documented: u16 = answer.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(status, documented, "{method} {path}");
        if path == "/api/nodes/watch" {
            assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn the_documented_examples_have_the_fields_the_server_sends() {
    let s = ControlServer::start(&[]).await;
    let r = s
        .client
        .post(s.url("/api/nodes/register"))
        .json(&serde_json::json!({"hostname": "worker-1", "host_ip": "192.168.1.10", "cpu_cores": 4, "ram_mb": 8192, "vtep_mac": "02:42:ac:11:00:02"}))
        .send()
        .await
        .unwrap();
    let registered: Value = r.json().await.unwrap();
    let listed: Value = s
        .client
        .get(s.url("/api/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hb: Value = s
        .client
        .post(s.url("/api/nodes/node-1/heartbeat"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (heading, actual) in [
        ("### RegisterResponse", &registered),
        ("### NodeInfo", &listed["nodes"][0]),
        ("### HeartbeatResponse", &hb),
    ] {
        let example = example(heading);
        // The examples may abbreviate values; compare the field names.
        let documented: Vec<String> = example
            .split('"')
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[1].trim_start().starts_with(':'))
            .map(|w| w[0].to_string())
            .collect();
        let mut sent: Vec<String> = actual.as_object().unwrap().keys().cloned().collect();
        let mut documented_sorted = documented.clone();
        sent.sort();
        documented_sorted.sort();
        assert_eq!(documented_sorted, sent, "{heading}");
    }
    s.stop().await;
}
