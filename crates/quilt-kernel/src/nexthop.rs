//! Kernel nexthop objects (`ip nexthop`), which rtnetlink does not cover: a small
//! synchronous netlink client for RTM_NEWNEXTHOP, RTM_GETNEXTHOP and RTM_DELNEXTHOP,
//! whose socket also carries batches of route requests ([`RawBatchSocket::exchange`]).
//!
//! Why: routes that each carry their own `via X onlink` gateway slow down quadratically
//! in the kernel past a few thousand (the fib info hash ignores the gateway); routes that
//! point at nexthop objects (`nhid N`) stay linear. `ip route show` still prints each
//! route with its gateway and device.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_packet_core::{
    NLA_TYPE_MASK, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::RouteNextHopFlags;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

use crate::KernelError;

// Nexthop message types and attributes (linux/rtnetlink.h, linux/nexthop.h), which
// netlink-packet-route does not define.
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// The most requests [`RawBatchSocket::exchange`] sends without leaving the worker.
pub const INLINE_REQUESTS: usize = 16;
/// The length of a netlink message header (`struct nlmsghdr`).
const HEADER_LEN: usize = 16;

// Raw errno values as the socket answers them, for matching.
const EEXIST: i32 = Errno::EEXIST as i32;
const ENOENT: i32 = Errno::ENOENT as i32;
const EIO: i32 = Errno::EIO as i32;
const EPROTO: i32 = Errno::EPROTO as i32;

fn af_inet() -> u8 {
    u8::from(AddressFamily::Inet)
}

fn onlink() -> u32 {
    u32::from(RouteNextHopFlags::Onlink.bits())
}

/// A single-path IPv4 nexthop object: `id N via GATEWAY dev OIF onlink proto P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub protocol: u8,
}

/// The nexthop id the mesh uses for `gateway`: the address itself as a number, so the id
/// is the same after restarts and needs no bookkeeping. Node gateways are unique (each
/// lies inside its own node subnet), so so are the ids.
pub fn id_for_gateway(gateway: Ipv4Addr) -> u32 {
    u32::from(gateway)
}

/// How a create request treats an existing object with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fail with EEXIST.
    Exclusive,
    /// Overwrite it.
    Replace,
}

/// A raw NETLINK_ROUTE socket for what rtnetlink does not do: nexthop objects, and
/// batches of route and nexthop requests sent in one write
/// ([`RawBatchSocket::exchange`]).
///
/// It is blocking, on purpose: each call holds the calling thread until the kernel has
/// answered, which for these requests it does at once (nothing waits on the network or
/// on another process), and one system call for a whole batch is what keeps route
/// programming fast; an async socket would add a task hop per request and win nothing.
/// One mutex-guarded socket serves every caller. That is why it may be called straight
/// from async code, as [`crate::netlink::NetlinkKernel`] does from its trait methods,
/// but only for such short exchanges: nothing the kernel may make wait, and no dump
/// of unbounded size.
pub struct RawBatchSocket {
    socket: Mutex<Socket>,
    sequence: AtomicU32,
}

/// The name this socket had when it carried only nexthops; kept for dependents.
pub type NexthopSocket = RawBatchSocket;

impl RawBatchSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, KernelError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| KernelError::io("open nexthop socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| KernelError::io("bind nexthop socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| KernelError::io("connect nexthop socket", e))?;
        Ok(Self {
            socket: Mutex::new(socket),
            sequence: AtomicU32::new(1),
        })
    }

    /// Creates nexthop `nh`; with [`Mode::Exclusive`] an existing id fails with EEXIST.
    pub fn create(&self, nh: &Nexthop, mode: Mode) -> Result<(), KernelError> {
        let request = RawRequest::create_nexthop(nh, mode);
        self.request(request.kind, request.flags, &request.body)
            .map(|_| ())
            .map_err(|errno| {
                KernelError::from_errno(format!("add nexthop {} via {}", nh.id, nh.gateway), errno)
            })
    }

    /// The nexthop with `id`, if it exists.
    pub fn get(&self, id: u32) -> Result<Option<Nexthop>, KernelError> {
        let mut body = nhmsg(0, 0, 0);
        put_attr(&mut body, NHA_ID, &id.to_ne_bytes());
        match self.request(RTM_GETNEXTHOP, 0, &body) {
            Ok(replies) => Ok(replies.iter().find_map(|reply| parse_nexthop(reply))),
            Err(ENOENT) => Ok(None),
            Err(errno) => Err(KernelError::from_errno(format!("get nexthop {id}"), errno)),
        }
    }

    /// Deletes the nexthop with `id`; answers whether it existed.
    pub fn delete(&self, id: u32) -> Result<bool, KernelError> {
        let mut body = nhmsg(0, 0, 0);
        put_attr(&mut body, NHA_ID, &id.to_ne_bytes());
        match self.request(RTM_DELNEXTHOP, 0, &body) {
            Ok(_) => Ok(true),
            Err(ENOENT) => Ok(false),
            Err(errno) => Err(KernelError::from_errno(
                format!("delete nexthop {id}"),
                errno,
            )),
        }
    }

    /// Whether an error is the kernel's "already exists".
    pub fn is_exists(err: &KernelError) -> bool {
        err.errno() == Some(EEXIST)
    }

    /// Sends one request and collects the payloads of its replies until the ACK. Errors
    /// are positive errno values.
    fn request(&self, kind: u16, flags: u16, body: &[u8]) -> Result<Vec<Vec<u8>>, i32> {
        let request = RawRequest {
            kind,
            flags,
            body: body.to_vec(),
        };
        self.exchange(std::slice::from_ref(&request))
            .pop()
            .unwrap_or(Err(EPROTO))
    }

    /// Sends every request in one write (the kernel handles them in order) and answers
    /// each one's replies or errno, in order. One system call for a whole batch is what
    /// lets route programming keep up with `ip -batch`.
    ///
    /// The kernel handles route and nexthop requests inside the `send` itself, so every
    /// answer is queued by the time it returns and the reads never wait on anything: the
    /// exchange costs kernel CPU time, about a microsecond a request. Up to
    /// [`INLINE_REQUESTS`] requests that is less than handing the worker's queue to another
    /// thread costs, so they run inline; a larger batch runs
    /// [`crate::blocking::off_the_worker`].
    pub fn exchange(&self, requests: &[RawRequest]) -> Vec<Result<Vec<Vec<u8>>, i32>> {
        if requests.len() <= INLINE_REQUESTS {
            return self.exchange_blocking(requests);
        }
        crate::blocking::off_the_worker(|| self.exchange_blocking(requests))
    }

    fn exchange_blocking(&self, requests: &[RawRequest]) -> Vec<Result<Vec<Vec<u8>>, i32>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let first = self
            .sequence
            .fetch_add(requests.len() as u32, Ordering::Relaxed);
        let mut wire = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let total = HEADER_LEN + request.body.len();
            wire.extend_from_slice(&(total as u32).to_ne_bytes());
            wire.extend_from_slice(&request.kind.to_ne_bytes());
            wire.extend_from_slice(&(request.flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
            wire.extend_from_slice(&first.wrapping_add(i as u32).to_ne_bytes());
            wire.extend_from_slice(&0u32.to_ne_bytes());
            wire.extend_from_slice(&request.body);
            wire.resize(align4(wire.len()), 0);
        }
        let mut results: Vec<Option<Result<Vec<Vec<u8>>, i32>>> = vec![None; requests.len()];
        let mut replies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); requests.len()];
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = socket.send(&wire, 0) {
            let errno = e.raw_os_error().unwrap_or(EIO);
            return requests.iter().map(|_| Err(errno)).collect();
        }
        let mut pending = requests.len();
        let mut buf = vec![0u8; 64 * 1024];
        while pending > 0 {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(EIO);
                    return results
                        .into_iter()
                        .map(|r| r.unwrap_or(Err(errno)))
                        .collect();
                }
            };
            let mut offset = 0;
            while offset + HEADER_LEN <= n {
                let len = u32_at(&buf, offset) as usize;
                if len < HEADER_LEN || offset + len > n {
                    break; // a truncated message: the rest of this read is unusable
                }
                let msg_kind = u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]);
                let index = u32_at(&buf, offset + 8).wrapping_sub(first) as usize;
                let payload = &buf[offset + HEADER_LEN..offset + len];
                offset += align4(len);
                if index >= requests.len() || results[index].is_some() {
                    continue;
                }
                let done = match msg_kind {
                    NLMSG_ERROR if payload.len() >= 4 => {
                        let code =
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        Some(if code == 0 {
                            Ok(std::mem::take(&mut replies[index]))
                        } else {
                            Err(-code)
                        })
                    }
                    NLMSG_DONE => Some(Ok(std::mem::take(&mut replies[index]))),
                    _ => {
                        replies[index].push(payload.to_vec());
                        None
                    }
                };
                if done.is_some() {
                    results[index] = done;
                    pending -= 1;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(EPROTO)))
            .collect()
    }
}

/// One netlink request for [`RawBatchSocket::exchange`]: message type, flags (REQUEST
/// and ACK are added) and the payload after the netlink header.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub kind: u16,
    pub flags: u16,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Creating nexthop `nh`: with [`Mode::Exclusive`] an existing id fails with EEXIST.
    pub fn create_nexthop(nh: &Nexthop, mode: Mode) -> Self {
        let flags = NLM_F_CREATE
            | match mode {
                Mode::Exclusive => NLM_F_EXCL,
                Mode::Replace => NLM_F_REPLACE,
            };
        let mut body = nhmsg(af_inet(), nh.protocol, onlink());
        put_attr(&mut body, NHA_ID, &nh.id.to_ne_bytes());
        put_attr(&mut body, NHA_OIF, &nh.oif.to_ne_bytes());
        put_attr(&mut body, NHA_GATEWAY, &nh.gateway.octets());
        Self {
            kind: RTM_NEWNEXTHOP,
            flags,
            body,
        }
    }
}

fn nhmsg(family: u8, protocol: u8, flags: u32) -> Vec<u8> {
    let mut body = vec![family, 0, protocol, 0];
    body.extend_from_slice(&flags.to_ne_bytes());
    body
}

fn put_attr(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(value);
    body.resize(align4(body.len()), 0);
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}

/// Decodes an RTM_NEWNEXTHOP payload (nhmsg and attributes) into a single-path nexthop.
fn parse_nexthop(payload: &[u8]) -> Option<Nexthop> {
    if payload.len() < 8 {
        return None;
    }
    let protocol = payload[2];
    let (mut id, mut oif, mut gateway) = (None, None, None);
    let mut offset = 8;
    while offset + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[offset], payload[offset + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]) & NLA_TYPE_MASK;
        if len < 4 || offset + len > payload.len() {
            break;
        }
        let value = &payload[offset + 4..offset + len];
        match (kind, value.len()) {
            (NHA_ID, 4) => id = Some(u32_at(value, 0)),
            (NHA_OIF, 4) => oif = Some(u32_at(value, 0)),
            (NHA_GATEWAY, 4) => {
                gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            _ => {}
        }
        offset += align4(len);
    }
    Some(Nexthop {
        id: id?,
        gateway: gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        oif: oif.unwrap_or(0),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nexthop_message_decodes_to_what_was_encoded() {
        let mut body = nhmsg(af_inet(), 158, onlink());
        put_attr(&mut body, NHA_ID, &7u32.to_ne_bytes());
        put_attr(&mut body, NHA_OIF, &3u32.to_ne_bytes());
        put_attr(&mut body, NHA_GATEWAY, &[10, 42, 2, 0]);
        assert_eq!(
            parse_nexthop(&body),
            Some(Nexthop {
                id: 7,
                gateway: Ipv4Addr::new(10, 42, 2, 0),
                oif: 3,
                protocol: 158
            })
        );
    }

    #[test]
    fn gateway_ids_are_stable_and_distinct() {
        let a = id_for_gateway(Ipv4Addr::new(10, 42, 1, 0));
        let b = id_for_gateway(Ipv4Addr::new(10, 42, 2, 0));
        assert_ne!(a, b);
        assert_eq!(a, id_for_gateway(Ipv4Addr::new(10, 42, 1, 0)));
    }
}
