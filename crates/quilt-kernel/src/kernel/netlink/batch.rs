//! Many routes in one write ([`crate::Kernel::add_routes`]): each route's nexthop and
//! the route itself go to the kernel together, and what the batch cannot settle goes
//! the one-at-a-time way.

use nix::errno::Errno;

use super::NetlinkKernel;
use super::messages::{build_route_message, new_route_request};
use crate::nexthop::{self, Mode, Nexthop, RawRequest};
use crate::{Kernel, KernelError, Route};

/// Routes sent to the kernel in one write by [`crate::Kernel::add_routes`] (two
/// messages each).
pub(super) const ROUTES_PER_WRITE: usize = 128;

/// Where a route's requests sit in a batch: its nexthop request (if any), its route
/// request, and the nexthop it asked for.
type BatchSlot = (Option<usize>, usize, Option<Nexthop>);

// The errno values a batch answer is told apart by (raw, as the socket answers them).
const EEXIST: i32 = Errno::EEXIST as i32;
const ENODEV: i32 = Errno::ENODEV as i32;
const EINVAL: i32 = Errno::EINVAL as i32;

impl NetlinkKernel {
    /// Adds a chunk of routes with one write to the kernel: for each, its nexthop (when
    /// it has a gateway) and the route, both exclusive. What the batch cannot settle
    /// (an existing nexthop or route, a vanished interface) goes the one-at-a-time way.
    pub(super) async fn add_route_chunk(&self, routes: &[Route]) -> Vec<Result<(), KernelError>> {
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
            requests.push(new_route_request(message));
            slots.push(Ok((nexthop_slot, requests.len() - 1, nexthop)));
        }
        let answers = self.nexthops.exchange(&requests);
        // Each answer as success or the kernel's errno.
        let answer =
            |i: usize| -> Result<(), i32> { answers[i].as_ref().map(|_| ()).map_err(|e| *e) };
        let mut results = Vec::with_capacity(routes.len());
        for (route, slot) in routes.iter().zip(slots) {
            let (nexthop_slot, route_slot, nexthop) = match slot {
                Ok(slot) => slot,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let nexthop_answer = nexthop_slot.map(answer);
            let route_answer = answer(route_slot);
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
                    let existing = self.find_route(route.destination).await;
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
}
