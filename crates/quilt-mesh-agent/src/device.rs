//! The VXLAN device: created as ARCHITECTURE.md says, or adopted when one that already
//! looks right is there (after an agent restart), or recreated when it does not.

use ipnet::Ipv4Net;
use quilt_kernel::KernelError;
use quilt_kernel::overlay::{Mac, Overlay, VxlanDevice, VxlanSpec};
use tracing::{info, warn};

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChange {
    /// The device was there as it should be.
    Adopted,
    /// There was no device; it was made.
    Created,
    /// A device of that name was there but wrong; it was made again.
    Recreated,
}

/// Whether an existing device matches the spec.
pub fn matches(device: &VxlanDevice, spec: &VxlanSpec, underlay_index: u32) -> bool {
    device.vni == Some(spec.vni)
        && device.port == Some(spec.port)
        && device.local == Some(spec.local)
        && device.underlay_index == Some(underlay_index)
        && device.learning == Some(false)
        && device.mac == Some(spec.mac)
        && device.mtu == spec.mtu
}

/// Whether an existing link is this agent's device: a VXLAN device carrying the MAC the
/// agent keeps in its state. Anything else of that name is left alone.
pub fn is_ours(device: &VxlanDevice, spec: &VxlanSpec) -> bool {
    device.vni.is_some() && device.mac == Some(spec.mac)
}

/// Why the device could not be made right.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A link of the device's name is there and is not this agent's: left alone.
    #[error(
        "set up vxlan device {name} failed: {name} already exists as {kind} with mac {mac} that \
         this agent did not make (its mac is {ours}); it is left alone: remove it or choose \
         another --vxlan-interface"
    )]
    NotOurs {
        name: String,
        /// "a vxlan device" or "a link that is not vxlan".
        kind: &'static str,
        /// The link's MAC, or "none".
        mac: String,
        ours: Mac,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

fn not_ours(spec: &VxlanSpec, device: &VxlanDevice) -> DeviceError {
    let kind = if device.vni.is_some() {
        "a vxlan device"
    } else {
        "a link that is not vxlan"
    };
    DeviceError::NotOurs {
        name: spec.name.clone(),
        kind,
        mac: device
            .mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into()),
        ours: spec.mac,
    }
}

/// Makes the device exist as `spec` says, up, with `address` (the subnet's `.0/32`).
pub async fn ensure<O: Overlay>(
    kernel: &O,
    spec: &VxlanSpec,
    underlay_index: u32,
    address: Ipv4Net,
) -> Result<DeviceChange, DeviceError> {
    let change = match kernel.vxlan(&spec.name).await? {
        Some(device) if matches(&device, spec, underlay_index) => {
            if !device.up {
                kernel.set_up(&spec.name).await?;
            }
            DeviceChange::Adopted
        }
        Some(device) if is_ours(&device, spec) => {
            warn!(device = %spec.name, found = ?device, "vxlan device differs from what this agent wants; recreating it");
            kernel.delete_vxlan(&spec.name).await?;
            kernel.create_vxlan(spec).await?;
            DeviceChange::Recreated
        }
        Some(device) => return Err(not_ours(spec, &device)),
        None => {
            kernel.create_vxlan(spec).await?;
            DeviceChange::Created
        }
    };
    let present = kernel.addresses(&spec.name).await?;
    if !present.contains(&address) {
        kernel.add_address(&spec.name, address).await?;
    }
    // A `.0/32` of a subnet this node no longer holds would keep answering for it.
    for stale in present.iter().filter(|a| **a != address) {
        kernel.delete_address(&spec.name, *stale).await?;
        info!(device = %spec.name, address = %stale, "removed an address of a subnet this node no longer holds");
    }
    if change != DeviceChange::Adopted {
        info!(
            device = %spec.name, vni = spec.vni, port = spec.port, local = %spec.local,
            underlay = %spec.underlay, mtu = spec.mtu, mac = %spec.mac, %address,
            "vxlan device {}", if change == DeviceChange::Created { "created" } else { "recreated" }
        );
    }
    Ok(change)
}
