//! The container's side of a veth: configuring and inspecting its interface inside the
//! container's network namespace, over a connection opened in there.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::RouteMessage;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::links::ipv4_addresses;
use super::messages::{MAIN_TABLE, ParsedRoute, errno_of, link_from_message, table_of};
use crate::{ContainerInterface, ContainerView, KernelError, Link, netns};

/// [`crate::Kernel::configure_container`].
pub(super) async fn configure(
    netns: &Path,
    interface: &ContainerInterface,
) -> Result<Link, KernelError> {
    let (netns, interface) = (netns.to_path_buf(), interface.clone());
    in_netns(netns, move |handle| async move {
        configure_inside(&handle, &interface).await
    })
    .await
}

/// [`crate::Kernel::inspect_container`].
pub(super) async fn inspect(
    netns: &Path,
    ifname: &str,
) -> Result<Option<ContainerView>, KernelError> {
    let (netns, ifname) = (netns.to_path_buf(), ifname.to_string());
    in_netns(netns, move |handle| async move {
        inspect_inside(&handle, &ifname).await
    })
    .await
}

/// Runs `f` with an rtnetlink handle opened inside the namespace at `netns`, on a
/// blocking thread that entered it (the caller's threads never change namespace).
async fn in_netns<T, F, Fut>(netns: PathBuf, f: F) -> Result<T, KernelError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, KernelError>>,
{
    let shown = netns.display().to_string();
    tokio::task::spawn_blocking(move || {
        netns::run_in_path(&netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| KernelError::io("start a runtime inside a namespace", e))?;
            rt.block_on(async move {
                let (connection, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| KernelError::io("open netlink socket", e))?;
                let connection = tokio::spawn(connection);
                let result = f(handle).await;
                connection.abort();
                result
            })
        })?
    })
    .await
    .map_err(|e| KernelError::Netns {
        name: shown,
        message: format!("the task working inside the namespace failed: {e}"),
    })?
}

async fn link_message(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, KernelError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(message) => Ok(message),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV as i32) => Ok(None),
        Err(e) => Err(KernelError::from_rtnetlink(format!("get link {name}"), e)),
    }
}

async fn configure_inside(
    handle: &Handle,
    interface: &ContainerInterface,
) -> Result<Link, KernelError> {
    let name = &interface.ifname;
    let message = link_message(handle, name)
        .await?
        .ok_or_else(|| KernelError::NoSuchLink(name.clone()))?;
    let index = message.header.index;
    let address = interface.address;
    handle
        .address()
        .add(index, IpAddr::V4(address.addr()), address.prefix_len())
        .replace()
        .execute()
        .await
        .map_err(|e| KernelError::from_rtnetlink(format!("add address {address} to {name}"), e))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .mtu(interface.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            KernelError::from_rtnetlink(format!("set {name} mtu {} up", interface.mtu), e)
        })?;
    if let Some(lo) = link_message(handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink("set lo up", e))?;
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(interface.gateway)
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            KernelError::from_rtnetlink(
                format!("add default route via {} dev {name}", interface.gateway),
                e,
            )
        })?;
    let mut link = link_from_message(message);
    link.mtu = interface.mtu;
    Ok(link)
}

async fn inspect_inside(
    handle: &Handle,
    ifname: &str,
) -> Result<Option<ContainerView>, KernelError> {
    let Some(message) = link_message(handle, ifname).await? else {
        return Ok(None);
    };
    let up = message.header.flags.contains(LinkFlags::Up);
    let link = link_from_message(message);
    let addresses = ipv4_addresses(handle, link.index)
        .await?
        .into_iter()
        .map(|(net, _)| net)
        .collect();
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| KernelError::from_rtnetlink("list routes", e))?;
    let default_gateway = routes
        .iter()
        .filter(|m| table_of(m) == MAIN_TABLE)
        .filter_map(ParsedRoute::from_message)
        .find(|r| r.destination.prefix_len() == 0 && r.oif == Some(link.index))
        .and_then(|r| r.gateway);
    Ok(Some(ContainerView {
        link,
        up,
        addresses,
        default_gateway,
    }))
}
