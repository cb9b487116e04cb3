//! Who owns a local TCP socket: one NETLINK_SOCK_DIAG (inet_diag) lookup, as `ss -e`
//! shows it. The runtime uses it to learn the uid of a loopback TCP caller.
//!
//! The request names one socket exactly (`inet_diag_req_v2` without `NLM_F_DUMP`): the
//! kernel looks up the connection whose local end is `idiag_src:idiag_sport` and whose
//! remote end is `idiag_dst:idiag_dport`, and answers one `inet_diag_msg` holding the
//! socket's owner (`idiag_uid`), or ENOENT. No capability is needed to ask.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NLMSG_ERROR};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::KernelError;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// `INET_DIAG_NOCOOKIE`: match the socket by address alone.
const NO_COOKIE: u32 = !0;
const HEADER_LEN: usize = 16;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// Offset of `idiag_uid` in `struct inet_diag_msg`: family, state, timer, retrans (4),
/// the sockid (48), expires, rqueue, wqueue (12).
const UID_OFFSET: usize = 4 + SOCKID_LEN + 12;

/// The uid owning the TCP socket in this network namespace whose local end is
/// `socket_local` and whose remote end is `socket_remote`: for a connection accepted on
/// `our_local` from `peer`, ask with `(peer, our_local)` to learn who connected.
/// Answers `None` when no such socket exists here (the caller is on another host, or
/// has closed the connection).
pub fn tcp_socket_uid(
    socket_local: SocketAddr,
    socket_remote: SocketAddr,
) -> Result<Option<u32>, KernelError> {
    let operation = format!("sock_diag lookup of tcp socket {socket_local} -> {socket_remote}");
    let request = build_request(socket_local, socket_remote).ok_or_else(|| KernelError::Other {
        operation: operation.clone(),
        message: "the two ends are of different address families".into(),
    })?;
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).map_err(|e| KernelError::io(operation.clone(), e))?;
    socket
        .bind_auto()
        .map_err(|e| KernelError::io(operation.clone(), e))?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(|e| KernelError::io(operation.clone(), e))?;
    socket
        .send(&request, 0)
        .map_err(|e| KernelError::io(operation.clone(), e))?;
    let mut buf = vec![0u8; 8192];
    let n = socket
        .recv(&mut &mut buf[..], 0)
        .map_err(|e| KernelError::io(operation.clone(), e))?;
    parse_reply(&buf[..n], socket_local).map_err(|message| match message {
        Reply::Errno(errno) => KernelError::from_errno(operation, errno),
        Reply::Malformed(message) => KernelError::Other { operation, message },
    })
}

enum Reply {
    Errno(i32),
    Malformed(String),
}

/// The wire form of an exact lookup; `None` when the two ends are not of one family.
/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of an IPv4 client) are
/// asked about as IPv4, the family of the client's own socket.
fn build_request(local: SocketAddr, remote: SocketAddr) -> Option<Vec<u8>> {
    let (family, src, dst) = match (canonical(local.ip()), canonical(remote.ip())) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (AF_INET, padded(&a.octets()), padded(&b.octets())),
        (IpAddr::V6(a), IpAddr::V6(b)) => (AF_INET6, a.octets(), b.octets()),
        _ => return None,
    };
    let body_len = 8 + SOCKID_LEN;
    let mut wire = Vec::with_capacity(HEADER_LEN + body_len);
    wire.extend_from_slice(&((HEADER_LEN + body_len) as u32).to_ne_bytes());
    wire.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    wire.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    wire.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    wire.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    // struct inet_diag_req_v2
    wire.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    wire.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    // struct inet_diag_sockid: ports and addresses in network byte order
    wire.extend_from_slice(&local.port().to_be_bytes());
    wire.extend_from_slice(&remote.port().to_be_bytes());
    wire.extend_from_slice(&src);
    wire.extend_from_slice(&dst);
    wire.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    wire.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    wire.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    Some(wire)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn padded(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(v4);
    out
}

/// The uid of the one `inet_diag_msg` in `buf`, checked to describe the socket asked
/// about (its local port is `local`'s), or the kernel's errno; ENOENT is `Ok(None)`.
fn parse_reply(buf: &[u8], local: SocketAddr) -> Result<Option<u32>, Reply> {
    if buf.len() < HEADER_LEN {
        return Err(Reply::Malformed(format!(
            "a reply of {} bytes is shorter than a netlink header",
            buf.len()
        )));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    let payload = &buf[HEADER_LEN..];
    if kind == NLMSG_ERROR {
        let code = payload
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        return match -code {
            0 => Ok(None),
            errno if errno == nix::errno::Errno::ENOENT as i32 => Ok(None),
            errno => Err(Reply::Errno(errno)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || payload.len() < UID_OFFSET + 4 {
        return Err(Reply::Malformed(format!(
            "unexpected reply of type {kind} and {} bytes",
            payload.len()
        )));
    }
    let sport = u16::from_be_bytes([payload[4], payload[5]]);
    if sport != local.port() {
        return Err(Reply::Malformed(format!(
            "the kernel described a socket on port {sport}, not the one asked about ({})",
            local.port()
        )));
    }
    let uid = &payload[UID_OFFSET..UID_OFFSET + 4];
    Ok(Some(u32::from_ne_bytes([uid[0], uid[1], uid[2], uid[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_both_ends_in_network_byte_order() {
        let wire = build_request(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.2:50051".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(wire.len(), HEADER_LEN + 56);
        let body = &wire[HEADER_LEN..];
        assert_eq!(&body[..2], &[AF_INET, IPPROTO_TCP]);
        assert_eq!(&body[8..10], &40000u16.to_be_bytes());
        assert_eq!(&body[10..12], &50051u16.to_be_bytes());
        assert_eq!(&body[12..16], &[127, 0, 0, 1]);
        assert_eq!(&body[28..32], &[127, 0, 0, 2]);
    }

    #[test]
    fn mapped_addresses_are_asked_as_ipv4_and_mixed_families_refused() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let wire = build_request(mapped, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(wire[HEADER_LEN], AF_INET);
        assert!(
            build_request("[::1]:1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()).is_none()
        );
    }

    #[test]
    fn the_uid_of_a_socket_this_process_holds_is_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let uid = tcp_socket_uid(peer, listener.local_addr().unwrap()).unwrap();
        assert_eq!(uid, Some(nix::unistd::geteuid().as_raw()));
        drop(client);
        let gone = tcp_socket_uid(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(gone.unwrap(), None);
    }
}
