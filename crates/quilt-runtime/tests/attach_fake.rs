//! Container attach logic against the fake kernel: idempotence, rollback of every step,
//! detach twice, restarts, the orphan sweep, the bridge's repair. No root needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quilt_kernel::fake::FakeKernel;
use quilt_kernel::{Kernel, LinkKind};
use quilt_runtime::metrics::Metrics;
use quilt_runtime::model::{self, AttachRequest, ContainerSettings};
use quilt_runtime::store::Store;
use quilt_runtime::{Runtime, RuntimeError};

fn runtime(dir: &Path, kernel: FakeKernel) -> Runtime<FakeKernel> {
    let store = Store::open(dir).unwrap();
    Runtime::new(kernel, store, Arc::new(Metrics::new()))
        .unwrap()
        .with_container_settings(ContainerSettings::default())
}

fn request(id: &str, netns: &str) -> AttachRequest {
    AttachRequest {
        container_id: id.into(),
        ifname: "eth0".into(),
        netns: PathBuf::from(netns),
        mtu: None,
    }
}

fn kernel_with(namespaces: &[&str]) -> FakeKernel {
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1400);
    for ns in namespaces {
        kernel.add_netns(*ns);
    }
    kernel
}

#[tokio::test]
async fn attach_is_idempotent_and_detach_twice_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), kernel_with(&["/ns/a", "/ns/b"]));
    let err = rt.attach(&request("a", "/ns/a")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoSubnet), "{err}");
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        rt.kernel().bridge_address("quilt0"),
        Some("10.42.1.1/24".parse().unwrap())
    );
    assert_eq!(
        rt.kernel().link("quilt0").await.unwrap().unwrap().mtu,
        1400,
        "bridge takes the overlay mtu"
    );

    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    let b = rt.attach(&request("b", "/ns/b")).await.unwrap();
    assert_ne!(a.address, b.address);
    assert_eq!(a.mtu, 1400);
    assert_eq!(a.host_ifname, model::host_ifname("a", "eth0"));
    assert!(a.host_ifname.len() <= 15);
    assert_eq!(
        rt.kernel().bridge_of(&a.host_ifname).as_deref(),
        Some("quilt0")
    );
    let view = rt.kernel().container(Path::new("/ns/a"), "eth0").unwrap();
    assert!(view.up && view.addresses == vec![a.address]);
    assert_eq!(view.default_gateway, Some(a.gateway));

    rt.kernel().clear_operations();
    assert_eq!(rt.attach(&request("a", "/ns/a")).await.unwrap(), a);
    assert!(
        rt.kernel().operations().is_empty(),
        "{:?}",
        rt.kernel().operations()
    );
    rt.check("a", "eth0", None).await.unwrap();

    assert!(rt.detach("a", "eth0").await.unwrap());
    assert!(!rt.detach("a", "eth0").await.unwrap());
    assert!(rt.kernel().link(&a.host_ifname).await.unwrap().is_none());
    assert!(rt.kernel().container(Path::new("/ns/a"), "eth0").is_none());
    assert!(
        !rt.desired()
            .await
            .allocations
            .values()
            .any(|addr| *addr == a.address.addr())
    );
    let err = rt.check("a", "eth0", None).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotAttached { .. }), "{err}");
}

#[tokio::test]
async fn a_failure_midway_rolls_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), kernel_with(&["/ns/a"]));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    for step in ["create_veth_into", "configure_container"] {
        rt.kernel().fail_next(step);
        let err = rt.attach(&request("a", "/ns/a")).await.unwrap_err();
        assert!(
            err.to_string().contains("injected failure"),
            "{step}: {err}"
        );
        let desired = rt.desired().await;
        assert!(desired.allocations.is_empty(), "{step}: address kept");
        assert!(desired.attachments.is_empty());
        assert!(
            rt.kernel()
                .link(&model::host_ifname("a", "eth0"))
                .await
                .unwrap()
                .is_none(),
            "{step}: veth kept"
        );
        assert!(rt.kernel().container(Path::new("/ns/a"), "eth0").is_none());
    }
    let err = rt.attach(&request("a", "/ns/missing")).await.unwrap_err();
    assert!(err.to_string().contains("netns_path"), "{err}");
    assert!(rt.desired().await.allocations.is_empty());
    // And it works once the kernel does.
    rt.attach(&request("a", "/ns/a")).await.unwrap();
}

#[tokio::test]
async fn check_sees_what_changed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), kernel_with(&["/ns/a"]));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    rt.attach(&request("a", "/ns/a")).await.unwrap();
    let err = rt
        .check("a", "eth0", Some(Path::new("/ns/other")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not /ns/other"), "{err}");
    rt.kernel()
        .flush_container_addresses(Path::new("/ns/a"), "eth0");
    let err = rt.check("a", "eth0", None).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Mismatch { .. }) && err.to_string().contains("address"),
        "{err}"
    );
}

#[tokio::test]
async fn attachments_survive_a_restart_and_orphans_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let a = {
        let rt = runtime(dir.path(), kernel_with(&["/ns/a"]));
        rt.configure_subnet("10.42.1.0/24".parse().unwrap())
            .await
            .unwrap();
        rt.attach(&request("a", "/ns/a")).await.unwrap()
    };
    // What a crash between the allocation and the record leaves behind.
    Store::open(dir.path())
        .unwrap()
        .put_allocation(
            &model::owner("crashed", "eth0"),
            "10.42.1.9".parse().unwrap(),
        )
        .unwrap();
    let kernel = kernel_with(&["/ns/a"]);
    let rt = runtime(dir.path(), kernel);
    let desired = rt.desired().await;
    assert_eq!(
        desired.attachments.values().cloned().collect::<Vec<_>>(),
        vec![a.clone()]
    );
    assert_eq!(desired.allocations.len(), 2);
    let report = rt.reconcile().await.unwrap();
    assert!(report.repairs >= 2, "bridge and the orphan: {report:?}");
    let desired = rt.desired().await;
    assert_eq!(
        desired.allocations.len(),
        1,
        "the orphan's address is freed"
    );
    assert!(desired.allocations.contains_key(&model::owner("a", "eth0")));
    // The fresh kernel lost the veth: attaching again re-creates it with the same address.
    let again = rt.attach(&request("a", "/ns/a")).await.unwrap();
    assert_eq!(again.address, a.address);
}

#[tokio::test]
async fn a_deleted_bridge_is_recreated_with_its_ports() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), kernel_with(&["/ns/a"]));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    rt.kernel().remove_link("quilt0");
    assert_eq!(rt.kernel().bridge_of(&a.host_ifname), None);
    let report = rt.reconcile().await.unwrap();
    assert_eq!(report.repairs, 2, "{report:?}");
    assert_eq!(
        rt.kernel().bridge_of(&a.host_ifname).as_deref(),
        Some("quilt0")
    );
    assert_eq!(rt.reconcile().await.unwrap().repairs, 0, "converged");
}

#[tokio::test]
async fn mtu_above_the_overlay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), kernel_with(&["/ns/a"]));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    let mut r = request("a", "/ns/a");
    r.mtu = Some(9000);
    let err = rt.attach(&r).await.unwrap_err();
    assert!(
        err.to_string().contains("above the overlay mtu 1400"),
        "{err}"
    );
    r.mtu = Some(1300);
    assert_eq!(rt.attach(&r).await.unwrap().mtu, 1300);
}

#[tokio::test]
async fn a_quilt0_that_is_not_a_bridge_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_with(&["/ns/a"]);
    kernel.add_foreign_link("quilt0", LinkKind::Other("dummy".into()));
    let rt = runtime(dir.path(), kernel);
    // The subnet is recorded all the same; the bridge is what is refused.
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    let before = rt.kernel().operations();
    let err = rt.attach(&request("a", "/ns/a")).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BridgeTaken { name, .. } if name == "quilt0"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "quilt0 exists as a dummy link, not a bridge; it is left alone"
    );
    assert_eq!(rt.kernel().operations(), before, "nothing was done");
    assert_eq!(rt.kernel().bridge_address("quilt0"), None);
    let link = rt.kernel().link("quilt0").await.unwrap().unwrap();
    assert_eq!(link.kind, Some(LinkKind::Other("dummy".into())));
    assert!(rt.desired().await.attachments.is_empty());
}
