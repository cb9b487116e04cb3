//! Pure building and parsing of the rtnetlink messages [`super::NetlinkKernel`] sends
//! and reads: no socket here, so all of it is unit-tested without root.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NetlinkSerializable};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use crate::nexthop::RawRequest;
use crate::{Link, LinkKind, Route};

/// The main routing table's id, as route messages carry it.
pub(super) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The fields of a route message the mesh cares about.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParsedRoute {
    pub(super) destination: Ipv4Net,
    pub(super) gateway: Option<Ipv4Addr>,
    pub(super) oif: Option<u32>,
    pub(super) nhid: Option<u32>,
    pub(super) protocol: u8,
}

impl ParsedRoute {
    /// The IPv4 route `message` describes; `None` when its prefix length is not one an
    /// IPv4 destination can have.
    pub(super) fn from_message(message: &RouteMessage) -> Option<Self> {
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

/// The route message for `route` over interface `index`: through nexthop `nexthop`
/// when it has a gateway, a device route otherwise.
pub(super) fn build_route_message(route: &Route, index: u32, nexthop: Option<u32>) -> RouteMessage {
    let builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.network(), route.destination.prefix_len())
        .protocol(RouteProtocol::from(route.protocol))
        .table_id(MAIN_TABLE);
    match nexthop {
        Some(id) => builder.scope(RouteScope::Universe).nhid(id).build(),
        None => builder
            .scope(RouteScope::Link)
            .output_interface(index)
            .build(),
    }
}

/// The message that deletes the main-table route for `destination` carrying `protocol`.
pub(super) fn delete_route_message(destination: Ipv4Net, protocol: u8) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(destination.network(), destination.prefix_len())
        .protocol(RouteProtocol::from(protocol))
        .table_id(MAIN_TABLE)
        .scope(RouteScope::NoWhere)
        .build()
}

/// `message` as an exclusive create request for a batch (RTM_NEWROUTE with
/// NLM_F_CREATE | NLM_F_EXCL): the kernel refuses an existing destination.
pub(super) fn new_route_request(message: RouteMessage) -> RawRequest {
    let message = RouteNetlinkMessage::NewRoute(message);
    let mut body = vec![0u8; message.buffer_len()];
    message.serialize(&mut body);
    RawRequest {
        kind: message.message_type(),
        flags: NLM_F_CREATE | NLM_F_EXCL,
        body,
    }
}

/// The table a route message belongs to: the 32-bit table attribute when there is one,
/// else the header's 8-bit field.
pub(super) fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// The link `message` describes. A hardware address that is not six bytes long (none,
/// or a tunnel's) gives no MAC.
pub(crate) fn link_from_message(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        kind: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(link_kind(kind)),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

fn link_kind(kind: &InfoKind) -> LinkKind {
    match kind {
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Vxlan => LinkKind::Vxlan,
        other => LinkKind::Other(other.to_string()),
    }
}

/// The positive errno of an rtnetlink failure, if the kernel answered one.
pub(crate) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};
    use netlink_packet_route::link::LinkHeader;

    use super::*;

    const PROTO: u8 = 158;

    fn route(gateway: Option<Ipv4Addr>) -> Route {
        Route {
            destination: "10.42.2.0/24".parse().unwrap(),
            interface: "vxlan100".into(),
            gateway,
            protocol: PROTO,
        }
    }

    #[test]
    fn a_gateway_route_message_points_at_its_nexthop_in_the_main_table() {
        let message = build_route_message(&route(Some(Ipv4Addr::new(10, 42, 2, 0))), 7, Some(9));
        assert_eq!(message.header.scope, RouteScope::Universe);
        assert_eq!(table_of(&message), MAIN_TABLE);
        assert_eq!(
            ParsedRoute::from_message(&message),
            Some(ParsedRoute {
                destination: "10.42.2.0/24".parse().unwrap(),
                gateway: None,
                oif: None,
                nhid: Some(9),
                protocol: PROTO,
            })
        );
    }

    #[test]
    fn a_device_route_message_names_its_interface_with_link_scope() {
        let message = build_route_message(&route(None), 7, None);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert_eq!(table_of(&message), MAIN_TABLE);
        let parsed = ParsedRoute::from_message(&message).unwrap();
        assert_eq!((parsed.oif, parsed.nhid), (Some(7), None));
        assert_eq!(
            parsed.destination,
            "10.42.2.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn a_route_message_survives_the_wire() {
        let sent = build_route_message(&route(None), 7, None);
        let request = new_route_request(sent.clone());
        assert_eq!(request.flags, NLM_F_CREATE | NLM_F_EXCL);
        let mut header = NetlinkHeader::default();
        header.message_type = request.kind;
        match RouteNetlinkMessage::deserialize(&header, &request.body).unwrap() {
            RouteNetlinkMessage::NewRoute(received) => assert_eq!(received, sent),
            other => panic!("not a new route: {other:?}"),
        }
    }

    #[test]
    fn a_gateway_attribute_is_read_and_a_bad_prefix_length_refused() {
        let mut message = build_route_message(&route(None), 7, None);
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 42, 2, 0,
            ))));
        assert_eq!(
            ParsedRoute::from_message(&message).unwrap().gateway,
            Some(Ipv4Addr::new(10, 42, 2, 0))
        );
        message.header.destination_prefix_length = 33;
        assert_eq!(ParsedRoute::from_message(&message), None);
    }

    #[test]
    fn the_table_attribute_wins_over_the_header() {
        let mut message = RouteMessage::default();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        assert_eq!(table_of(&message), MAIN_TABLE);
        message.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(table_of(&message), 1000);
    }

    #[test]
    fn the_delete_message_matches_only_its_protocol_in_the_main_table() {
        let message = delete_route_message("10.42.2.0/24".parse().unwrap(), PROTO);
        assert_eq!(table_of(&message), MAIN_TABLE);
        assert_eq!(message.header.scope, RouteScope::NoWhere);
        assert_eq!(u8::from(message.header.protocol), PROTO);
    }

    fn link_message(attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header = LinkHeader {
            index: 4,
            ..LinkHeader::default()
        };
        message.attributes = attributes;
        message
    }

    #[test]
    fn a_link_message_gives_name_mtu_mac_and_kind() {
        let message = link_message(vec![
            LinkAttribute::IfName("quilt0".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ]);
        assert_eq!(
            link_from_message(message),
            Link {
                index: 4,
                name: "quilt0".into(),
                mtu: 1450,
                mac: Some([2, 0, 0, 0, 0, 1]),
                kind: Some(LinkKind::Bridge),
            }
        );
    }

    #[test]
    fn a_link_without_kind_or_ethernet_address_has_neither() {
        let message = link_message(vec![
            LinkAttribute::IfName("tun0".into()),
            LinkAttribute::Address(vec![0, 0, 0, 0]),
        ]);
        let link = link_from_message(message);
        assert_eq!((link.mac, link.kind), (None, None));
    }

    #[test]
    fn link_kinds_are_named_as_the_kernel_names_them() {
        let kinds = [
            (InfoKind::Veth, LinkKind::Veth),
            (InfoKind::Vxlan, LinkKind::Vxlan),
            (InfoKind::Dummy, LinkKind::Other("dummy".into())),
        ];
        for (info, want) in kinds {
            let message = link_message(vec![LinkAttribute::LinkInfo(vec![LinkInfo::Kind(info)])]);
            assert_eq!(link_from_message(message).kind, Some(want));
        }
        assert_eq!(LinkKind::Other("dummy".into()).to_string(), "dummy");
    }
}
