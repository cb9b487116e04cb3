//! Hostile input and bad days against the fake kernel (issue 11): a namespace check that
//! hangs, ReleaseIp of an attached container's address, colliding host veth names, a veth
//! deleted by hand, a second attach elsewhere, large route batches. No root needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quilt_kernel::Kernel;
use quilt_kernel::fake::FakeKernel;
use quilt_proto::ErrorKind;
use quilt_runtime::Runtime;
use quilt_runtime::metrics::Metrics;
use quilt_runtime::model::{self, AttachRequest, ContainerSettings, ManagedRoute};
use quilt_runtime::store::Store;

/// Two container ids whose host veth names collide with ifname eth0.
const COLLIDING: [&str; 2] = ["kq5xlckbah0a", "k5scufamlufs"];

fn runtime_with(dir: &Path, kernel: FakeKernel, metrics: Arc<Metrics>) -> Runtime<FakeKernel> {
    let store = Store::open(dir).unwrap();
    Runtime::new(kernel, store, metrics)
        .unwrap()
        .with_container_settings(ContainerSettings::default())
}

async fn ready(dir: &Path, namespaces: &[&str]) -> Runtime<FakeKernel> {
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1400);
    for ns in namespaces {
        kernel.add_netns(*ns);
    }
    let rt = runtime_with(dir, kernel, Arc::new(Metrics::new()));
    rt.configure_subnet("10.42.1.0/24".parse().unwrap())
        .await
        .unwrap();
    rt
}

fn request(id: &str, netns: &str) -> AttachRequest {
    AttachRequest {
        container_id: id.into(),
        ifname: "eth0".into(),
        netns: PathBuf::from(netns),
        mtu: None,
    }
}

#[tokio::test]
async fn a_hanging_namespace_check_holds_up_no_other_call() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(ready(dir.path(), &["/ns/slow"]).await);
    let release = rt.kernel().stall_netns_check("/ns/slow");
    let done = Arc::new(AtomicBool::new(false));
    let attach = tokio::spawn({
        let (rt, done) = (rt.clone(), done.clone());
        async move {
            let answer = rt.attach(&request("slow", "/ns/slow")).await;
            done.store(true, Ordering::SeqCst);
            answer
        }
    });
    tokio::task::yield_now().await;
    // While the attach waits on its path, other callers are served.
    rt.allocate("other").await.unwrap();
    assert_eq!(rt.attachments().await, vec![]);
    assert!(!done.load(Ordering::SeqCst), "the attach should still wait");
    release.notify_one();
    attach.await.unwrap().unwrap();
}

#[tokio::test]
async fn release_ip_keeps_an_attached_containers_address() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/a"]).await;
    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    let owner = model::owner("a", "eth0");
    let err = rt.release(&owner).await.unwrap_err();
    assert!(err.to_string().contains(&owner), "{err}");
    assert!(err.to_string().contains("DetachContainer"), "{err}");
    let other = rt.allocate("other").await.unwrap();
    assert_ne!(other.address, a.address, "two owners, one address");
    // Nor can AllocateIp answer the attachment's address to someone else.
    let err = rt.allocate(&owner).await.unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert_eq!(
        rt.desired().await.allocations.get(&owner),
        Some(&a.address.addr())
    );
}

#[tokio::test]
async fn reconcile_reports_an_address_used_twice() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/a"]).await;
    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    drop(rt);
    // What the old ReleaseIp left behind: the attachment's allocation freed and its
    // address handed to another owner.
    {
        let store = Store::open(dir.path()).unwrap();
        store.delete_allocation(&model::owner("a", "eth0")).unwrap();
        store.put_allocation("other", a.address.addr()).unwrap();
    }
    let kernel = FakeKernel::new();
    kernel.add_link("vxlan100", 1400);
    kernel.add_netns("/ns/a");
    let metrics = Arc::new(Metrics::new());
    let rt = runtime_with(dir.path(), kernel, metrics.clone());
    let report = rt.reconcile().await.unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!(metrics.address_conflicts.get(), 1);
}

#[tokio::test]
async fn colliding_host_names_are_never_shared() {
    let [first, second] = COLLIDING;
    assert_eq!(
        model::host_ifname(first, "eth0"),
        model::host_ifname(second, "eth0")
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/1", "/ns/2"]).await;
    let one = rt.attach(&request(first, "/ns/1")).await.unwrap();

    // DEL and CHECK of the never-added colliding container change nothing.
    rt.kernel().clear_operations();
    assert!(!rt.detach(second, "eth0").await.unwrap());
    assert!(rt.check(second, "eth0", None).await.is_err());
    assert_eq!(rt.kernel().operations(), Vec::<String>::new());
    rt.check(first, "eth0", None).await.unwrap();

    // ADD of it takes another name; the first keeps its veth.
    let two = rt.attach(&request(second, "/ns/2")).await.unwrap();
    assert_ne!(two.host_ifname, one.host_ifname);
    assert!(two.host_ifname.len() <= 15);
    rt.check(first, "eth0", None).await.unwrap();
    rt.check(second, "eth0", None).await.unwrap();

    // Each DEL removes exactly its own.
    assert!(rt.detach(second, "eth0").await.unwrap());
    assert!(rt.kernel().link(&two.host_ifname).await.unwrap().is_none());
    rt.check(first, "eth0", None).await.unwrap();
}

#[tokio::test]
async fn reconcile_recreates_a_container_veth_deleted_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/a"]).await;
    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    rt.kernel().remove_link(&a.host_ifname);
    assert!(rt.check("a", "eth0", None).await.is_err());
    let report = rt.reconcile().await.unwrap();
    assert!(report.repairs >= 1, "{report:?}");
    let again = rt.check("a", "eth0", None).await.unwrap();
    assert_eq!(again.address, a.address);
    assert_eq!(again.host_ifname, a.host_ifname);
    assert_eq!(
        rt.kernel().bridge_of(&a.host_ifname).as_deref(),
        Some("quilt0")
    );
    let view = rt.kernel().container(Path::new("/ns/a"), "eth0").unwrap();
    assert_eq!(view.addresses, vec![a.address]);
}

#[tokio::test]
async fn a_second_attach_in_another_namespace_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/a", "/ns/b"]).await;
    let a = rt.attach(&request("a", "/ns/a")).await.unwrap();
    let err = rt.attach(&request("a", "/ns/b")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/ns/a") && text.contains("/ns/b"),
        "the refusal names both namespaces: {text}"
    );
    assert_eq!(
        quilt_runtime::grpc::error_kind(&err),
        ErrorKind::InvalidArgument
    );
    assert_eq!(rt.attachments().await, vec![a]);
    assert!(rt.kernel().container(Path::new("/ns/b"), "eth0").is_none());
}

#[tokio::test]
async fn an_mtu_above_the_overlay_is_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ready(dir.path(), &["/ns/a"]).await;
    let mut big = request("a", "/ns/a");
    big.mtu = Some(9000);
    let err = rt.attach(&big).await.unwrap_err();
    assert!(err.to_string().contains("9000"), "{err}");
    assert_eq!(
        quilt_runtime::grpc::error_kind(&err),
        ErrorKind::InvalidConfig
    );
}

fn peer(n: u32) -> ManagedRoute {
    ManagedRoute {
        destination: format!("10.{}.{}.0/24", 100 + n / 256, n % 256)
            .parse()
            .unwrap(),
        interface: "vxlan100".into(),
        gateway: None,
    }
}

#[tokio::test]
async fn a_large_batch_lets_other_calls_in_between_its_slices() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(ready(dir.path(), &[]).await);
    let total = 3 * quilt_runtime::core::ROUTES_PER_SLICE as u32;
    let routes: Vec<ManagedRoute> = (0..total).map(peer).collect();
    let done = Arc::new(AtomicBool::new(false));
    let batch = tokio::spawn({
        let (rt, done) = (rt.clone(), done.clone());
        async move {
            let results = rt.inject_routes(&routes).await;
            done.store(true, Ordering::SeqCst);
            results
        }
    });
    // Once the batch has begun, a small call gets the lock before the batch ends.
    while rt.kernel().all_routes().is_empty() {
        tokio::task::yield_now().await;
    }
    rt.allocate("small").await.unwrap();
    let in_kernel = rt.kernel().all_routes().len();
    assert!(
        !done.load(Ordering::SeqCst) && in_kernel < total as usize,
        "the small call waited for the whole batch ({in_kernel} of {total} routes in)"
    );
    let results = batch.await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(rt.desired().await.routes.len(), total as usize);
}

#[test]
fn an_oversized_batch_is_refused_naming_count_and_cap() {
    let rules = quilt_runtime::request::Rules {
        cluster: quilt_common::ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 24).unwrap(),
        overlay_interfaces: vec!["vxlan100".into()],
    };
    let cap = quilt_runtime::request::MAX_ROUTES_PER_BATCH;
    rules.batch_len(cap).unwrap();
    let err = rules.batch_len(cap + 1).unwrap_err().to_string();
    assert!(
        err.contains(&(cap + 1).to_string()) && err.contains(&cap.to_string()),
        "{err}"
    );
}
