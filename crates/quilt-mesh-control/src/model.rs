//! Domain values: node ids, tokens, hostnames, MAC addresses, host addresses and the node
//! record itself. Everything here is already valid; parsing from wire strings happens in
//! the `parse_*` functions, which name the field and the value that failed.

use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use quilt_common::cluster::excerpt;
use quilt_common::mac::Mac;

/// Why a field of a request is not acceptable. The message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

impl FieldError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// A node's id: `node-<n>`, where `n` comes from a counter that never goes back, so an id
/// is never given to two nodes, even after the first one left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u64);

impl NodeId {
    pub const PREFIX: &'static str = "node-";

    pub fn new(n: u64) -> Self {
        Self(n)
    }

    pub fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0)
    }
}

impl FromStr for NodeId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            FieldError::new(format!(
                "node id {:?} is not of the form node-<n>",
                excerpt(s)
            ))
        };
        let digits = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(bad());
        }
        // Stores keep ids as signed 64-bit integers (SQLite's, etcd's numbers): a larger
        // number names no node that can exist.
        match digits.parse::<u64>() {
            Ok(n) if i64::try_from(n).is_ok() => Ok(NodeId(n)),
            _ => Err(bad()),
        }
    }
}

/// A node's own credential for heartbeats and leaving: 64 lowercase hex characters made
/// from 32 bytes (256 bits) of `/dev/urandom`. It is handed to the node once, in the
/// registration answer; the store keeps only its [`TokenHash`].
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken(String);

impl NodeToken {
    /// Makes a fresh random token.
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(hex(&bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store keeps of this token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// The SHA-256 of a node token, in lowercase hex: all the store keeps. A token is 256
/// random bits, so one round of SHA-256 (no salt, no stretching) is enough to make the
/// stored value useless to whoever reads the database.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    /// The hash of `token`, as presented or as made.
    pub fn of(token: &str) -> Self {
        use sha2::Digest;
        Self(hex(&sha2::Sha256::digest(token.as_bytes())))
    }

    /// Wraps a hash read back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token this is the hash of, compared in time
    /// independent of where the hashes differ.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), Self::of(presented).0.as_bytes())
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// `bytes` as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeToken(<redacted>)")
    }
}

/// Compares two byte strings without stopping at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A host name of RFC 1123: 1-253 characters, dot-separated labels of 1-63 letters,
/// digits and hyphens, no label starting or ending with a hyphen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the `hostname` field.
pub fn parse_hostname(value: &str) -> Result<Hostname, FieldError> {
    let bad = |why: &str| FieldError::new(format!("hostname {:?} {why}", excerpt(value)));
    if value.is_empty() {
        return Err(FieldError::new("hostname is empty"));
    }
    if value.len() > 253 {
        return Err(bad(&format!(
            "is {} characters long, more than 253",
            value.len()
        )));
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "may hold only letters, digits, hyphens and dots (RFC 1123)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with a hyphen"));
        }
    }
    Ok(Hostname(value.to_string()))
}

/// Parses the `host_ip` field: a unicast IPv4 literal, not 0.0.0.0, loopback, multicast
/// or broadcast.
pub fn parse_host_ip(value: &str) -> Result<Ipv4Addr, FieldError> {
    let ip = Ipv4Addr::from_str(value).map_err(|_| {
        FieldError::new(format!(
            "host_ip {:?} is not an IPv4 address",
            excerpt(value)
        ))
    })?;
    let why = if ip.is_unspecified() {
        "is the unspecified address"
    } else if ip.is_loopback() {
        "is a loopback address"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_broadcast() {
        "is the broadcast address"
    } else {
        return Ok(ip);
    };
    Err(FieldError::new(format!(
        "host_ip {ip} {why}; a node needs a unicast address"
    )))
}

/// A unicast Ethernet MAC address (the VXLAN device's), printed as `aa:bb:cc:dd:ee:ff`:
/// the workspace's [`Mac`], once [`parse_mac`] has refused multicast and all-zero ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(Mac);

impl MacAddr {
    /// The address as the shared type.
    pub fn mac(self) -> Mac {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses the `vtep_mac` field: six colon-separated hex octets, not multicast, not all zero.
pub fn parse_mac(value: &str) -> Result<MacAddr, FieldError> {
    let mac: Mac = value
        .parse()
        .map_err(|e| FieldError::new(format!("vtep_mac {e}")))?;
    let bad = |why: &str| FieldError::new(format!("vtep_mac {:?} {why}", excerpt(value)));
    if !mac.is_unicast() {
        return Err(bad("is a multicast address; a VTEP needs a unicast MAC"));
    }
    if mac.is_zero() {
        return Err(bad("is all zeros; a VTEP needs a unicast MAC"));
    }
    Ok(MacAddr(mac))
}

/// Whether the control plane hears from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "up" => Some(NodeStatus::Up),
            "down" => Some(NodeStatus::Down),
            _ => None,
        }
    }
}

/// What a node's agent reports as wrong with it (`SubnetInUse`, say), validated: the
/// reason a CamelCase word of at most [`Condition::MAX_REASON`] characters, the message
/// printable text of at most [`Condition::MAX_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    reason: String,
    message: String,
}

impl Condition {
    pub const MAX_REASON: usize = 64;
    pub const MAX_MESSAGE: usize = 1024;

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// One string for a store column: the reason, a newline, the message.
    pub fn to_stored(&self) -> String {
        format!("{}\n{}", self.reason, self.message)
    }

    /// Reads [`Self::to_stored`] back; `None` for a value it cannot have written.
    pub fn from_stored(s: &str) -> Option<Self> {
        let (reason, message) = s.split_once('\n')?;
        parse_condition(reason, message).ok()
    }
}

/// Parses a heartbeat's `condition` fields.
pub fn parse_condition(reason: &str, message: &str) -> Result<Condition, FieldError> {
    let reason_ok = reason.len() <= Condition::MAX_REASON
        && reason.starts_with(|c: char| c.is_ascii_uppercase())
        && reason.bytes().all(|b| b.is_ascii_alphanumeric());
    if !reason_ok {
        return Err(FieldError::new(format!(
            "condition.reason {:?} is not a CamelCase word of at most {} letters and digits",
            excerpt(reason),
            Condition::MAX_REASON
        )));
    }
    if message.chars().count() > Condition::MAX_MESSAGE {
        return Err(FieldError::new(format!(
            "condition.message is {} characters long, more than {}",
            message.chars().count(),
            Condition::MAX_MESSAGE
        )));
    }
    if message.chars().any(char::is_control) {
        return Err(FieldError::new(format!(
            "condition.message {:?} holds control characters",
            excerpt(message)
        )));
    }
    Ok(Condition {
        reason: reason.to_string(),
        message: message.to_string(),
    })
}

/// A registration, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub hostname: Hostname,
    pub host_ip: Ipv4Addr,
    pub cpu_cores: u32,
    pub ram_mb: u64,
    pub vtep_mac: Option<MacAddr>,
    pub vxlan: Vxlan,
    /// The subnet the node's runtime holds, a node subnet of the cluster (never its first):
    /// leased to the node when free, see [`crate::store::Store::register`].
    pub wanted_subnet: Option<Ipv4Net>,
}

/// The VXLAN device a node registered (both fields are additions: the original agents
/// send neither). Peers send to `port` and must share `vni`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vxlan {
    pub port: Option<u16>,
    pub vni: Option<u32>,
}

impl Vxlan {
    /// The largest VXLAN network identifier (24 bits).
    pub const MAX_VNI: u32 = (1 << 24) - 1;

    /// Each field of `self`, or of `old` where `self` has none.
    pub fn or(self, old: Vxlan) -> Vxlan {
        Vxlan {
            port: self.port.or(old.port),
            vni: self.vni.or(old.vni),
        }
    }
}

/// A node as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub hostname: Hostname,
    pub host_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub cpu_cores: u32,
    pub ram_mb: u64,
    pub vtep_mac: Option<MacAddr>,
    pub vxlan: Vxlan,
    pub status: NodeStatus,
    /// Unix seconds.
    pub registered_at: u64,
    /// Unix milliseconds (the API shows seconds; the monitor needs finer steps).
    pub last_heartbeat_ms: u64,
    /// The hash of the node's current token.
    pub token_hash: TokenHash,
    /// What the node's agent last reported as wrong, if anything.
    pub condition: Option<Condition>,
}

impl NewNode {
    /// The node a first registration makes, the same in every store: node `id` with
    /// `subnet` leased, up and heard from at `now_ms`, credential `token_hash`.
    pub fn leased(&self, id: NodeId, subnet: Ipv4Net, token_hash: TokenHash, now_ms: u64) -> Node {
        Node {
            id,
            hostname: self.hostname.clone(),
            host_ip: self.host_ip,
            subnet,
            cpu_cores: self.cpu_cores,
            ram_mb: self.ram_mb,
            vtep_mac: self.vtep_mac,
            vxlan: self.vxlan,
            status: NodeStatus::Up,
            registered_at: now_ms / 1000,
            last_heartbeat_ms: now_ms,
            token_hash,
            condition: None,
        }
    }
}

impl Node {
    /// This node after a registration `new` of the same host: it keeps its id, subnet,
    /// condition and registration time (and its VTEP MAC when `new` names none), takes the
    /// new hostname, resources and `token`, and is up and heard from at `now_ms`.
    pub fn renewed(&self, new: &NewNode, token_hash: TokenHash, now_ms: u64) -> Node {
        Node {
            hostname: new.hostname.clone(),
            cpu_cores: new.cpu_cores,
            ram_mb: new.ram_mb,
            vtep_mac: new.vtep_mac.or(self.vtep_mac),
            vxlan: new.vxlan.or(self.vxlan),
            status: NodeStatus::Up,
            last_heartbeat_ms: now_ms,
            token_hash,
            ..self.clone()
        }
    }

    /// Whether a change from `self` to `other` is something watchers are told about:
    /// membership, status, subnet, VTEP MAC or condition (heartbeat timestamps alone are
    /// not).
    /// Other registration fields (hostname, cpu, ram) count too, so a watcher's copy of
    /// the node stays equal to what `GET /api/nodes` answers.
    pub fn differs_for_watchers(&self, other: &Node) -> bool {
        self.status != other.status
            || self.subnet != other.subnet
            || self.vtep_mac != other.vtep_mac
            || self.vxlan != other.vxlan
            || self.hostname != other.hostname
            || self.host_ip != other.host_ip
            || self.cpu_cores != other.cpu_cores
            || self.ram_mb != other.ram_mb
            || self.condition != other.condition
    }
}

/// Parses a hostname read back from the store, which only ever holds valid ones.
pub(crate) fn hostname_from_stored(s: String) -> Hostname {
    Hostname(s)
}

/// Current time in unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A node for this crate's unit tests: `node-ID`, hostname `a`, host 10.0.0.1, subnet
/// 10.42.1.0/24, up, holding node token `token`.
#[cfg(test)]
pub(crate) fn test_node(id: u64, token: &str) -> Node {
    Node {
        id: NodeId::new(id),
        hostname: parse_hostname("a").unwrap(),
        host_ip: "10.0.0.1".parse().unwrap(),
        subnet: "10.42.1.0/24".parse().unwrap(),
        cpu_cores: 1,
        ram_mb: 1,
        vtep_mac: None,
        vxlan: Vxlan::default(),
        status: NodeStatus::Up,
        registered_at: 0,
        last_heartbeat_ms: 0,
        token_hash: TokenHash::of(token),
        condition: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_and_refuse_other_forms() {
        let id: NodeId = "node-42".parse().unwrap();
        assert_eq!(id.to_string(), "node-42");
        for bad in [
            "node-",
            "node-01",
            "42",
            "node-x",
            "node-1a",
            "Node-1",
            "node-99999999999999999999999",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_256_random_bits_kept_only_as_their_hash() {
        let a = NodeToken::generate().unwrap();
        let b = NodeToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        let stored = a.hash();
        assert_eq!(stored.as_str().len(), 64);
        assert_ne!(stored.as_str(), a.as_str(), "the hash is not the token");
        assert!(stored.matches(a.as_str()));
        assert!(!stored.matches(b.as_str()));
        assert!(!stored.matches(""));
        assert!(
            !stored.matches(stored.as_str()),
            "the hash itself is no credential"
        );
        // SHA-256 of "abc", the FIPS 180-2 example.
        assert_eq!(
            TokenHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in [
            "a",
            "node-1",
            "worker1.example.com",
            "1host",
            &"a".repeat(63),
        ] {
            assert!(parse_hostname(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", "hostname is empty"),
            ("-a", "hyphen"),
            ("a..b", "empty label"),
            ("under_score", "letters, digits"),
            ("a.", "empty label"),
        ];
        for (input, expected) in cases {
            let err = parse_hostname(input).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.starts_with("hostname"),
                "{input}: {err}"
            );
        }
        assert!(parse_hostname(&"a".repeat(64)).is_err());
        let long = ["abc"; 70].join(".");
        assert!(
            parse_hostname(&long)
                .unwrap_err()
                .to_string()
                .contains("more than 253")
        );
    }

    #[test]
    fn host_ips_must_be_unicast_ipv4() {
        assert_eq!(
            parse_host_ip("192.168.1.10").unwrap().to_string(),
            "192.168.1.10"
        );
        let cases = [
            ("999.1.1.1", "host_ip \"999.1.1.1\" is not an IPv4 address"),
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "not an IPv4 address"),
            (" 10.0.0.1", "not an IPv4 address"),
        ];
        for (input, expected) in cases {
            let err = parse_host_ip(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn macs_must_be_unicast() {
        assert_eq!(
            parse_mac("02:42:AC:11:00:02").unwrap().to_string(),
            "02:42:ac:11:00:02"
        );
        for (input, expected) in [
            ("01:00:5e:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "all zeros"),
            ("02:42:ac:11:00", "not a MAC"),
            ("02-42-ac-11-00-02", "not a MAC"),
            ("zz:42:ac:11:00:02", "not a MAC"),
        ] {
            let err = parse_mac(input).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.starts_with("vtep_mac"),
                "{input}: {err}"
            );
        }
    }
}
