//! The runtime core against the recording fake kernel: ownership, idempotence,
//! reconcile repairs and address allocation, without root.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use quilt_kernel::Kernel;
use quilt_kernel::Route;
use quilt_kernel::fake::FakeKernel;
use quilt_runtime::metrics::Metrics;
use quilt_runtime::model::{ManagedRoute, RouteChange};
use quilt_runtime::store::Store;
use quilt_runtime::{ROUTE_PROTOCOL, Runtime, RuntimeError};

fn runtime(dir: &tempfile::TempDir) -> Runtime<FakeKernel> {
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1450);
    Runtime::new(
        kernel,
        Store::open(dir.path()).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn peer(n: u8) -> ManagedRoute {
    ManagedRoute {
        destination: format!("10.42.{n}.0/24").parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: Some(Ipv4Addr::new(10, 42, n, 0)),
    }
}

fn ours(n: u8) -> Route {
    Route {
        destination: format!("10.42.{n}.0/24").parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: Some(Ipv4Addr::new(10, 42, n, 0)),
        protocol: ROUTE_PROTOCOL,
    }
}

#[tokio::test]
async fn injecting_twice_changes_the_kernel_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    rt.kernel().clear_operations();
    let first = rt.inject_routes(&[peer(2)]).await;
    let second = rt.inject_routes(&[peer(2)]).await;
    assert_eq!(first[0].as_ref().unwrap(), &RouteChange::Added);
    assert_eq!(second[0].as_ref().unwrap(), &RouteChange::Unchanged);
    assert_eq!(
        rt.kernel().operations(),
        vec!["add 10.42.2.0/24 via 10.42.2.0 dev vxlan100 onlink proto 158"]
    );
}

#[tokio::test]
async fn refusals_leave_the_kernel_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    rt.kernel().clear_operations();
    rt.kernel().insert_route(Route {
        protocol: 4,
        ..ours(9)
    });
    let own = ManagedRoute {
        destination: "10.42.1.0/24".parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: None,
    };
    let missing = ManagedRoute {
        interface: "vxlan200".into(),
        ..peer(3)
    };
    let results = rt.inject_routes(&[own, peer(9), missing]).await;
    assert!(matches!(results[0], Err(RuntimeError::OwnSubnet(_))));
    assert!(matches!(
        results[1],
        Err(RuntimeError::NotOurs { protocol: 4, .. })
    ));
    assert!(matches!(results[2], Err(RuntimeError::NoSuchInterface(_))));
    assert!(matches!(
        rt.remove_route("10.42.9.0/24".parse().unwrap()).await,
        Err(RuntimeError::NotOurs { .. })
    ));
    assert!(
        rt.kernel().operations().is_empty(),
        "{:?}",
        rt.kernel().operations()
    );
    assert!(rt.desired().await.routes.is_empty());
}

#[tokio::test]
async fn reconcile_re_adds_missing_and_removes_stale_routes_only_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    rt.inject_routes(&[peer(2), peer(3)]).await;
    rt.kernel().remove_route("10.42.2.0/24".parse().unwrap());
    rt.kernel().insert_route(ours(7));
    rt.kernel().insert_route(Route {
        protocol: 3,
        ..ours(8)
    });
    rt.kernel().clear_operations();

    let report = rt.reconcile().await.unwrap();
    assert_eq!(report.repairs, 2);
    let mut routes = rt.kernel().all_routes();
    routes.sort_by_key(|r| r.destination);
    assert_eq!(
        routes,
        vec![
            ours(2),
            ours(3),
            Route {
                protocol: 3,
                ..ours(8)
            }
        ]
    );
    assert_eq!(
        rt.reconcile().await.unwrap().repairs,
        0,
        "a second pass has nothing to do"
    );
}

#[tokio::test]
async fn routes_wait_for_a_missing_interface() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    rt.inject_routes(&[peer(2)]).await;
    rt.kernel().remove_link("vxlan100");
    assert!(
        rt.kernel().all_routes().is_empty(),
        "the kernel drops routes with their device"
    );
    assert_eq!(rt.reconcile().await.unwrap().repairs, 0);
    rt.kernel().add_link("vxlan100", 1450);
    assert_eq!(rt.reconcile().await.unwrap().repairs, 1);
    assert_eq!(
        rt.kernel()
            .route("10.42.2.0/24".parse().unwrap())
            .await
            .unwrap(),
        Some(ours(2))
    );
}

#[tokio::test]
async fn desired_state_and_addresses_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = runtime(&dir);
        rt.configure_subnet("10.42.1.0/24".parse().unwrap())
            .await
            .unwrap();
        rt.inject_routes(&[peer(2)]).await;
        assert_eq!(
            rt.allocate("a").await.unwrap().address.to_string(),
            "10.42.1.2/24"
        );
        assert_eq!(
            rt.allocate("b").await.unwrap().address.to_string(),
            "10.42.1.3/24"
        );
        rt.release("a").await.unwrap();
    }
    let rt = runtime(&dir);
    let desired = rt.desired().await;
    assert_eq!(desired.subnet, Some("10.42.1.0/24".parse().unwrap()));
    assert_eq!(desired.routes.len(), 1);
    assert_eq!(
        rt.allocate("b").await.unwrap().address.to_string(),
        "10.42.1.3/24"
    );
    assert_eq!(
        rt.allocate("c").await.unwrap().address.to_string(),
        "10.42.1.2/24",
        "released address reused"
    );
    assert!(matches!(
        rt.configure_subnet("10.42.5.0/24".parse().unwrap()).await,
        Err(RuntimeError::SubnetInUse { allocations: 2, .. })
    ));
    // The fresh runtime's first reconcile puts the route back into the (empty) kernel.
    rt.reconcile().await.unwrap();
    assert_eq!(
        rt.kernel()
            .route("10.42.2.0/24".parse().unwrap())
            .await
            .unwrap(),
        Some(ours(2))
    );
}

#[tokio::test]
async fn allocation_needs_a_subnet_and_stops_at_exhaustion() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    assert!(matches!(
        rt.allocate("x").await,
        Err(RuntimeError::NoSubnet)
    ));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    for i in 0..253 {
        rt.allocate(&format!("c{i}")).await.unwrap();
    }
    let err = rt.allocate("one-too-many").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "node subnet 10.42.1.0/24 has no free container address left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_coalesced_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(runtime(&dir));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    let queue = quilt_runtime::inject_queue::InjectQueue::new(rt.clone());
    let mut calls = Vec::new();
    for n in 1..=200u8 {
        let queue = queue.clone();
        calls.push(tokio::spawn(
            async move { (n, queue.inject(peer(n)).await) },
        ));
    }
    for call in calls {
        let (n, result) = call.await.unwrap();
        if n == 1 {
            assert!(
                matches!(result, Err(RuntimeError::OwnSubnet(_))),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap(), RouteChange::Added, "route {n}");
        }
    }
    assert_eq!(rt.desired().await.routes.len(), 199);
    assert_eq!(rt.kernel().all_routes().len(), 199);
    let batches = rt.kernel().route_batches();
    assert!(
        batches < 199,
        "200 concurrent calls went to the kernel in {batches} batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lone_inject_leaves_the_kernel_as_the_store_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(runtime(&dir));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    let queue = quilt_runtime::inject_queue::InjectQueue::new(rt.clone());
    let _release = rt.kernel().stall_route_batches();
    let call = tokio::spawn({
        let queue = queue.clone();
        async move { queue.inject(peer(2)).await }
    });
    // The route is in the kernel and the call still waits: cancel it there.
    quilt_testkit::wait::eventually(
        Duration::from_secs(5),
        "the route in the kernel",
        async || !rt.kernel().all_routes().is_empty(),
    )
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    rt.kernel().unstall_route_batches();
    quilt_testkit::wait::eventually(
        Duration::from_secs(5),
        "the unrecorded route gone from the kernel",
        async || rt.kernel().all_routes().is_empty(),
    )
    .await;
    assert!(rt.desired().await.routes.is_empty(), "nothing was recorded");
    // The queue still works afterwards.
    assert_eq!(queue.inject(peer(3)).await.unwrap(), RouteChange::Added);
    assert_eq!(rt.kernel().all_routes().len(), 1);
}
