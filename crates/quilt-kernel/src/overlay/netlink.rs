//! [`Overlay`] on the real kernel ([`NetlinkKernel`]): the VXLAN device, its address,
//! neighbour and FDB entries over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use nix::errno::Errno;
use rtnetlink::{LinkUnspec, LinkVxlan};

use crate::kernel::netlink::{NetlinkKernel, errno_of, link_from_message};
use crate::overlay::{FdbEntry, Mac, Neighbour, Overlay, VxlanDevice, VxlanSpec};
use crate::{Kernel, KernelError, Link};

impl NetlinkKernel {
    /// The entries of `family` (Inet: neighbours; Bridge: FDB) on link `name`.
    async fn neighbour_entries(
        &self,
        name: &str,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        let link = self.overlay_link(name).await?;
        let messages: Vec<NeighbourMessage> = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                KernelError::from_rtnetlink(format!("list {family:?} entries of {name}"), e)
            })?;
        Ok(messages
            .into_iter()
            .filter(|m| m.header.ifindex == link.index)
            .collect())
    }

    /// Deletes one neighbour or FDB entry; an absent one is success.
    async fn delete_neighbour_entry(
        &self,
        message: NeighbourMessage,
        operation: String,
    ) -> Result<(), KernelError> {
        match self.handle().neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(Errno::ENOENT as i32) => Ok(()),
            Err(e) => Err(KernelError::from_rtnetlink(operation, e)),
        }
    }

    async fn overlay_link(&self, name: &str) -> Result<Link, KernelError> {
        self.link(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))
    }
}

fn vxlan_from_message(message: &LinkMessage) -> VxlanDevice {
    let mut device = VxlanDevice {
        index: message.header.index,
        vni: None,
        port: None,
        local: None,
        underlay_index: None,
        learning: None,
        mtu: 0,
        mac: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => device.mtu = *mtu,
            LinkAttribute::Address(bytes) => {
                device.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(fields)) = info {
                        for field in fields {
                            match field {
                                InfoVxlan::Id(v) => device.vni = Some(*v),
                                InfoVxlan::Port(p) => device.port = Some(*p),
                                InfoVxlan::Local(a) => device.local = Some(*a),
                                InfoVxlan::Link(i) => device.underlay_index = Some(*i),
                                InfoVxlan::Learning(l) => device.learning = Some(*l),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    device
}

/// The FDB entry a bridge-family message shows, if it has a remote destination.
fn fdb_entry(message: &NeighbourMessage) -> Option<FdbEntry> {
    let (destination, mac) = neighbour_fields(message);
    let port = message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Port(port) => Some(*port),
        _ => None,
    });
    Some(FdbEntry {
        mac: mac?,
        destination: destination?,
        port,
    })
}

fn neighbour_fields(message: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<Mac>) {
    let (mut ip, mut mac) = (None, None);
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            // Bridge-family (FDB) messages carry the VTEP address without a family the
            // parser recognises.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = <[u8; 4]>::try_from(bytes.as_slice())
                    .ok()
                    .map(Ipv4Addr::from)
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac)
            }
            _ => {}
        }
    }
    (ip, mac)
}

impl Overlay for NetlinkKernel {
    async fn vxlan(&self, name: &str) -> Result<Option<VxlanDevice>, KernelError> {
        let mut links = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(message) => Ok(message.as_ref().map(vxlan_from_message)),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(KernelError::from_rtnetlink(format!("get link {name}"), e)),
        }
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), KernelError> {
        let underlay = self.overlay_link(&spec.underlay).await?;
        let message = LinkVxlan::new(&spec.name, spec.vni)
            .dev(underlay.index)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .up()
            .build();
        self.handle()
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| {
                KernelError::from_rtnetlink(format!("create vxlan device {}", spec.name), e)
            })
    }

    async fn delete_vxlan(&self, name: &str) -> Result<bool, KernelError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle().link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(KernelError::from_rtnetlink(
                format!("delete link {name}"),
                e,
            )),
        }
    }

    async fn set_up(&self, name: &str) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.handle()
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("set {name} up"), e))
    }

    async fn interface(&self, name: &str) -> Result<Option<Link>, KernelError> {
        self.link(name).await
    }

    async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<Link>, KernelError> {
        let addresses: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .set_address_filter(IpAddr::V4(ip))
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                KernelError::from_rtnetlink(format!("find the interface holding {ip}"), e)
            })?;
        let Some(index) = addresses.first().map(|a| a.header.index) else {
            return Ok(None);
        };
        let mut links = self.handle().link().get().match_index(index).execute();
        let message = links
            .try_next()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("get link {index}"), e))?;
        Ok(message.map(link_from_message))
    }

    async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>, KernelError> {
        let link = self.overlay_link(name).await?;
        let messages: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("list addresses of {name}"), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == link.index)
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                });
                let address = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                });
                Ipv4Net::new(local.or(address)?, m.header.prefix_len).ok()
            })
            .collect())
    }

    async fn add_address(&self, name: &str, address: Ipv4Net) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        self.handle()
            .address()
            .add(link.index, IpAddr::V4(address.addr()), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("add address {address} to {name}"), e))
    }

    async fn delete_address(&self, name: &str, address: Ipv4Net) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        let mut messages = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(IpAddr::V4(address.addr()))
            .set_prefix_length_filter(address.prefix_len())
            .execute();
        while let Some(message) = messages.try_next().await.map_err(|e| {
            KernelError::from_rtnetlink(format!("find address {address} on {name}"), e)
        })? {
            if message.header.index != link.index {
                continue;
            }
            match self.handle().address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(Errno::EADDRNOTAVAIL as i32) => {}
                Err(e) => {
                    return Err(KernelError::from_rtnetlink(
                        format!("delete address {address} from {name}"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn neighbours(&self, name: &str) -> Result<Vec<Neighbour>, KernelError> {
        let entries = self.neighbour_entries(name, AddressFamily::Inet).await?;
        Ok(entries
            .iter()
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .filter_map(|m| match neighbour_fields(m) {
                (Some(ip), Some(mac)) => Some(Neighbour { ip, mac }),
                _ => None,
            })
            .collect())
    }

    async fn replace_neighbour(&self, name: &str, entry: Neighbour) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        self.handle()
            .neighbours()
            .add(link.index, IpAddr::V4(entry.ip))
            .link_layer_address(&entry.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                KernelError::from_rtnetlink(
                    format!("set neighbour {} lladdr {} on {name}", entry.ip, entry.mac),
                    e,
                )
            })
    }

    async fn delete_neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = link.index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.delete_neighbour_entry(message, format!("delete neighbour {ip} on {name}"))
            .await
    }

    async fn fdb(&self, name: &str) -> Result<Vec<FdbEntry>, KernelError> {
        let entries = self.neighbour_entries(name, AddressFamily::Bridge).await?;
        Ok(entries.iter().filter_map(fdb_entry).collect())
    }

    async fn replace_fdb(&self, name: &str, entry: FdbEntry) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        let mut request = self
            .handle()
            .neighbours()
            .add_bridge(link.index, &entry.mac.0)
            .destination(IpAddr::V4(entry.destination))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent);
        if let Some(port) = entry.port {
            request
                .message_mut()
                .attributes
                .push(NeighbourAttribute::Port(port));
        }
        let operation = || format!("set {entry} on {name}");
        if !entry.is_flood() {
            return request
                .replace()
                .execute()
                .await
                .map_err(|e| KernelError::from_rtnetlink(operation(), e));
        }
        // The kernel replaces only unicast entries; a flood destination is appended (a
        // second append of the same one is a no-op).
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(
            request.message_mut().clone(),
        ));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut handle = self.handle().clone();
        let mut replies = handle
            .request(message)
            .map_err(|e| KernelError::from_rtnetlink(operation(), e))?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(e) = reply.payload
                && let Some(code) = e.code
            {
                return Err(KernelError::from_errno(operation(), -code.get()));
            }
        }
        Ok(())
    }

    async fn delete_fdb(&self, name: &str, entry: FdbEntry) -> Result<(), KernelError> {
        let link = self.overlay_link(name).await?;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = link.index;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                entry.destination,
            )));
        if let Some(port) = entry.port {
            message.attributes.push(NeighbourAttribute::Port(port));
        }
        self.delete_neighbour_entry(message, format!("delete {entry} on {name}"))
            .await
    }
}
