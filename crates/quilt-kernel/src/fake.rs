//! An in-memory [`Kernel`] that records every change, for unit tests of daemon logic
//! without root. It keeps the same rules as the real kernel where the daemons depend on
//! them: a route needs its interface, `add` refuses an existing destination, `delete`
//! only removes a route of the given protocol.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::{Kernel, KernelError, Link, Route};

#[derive(Default)]
struct State {
    links: BTreeMap<String, Link>,
    routes: BTreeMap<Ipv4Net, Route>,
    operations: Vec<String>,
    next_index: u32,
}

/// The fake kernel. Cheap to create; each test makes its own.
#[derive(Default)]
pub struct FakeKernel {
    state: Mutex<State>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a link called `name` with `mtu` (not recorded as an operation: it is setup).
    pub fn add_link(&self, name: &str, mtu: u32) {
        let mut state = self.state();
        state.next_index += 1;
        let index = state.next_index;
        state.links.insert(
            name.to_string(),
            Link {
                index,
                name: name.to_string(),
                mtu,
                mac: None,
            },
        );
    }

    /// Removes a link and, as the kernel does, every route through it.
    pub fn remove_link(&self, name: &str) {
        let mut state = self.state();
        state.links.remove(name);
        state.routes.retain(|_, r| r.interface != name);
    }

    /// Puts a route in place as if someone else (an operator, another daemon) made it.
    pub fn insert_route(&self, route: Route) {
        self.state().routes.insert(route.destination, route);
    }

    /// Removes a route by hand, as an operator would.
    pub fn remove_route(&self, destination: Ipv4Net) {
        self.state().routes.remove(&destination);
    }

    /// Every route, whoever made it.
    pub fn all_routes(&self) -> Vec<Route> {
        self.state().routes.values().cloned().collect()
    }

    /// The changes made through the [`Kernel`] trait so far, in order, as text
    /// (`add 10.42.2.0/24 via 10.42.2.0 dev vxlan100 onlink proto 158`).
    pub fn operations(&self) -> Vec<String> {
        self.state().operations.clone()
    }

    /// Forgets the recorded operations.
    pub fn clear_operations(&self) {
        self.state().operations.clear();
    }
}

impl Kernel for FakeKernel {
    async fn link(&self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self.state().links.get(name).cloned())
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>, KernelError> {
        Ok(self
            .state()
            .routes
            .values()
            .filter(|r| r.protocol == protocol)
            .cloned()
            .collect())
    }

    async fn route(&self, destination: Ipv4Net) -> Result<Option<Route>, KernelError> {
        Ok(self.state().routes.get(&destination).cloned())
    }

    async fn add_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut state = self.state();
        if !state.links.contains_key(&route.interface) {
            return Err(KernelError::NoSuchLink(route.interface.clone()));
        }
        if let Some(existing) = state.routes.get(&route.destination) {
            return Err(KernelError::RouteExists {
                destination: route.destination,
                protocol: existing.protocol,
            });
        }
        state.operations.push(format!("add {route}"));
        state.routes.insert(route.destination, route.clone());
        Ok(())
    }

    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut state = self.state();
        if !state.links.contains_key(&route.interface) {
            return Err(KernelError::NoSuchLink(route.interface.clone()));
        }
        state.operations.push(format!("replace {route}"));
        state.routes.insert(route.destination, route.clone());
        Ok(())
    }

    async fn delete_route(&self, destination: Ipv4Net, protocol: u8) -> Result<bool, KernelError> {
        let mut state = self.state();
        match state.routes.get(&destination) {
            Some(r) if r.protocol == protocol => {
                state.routes.remove(&destination);
                state.operations.push(format!("delete {destination} proto {protocol}"));
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
