//! Per-interface IPv4 sysctls under `/proc/sys/net/ipv4/conf/DEV/`, which always belong to
//! the network namespace of the thread that opens them.

use std::io::ErrorKind;
use std::path::PathBuf;

use crate::KernelError;
use crate::kernel::ProxyArp;

/// The knobs a gateway-less route over the overlay needs on the receiving side.
const KNOBS: [&str; 2] = ["proxy_arp", "forwarding"];

fn knob(interface: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/{name}"))
}

/// Sets `proxy_arp` and `forwarding` of `interface` to 1 where they are not.
pub(super) fn ensure_proxy_arp(interface: &str) -> Result<ProxyArp, KernelError> {
    // A name with a slash or dots would leave the interface's folder.
    if interface.is_empty() || interface.contains('/') || interface.starts_with('.') {
        return Err(KernelError::NoSuchLink(interface.to_string()));
    }
    let mut changed = false;
    for name in KNOBS {
        let path = knob(interface, name);
        let operation = || format!("turn on {} of {interface}", name);
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim() == "1" => {}
            Ok(_) => {
                std::fs::write(&path, "1").map_err(|e| KernelError::Other {
                    operation: operation(),
                    message: format!("{}: {e}", path.display()),
                })?;
                changed = true;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(ProxyArp::Missing),
            Err(e) => {
                return Err(KernelError::Other {
                    operation: operation(),
                    message: format!("{}: {e}", path.display()),
                });
            }
        }
    }
    Ok(if changed {
        ProxyArp::TurnedOn
    } else {
        ProxyArp::AlreadyOn
    })
}
