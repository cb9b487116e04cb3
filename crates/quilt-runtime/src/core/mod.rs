//! The runtime's core: desired state, the kernel and the store kept in step. Generic
//! over [`Kernel`], so its logic is tested against the fake without root.
//!
//! One struct, [`Runtime`], with one `impl` block per concern in a child module:
//! `routes` (node subnet and routes), `addresses` (container address allocation),
//! `containers` (bridge, veths, attachments), `container_repair` (the container part of
//! reconcile), `overlay` (proxy ARP on the overlay device) and `reconcile` (repairing the
//! kernel).
//! Their fields are private to this module, so nothing else in the crate can reach the
//! store or the desired state behind the lock.
//!
//! Blocking: the store is synchronous SQLite, and it is only reached under the lock
//! that every change holds, through `Inner::with_store`. A call that writes at most
//! [`INLINE_ROWS`] rows runs on the worker: with automatic checkpoints off it is a
//! commit of a few pages into the OS, no fsync, microseconds, less than handing the
//! worker over (`block_in_place` costs tens of microseconds, and a single InjectRoute
//! paid it on every call). Larger writes and the checkpoint follow the daemons' one rule
//! for blocking work, [`quilt_kernel::blocking`].

mod addresses;
mod container_repair;
mod containers;
mod overlay;
mod reconcile;
mod routes;

use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_kernel::Kernel;
use quilt_kernel::blocking::off_the_worker;
use tokio::sync::Mutex;

use crate::RuntimeError;
use crate::metrics::Metrics;
use crate::model::{ContainerSettings, DesiredState};
use crate::store::{Store, StoreError};

/// How many routes of an InjectRoutes batch are applied under one hold of the lock; the
/// lock is let go between slices, so other calls get in while a large batch is applied.
pub const ROUTES_PER_SLICE: usize = 512;

/// Rows a store call may write and still run on the worker (see the module doc).
pub const INLINE_ROWS: usize = 16;

/// What the lock guards: the store and the desired state it holds, always in step.
struct Inner {
    store: Store,
    desired: DesiredState,
}

impl Inner {
    /// Runs one store call that writes `rows` rows (see the module doc on blocking).
    fn with_store<T>(
        &mut self,
        rows: usize,
        call: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if rows <= INLINE_ROWS {
            call(&mut self.store)
        } else {
            off_the_worker(|| call(&mut self.store))
        }
    }
}

/// The core. Changes are serialised by one lock, so the store, the kernel and the
/// in-memory desired state never disagree about what was acknowledged.
pub struct Runtime<K> {
    kernel: K,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    containers: ContainerSettings,
}

impl<K: Kernel> Runtime<K> {
    /// Loads desired state from `store`.
    pub fn new(kernel: K, store: Store, metrics: Arc<Metrics>) -> Result<Self, RuntimeError> {
        let desired = off_the_worker(|| store.load())?;
        metrics.managed_routes.set(desired.routes.len() as i64);
        metrics.allocated_ips.set(desired.allocations.len() as i64);
        Ok(Self {
            kernel,
            inner: Mutex::new(Inner { store, desired }),
            metrics,
            containers: ContainerSettings::default(),
        })
    }

    /// Sets the bridge, overlay interface and default MTU container attachment uses.
    pub fn with_container_settings(mut self, settings: ContainerSettings) -> Self {
        self.containers = settings;
        self
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// A copy of the desired state.
    pub async fn desired(&self) -> DesiredState {
        self.inner.lock().await.desired.clone()
    }

    /// The node subnet, once one is configured.
    pub async fn subnet(&self) -> Option<Ipv4Net> {
        self.inner.lock().await.desired.subnet
    }
}
