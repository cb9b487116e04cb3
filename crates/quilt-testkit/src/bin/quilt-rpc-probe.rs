//! A test client that calls a runtime the way a user would, as whatever user runs it:
//! `quilt-rpc-probe ADDRESS all|reads|open [CA CERT KEY]` calls every QuiltRuntime RPC
//! (`all`), only the listings (`reads`), or health and reflection v1 and v1alpha (`open`),
//! and prints one line per call, `NAME CODE`, where CODE is the gRPC code (`Ok`,
//! `PermissionDenied`, ...) or `connect-failed: REASON`. Tests run it under `setpriv`.

use std::path::PathBuf;
use std::time::Duration;

use quilt_proto as pb;
use quilt_proto::connect::{Timeouts, TlsOptions};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (address, mode) = match (args.first(), args.get(1)) {
        (Some(a), Some(m)) => (a.clone(), m.clone()),
        _ => {
            eprintln!("usage: quilt-rpc-probe ADDRESS all|reads|open [CA CERT KEY]");
            std::process::exit(2);
        }
    };
    let file = |i: usize| args.get(i).filter(|s| !s.is_empty()).map(PathBuf::from);
    let tls = TlsOptions {
        ca: file(2),
        cert: file(3),
        key: file(4),
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        call: Duration::from_secs(5),
    };
    let channel = match quilt_proto::connect::channel_with(&address, timeouts, &tls).await {
        Ok(channel) => channel,
        Err(e) => {
            println!("connect connect-failed: {e}");
            return;
        }
    };
    match mode.as_str() {
        "all" => {
            reads(&channel).await;
            writes(&channel).await;
        }
        "reads" => reads(&channel).await,
        "open" => open(&channel).await,
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn report<T>(name: &str, result: Result<tonic::Response<T>, tonic::Status>) {
    match result {
        Ok(_) => println!("{name} Ok"),
        Err(status)
            if status.code() == tonic::Code::Unknown
                || status.code() == tonic::Code::Unavailable =>
        {
            println!("{name} {:?}: {}", status.code(), status.message())
        }
        Err(status) => println!("{name} {:?}", status.code()),
    }
}

async fn reads(channel: &Channel) {
    let mut c = pb::quilt_runtime_client::QuiltRuntimeClient::new(channel.clone());
    report("ListRoutes", c.list_routes(pb::ListRoutesRequest {}).await);
    report(
        "ListAllocations",
        c.list_allocations(pb::ListAllocationsRequest {}).await,
    );
    report(
        "ListAttachments",
        c.list_attachments(pb::ListAttachmentsRequest {}).await,
    );
}

/// Every changing RPC, with arguments a trusted caller would see succeed (or be refused
/// only by validation): if one got through, the kernel or the listings would change.
async fn writes(channel: &Channel) {
    let mut c = pb::quilt_runtime_client::QuiltRuntimeClient::new(channel.clone());
    report(
        "ConfigureNodeSubnet",
        c.configure_node_subnet(pb::ConfigureNodeSubnetRequest {
            subnet: "10.42.77.0/24".into(),
        })
        .await,
    );
    let route = pb::InjectRouteRequest {
        destination: "10.42.9.0/24".into(),
        via_interface: "vxlan100".into(),
        gateway: "10.42.9.0".into(),
    };
    report("InjectRoute", c.inject_route(route.clone()).await);
    report(
        "InjectRoutes",
        c.inject_routes(pb::InjectRoutesRequest {
            routes: vec![pb::InjectRouteRequest {
                destination: "10.42.10.0/24".into(),
                ..route
            }],
        })
        .await,
    );
    report(
        "RemoveRoute",
        c.remove_route(pb::RemoveRouteRequest {
            destination: "10.42.2.0/24".into(),
        })
        .await,
    );
    report(
        "AllocateIp",
        c.allocate_ip(pb::AllocateIpRequest {
            owner: "probe".into(),
        })
        .await,
    );
    report(
        "ReleaseIp",
        c.release_ip(pb::ReleaseIpRequest {
            owner: "root-owned".into(),
        })
        .await,
    );
    report(
        "AttachContainer",
        c.attach_container(pb::AttachContainerRequest {
            container_id: "probe".into(),
            netns_path: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            mtu: 0,
        })
        .await,
    );
    report(
        "DetachContainer",
        c.detach_container(pb::DetachContainerRequest {
            container_id: "c-root".into(),
            ifname: "eth0".into(),
        })
        .await,
    );
    report(
        "CheckContainer",
        c.check_container(pb::CheckContainerRequest {
            container_id: "c-root".into(),
            ifname: "eth0".into(),
            netns_path: String::new(),
        })
        .await,
    );
}

/// Health and reflection, which are open to everyone.
async fn open(channel: &Channel) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel.clone());
    report(
        "Health",
        health
            .check(HealthCheckRequest {
                service: "quilt.QuiltRuntime".into(),
            })
            .await,
    );

    use tonic_reflection::pb::v1;
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    match reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
    {
        Ok(answer) => match answer.into_inner().next().await {
            Some(Ok(_)) => println!("ReflectionV1 Ok"),
            Some(Err(status)) => println!("ReflectionV1 {:?}", status.code()),
            None => println!("ReflectionV1 NoAnswer"),
        },
        Err(status) => println!("ReflectionV1 {:?}", status.code()),
    }

    use tonic_reflection::pb::v1alpha;
    let mut reflection =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    match reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
    {
        Ok(answer) => match answer.into_inner().next().await {
            Some(Ok(_)) => println!("ReflectionV1alpha Ok"),
            Some(Err(status)) => println!("ReflectionV1alpha {:?}", status.code()),
            None => println!("ReflectionV1alpha NoAnswer"),
        },
        Err(status) => println!("ReflectionV1alpha {:?}", status.code()),
    }
}
