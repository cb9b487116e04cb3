//! Parsing RPC input at the edge: strings from the wire become checked [`crate::model`]
//! values, so the core never re-validates. Every error names the field and the value.

use ipnet::Ipv4Net;
use quilt_common::ClusterNetwork;
use quilt_common::cluster::{self, ClusterError, MAX_INPUT_LEN, excerpt};

use crate::RuntimeError;
use crate::model::{AttachRequest, ManagedRoute};

/// Longest container id / owner accepted for an address allocation.
pub const MAX_OWNER_LEN: usize = 256;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest network namespace path accepted.
pub const MAX_NETNS_PATH_LEN: usize = 4096;

/// Most routes one InjectRoutes call may carry; a larger batch is refused whole
/// (INVALID_ARGUMENT). The runtime applies a batch in slices of
/// [`crate::core::ROUTES_PER_SLICE`], letting other calls in between them.
pub const MAX_ROUTES_PER_BATCH: usize = 65_536;

/// The rules RPC input must follow: the cluster's address plan and the interfaces
/// routes may use.
#[derive(Debug, Clone)]
pub struct Rules {
    pub cluster: ClusterNetwork,
    pub overlay_interfaces: Vec<String>,
}

impl Rules {
    /// A node subnet for ConfigureNodeSubnet.
    pub fn node_subnet(&self, raw: &str) -> Result<Ipv4Net, RuntimeError> {
        Ok(self.cluster.parse_node_subnet("subnet", raw)?)
    }

    /// An InjectRoute request. Whether the destination is the node's own subnet and
    /// whether the interface exists depend on state; the core checks those.
    pub fn route(
        &self,
        destination: &str,
        via_interface: &str,
        gateway: &str,
    ) -> Result<ManagedRoute, RuntimeError> {
        let destination = self.destination(destination)?;
        let interface = self.interface(via_interface)?;
        let gateway = if gateway.is_empty() {
            None
        } else {
            let gateway = cluster::parse_addr("gateway", gateway)?;
            if !destination.contains(&gateway) {
                return Err(RuntimeError::GatewayOutside {
                    gateway,
                    destination,
                });
            }
            Some(gateway)
        };
        Ok(ManagedRoute {
            destination,
            interface,
            gateway,
        })
    }

    /// The size of an InjectRoutes batch: at most [`MAX_ROUTES_PER_BATCH`].
    pub fn batch_len(&self, count: usize) -> Result<(), RuntimeError> {
        if count > MAX_ROUTES_PER_BATCH {
            return Err(RuntimeError::BatchTooLarge {
                count,
                cap: MAX_ROUTES_PER_BATCH,
            });
        }
        Ok(())
    }

    /// A route destination: a node subnet of the cluster.
    pub fn destination(&self, raw: &str) -> Result<Ipv4Net, RuntimeError> {
        Ok(self.cluster.parse_node_subnet("destination", raw)?)
    }

    fn interface(&self, raw: &str) -> Result<String, RuntimeError> {
        check_text("via_interface", raw, MAX_INPUT_LEN)?;
        if !self.overlay_interfaces.iter().any(|allowed| allowed == raw) {
            return Err(RuntimeError::InterfaceNotAllowed {
                interface: excerpt(raw),
                allowed: self.overlay_interfaces.join(", "),
            });
        }
        Ok(raw.to_string())
    }

    /// The owner of a container address (a container id).
    pub fn owner(&self, raw: &str) -> Result<String, RuntimeError> {
        printable_id("owner", raw)
    }

    /// An AttachContainer request. Whether the path is a network namespace is checked
    /// by the core through the kernel layer ([`quilt_kernel::Kernel::check_netns`]),
    /// before it takes its lock.
    pub fn attach(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        mtu: u32,
    ) -> Result<AttachRequest, RuntimeError> {
        let container_id = self.container_id(container_id)?;
        let ifname = self.ifname(ifname)?;
        check_text("netns_path", netns, MAX_NETNS_PATH_LEN)?;
        if !netns.starts_with('/') || netns.chars().any(|c| c.is_control()) {
            return Err(RuntimeError::BadField {
                field: "netns_path",
                value: excerpt(netns),
                reason: "not an absolute path".into(),
            });
        }
        let mtu = match mtu {
            0 => None,
            68..=65535 => Some(mtu),
            _ => {
                return Err(RuntimeError::BadField {
                    field: "mtu",
                    value: mtu.to_string(),
                    reason: "outside 68..=65535".into(),
                });
            }
        };
        Ok(AttachRequest {
            container_id,
            ifname,
            netns: netns.into(),
            mtu,
        })
    }

    /// A container id: what an owner may be.
    pub fn container_id(&self, raw: &str) -> Result<String, RuntimeError> {
        printable_id("container_id", raw)
    }

    /// An interface name the kernel accepts: 1 to 15 bytes, not `.` or `..`, without
    /// `/`, `:`, spaces or control characters.
    pub fn ifname(&self, raw: &str) -> Result<String, RuntimeError> {
        if raw.len() > MAX_IFNAME_LEN {
            return Err(RuntimeError::BadField {
                field: "ifname",
                value: excerpt(raw),
                reason: format!(
                    "{} bytes long, more than the limit of {MAX_IFNAME_LEN}",
                    raw.len()
                ),
            });
        }
        check_text("ifname", raw, MAX_IFNAME_LEN)?;
        if raw == "."
            || raw == ".."
            || raw
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(RuntimeError::BadField {
                field: "ifname",
                value: excerpt(raw),
                reason: "not a valid interface name (no '/', ':' or spaces; not '.' or '..')"
                    .into(),
            });
        }
        Ok(raw.to_string())
    }
}

/// An id (an owner or a container id): 1 to [`MAX_OWNER_LEN`] bytes without spaces or
/// control characters.
fn printable_id(field: &'static str, raw: &str) -> Result<String, RuntimeError> {
    check_text(field, raw, MAX_OWNER_LEN)?;
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RuntimeError::BadField {
            field,
            value: excerpt(raw),
            reason: "not allowed to contain spaces or control characters".into(),
        });
    }
    Ok(raw.to_string())
}

fn check_text(field: &'static str, raw: &str, max: usize) -> Result<(), RuntimeError> {
    if raw.is_empty() {
        return Err(ClusterError::Empty { what: field }.into());
    }
    if raw.len() > max {
        return Err(RuntimeError::BadField {
            field,
            value: excerpt(raw),
            reason: format!("{} bytes long, more than the limit of {max}", raw.len()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rules() -> Rules {
        Rules {
            cluster: ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 24).unwrap(),
            overlay_interfaces: vec!["vxlan100".into()],
        }
    }

    fn refusal(dest: &str, iface: &str, gw: &str) -> String {
        rules().route(dest, iface, gw).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_peer_route_with_and_without_gateway() {
        let r = rules()
            .route("10.42.2.0/24", "vxlan100", "10.42.2.0")
            .unwrap();
        assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 42, 2, 0)));
        let r = rules().route("10.42.2.0/24", "vxlan100", "").unwrap();
        assert_eq!(r.gateway, None);
    }

    #[test]
    fn the_refusal_table() {
        let long = "x".repeat(5000);
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            (
                "0.0.0.0/0",
                "vxlan100",
                "",
                "destination 0.0.0.0/0 is outside cluster cidr 10.42.0.0/16",
            ),
            (
                "0.0.0.0/1",
                "vxlan100",
                "",
                "destination 0.0.0.0/1 is outside cluster cidr",
            ),
            (
                "8.8.8.0/24",
                "vxlan100",
                "",
                "destination 8.8.8.0/24 is outside cluster cidr",
            ),
            (
                "10.42.2.0/24",
                "lo",
                "",
                "interface \"lo\" is not an overlay interface",
            ),
            (
                "10.42.2.0/24",
                "eth0",
                "",
                "interface \"eth0\" is not an overlay interface",
            ),
            ("10.42.2.5/24", "vxlan100", "", "host bits set"),
            (
                "10.42.2.0/33",
                "vxlan100",
                "",
                "\"10.42.2.0/33\" is not an IPv4 network",
            ),
            (
                "garbage",
                "vxlan100",
                "",
                "\"garbage\" is not an IPv4 network",
            ),
            ("", "vxlan100", "", "destination is empty"),
            ("10.42.2.0/24", "", "", "via_interface is empty"),
            (
                "10.42.2.0/24",
                "vxlan100",
                "10.42.3.0",
                "gateway 10.42.3.0 is outside destination 10.42.2.0/24",
            ),
            (
                "10.42.2.0/24",
                "vxlan100",
                "nonsense",
                "gateway \"nonsense\" is not an IPv4 address",
            ),
            ("10.42.2.0/25", "vxlan100", "", "prefix length /25"),
            (&long, "vxlan100", "", "5000 bytes long"),
            ("10.42.2.0/24", &long, "", "5000 bytes long"),
            ("10.42.2.0/24", "vxlan100", &long, "5000 bytes long"),
        ];
        for (dest, iface, gw, expected) in cases {
            let err = refusal(dest, iface, gw);
            assert!(
                err.contains(expected),
                "({dest:.20}, {iface:.20}, {gw:.20}): {err}"
            );
            assert!(
                err.len() < 300,
                "long input must not be echoed whole: {err}"
            );
        }
    }

    #[test]
    fn attach_requests_are_checked() {
        let ok = rules().attach("c1", "/run/netns/c1", "eth0", 0).unwrap();
        assert_eq!(ok.mtu, None);
        let cases = [
            ("", "/run/netns/c1", "eth0", 0, "container_id is empty"),
            (
                &"a".repeat(300)[..],
                "/run/netns/c1",
                "eth0",
                0,
                "300 bytes long",
            ),
            ("a b", "/run/netns/c1", "eth0", 0, "spaces"),
            (
                "c1",
                "/run/netns/c1",
                "abcdefghijklmnop",
                0,
                "16 bytes long",
            ),
            (
                "c1",
                "/run/netns/c1",
                "a/b",
                0,
                "not a valid interface name",
            ),
            ("c1", "/run/netns/c1", "..", 0, "not a valid interface name"),
            ("c1", "/run/netns/c1", "", 0, "ifname is empty"),
            ("c1", "", "eth0", 0, "netns_path is empty"),
            ("c1", "run/netns/c1", "eth0", 0, "not an absolute path"),
            ("c1", "/run/netns/c1", "eth0", 70000, "outside 68..=65535"),
        ];
        for (id, netns, ifname, mtu, expected) in cases {
            let err = rules()
                .attach(id, netns, ifname, mtu)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "({id:.20}, {netns}, {ifname}, {mtu}): {err}"
            );
        }
    }

    #[test]
    fn owners_are_short_printable_ids() {
        assert!(rules().owner("abc123").is_ok());
        for (field, err) in [
            ("owner", rules().owner("a\tb").unwrap_err()),
            ("container_id", rules().container_id("a\tb").unwrap_err()),
        ] {
            assert_eq!(
                err.to_string(),
                format!("{field} \"a\\tb\" is not allowed to contain spaces or control characters")
            );
        }
        assert!(rules().owner("").is_err());
        assert!(rules().owner("a b").is_err());
        assert!(
            rules()
                .owner(&"a".repeat(257))
                .unwrap_err()
                .to_string()
                .contains("257 bytes")
        );
    }
}
