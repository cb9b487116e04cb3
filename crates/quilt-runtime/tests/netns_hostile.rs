//! Hostile input against the real runtime in a namespace of its own (issue 11): a netns
//! path that is a FIFO, a state file that is not a database, an oversized route batch.

use std::process::Stdio;
use std::time::Duration;

use quilt_proto as pb;
use quilt_testkit::netns::privileged_or_skip;
use quilt_testkit::runtime::RuntimeHost;

fn attach_request(id: &str, netns: &str) -> pb::AttachContainerRequest {
    pb::AttachContainerRequest {
        container_id: id.into(),
        netns_path: netns.into(),
        ifname: "eth0".into(),
        mtu: 0,
    }
}

#[test]
fn a_fifo_or_other_non_namespace_path_is_refused_without_freezing() {
    if !privileged_or_skip("a_fifo_or_other_non_namespace_path_is_refused_without_freezing") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    let fifo = host.state_path().join("not-a-netns.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let plain = host.state_path().join("plain-file");
    std::fs::write(&plain, b"").unwrap();
    let paths = [
        fifo.display().to_string(),
        plain.display().to_string(),
        "/dev/null".to_string(),
        host.state_path().display().to_string(),
    ];
    host.configure_subnet("10.42.1.0/24");
    host.call(|mut c| async move {
        for path in &paths {
            // The deadline only keeps a frozen runtime from hanging the test.
            let answer = tokio::time::timeout(
                Duration::from_secs(20),
                c.attach_container(attach_request("c1", path)),
            )
            .await
            .map_err(|_| anyhow::anyhow!("AttachContainer with {path} did not answer"))??
            .into_inner();
            assert!(!answer.success, "{path} was accepted");
            assert!(
                answer.error.contains(path.as_str()) && answer.error.contains("not a network"),
                "{path}: {}",
                answer.error
            );
            assert_eq!(answer.error_kind, pb::ErrorKind::InvalidArgument as i32);
            let listed = c
                .list_allocations(pb::ListAllocationsRequest {})
                .await?
                .into_inner();
            assert!(listed.allocations.is_empty(), "{:?}", listed.allocations);
        }
        Ok(())
    })
    .unwrap();
    let log = host.log();
    assert!(
        log.contains("not-a-netns.fifo"),
        "refusal not logged:\n{log}"
    );
}

#[test]
fn a_state_file_that_is_not_a_database_is_refused_at_start() {
    if !privileged_or_skip("a_state_file_that_is_not_a_database_is_refused_at_start") {
        return;
    }
    let host = RuntimeHost::new();
    let db = host.state_path().join("runtime.db");
    for (what, content) in [
        ("empty", Vec::new()),
        (
            "random",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ] {
        std::fs::write(&db, &content).unwrap();
        let mut child = host
            .ns
            .command(quilt_testkit::bins::binary("quilt-runtime"))
            .args(["--grpc-addr", "127.0.0.1:50051", "--grpc-socket"])
            .arg(host.socket_path())
            .arg("--state-dir")
            .arg(host.state_path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A runtime that starts on the file keeps running: stop it after a while so the
        // test fails rather than hangs (and the namespace is still removed).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: started on it\n{stderr}");
        assert!(
            stderr.contains(&db.display().to_string()),
            "{what}: the error names the file\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            content,
            "{what}: the file was changed"
        );
    }
}

#[test]
fn an_oversized_route_batch_is_invalid_argument() {
    if !privileged_or_skip("an_oversized_route_batch_is_invalid_argument") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    let count = quilt_runtime::request::MAX_ROUTES_PER_BATCH + 1;
    host.call(|mut c| async move {
        let route = pb::InjectRouteRequest {
            destination: "10.42.2.0/24".into(),
            via_interface: "vxlan100".into(),
            gateway: String::new(),
        };
        let status = c
            .inject_routes(pb::InjectRoutesRequest {
                routes: vec![route; count],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(&count.to_string()),
            "{}",
            status.message()
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(host.route_show("10.42.2.0/24"), "");
}
