//! quilt-runtime as a real process in a fresh network namespace with a real `vxlan100`:
//! a gRPC client over TCP calls the RPCs and the test reads the kernel table back.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quilt_proto as pb;
use quilt_testkit::netns::{Underlay, privileged_or_skip};
use quilt_testkit::runtime::RuntimeHost;

fn inject(dest: &str, iface: &str, gw: &str) -> pb::InjectRouteRequest {
    pb::InjectRouteRequest {
        destination: dest.into(),
        via_interface: iface.into(),
        gateway: gw.into(),
    }
}

#[test]
fn rpcs_program_the_kernel_and_refuse_bad_input() {
    if !privileged_or_skip("rpcs_program_the_kernel_and_refuse_bad_input") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    host.ns
        .ip(&["route", "add", "10.42.9.0/24", "dev", "vxlan100"])
        .unwrap();
    let underlay_before = host.route_show("192.168.50.0/24");

    host.call(|mut c| async move {
        let r = c
            .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                subnet: "10.42.1.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        let r = c
            .inject_route(inject("10.42.2.0/24", "vxlan100", "10.42.2.0"))
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        // What a client of the original documents sends: no gateway.
        let r = c
            .inject_route(inject("10.42.3.0/24", "vxlan100", ""))
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        // The same route again is success.
        let r = c
            .inject_route(inject("10.42.3.0/24", "vxlan100", ""))
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        Ok(())
    })
    .unwrap();
    let shown = host.route_show("10.42.2.0/24");
    assert!(
        shown.contains("via 10.42.2.0 dev vxlan100 proto 158 onlink"),
        "{shown}"
    );
    assert_eq!(
        host.route_show("10.42.3.0/24"),
        "10.42.3.0/24 dev vxlan100 proto 158 scope link"
    );

    // A different gateway replaces the route.
    host.call(|mut c| async move {
        let r = c
            .inject_route(inject("10.42.3.0/24", "vxlan100", "10.42.3.0"))
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        Ok(())
    })
    .unwrap();
    let shown = host.route_show("10.42.3.0/24");
    assert!(
        shown.contains("via 10.42.3.0 dev vxlan100 proto 158 onlink"),
        "{shown}"
    );

    let long = "9".repeat(5000);
    let refusals = vec![
        (inject("0.0.0.0/0", "vxlan100", ""), "outside cluster cidr"),
        (inject("0.0.0.0/1", "vxlan100", ""), "outside cluster cidr"),
        (inject("8.8.8.0/24", "vxlan100", ""), "outside cluster cidr"),
        (
            inject("10.42.1.0/24", "vxlan100", ""),
            "this node's own subnet",
        ),
        (inject("10.42.4.0/24", "lo", ""), "not an overlay interface"),
        (
            inject("10.42.4.0/24", "underlay0", ""),
            "not an overlay interface",
        ),
        (
            inject("10.42.4.0/24", "vxlan200", ""),
            "interface vxlan200 does not exist",
        ),
        (inject("10.42.4.7/24", "vxlan100", ""), "host bits"),
        (
            inject("10.42.4.0/33", "vxlan100", ""),
            "not an IPv4 network",
        ),
        (inject("garbage", "vxlan100", ""), "not an IPv4 network"),
        (inject("", "", ""), "destination is empty"),
        (inject(&long, "vxlan100", ""), "5000 bytes long"),
        (
            inject("10.42.4.0/24", "vxlan100", "10.42.5.0"),
            "outside destination",
        ),
        (
            inject("10.42.9.0/24", "vxlan100", "10.42.9.0"),
            "was not made by quilt-runtime",
        ),
    ];
    host.call(|mut c| async move {
        for (request, expected) in refusals {
            let shown = format!("{:.40}", request.destination);
            let r = c.inject_route(request).await?.into_inner();
            assert!(!r.success, "{shown} was accepted");
            assert!(r.error.contains(expected), "{shown}: {}", r.error);
            assert!(
                r.error.len() < 400,
                "error echoes input whole: {}",
                r.error.len()
            );
        }
        for (subnet, expected) in [
            ("10.43.0.0/24", "outside cluster"),
            ("10.42.1.0/25", "/25"),
            ("", "empty"),
            (&long[..], "5000 bytes"),
        ] {
            let r = c
                .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                    subnet: subnet.into(),
                })
                .await?
                .into_inner();
            assert!(
                !r.success && r.error.contains(expected),
                "{:.20}: {}",
                subnet,
                r.error
            );
        }
        // The operator's route is never removed, and the refusal says why.
        let r = c
            .remove_route(pb::RemoveRouteRequest {
                destination: "10.42.9.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(
            !r.success && r.error.contains("was not made by quilt-runtime"),
            "{}",
            r.error
        );
        let r = c
            .remove_route(pb::RemoveRouteRequest {
                destination: "8.8.8.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(
            !r.success && r.error.contains("outside cluster cidr"),
            "{}",
            r.error
        );
        let r = c
            .remove_route(pb::RemoveRouteRequest {
                destination: "10.42.2.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        let r = c
            .remove_route(pb::RemoveRouteRequest {
                destination: "10.42.2.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(
            r.success,
            "removing an absent route is success: {}",
            r.error
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(host.route_show("10.42.2.0/24"), "");
    assert_eq!(
        host.route_show("10.42.4.0/24"),
        "",
        "no refused request reached the kernel"
    );
    assert_eq!(
        host.route_show("10.42.9.0/24"),
        "10.42.9.0/24 dev vxlan100 scope link"
    );
    assert_eq!(host.route_show("192.168.50.0/24"), underlay_before);
    assert_eq!(
        host.ns.ip(&["route", "show", "default"]).unwrap().trim(),
        ""
    );
}

#[test]
fn restarts_keep_routes_and_repair_the_kernel() {
    if !privileged_or_skip("restarts_keep_routes_and_repair_the_kernel") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    host.call(|mut c| async move {
        let r = c
            .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                subnet: "10.42.1.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        let r = c
            .inject_routes(pb::InjectRoutesRequest {
                routes: vec![
                    inject("10.42.2.0/24", "vxlan100", "10.42.2.0"),
                    inject("10.42.3.0/24", "vxlan100", "10.42.3.0"),
                ],
            })
            .await?
            .into_inner();
        assert!(r.results.iter().all(|r| r.success), "{:?}", r.results);
        let r = c
            .allocate_ip(pb::AllocateIpRequest { owner: "c1".into() })
            .await?
            .into_inner();
        assert_eq!(r.address, "10.42.1.2/24");
        Ok(())
    })
    .unwrap();

    // SIGTERM: exit 0 and routes stay in place.
    assert!(host.stop_with(Signal::SIGTERM).success(), "{}", host.log());
    assert!(host.route_show("10.42.2.0/24").contains("proto 158"));

    // Deleted by hand while stopped: back after start. A stale route of ours: removed.
    host.ns.ip(&["route", "del", "10.42.2.0/24"]).unwrap();
    host.ns
        .ip(&[
            "route",
            "add",
            "10.42.7.0/24",
            "dev",
            "vxlan100",
            "proto",
            "158",
        ])
        .unwrap();
    let started = Instant::now();
    host.start();
    while host.route_show("10.42.2.0/24").is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "repair took {:?}",
        started.elapsed()
    );
    assert!(
        host.route_show("10.42.2.0/24")
            .contains("via 10.42.2.0 dev vxlan100 proto 158 onlink")
    );
    assert_eq!(
        host.route_show("10.42.7.0/24"),
        "",
        "stale route of ours removed"
    );

    // kill -9, restart: it serves with the same state.
    let _ = host.stop_with(Signal::SIGKILL);
    host.start();
    host.call(|mut c| async move {
        let routes = c.list_routes(pb::ListRoutesRequest {}).await?.into_inner();
        let mut dests: Vec<_> = routes
            .routes
            .iter()
            .map(|r| (r.destination.clone(), r.in_kernel))
            .collect();
        dests.sort();
        assert_eq!(
            dests,
            vec![
                ("10.42.2.0/24".to_string(), true),
                ("10.42.3.0/24".to_string(), true)
            ]
        );
        let r = c
            .allocate_ip(pb::AllocateIpRequest { owner: "c1".into() })
            .await?
            .into_inner();
        assert_eq!(
            r.address, "10.42.1.2/24",
            "the same owner keeps its address"
        );
        let r = c
            .allocate_ip(pb::AllocateIpRequest { owner: "c2".into() })
            .await?
            .into_inner();
        assert_eq!(r.address, "10.42.1.3/24");
        let r = c
            .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                subnet: "10.42.5.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(
            !r.success && r.error.contains("2 container addresses are allocated"),
            "{}",
            r.error
        );
        Ok(())
    })
    .unwrap();

    // The overlay device vanishes and comes back: the periodic reconcile re-adds routes.
    host.ns.ip(&["link", "del", "vxlan100"]).unwrap();
    host.ns.add_vxlan100("192.168.50.1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.route_show("10.42.3.0/24").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        host.route_show("10.42.3.0/24").contains("via 10.42.3.0"),
        "{}",
        host.log()
    );
}

#[test]
fn health_and_reflection_answer() {
    if !privileged_or_skip("health_and_reflection_answer") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    host.channel_call(|channel| async move {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for service in ["", "quilt.QuiltRuntime"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await?
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
        }
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel);
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await?
            .into_inner();
        let answer = answers.message().await?.expect("a reflection answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            anyhow::bail!("unexpected reflection answer");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"quilt.QuiltRuntime".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
        Ok(())
    })
    .unwrap();
}
