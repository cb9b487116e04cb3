//! Container address allocation: which address of the node subnet comes next, which
//! addresses are in use, and which are used twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{DesiredState, owner};

/// Every address in use: those allocated and those attachments hold (an attachment whose
/// allocation was lost still uses its address, so it is never handed out again).
pub fn in_use(desired: &DesiredState) -> BTreeSet<Ipv4Addr> {
    desired
        .allocations
        .values()
        .copied()
        .chain(desired.attachments.values().map(|a| a.address.addr()))
        .collect()
}

/// Addresses used by more than one owner (allocations and attachments together), with
/// their users in order. Empty when the state is sound.
pub fn double_uses(desired: &DesiredState) -> Vec<(Ipv4Addr, Vec<String>)> {
    let mut users: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for (held_by, address) in &desired.allocations {
        users.entry(*address).or_default().insert(held_by.clone());
    }
    for record in desired.attachments.values() {
        users
            .entry(record.address.addr())
            .or_default()
            .insert(owner(&record.container_id, &record.ifname));
    }
    users
        .into_iter()
        .filter(|(_, held_by)| held_by.len() > 1)
        .map(|(address, held_by)| (address, held_by.into_iter().collect()))
        .collect()
}

/// The gateway of a node subnet: its first host address (`.1`), held by the bridge.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The lowest address of `subnet` that is not the network, the gateway, the broadcast
/// address or already in `used`.
pub fn next_free(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let subnet: Ipv4Net = "10.42.1.0/24".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(gateway(subnet), Ipv4Addr::new(10, 42, 1, 1));
        assert_eq!(next_free(subnet, &used), Some(Ipv4Addr::new(10, 42, 1, 2)));
        for _ in 0..253 {
            let a = next_free(subnet, &used).unwrap();
            assert!(a != subnet.network() && a != gateway(subnet) && a != subnet.broadcast());
            assert!(used.insert(a));
        }
        assert_eq!(used.len(), 253);
        assert_eq!(next_free(subnet, &used), None, "a /24 holds 253 containers");
    }

    #[test]
    fn an_address_held_by_an_attachment_and_another_owner_is_a_double_use() {
        use crate::model::Attachment;
        let address = Ipv4Addr::new(10, 42, 1, 2);
        let mut desired = DesiredState::default();
        desired.attachments.insert(
            ("c1".into(), "eth0".into()),
            Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/c1".into(),
                host_ifname: "qv000000000001".into(),
                address: "10.42.1.2/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 42, 1, 1),
                mac: String::new(),
                host_mac: String::new(),
                mtu: 1450,
            },
        );
        desired.allocations.insert(owner("c1", "eth0"), address);
        assert!(double_uses(&desired).is_empty(), "consistent state");
        desired.allocations.remove(&owner("c1", "eth0"));
        assert!(
            in_use(&desired).contains(&address),
            "the attachment still uses it"
        );
        desired.allocations.insert("other".into(), address);
        assert_eq!(
            double_uses(&desired),
            vec![(
                address,
                vec!["attach:c1/eth0".to_string(), "other".to_string()]
            )]
        );
    }

    #[test]
    fn reuses_the_lowest_released_address() {
        let subnet: Ipv4Net = "10.42.1.0/29".parse().unwrap();
        let used: BTreeSet<_> = [2, 4]
            .into_iter()
            .map(|h| Ipv4Addr::new(10, 42, 1, h))
            .collect();
        assert_eq!(next_free(subnet, &used), Some(Ipv4Addr::new(10, 42, 1, 3)));
    }
}
