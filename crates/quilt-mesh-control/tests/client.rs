//! The shared `quilt_api::ControlClient` against the real server: failover past a dead
//! replica, and each refusal arriving as its typed error.

use std::time::Duration;

use futures::StreamExt;
use quilt_api::types::{EventType, RegisterRequest, Status};
use quilt_api::{ControlClient, ControlError};
use quilt_testkit::control::ControlServer;

/// A registration of `host_ip` (`A.B.C.D`) with a MAC of its own, `02:00:00:00:00:DD`.
fn request(hostname: &str, host_ip: &str) -> RegisterRequest {
    let last: u8 = host_ip.rsplit('.').next().unwrap().parse().unwrap();
    RegisterRequest {
        hostname: hostname.into(),
        host_ip: host_ip.into(),
        cpu_cores: Some(2),
        ram_mb: None,
        vtep_mac: Some(format!("02:00:00:00:00:{last:02x}")),
        subnet: None,
        vxlan_port: None,
        vni: None,
    }
}

/// A loopback port nobody listens on: bound, then closed.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn calls_fail_over_past_a_dead_replica_and_stay_with_the_live_one() {
    let s = ControlServer::start(&["--join-token", "join-secret"]).await;
    let client = ControlClient::builder([dead_url().await, s.base.clone()])
        .join_token(Some("join-secret".into()))
        .no_proxy()
        .build()
        .unwrap();

    assert_eq!(client.health().await.unwrap().status, "ok");
    let answer = client.register(&request("a", "192.168.9.1")).await.unwrap();
    assert!(answer.created);
    assert_eq!(answer.node.status, Status::Up);
    assert_eq!(answer.node.vtep_mac.as_deref(), Some("02:00:00:00:00:01"));
    let list = client.list().await.unwrap();
    assert_eq!(list.nodes, vec![answer.node.clone()]);
    client
        .heartbeat(&answer.node.node_id, &answer.node_token, None)
        .await
        .unwrap();

    let mut events = std::pin::pin!(client.watch(0).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.kind, first.node.node_id.as_str()),
        (EventType::Added, answer.node.node_id.as_str())
    );

    let deleted = client.delete_node(&answer.node.node_id).await.unwrap();
    assert_eq!(deleted.node_id, answer.node.node_id);
    s.stop().await;
}

#[tokio::test]
async fn refusals_arrive_typed() {
    let s = ControlServer::start(&["--join-token", "join-secret", "--watch-history", "2"]).await;
    let open = ControlClient::builder([s.base.clone()])
        .no_proxy()
        .build()
        .unwrap();
    let joined = ControlClient::builder([s.base.clone()])
        .join_token(Some("join-secret".into()))
        .no_proxy()
        .build()
        .unwrap();

    // No join token: 401 with the server's message.
    match open.register(&request("a", "192.168.9.1")).await {
        Err(ControlError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("join token"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Invalid field: 422 naming it.
    match joined.register(&request("a", "999.1.1.1")).await {
        Err(e @ ControlError::Refused { .. }) => {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
            assert!(e.to_string().contains("host_ip"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    let first = joined.register(&request("a", "192.168.9.1")).await.unwrap();
    // A renewal rotates the token: the old one is stale.
    let second = joined.register(&request("a", "192.168.9.1")).await.unwrap();
    assert!(!second.created);
    let id = &first.node.node_id;
    assert!(matches!(
        joined.heartbeat(id, &first.node_token, None).await,
        Err(ControlError::StaleToken(i)) if &i == id
    ));
    joined
        .heartbeat(id, &second.node_token, None)
        .await
        .unwrap();

    // Leaving twice is fine; a heartbeat after it names the unknown node.
    joined.leave(id, &second.node_token).await.unwrap();
    joined.leave(id, &second.node_token).await.unwrap();
    assert!(matches!(
        joined.heartbeat(id, &second.node_token, None).await,
        Err(ControlError::UnknownNode(i)) if &i == id
    ));

    // Five changes with a history of two: what came after revision 1 is forgotten.
    joined.register(&request("b", "192.168.9.2")).await.unwrap();
    joined.register(&request("c", "192.168.9.3")).await.unwrap();
    match joined.watch(1).await {
        Err(ControlError::Gone(1)) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a watch from a forgotten revision was accepted"),
    }
    s.stop().await;
}
