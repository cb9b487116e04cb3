//! Routes one at a time: listing, looking up, adding, replacing and deleting main-table
//! routes, with the nexthop objects their gateways stand on.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteFlags, RouteMessage};
use nix::errno::Errno;
use rtnetlink::RouteMessageBuilder;

use super::NetlinkKernel;
use super::messages::{
    MAIN_TABLE, ParsedRoute, build_route_message, delete_route_message, errno_of, table_of,
};
use crate::nexthop::{self, Mode, Nexthop, RawBatchSocket};
use crate::{KernelError, Route};

impl NetlinkKernel {
    /// Every main-table route carrying `protocol` ([`crate::Kernel::routes`]).
    pub(super) async fn list_routes(&self, protocol: u8) -> Result<Vec<Route>, KernelError> {
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
            if u8::from(message.header.protocol) != protocol || table_of(&message) != MAIN_TABLE {
                continue;
            }
            if let Some(route) = self.resolve(message, &names).await? {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    /// The route for exactly `destination` ([`crate::Kernel::route`]).
    pub(super) async fn find_route(
        &self,
        destination: Ipv4Net,
    ) -> Result<Option<Route>, KernelError> {
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
                    if matches!(Errno::from_raw(errno), Errno::ENETUNREACH | Errno::ESRCH) {
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
        let in_main = table_of(&message) == MAIN_TABLE;
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

    pub(super) async fn add_route_once(&self, route: &Route) -> Result<(), KernelError> {
        let (message, created_nexthop) = self.route_message(route).await?;
        match self.handle.route().add(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // A nexthop made for this route alone must not outlive the refusal.
                if let Some(id) = created_nexthop {
                    self.release_nexthop(id, route.protocol);
                }
                if errno_of(&e) == Some(Errno::EEXIST as i32) {
                    let existing = self.find_route(route.destination).await?;
                    return Err(KernelError::RouteExists {
                        destination: route.destination,
                        protocol: existing.map(|r| r.protocol).unwrap_or(0),
                    });
                }
                Err(KernelError::from_rtnetlink(format!("add route {route}"), e))
            }
        }
    }

    pub(super) async fn replace_route_once(&self, route: &Route) -> Result<(), KernelError> {
        let previous = self.find_route(route.destination).await?;
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

    /// Deletes the route for `destination` if it carries `protocol`, and then its
    /// nexthop ([`crate::Kernel::delete_route`]).
    pub(super) async fn delete_route_of(
        &self,
        destination: Ipv4Net,
        protocol: u8,
    ) -> Result<bool, KernelError> {
        let existing = self.find_route(destination).await?;
        let message = delete_route_message(destination, protocol);
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
            Err(e) if errno_of(&e) == Some(Errno::ESRCH as i32) => Ok(false),
            Err(e) => Err(KernelError::from_rtnetlink(
                format!("delete route {destination}"),
                e,
            )),
        }
    }

    /// Makes sure our nexthop for `gateway` on `oif` exists, without touching a nexthop
    /// of the same id that someone else made. Answers its id and whether this call
    /// created it.
    pub(super) fn ensure_nexthop(
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
            Err(e) if RawBatchSocket::is_exists(&e) => match self.nexthops.get(wanted.id)? {
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
    pub(super) fn release_nexthop(&self, id: u32, protocol: u8) {
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
                && table_of(&message) == MAIN_TABLE
                && ParsedRoute::from_message(&message)
                    .is_some_and(|p| p.destination == destination);
            if exact {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// Deletes the route for `destination` carrying `protocol`, leaving its nexthop.
    pub(super) async fn delete_route_only(
        &self,
        destination: Ipv4Net,
        protocol: u8,
    ) -> Result<(), KernelError> {
        self.handle
            .route()
            .del(delete_route_message(destination, protocol))
            .execute()
            .await
            .map_err(|e| KernelError::from_rtnetlink(format!("delete route {destination}"), e))
    }

    /// The [`Route`] `message` stands for: its gateway and interface from the nexthop
    /// it points at when the message carries none, its interface named from `names`.
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
