//! Proxy ARP on the overlay device, decided by the runtime core (fake kernel): on when
//! the node subnet is configured, on again when the device appears or is made anew, and
//! never before there is a node subnet.

use std::sync::Arc;

use quilt_kernel::fake::FakeKernel;
use quilt_runtime::Runtime;
use quilt_runtime::metrics::Metrics;
use quilt_runtime::store::Store;

const ON: &str = "proxy_arp and forwarding on vxlan100";

fn runtime(dir: &tempfile::TempDir, kernel: FakeKernel) -> Runtime<FakeKernel> {
    Runtime::new(
        kernel,
        Store::open(dir.path()).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn turned_on(rt: &Runtime<FakeKernel>) -> usize {
    rt.kernel().operations().iter().filter(|o| *o == ON).count()
}

#[tokio::test]
async fn configuring_the_subnet_turns_proxy_arp_on_for_the_overlay_device() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1450);
    let rt = runtime(&dir, kernel);
    rt.reconcile().await.unwrap();
    assert_eq!(turned_on(&rt), 0, "not before a node subnet");
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(turned_on(&rt), 1);
    rt.reconcile().await.unwrap();
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(turned_on(&rt), 1, "already on: nothing written again");

    // The agent makes the device again: it comes without the sysctls.
    rt.kernel().remove_link("vxlan100");
    rt.kernel().add_link("vxlan100", 1450);
    rt.reconcile().await.unwrap();
    assert_eq!(turned_on(&rt), 2, "on again for the new device");
}

#[tokio::test]
async fn a_device_that_appears_later_is_turned_on_by_the_next_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, FakeKernel::new());
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(turned_on(&rt), 0, "no device yet, no error");
    rt.kernel().add_link("vxlan100", 1450);
    rt.reconcile().await.unwrap();
    assert_eq!(turned_on(&rt), 1);
}
