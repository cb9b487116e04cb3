//! Who may call the runtime, against the real binary in a fresh namespace: an
//! unprivileged user (made for the test, removed after) is refused every QuiltRuntime
//! RPC with PERMISSION_DENIED over the unix socket and over loopback TCP, and nothing in
//! the kernel or the runtime's state changes; health and reflection answer it; root and
//! a member of `--grpc-socket-group` are served.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use quilt_proto as pb;
use quilt_testkit::netns::privileged_or_skip;
use quilt_testkit::runtime::{GRPC_ADDR, RuntimeHost};
use quilt_testkit::users::{TestGroup, TestUser};

/// Every QuiltRuntime RPC the probe calls in mode `all`.
const EVERY_RPC: [&str; 12] = [
    "ListRoutes",
    "ListAllocations",
    "ListAttachments",
    "ConfigureNodeSubnet",
    "InjectRoute",
    "InjectRoutes",
    "RemoveRoute",
    "AllocateIp",
    "ReleaseIp",
    "AttachContainer",
    "DetachContainer",
    "CheckContainer",
];

/// Runs the probe inside the host's namespace as `user` (root when `None`).
fn probe(host: &RuntimeHost, user: Option<(&TestUser, bool)>, address: &str, mode: &str) -> String {
    let mut command = host.ns.command("setpriv");
    match user {
        Some((user, init_groups)) => command.args(user.setpriv_args(init_groups)),
        None => command.arg("--reuid=0"),
    };
    let output: Output = command
        .arg(quilt_testkit::bins::probe())
        .args([address, mode])
        .output()
        .expect("run quilt-rpc-probe");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "probe failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn codes(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, code)| (name.to_string(), code.to_string()))
        .collect()
}

fn assert_all(out: &str, names: &[&str], code: &str, what: &str) {
    let got = codes(out);
    let seen: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(seen, names, "{what}: the calls made\n{out}");
    for (name, got_code) in &got {
        assert!(
            got_code.starts_with(code),
            "{what}: {name} answered {got_code}, not {code}\n{out}"
        );
    }
}

/// What a user cares about: the kernel's routes and every listing, read as root.
fn snapshot(host: &RuntimeHost) -> String {
    let kernel = host
        .ns
        .ip(&["-4", "route", "show", "table", "all"])
        .unwrap();
    let nexthops = host.ns.ip(&["nexthop", "show"]).unwrap_or_default();
    let listings = host
        .call(|mut c| async move {
            let routes = c.list_routes(pb::ListRoutesRequest {}).await?.into_inner();
            let allocations = c
                .list_allocations(pb::ListAllocationsRequest {})
                .await?
                .into_inner();
            let attachments = c
                .list_attachments(pb::ListAttachmentsRequest {})
                .await?
                .into_inner();
            Ok(format!("{routes:?}\n{allocations:?}\n{attachments:?}"))
        })
        .unwrap();
    format!("{kernel}\n{nexthops}\n{listings}")
}

#[test]
fn only_root_and_the_socket_group_may_call_on_the_socket_and_loopback_tcp() {
    if !privileged_or_skip("only_root_and_the_socket_group_may_call_on_the_socket_and_loopback_tcp")
    {
        return;
    }
    let group = TestGroup::create();
    let outsider = TestUser::create(&[]);
    let member = TestUser::create(&[&group]);
    let mut host = RuntimeHost::new();
    // The users must reach the socket in the state folder (a temp dir is 0700).
    std::fs::set_permissions(host.state_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    host.start_with(&[
        "--grpc-socket-group",
        &group.name,
        "--metrics-addr",
        "127.0.0.1:9109",
    ]);
    let socket = host.socket_path();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660, "socket mode");

    host.configure_subnet("10.42.1.0/24");
    host.call(|mut c| async move {
        let r = c
            .inject_route(pb::InjectRouteRequest {
                destination: "10.42.2.0/24".into(),
                via_interface: "vxlan100".into(),
                gateway: "10.42.2.0".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        let r = c
            .allocate_ip(pb::AllocateIpRequest {
                owner: "root-owned".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        Ok(())
    })
    .unwrap();
    let before = snapshot(&host);
    let socket_address = host.socket_address();
    let tcp_address = format!("http://{GRPC_ADDR}");

    // The file's mode keeps the outsider from even connecting...
    let out = probe(&host, Some((&outsider, false)), &socket_address, "all");
    assert!(out.starts_with("connect connect-failed"), "{out}");
    assert!(out.to_lowercase().contains("permission denied"), "{out}");
    // ...and when an operator opens the socket up, the caller check still refuses.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = probe(&host, Some((&outsider, false)), &socket_address, "all");
    assert_all(
        &out,
        &EVERY_RPC,
        "PermissionDenied",
        "outsider on the socket",
    );
    let out = probe(&host, Some((&outsider, false)), &tcp_address, "all");
    assert_all(&out, &EVERY_RPC, "PermissionDenied", "outsider on tcp");
    assert_eq!(
        snapshot(&host),
        before,
        "an outsider's calls changed something"
    );

    // Health and reflection (v1 and v1alpha) stay open, on both transports.
    let open = ["Health", "ReflectionV1", "ReflectionV1alpha"];
    for address in [&socket_address, &tcp_address] {
        let out = probe(&host, Some((&outsider, false)), address, "open");
        assert_all(&out, &open, "Ok", &format!("open services on {address}"));
    }

    // Each refusal is logged at warn with the uid, the transport and the RPC.
    let log = host.log();
    for transport in ["unix", "tcp"] {
        let logged = log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("call refused")
                && l.contains(&format!("uid=Some({})", outsider.uid))
                && l.contains(&format!("transport={transport}"))
                && l.contains("rpc=\"InjectRoute\"")
        });
        assert!(logged, "no warn line for the {transport} refusal:\n{log}");
    }

    // And counted, per method and transport.
    let metrics = quilt_testkit::netns::block_on_in(host.ns.name(), async || {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect("127.0.0.1:9109")
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    });
    for transport in ["unix", "tcp"] {
        let line = format!(
            "quilt_runtime_rpc_denied_total{{method=\"InjectRoute\",transport=\"{transport}\"}} 1"
        );
        assert!(metrics.contains(&line), "no {line}:\n{metrics}");
    }

    // A member of the socket group and root are served on both transports.
    for address in [&socket_address, &tcp_address] {
        let reads = &EVERY_RPC[..3];
        let out = probe(&host, Some((&member, true)), address, "reads");
        assert_all(&out, reads, "Ok", &format!("group member on {address}"));
        let out = probe(&host, None, address, "reads");
        assert_all(&out, reads, "Ok", &format!("root on {address}"));
    }
    assert_eq!(snapshot(&host), before);
}
