//! Namespace fixtures: unique names, the privileged-or-skip gate, a stand-in underlay and
//! the agent's VXLAN device, and running async code inside a namespace.

use std::sync::atomic::{AtomicU32, Ordering};

use quilt_kernel::KernelError;
pub use quilt_kernel::netns::OwnedNetns;

/// A namespace name no other test or process of this machine uses: `prefix-PID-N`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this process may create network namespaces. When it may not, the answer is
/// `false` and a note is printed, unless `QUILT_REQUIRE_NETNS=1` (as CI sets it), in
/// which case this panics so a privileged test can never pass by skipping.
pub fn privileged_or_skip(test: &str) -> bool {
    // The probe namespace is deleted again when the value drops.
    if OwnedNetns::create(&unique_name("quilt-probe")).is_ok() {
        return true;
    }
    if std::env::var("QUILT_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!(
            "{test}: cannot create a network namespace (root and iproute2 are needed) and QUILT_REQUIRE_NETNS=1"
        );
    }
    eprintln!("skipping {test}: cannot create network namespaces (needs root and iproute2)");
    false
}

/// The underlay and overlay devices tests and benchmarks give a namespace, built with `ip`.
pub trait Underlay {
    /// Gives the namespace a stand-in underlay: `underlay0`, one end of a veth pair whose
    /// other end stays inside the namespace, holding `address` (for example
    /// `192.168.50.1/24`), both ends up.
    fn add_underlay(&self, address: &str) -> Result<(), KernelError>;

    /// Adds `vxlan100` (VNI 100, UDP 4789, nolearning) over `underlay0` with tunnel
    /// address `local`, up: the overlay device as an agent would make it.
    fn add_vxlan100(&self, local: &str) -> Result<(), KernelError>;
}

impl Underlay for OwnedNetns {
    fn add_underlay(&self, address: &str) -> Result<(), KernelError> {
        self.ip(&[
            "link",
            "add",
            "underlay0",
            "type",
            "veth",
            "peer",
            "name",
            "underlay0p",
        ])?;
        self.ip(&["addr", "add", address, "dev", "underlay0"])?;
        self.ip(&["link", "set", "underlay0", "up"])?;
        self.ip(&["link", "set", "underlay0p", "up"])?;
        Ok(())
    }

    fn add_vxlan100(&self, local: &str) -> Result<(), KernelError> {
        self.ip(&[
            "link",
            "add",
            "vxlan100",
            "type",
            "vxlan",
            "id",
            "100",
            "local",
            local,
            "dev",
            "underlay0",
            "dstport",
            "4789",
            "nolearning",
        ])?;
        self.ip(&["link", "set", "vxlan100", "up"])?;
        Ok(())
    }
}

/// A fresh namespace (named `prefix-PID-N`) with `underlay0` holding `address` (like
/// `192.168.50.1/24`) and `vxlan100` over it; panics naming the step that failed.
pub fn host_with_overlay(prefix: &str, address: &str) -> OwnedNetns {
    let ns = OwnedNetns::create(&unique_name(prefix))
        .unwrap_or_else(|e| panic!("create netns {prefix}-*: {e}"));
    ns.add_underlay(address)
        .unwrap_or_else(|e| panic!("underlay {address} in {}: {e}", ns.name()));
    let local = address.split('/').next().unwrap_or(address);
    ns.add_vxlan100(local)
        .unwrap_or_else(|e| panic!("vxlan100 over {local} in {}: {e}", ns.name()));
    ns
}

/// Runs `f` to completion on a single-threaded tokio runtime, on a thread that has entered
/// network namespace `ns`; sockets `f` opens belong to that namespace. Panics (naming
/// `ns`) when the namespace cannot be entered.
pub fn block_on_in<T: Send>(ns: &str, f: impl AsyncFnOnce() -> T + Send) -> T {
    quilt_kernel::netns::run_in(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime inside netns {ns}: {e}"))
            .block_on(f())
    })
    .unwrap_or_else(|e| panic!("cannot run inside netns {ns}: {e}"))
}
