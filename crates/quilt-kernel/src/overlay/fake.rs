//! An in-memory [`Overlay`] that records every change, for unit tests of the agent.
//! Deleting the device drops its address, neighbours and FDB entries, as the kernel does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;

use crate::overlay::{FdbEntry, Neighbour, Overlay, VxlanDevice, VxlanSpec};
use crate::{KernelError, Link};

#[derive(Default)]
struct Device {
    spec: Option<VxlanSpec>,
    addresses: BTreeSet<Ipv4Net>,
    neighbours: BTreeMap<Ipv4Addr, Neighbour>,
    fdb: BTreeSet<FdbEntry>,
    up: bool,
}

#[derive(Default)]
struct State {
    underlays: BTreeMap<Ipv4Addr, Link>,
    devices: BTreeMap<String, Device>,
    operations: Vec<String>,
}

/// The fake overlay kernel. Clones share one kernel, so a test can keep a clone to
/// look at what the daemon under test did with the other.
#[derive(Default, Clone)]
pub struct FakeOverlay {
    state: Arc<Mutex<State>>,
}

impl FakeOverlay {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declares an underlay interface `name` (MTU `mtu`) holding `ip`.
    pub fn add_underlay(&self, name: &str, ip: Ipv4Addr, mtu: u32) {
        self.state().underlays.insert(
            ip,
            Link {
                index: 1,
                name: name.to_string(),
                mtu,
                mac: None,
                kind: None,
            },
        );
    }

    /// Puts a link called `name` in place that is not this agent's (an operator's veth).
    pub fn add_foreign_link(&self, name: &str) {
        self.state().devices.insert(
            name.to_string(),
            Device {
                spec: None,
                up: true,
                ..Device::default()
            },
        );
    }

    /// Adds an address to a device by hand.
    pub fn add_address_by_hand(&self, name: &str, address: Ipv4Net) {
        if let Some(d) = self.state().devices.get_mut(name) {
            d.addresses.insert(address);
        }
    }

    /// Deletes a device by hand, as an operator would.
    pub fn remove_device(&self, name: &str) {
        self.state().devices.remove(name);
    }

    /// Removes an FDB entry by hand.
    pub fn remove_fdb(&self, name: &str, entry: FdbEntry) {
        if let Some(d) = self.state().devices.get_mut(name) {
            d.fdb.remove(&entry);
        }
    }

    /// The permanent neighbour entries on `name` (empty when there is no such device).
    pub fn neighbours_of(&self, name: &str) -> Vec<Neighbour> {
        self.state()
            .devices
            .get(name)
            .map(|d| d.neighbours.values().copied().collect())
            .unwrap_or_default()
    }

    /// The FDB entries on `name` (empty when there is no such device).
    pub fn fdb_of(&self, name: &str) -> Vec<FdbEntry> {
        self.state()
            .devices
            .get(name)
            .map(|d| d.fdb.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether device `name` exists.
    pub fn has_device(&self, name: &str) -> bool {
        self.state().devices.contains_key(name)
    }

    pub fn operations(&self) -> Vec<String> {
        self.state().operations.clone()
    }

    pub fn clear_operations(&self) {
        self.state().operations.clear();
    }

    fn with_device<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Device, &mut Vec<String>) -> T,
    ) -> Result<T, KernelError> {
        let mut state = self.state();
        let State {
            devices,
            operations,
            ..
        } = &mut *state;
        let device = devices
            .get_mut(name)
            .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))?;
        Ok(f(device, operations))
    }
}

impl Overlay for FakeOverlay {
    async fn vxlan(&self, name: &str) -> Result<Option<VxlanDevice>, KernelError> {
        Ok(self.state().devices.get(name).map(|d| {
            let spec = d.spec.clone();
            VxlanDevice {
                index: 100,
                vni: spec.as_ref().map(|s| s.vni),
                port: spec.as_ref().map(|s| s.port),
                local: spec.as_ref().map(|s| s.local),
                underlay_index: Some(1),
                learning: Some(false),
                mtu: spec.as_ref().map(|s| s.mtu).unwrap_or(1500),
                mac: spec.as_ref().map(|s| s.mac),
                up: d.up,
            }
        }))
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), KernelError> {
        let mut state = self.state();
        if !state.underlays.values().any(|l| l.name == spec.underlay) {
            return Err(KernelError::NoSuchLink(spec.underlay.clone()));
        }
        state.operations.push(format!(
            "create {} vni {} port {} local {} dev {} mtu {} mac {}",
            spec.name, spec.vni, spec.port, spec.local, spec.underlay, spec.mtu, spec.mac
        ));
        state.devices.insert(
            spec.name.clone(),
            Device {
                spec: Some(spec.clone()),
                up: true,
                ..Device::default()
            },
        );
        Ok(())
    }

    async fn delete_vxlan(&self, name: &str) -> Result<bool, KernelError> {
        let mut state = self.state();
        let existed = state.devices.remove(name).is_some();
        if existed {
            state.operations.push(format!("delete {name}"));
        }
        Ok(existed)
    }

    async fn set_up(&self, name: &str) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            d.up = true;
            ops.push(format!("up {name}"));
        })
    }

    async fn interface(&self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self
            .state()
            .underlays
            .values()
            .find(|l| l.name == name)
            .cloned())
    }

    async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<Link>, KernelError> {
        Ok(self.state().underlays.get(&ip).cloned())
    }

    async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>, KernelError> {
        self.with_device(name, |d, _| d.addresses.iter().copied().collect())
    }

    async fn add_address(&self, name: &str, address: Ipv4Net) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            ops.push(format!("address {address} on {name}"));
            d.addresses.insert(address);
        })
    }

    async fn delete_address(&self, name: &str, address: Ipv4Net) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            if d.addresses.remove(&address) {
                ops.push(format!("del address {address} on {name}"));
            }
        })
    }

    async fn neighbours(&self, name: &str) -> Result<Vec<Neighbour>, KernelError> {
        self.with_device(name, |d, _| d.neighbours.values().copied().collect())
    }

    async fn replace_neighbour(&self, name: &str, entry: Neighbour) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            ops.push(format!("neigh {} lladdr {} on {name}", entry.ip, entry.mac));
            d.neighbours.insert(entry.ip, entry);
        })
    }

    async fn delete_neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            if d.neighbours.remove(&ip).is_some() {
                ops.push(format!("del neigh {ip} on {name}"));
            }
        })
    }

    async fn fdb(&self, name: &str) -> Result<Vec<FdbEntry>, KernelError> {
        self.with_device(name, |d, _| d.fdb.iter().copied().collect())
    }

    async fn replace_fdb(&self, name: &str, entry: FdbEntry) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            ops.push(format!("{entry} on {name}"));
            // As the kernel: a unicast MAC has one entry, the flood MAC one per destination.
            d.fdb
                .retain(|e| e.is_flood() || e.mac != entry.mac || e == &entry);
            d.fdb.insert(entry);
        })
    }

    async fn delete_fdb(&self, name: &str, entry: FdbEntry) -> Result<(), KernelError> {
        self.with_device(name, |d, ops| {
            if d.fdb.remove(&entry) {
                ops.push(format!("del {entry} on {name}"));
            }
        })
    }
}
