//! The real [`Kernel`]: rtnetlink for links and routes, [`NexthopSocket`] for the
//! nexthop objects that gateway routes point at.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::{Emitable, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tokio::task::JoinHandle;

use crate::nexthop::{self, Mode, Nexthop, NexthopSocket, RawRequest};
use crate::{ContainerInterface, ContainerView, Kernel, KernelError, Link, Route, VethSpec, netns};

const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENETUNREACH: i32 = 101;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_CREATE_EXCL: u16 = 0x400 | 0x200;
/// Routes sent to the kernel in one write by [`Kernel::add_routes`] (two messages each).
const ROUTES_PER_WRITE: usize = 128;

/// A connection to the kernel of the network namespace it was opened in.
pub struct NetlinkKernel {
    handle: Handle,
    nexthops: NexthopSocket,
    connection: JoinHandle<()>,
    /// Interface name -> index for route programming, so adding a route costs two
    /// round trips instead of three. An entry is dropped when the kernel refuses the
    /// index (the device went away, maybe to come back under a new index), and the
    /// lookup is done again: see [`stale_index`].
    route_interfaces: std::sync::Mutex<HashMap<String, u32>>,
}

impl Drop for NetlinkKernel {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Whether `e` may come from a cached interface index that no longer exists: a route
/// over it fails with ENODEV, but a nexthop over it with EINVAL ("invalid device
/// index"), which is what a gateway route meets first. Looking the index up again
/// once is cheap, and right for any other EINVAL too (the retry fails the same way).
fn stale_index(e: &KernelError) -> bool {
    matches!(e.errno(), Some(ENODEV) | Some(EINVAL))
}

/// Runs `f` with a kernel connection opened inside the named network namespace, on a
/// thread of its own with a single-threaded tokio runtime, and answers its result: how
/// tests, tools and benchmarks drive a namespace from outside it.
pub fn with_kernel_in<T: Send>(
    netns_name: &str,
    f: impl AsyncFnOnce(&NetlinkKernel) -> T + Send,
) -> Result<T, KernelError> {
    crate::netns::run_in(netns_name, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KernelError::io("start a runtime inside the namespace", e))?;
        runtime.block_on(async {
            let kernel = NetlinkKernel::open()?;
            Ok(f(&kernel).await)
        })
    })?
}

impl NetlinkKernel {
    /// Opens netlink sockets in the calling thread's network namespace. Needs a tokio
    /// runtime: the rtnetlink connection runs as a task owned by the returned value.
    pub fn open() -> Result<Self, KernelError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| KernelError::io("open netlink socket", e))?;
        let connection = tokio::spawn(connection);
        let nexthops = NexthopSocket::open()?;
        Ok(Self {
            handle,
            nexthops,
            connection,
            route_interfaces: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn route_interface(&self, name: &str) -> Result<u32, KernelError> {
        let cached = self
            .route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if let Some(index) = cached {
            return Ok(index);
        }
        let index = self.require_link(name).await?.index;
        self.route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), index);
        Ok(index)
    }

    fn forget_route_interface(&self, name: &str) {
        self.route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Runs `attempt`; when the kernel says the remembered interface index is stale,
    /// looks the interface up again and runs it once more.
    async fn retry_on_stale_index<F, Fut>(
        &self,
        route: &Route,
        attempt: F,
    ) -> Result<(), KernelError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), KernelError>>,
    {
        match attempt().await {
            Err(e) if stale_index(&e) => {
                self.forget_route_interface(&route.interface);
                attempt().await
            }
            other => other,
        }
    }

    async fn add_route_once(&self, route: &Route) -> Result<(), KernelError> {
        let (message, created_nexthop) = self.route_message(route).await?;
        match self.handle.route().add(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // A nexthop made for this route alone must not outlive the refusal.
                if let Some(id) = created_nexthop {
                    self.release_nexthop(id, route.protocol);
                }
                let errno = errno_of(&e);
                if errno == Some(EEXIST) {
                    let existing = self.route(route.destination).await?;
                    return Err(KernelError::RouteExists {
                        destination: route.destination,
                        protocol: existing.map(|r| r.protocol).unwrap_or(0),
                    });
                }
                Err(KernelError::from_rtnetlink(format!("add route {route}"), e))
            }
        }
    }

    async fn replace_route_once(&self, route: &Route) -> Result<(), KernelError> {
        let previous = self.route(route.destination).await?;
        let (message, _) = self.route_message(route).await?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("replace route {route}"), e))?;
        if let Some(old_gateway) = previous.and_then(|p| p.gateway)
            && Some(old_gateway) != route.gateway
        {
            self.release_nexthop(nexthop::id_for_gateway(old_gateway), route.protocol);
        }
        Ok(())
    }

    /// The rtnetlink handle, for operations this crate does not wrap yet.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, KernelError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(message) => Ok(message.map(link_from_message)),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(KernelError::from_rtnetlink(format!("get link {index}"), e)),
        }
    }

    /// Whether link `index` is a bridge.
    async fn is_bridge(&self, index: u32) -> Result<bool, KernelError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let message = links
            .try_next()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("get link {index}"), e))?;
        Ok(message.is_some_and(|m| {
            m.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| {
                    matches!(
                        i,
                        netlink_packet_route::link::LinkInfo::Kind(
                            netlink_packet_route::link::InfoKind::Bridge
                        )
                    )
                }),
                _ => false,
            })
        }))
    }

    async fn link_names(&self) -> Result<HashMap<u32, String>, KernelError> {
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

    async fn require_link(&self, name: &str) -> Result<Link, KernelError> {
        self.link(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))
    }

    /// Makes sure our nexthop for `gateway` on `oif` exists, without touching a nexthop
    /// of the same id that someone else made.
    fn ensure_nexthop(
        &self,
        gateway: Ipv4Addr,
        oif: u32,
        protocol: u8,
    ) -> Result<(u32, bool), KernelError> {
        let wanted = Nexthop {
            id: nexthop::id_for_gateway(gateway),
            gateway,
            oif,
            protocol,
        };
        match self.nexthops.create(&wanted, Mode::Exclusive) {
            Ok(()) => Ok((wanted.id, true)),
            Err(e) if NexthopSocket::is_exists(&e) => match self.nexthops.get(wanted.id)? {
                Some(existing) if existing.protocol != protocol => {
                    Err(KernelError::ForeignNexthop {
                        id: wanted.id,
                        gateway,
                        protocol: existing.protocol,
                    })
                }
                Some(existing) if existing == wanted => Ok((wanted.id, false)),
                _ => self
                    .nexthops
                    .create(&wanted, Mode::Replace)
                    .map(|()| (wanted.id, false)),
            },
            Err(e) => Err(e),
        }
    }

    /// Deletes our nexthop `id` when nothing needs it any more.
    fn release_nexthop(&self, id: u32, protocol: u8) {
        match self.nexthops.get(id) {
            Ok(Some(nh)) if nh.protocol == protocol => {
                if let Err(e) = self.nexthops.delete(id) {
                    tracing::warn!(nexthop = id, error = %e, "could not delete unused nexthop");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(nexthop = id, error = %e, "could not look up nexthop"),
        }
    }

    /// The message for `route`, with its nexthop in place; also answers the nexthop id
    /// when this call created it (to release if the route cannot be added).
    async fn route_message(
        &self,
        route: &Route,
    ) -> Result<(RouteMessage, Option<u32>), KernelError> {
        let index = self.route_interface(&route.interface).await?;
        let nexthop = match route.gateway {
            Some(gateway) => Some(self.ensure_nexthop(gateway, index, route.protocol)?),
            None => None,
        };
        let message = build_route_message(route, index, nexthop.map(|(id, _)| id));
        let created = nexthop.filter(|(_, created)| *created).map(|(id, _)| id);
        Ok((message, created))
    }

    /// Adds a chunk of routes with one write to the kernel: for each, its nexthop (when
    /// it has a gateway) and the route, both exclusive. What the batch cannot settle
    /// (an existing nexthop or route, a vanished interface) goes the one-at-a-time way.
    async fn add_route_chunk(&self, routes: &[Route]) -> Vec<Result<(), KernelError>> {
        let mut requests = Vec::with_capacity(routes.len() * 2);
        // Per route: the index of its nexthop request, of its route request, or why it
        // could not be built.
        let mut slots: Vec<Result<BatchSlot, KernelError>> = Vec::new();
        for route in routes {
            let index = match self.route_interface(&route.interface).await {
                Ok(index) => index,
                Err(e) => {
                    slots.push(Err(e));
                    continue;
                }
            };
            let nexthop = route.gateway.map(|gateway| Nexthop {
                id: nexthop::id_for_gateway(gateway),
                gateway,
                oif: index,
                protocol: route.protocol,
            });
            let nexthop_slot = nexthop.map(|nh| {
                requests.push(RawRequest::create_nexthop(&nh, Mode::Exclusive));
                requests.len() - 1
            });
            let message = build_route_message(route, index, nexthop.map(|nh| nh.id));
            let mut body = vec![0u8; message.buffer_len()];
            message.emit(&mut body);
            requests.push(RawRequest {
                kind: RTM_NEWROUTE,
                flags: NLM_F_CREATE_EXCL,
                body,
            });
            slots.push(Ok((nexthop_slot, requests.len() - 1, nexthop)));
        }
        let answers = self.nexthops.exchange(&requests);
        let mut results = Vec::with_capacity(routes.len());
        for (route, slot) in routes.iter().zip(slots) {
            let (nexthop_slot, route_slot, nexthop) = match slot {
                Ok(slot) => slot,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let nexthop_answer =
                nexthop_slot.map(|i| answers[i].as_ref().map(|_| ()).map_err(|e| *e));
            let route_answer = answers[route_slot].as_ref().map(|_| ()).map_err(|e| *e);
            let result = match (nexthop_answer, route_answer) {
                (None | Some(Ok(())), Ok(())) => Ok(()),
                // The id was there: make sure it is ours and right, as the slow path does.
                (Some(Err(EEXIST)), Ok(())) => match nexthop {
                    Some(nh) => match self.ensure_nexthop(nh.gateway, nh.oif, nh.protocol) {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            let _ = self
                                .delete_route_only(route.destination, route.protocol)
                                .await;
                            Err(e)
                        }
                    },
                    None => Ok(()),
                },
                (created, Err(EEXIST)) => {
                    if created == Some(Ok(()))
                        && let Some(nh) = nexthop
                    {
                        self.release_nexthop(nh.id, nh.protocol);
                    }
                    let existing = self.route(route.destination).await;
                    Err(KernelError::RouteExists {
                        destination: route.destination,
                        protocol: existing.ok().flatten().map(|r| r.protocol).unwrap_or(0),
                    })
                }
                // A vanished interface, or a cached index of one that came back under
                // another index (the nexthop answers EINVAL): the slow way looks again.
                (_, Err(ENODEV)) | (Some(Err(ENODEV | EINVAL)), _) => self.add_route(route).await,
                (Some(Err(errno)), route_answer) => {
                    if route_answer.is_ok() {
                        let _ = self
                            .delete_route_only(route.destination, route.protocol)
                            .await;
                    }
                    Err(KernelError::from_errno(
                        format!("add nexthop for route {route}"),
                        errno,
                    ))
                }
                (created, Err(errno)) => {
                    if created == Some(Ok(()))
                        && let Some(nh) = nexthop
                    {
                        self.release_nexthop(nh.id, nh.protocol);
                    }
                    Err(KernelError::from_errno(format!("add route {route}"), errno))
                }
            };
            results.push(result);
        }
        results
    }

    /// The main-table route message for exactly `destination`, from a dump: the slow
    /// but certain way, for when a lookup is answered by a more specific route.
    async fn exact_route_message(
        &self,
        destination: Ipv4Net,
    ) -> Result<Option<RouteMessage>, KernelError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut messages = self.handle.route().get(request).execute();
        while let Some(message) = messages
            .try_next()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("look up route {destination}"), e))?
        {
            let exact = message.header.destination_prefix_length == destination.prefix_len()
                && table_of(&message) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && ParsedRoute::from_message(&message)
                    .is_some_and(|p| p.destination == destination);
            if exact {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// Deletes the route for `destination` carrying `protocol`, leaving its nexthop.
    async fn delete_route_only(
        &self,
        destination: Ipv4Net,
        protocol: u8,
    ) -> Result<(), KernelError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .protocol(RouteProtocol::from(protocol))
            .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
            .scope(RouteScope::NoWhere)
            .build();
        self.handle
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("delete route {destination}"), e))
    }

    async fn resolve(
        &self,
        message: RouteMessage,
        names: &HashMap<u32, String>,
    ) -> Result<Option<Route>, KernelError> {
        let Some(mut parsed) = ParsedRoute::from_message(&message) else {
            return Ok(None);
        };
        if let Some(id) = parsed.nhid
            && (parsed.gateway.is_none() || parsed.oif.is_none())
            && let Some(nh) = self.nexthops.get(id)?
        {
            parsed.gateway = Some(nh.gateway).filter(|g| !g.is_unspecified());
            parsed.oif = Some(nh.oif);
        }
        let interface = parsed
            .oif
            .and_then(|i| names.get(&i).cloned())
            .unwrap_or_default();
        Ok(Some(Route {
            destination: parsed.destination,
            interface,
            gateway: parsed.gateway,
            protocol: parsed.protocol,
        }))
    }
}

impl Kernel for NetlinkKernel {
    async fn link(&self, name: &str) -> Result<Option<Link>, KernelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(message) => Ok(message.map(link_from_message)),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(KernelError::from_rtnetlink(format!("get link {name}"), e)),
        }
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>, KernelError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::from_rtnetlink("list routes", e))?;
        let names = self.link_names().await?;
        let mut routes = Vec::new();
        for message in messages {
            if u8::from(message.header.protocol) != protocol
                || table_of(&message) != u32::from(RouteHeader::RT_TABLE_MAIN)
            {
                continue;
            }
            if let Some(route) = self.resolve(message, &names).await? {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    async fn route(&self, destination: Ipv4Net) -> Result<Option<Route>, KernelError> {
        // A `fibmatch` lookup answers the table entry that matches the destination's
        // network address: one round trip instead of a dump of the whole table.
        let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), 32)
            .build();
        message.header.flags = RouteFlags::FibMatch;
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(request)
            .map_err(|e| KernelError::from_rtnetlink(format!("look up route {destination}"), e))?;
        let mut found = None;
        while let Some(reply) = futures::StreamExt::next(&mut replies).await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => found = Some(m),
                NetlinkPayload::Error(e) => {
                    let errno = e.code.map(|c| -c.get()).unwrap_or(0);
                    if errno == ENETUNREACH || errno == ESRCH {
                        return Ok(None);
                    }
                    return Err(KernelError::from_errno(
                        format!("look up route {destination}"),
                        errno,
                    ));
                }
                _ => {}
            }
        }
        let Some(mut message) = found else {
            return Ok(None);
        };
        let in_main = table_of(&message) == u32::from(RouteHeader::RT_TABLE_MAIN);
        let length = message.header.destination_prefix_length;
        if !in_main || length > destination.prefix_len() {
            // A more specific route (or another table's entry) answered the lookup and
            // may hide ours: look for the exact prefix in a dump of the table.
            match self.exact_route_message(destination).await? {
                Some(exact) => message = exact,
                None => return Ok(None),
            }
        } else if length < destination.prefix_len() {
            return Ok(None);
        }
        let names = match ParsedRoute::from_message(&message).and_then(|p| p.oif) {
            Some(index) => self
                .link_by_index(index)
                .await?
                .map(|l| HashMap::from([(l.index, l.name)]))
                .unwrap_or_default(),
            None => HashMap::new(),
        };
        let route = self.resolve(message, &names).await?;
        Ok(route.filter(|r| r.destination == destination))
    }

    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<(), KernelError>> {
        let mut results = Vec::with_capacity(routes.len());
        for chunk in routes.chunks(ROUTES_PER_WRITE) {
            results.extend(self.add_route_chunk(chunk).await);
        }
        results
    }

    async fn add_route(&self, route: &Route) -> Result<(), KernelError> {
        self.retry_on_stale_index(route, || self.add_route_once(route))
            .await
    }

    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        self.retry_on_stale_index(route, || self.replace_route_once(route))
            .await
    }

    async fn delete_route(&self, destination: Ipv4Net, protocol: u8) -> Result<bool, KernelError> {
        let existing = self.route(destination).await?;
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .protocol(RouteProtocol::from(protocol))
            .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
            .scope(RouteScope::NoWhere)
            .build();
        match self.handle.route().del(message).execute().await {
            Ok(()) => {
                if let Some(gateway) = existing
                    .filter(|r| r.protocol == protocol)
                    .and_then(|r| r.gateway)
                {
                    self.release_nexthop(nexthop::id_for_gateway(gateway), protocol);
                }
                Ok(true)
            }
            Err(e) if errno_of(&e) == Some(ESRCH) => Ok(false),
            Err(e) => Err(KernelError::from_rtnetlink(
                format!("delete route {destination}"),
                e,
            )),
        }
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Net,
        mtu: u32,
    ) -> Result<bool, KernelError> {
        let mut changed = false;
        let link = match self.link(name).await? {
            Some(link) => {
                // Only a bridge is ours to adjust: a link of another kind by that name is
                // someone else's, and left alone.
                if !self.is_bridge(link.index).await? {
                    return Err(KernelError::Other {
                        operation: format!("set up bridge {name}"),
                        message: format!("{name} exists and is not a bridge; it is left alone"),
                    });
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

    async fn set_bridge_port(&self, port: &str, bridge: &str) -> Result<(), KernelError> {
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

    async fn create_veth_into(&self, veth: &VethSpec) -> Result<(), KernelError> {
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

    async fn configure_container(
        &self,
        netns: &Path,
        interface: &ContainerInterface,
    ) -> Result<Link, KernelError> {
        let (netns, interface) = (netns.to_path_buf(), interface.clone());
        in_netns(netns, move |handle| async move {
            configure_inside(&handle, &interface).await
        })
        .await
    }

    async fn inspect_container(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<ContainerView>, KernelError> {
        let (netns, ifname) = (netns.to_path_buf(), ifname.to_string());
        in_netns(netns, move |handle| async move {
            inspect_inside(&handle, &ifname).await
        })
        .await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(KernelError::from_rtnetlink(
                format!("delete link {name}"),
                e,
            )),
        }
    }
}

/// The fields of a route message the mesh cares about.
struct ParsedRoute {
    destination: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    nhid: Option<u32>,
    protocol: u8,
}

impl ParsedRoute {
    fn from_message(message: &RouteMessage) -> Option<Self> {
        let mut destination = Ipv4Addr::UNSPECIFIED;
        let (mut gateway, mut oif, mut nhid) = (None, None, None);
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::NhId(i) => nhid = Some(*i),
                _ => {}
            }
        }
        let destination =
            Ipv4Net::new(destination, message.header.destination_prefix_length).ok()?;
        Some(Self {
            destination,
            gateway,
            oif,
            nhid,
            protocol: u8::from(message.header.protocol),
        })
    }
}

/// Where a route's requests sit in a batch: its nexthop request (if any), its route
/// request, and the nexthop it asked for.
type BatchSlot = (Option<usize>, usize, Option<Nexthop>);

/// The route message for `route` over interface `index`: through nexthop `nexthop`
/// when it has a gateway, a device route otherwise.
fn build_route_message(route: &Route, index: u32, nexthop: Option<u32>) -> RouteMessage {
    let builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.network(), route.destination.prefix_len())
        .protocol(RouteProtocol::from(route.protocol))
        .table_id(u32::from(RouteHeader::RT_TABLE_MAIN));
    match nexthop {
        Some(id) => builder.scope(RouteScope::Universe).nhid(id).build(),
        None => builder
            .scope(RouteScope::Link)
            .output_interface(index)
            .build(),
    }
}

fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn link_from_message(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    link
}

pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
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
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(KernelError::from_rtnetlink(format!("get link {name}"), e)),
    }
}

/// The IPv4 addresses on link `index`, with the messages that delete them.
async fn ipv4_addresses(
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
        .filter(|m| table_of(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
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
