//! The cluster's address plan: one cluster CIDR cut into node subnets of one prefix length.

use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// Longest text we parse as an address or network; anything longer is refused unread.
pub const MAX_INPUT_LEN: usize = 1024;

/// Why a value does not fit the cluster's address plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long, more than the limit of {MAX_INPUT_LEN}")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} {value:?} is not an IPv4 network in CIDR form (like 10.42.1.0/24)")]
    NotCidr { what: &'static str, value: String },
    #[error("{what} {value:?} is not an IPv4 address")]
    NotAddress { what: &'static str, value: String },
    #[error("{what} {net} has host bits set (the network is {})", net.trunc())]
    HostBits { what: &'static str, net: Ipv4Net },
    #[error("{what} {net} is outside cluster cidr {cluster}")]
    OutsideCluster {
        what: &'static str,
        net: Ipv4Net,
        cluster: Ipv4Net,
    },
    #[error("{what} {net} has prefix length /{}, the node prefix length is /{expected}", net.prefix_len())]
    WrongPrefixLen {
        what: &'static str,
        net: Ipv4Net,
        expected: u8,
    },
    #[error(
        "node prefix length /{node_prefix_len} does not fit cluster cidr {cluster} (it must be longer than /{} and at most /30)",
        cluster.prefix_len()
    )]
    BadPlan {
        cluster: Ipv4Net,
        node_prefix_len: u8,
    },
}

/// A short, printable form of user input for error messages: at most 64 characters.
pub fn excerpt(value: &str) -> String {
    const KEEP: usize = 64;
    if value.chars().count() <= KEEP {
        value.to_string()
    } else {
        let head: String = value.chars().take(KEEP).collect();
        format!("{head}...")
    }
}

/// The cluster CIDR and the prefix length of each node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNetwork {
    cidr: Ipv4Net,
    node_prefix_len: u8,
}

impl ClusterNetwork {
    /// Checks the plan: the CIDR has no host bits and the node prefix is longer than the
    /// cluster's and leaves room for hosts (at most /30).
    pub fn new(cidr: Ipv4Net, node_prefix_len: u8) -> Result<Self, ClusterError> {
        if cidr.trunc() != cidr {
            return Err(ClusterError::HostBits {
                what: "cluster cidr",
                net: cidr,
            });
        }
        if node_prefix_len <= cidr.prefix_len() || node_prefix_len > 30 {
            return Err(ClusterError::BadPlan {
                cluster: cidr,
                node_prefix_len,
            });
        }
        Ok(Self {
            cidr,
            node_prefix_len,
        })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    pub fn node_prefix_len(&self) -> u8 {
        self.node_prefix_len
    }

    /// How many node subnets the plan holds in all.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.node_prefix_len - self.cidr.prefix_len())
    }

    /// The `index`-th node subnet (0 is the first), or `None` past the end.
    pub fn subnet_at(&self, index: u64) -> Option<Ipv4Net> {
        if index >= self.subnet_count() {
            return None;
        }
        let size = 1u64 << (32 - self.node_prefix_len);
        let base = u64::from(u32::from(self.cidr.network()));
        let addr = u32::try_from(base + index * size).ok()?;
        Ipv4Net::new(Ipv4Addr::from(addr), self.node_prefix_len).ok()
    }

    /// The position of `subnet` in the plan (the inverse of [`Self::subnet_at`]).
    pub fn index_of(&self, subnet: Ipv4Net) -> Option<u64> {
        if !self.is_node_subnet(subnet) {
            return None;
        }
        let offset = u32::from(subnet.network()) - u32::from(self.cidr.network());
        Some(u64::from(offset >> (32 - self.node_prefix_len)))
    }

    fn is_node_subnet(&self, net: Ipv4Net) -> bool {
        net.prefix_len() == self.node_prefix_len && net.trunc() == net && self.cidr.contains(&net)
    }

    /// Parses `value` as a node subnet of this cluster: a CIDR of exactly the node prefix
    /// length, without host bits, inside the cluster CIDR. `what` names the field in errors.
    pub fn parse_node_subnet(
        &self,
        what: &'static str,
        value: &str,
    ) -> Result<Ipv4Net, ClusterError> {
        let net = parse_cidr(what, value)?;
        self.check_node_subnet(what, net)?;
        Ok(net)
    }

    /// Checks that `net` is a node subnet of this cluster.
    pub fn check_node_subnet(&self, what: &'static str, net: Ipv4Net) -> Result<(), ClusterError> {
        if net.trunc() != net {
            return Err(ClusterError::HostBits { what, net });
        }
        if !self.cidr.contains(&net) {
            return Err(ClusterError::OutsideCluster {
                what,
                net,
                cluster: self.cidr,
            });
        }
        if net.prefix_len() != self.node_prefix_len {
            return Err(ClusterError::WrongPrefixLen {
                what,
                net,
                expected: self.node_prefix_len,
            });
        }
        Ok(())
    }
}

fn check_len(what: &'static str, value: &str) -> Result<(), ClusterError> {
    if value.is_empty() {
        return Err(ClusterError::Empty { what });
    }
    if value.len() > MAX_INPUT_LEN {
        return Err(ClusterError::TooLong {
            what,
            len: value.len(),
        });
    }
    Ok(())
}

/// Parses an IPv4 network in CIDR form; `what` names the field in errors.
pub fn parse_cidr(what: &'static str, value: &str) -> Result<Ipv4Net, ClusterError> {
    check_len(what, value)?;
    Ipv4Net::from_str(value.trim()).map_err(|_| ClusterError::NotCidr {
        what,
        value: excerpt(value),
    })
}

/// Parses an IPv4 address; `what` names the field in errors.
pub fn parse_addr(what: &'static str, value: &str) -> Result<Ipv4Addr, ClusterError> {
    check_len(what, value)?;
    Ipv4Addr::from_str(value.trim()).map_err(|_| ClusterError::NotAddress {
        what,
        value: excerpt(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ClusterNetwork {
        ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 24).unwrap()
    }

    #[test]
    fn accepts_a_node_subnet_of_the_cluster() {
        assert_eq!(
            plan().parse_node_subnet("subnet", "10.42.7.0/24").unwrap(),
            "10.42.7.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn refuses_what_does_not_fit_and_says_why() {
        let p = plan();
        let cases = [
            ("", "subnet is empty"),
            ("garbage", "not an IPv4 network"),
            ("10.42.1.0/33", "not an IPv4 network"),
            ("10.42.1.5/24", "host bits"),
            ("10.43.1.0/24", "outside cluster cidr 10.42.0.0/16"),
            ("0.0.0.0/0", "outside cluster cidr"),
            ("10.42.0.0/23", "prefix length /23"),
        ];
        for (input, expected) in cases {
            let err = p
                .parse_node_subnet("subnet", input)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let long = "1".repeat(5000);
        let err = p
            .parse_node_subnet("subnet", &long)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5000 bytes") && err.len() < 200, "{err}");
    }

    #[test]
    fn subnets_are_numbered_in_order() {
        let p = plan();
        assert_eq!(p.subnet_count(), 256);
        assert_eq!(p.subnet_at(1).unwrap().to_string(), "10.42.1.0/24");
        assert_eq!(p.subnet_at(255).unwrap().to_string(), "10.42.255.0/24");
        assert!(p.subnet_at(256).is_none());
        assert_eq!(p.index_of("10.42.9.0/24".parse().unwrap()), Some(9));
        assert_eq!(p.index_of("10.43.9.0/24".parse().unwrap()), None);
    }

    #[test]
    fn refuses_a_plan_that_leaves_no_subnets() {
        assert!(ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 16).is_err());
        assert!(ClusterNetwork::new("10.42.0.1/16".parse().unwrap(), 24).is_err());
    }
}
