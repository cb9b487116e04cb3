//! Links: looking them up, the bridge `quilt0` with its address and forwarding, its
//! ports, veth pairs with their peer born inside a container's namespace, deletion.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use nix::errno::Errno;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::NetlinkKernel;
use super::messages::{errno_of, link_from_message};
use crate::{KernelError, Link, LinkKind, VethSpec, netns};

impl NetlinkKernel {
    /// The link called `name`, if it exists ([`crate::Kernel::link`]).
    pub(super) async fn link_named(&self, name: &str) -> Result<Option<Link>, KernelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(message) => Ok(message.map(link_from_message)),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(KernelError::from_rtnetlink(format!("get link {name}"), e)),
        }
    }

    pub(super) async fn link_by_index(&self, index: u32) -> Result<Option<Link>, KernelError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(message) => Ok(message.map(link_from_message)),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(KernelError::from_rtnetlink(format!("get link {index}"), e)),
        }
    }

    /// Index -> name of every link.
    pub(super) async fn link_names(&self) -> Result<HashMap<u32, String>, KernelError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::from_rtnetlink("list links", e))?;
        Ok(links
            .into_iter()
            .map(link_from_message)
            .map(|l| (l.index, l.name))
            .collect())
    }

    pub(super) async fn require_link(&self, name: &str) -> Result<Link, KernelError> {
        self.link_named(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))
    }

    /// [`crate::Kernel::ensure_bridge`].
    pub(super) async fn set_up_bridge(
        &self,
        name: &str,
        address: Ipv4Net,
        mtu: u32,
    ) -> Result<bool, KernelError> {
        let mut changed = false;
        let link = match self.link_named(name).await? {
            Some(link) => {
                // Only a bridge is ours to adjust: a link of another kind by that name is
                // someone else's, and left alone.
                if link.kind != Some(LinkKind::Bridge) {
                    return Err(KernelError::not_a_bridge(name));
                }
                link
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(|e| KernelError::from_rtnetlink(format!("create bridge {name}"), e))?;
                changed = true;
                self.require_link(name).await?
            }
        };
        let message = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
        if link.mtu != mtu {
            changed = true;
        }
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| {
                KernelError::from_rtnetlink(format!("set bridge {name} mtu {mtu} up"), e)
            })?;
        let mut has_wanted = false;
        for (net, message) in ipv4_addresses(&self.handle, link.index).await? {
            if net == address {
                has_wanted = true;
            } else {
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(|e| {
                        KernelError::from_rtnetlink(format!("delete address {net} from {name}"), e)
                    })?;
                changed = true;
            }
        }
        if !has_wanted {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(address.addr()), address.prefix_len())
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    KernelError::from_rtnetlink(format!("add address {address} to {name}"), e)
                })?;
            changed = true;
        }
        // Per-device IPv4 forwarding of this namespace (the file answers for the
        // namespace of the process that opens it).
        let forwarding = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"));
        if std::fs::read_to_string(&forwarding)
            .map(|v| v.trim() != "1")
            .unwrap_or(true)
        {
            std::fs::write(&forwarding, "1")
                .map_err(|e| KernelError::io(format!("enable forwarding on {name}"), e))?;
        }
        Ok(changed)
    }

    /// [`crate::Kernel::set_bridge_port`].
    pub(super) async fn attach_port(&self, port: &str, bridge: &str) -> Result<(), KernelError> {
        let bridge_link = self.require_link(bridge).await?;
        let port_link = self.require_link(port).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(port_link.index)
                    .controller(bridge_link.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("set {port} master {bridge}"), e))
    }

    /// [`crate::Kernel::create_veth_into`].
    pub(super) async fn create_veth(&self, veth: &VethSpec) -> Result<(), KernelError> {
        let file = netns::open_path(&veth.netns)?;
        let bridge = self.require_link(&veth.bridge).await?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(veth.ifname.clone())
            .mtu(veth.mtu)
            .setns_by_fd(file.as_raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(veth.host.clone())
            .mtu(veth.mtu)
            .controller(bridge.index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let result = self.handle.link().add(message).execute().await;
        drop(file);
        result.map_err(|e| {
            KernelError::from_rtnetlink(
                format!(
                    "create veth {} with peer {} in {}",
                    veth.host,
                    veth.ifname,
                    veth.netns.display()
                ),
                e,
            )
        })
    }

    /// [`crate::Kernel::delete_link`].
    pub(super) async fn remove_link(&self, name: &str) -> Result<bool, KernelError> {
        let Some(link) = self.link_named(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(KernelError::from_rtnetlink(
                format!("delete link {name}"),
                e,
            )),
        }
    }
}

/// The IPv4 addresses on link `index`, with the messages that delete them.
pub(super) async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Net, AddressMessage)>, KernelError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| KernelError::from_rtnetlink(format!("list addresses of link {index}"), e))?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            let address = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
                    _ => None,
                })
            })?;
            let net = Ipv4Net::new(address, m.header.prefix_len).ok()?;
            Some((net, m))
        })
        .collect())
}
