//! The node's packet filter: the agent's one nftables table `inet quilt` (egress
//! masquerade, the VXLAN allow-list) and the accept rules for cluster forwarding that go
//! into iptables' `ip filter` chain on hosts whose FORWARD policy drops (the one
//! exception to "only our own table"; each such rule carries a `quilt` comment).
//!
//! Decide, then apply: [`MeshRules`] says what is wanted, [`Firewall::observe`] reads
//! what is there ([`Observed`]), the pure [`plan`] answers the [`FirewallOp`]s, and
//! [`Firewall::apply`] runs them. The real [`nft::NftFirewall`] drives the `nft` program
//! (`nft -j`), as netavark does; [`fake::FakeFirewall`] keeps the same state in memory.
//!
//! nftables is reached through its program, not netlink, but it is kernel state all the
//! same: it lives here, beside the other kernel objects, so daemons stay generic over a
//! trait and are tested against the fake.

pub mod fake;
pub mod nft;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::KernelError;

/// The agent's table: family `inet`, name `quilt`.
pub const TABLE: &str = "quilt";
/// The set of member host addresses allowed to send VXLAN packets.
pub const MEMBERS_SET: &str = "vxlan_members";
/// iptables' table (iptables-nft), where the FORWARD-drop accept rules go.
pub const FOREIGN_TABLE: &str = "filter";
/// Every rule the agent puts into a chain that is not its own has a comment starting so.
pub const MARK: &str = "quilt";

/// A chain of the agent's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnChain {
    /// `type filter hook input priority filter`: the VXLAN allow-list.
    Input,
    /// `type nat hook postrouting priority srcnat`: egress masquerade.
    Postrouting,
}

impl OwnChain {
    pub fn name(self) -> &'static str {
        match self {
            OwnChain::Input => "input",
            OwnChain::Postrouting => "postrouting",
        }
    }

    pub const ALL: [OwnChain; 2] = [OwnChain::Input, OwnChain::Postrouting];
}

/// What one rule of the agent's table does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// `udp dport PORT ip saddr @vxlan_members counter accept`.
    AcceptVxlanFromMembers { port: u16 },
    /// `udp dport PORT counter drop`.
    DropOtherVxlan { port: u16 },
    /// `ip saddr SUBNET ip daddr != CLUSTER counter masquerade`.
    Masquerade { subnet: Ipv4Net, cluster: Ipv4Net },
}

/// One rule of the agent's table, with the comment that names it (and that the
/// observation compares, so a changed parameter changes the comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRule {
    pub chain: OwnChain,
    pub kind: RuleKind,
}

impl OwnRule {
    pub fn comment(&self) -> String {
        match &self.kind {
            RuleKind::AcceptVxlanFromMembers { port } => {
                format!("quilt: vxlan udp {port} from members")
            }
            RuleKind::DropOtherVxlan { port } => format!("quilt: drop other vxlan udp {port}"),
            RuleKind::Masquerade { subnet, cluster } => {
                format!("quilt: masquerade {subnet} to outside {cluster}")
            }
        }
    }
}

/// Which way a forwarded packet crosses an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// `iifname`.
    In,
    /// `oifname`.
    Out,
}

/// One accept rule in a chain that is not ours: forwarding in or out of `interface`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardAccept {
    pub direction: Direction,
    pub interface: String,
}

impl ForwardAccept {
    /// The rule's comment: starts with [`MARK`], and names what it accepts.
    pub fn comment(&self) -> String {
        let way = match self.direction {
            Direction::In => "in from",
            Direction::Out => "out to",
        };
        format!("{MARK}: accept forwarding {way} {}", self.interface)
    }
}

/// A chain of iptables' `ip filter` table that the FORWARD-drop rules may go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ForeignChain {
    /// Docker's chain for the operator's own rules, jumped to from FORWARD.
    DockerUser,
    /// iptables' FORWARD base chain.
    Forward,
}

impl ForeignChain {
    pub fn name(self) -> &'static str {
        match self {
            ForeignChain::DockerUser => "DOCKER-USER",
            ForeignChain::Forward => "FORWARD",
        }
    }
}

/// What the node's filter should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules {
    /// This node's container subnet.
    pub subnet: Ipv4Net,
    /// The cluster CIDR: destinations inside it keep the source address.
    pub cluster: Ipv4Net,
    pub masquerade: bool,
    /// The UDP port of this node's VXLAN device.
    pub vxlan_port: u16,
    /// Member host addresses allowed to send VXLAN packets.
    pub members: BTreeSet<Ipv4Addr>,
    /// The interfaces whose forwarded traffic is accepted in iptables' chain
    /// (the overlay device and the container bridge).
    pub forward_interfaces: Vec<String>,
}

impl MeshRules {
    /// The rules of the agent's table, chain by chain, in order.
    pub fn own_rules(&self) -> Vec<OwnRule> {
        let mut rules = vec![
            OwnRule {
                chain: OwnChain::Input,
                kind: RuleKind::AcceptVxlanFromMembers {
                    port: self.vxlan_port,
                },
            },
            OwnRule {
                chain: OwnChain::Input,
                kind: RuleKind::DropOtherVxlan {
                    port: self.vxlan_port,
                },
            },
        ];
        if self.masquerade {
            rules.push(OwnRule {
                chain: OwnChain::Postrouting,
                kind: RuleKind::Masquerade {
                    subnet: self.subnet,
                    cluster: self.cluster,
                },
            });
        }
        rules
    }

    /// The accept rules wanted in iptables' chain, both directions for each interface.
    pub fn forward_accepts(&self) -> BTreeSet<ForwardAccept> {
        self.forward_interfaces
            .iter()
            .flat_map(|i| {
                [Direction::In, Direction::Out].map(|direction| ForwardAccept {
                    direction,
                    interface: i.clone(),
                })
            })
            .collect()
    }

    /// The table's shape as an observation reports it: (chain, rule comment) in order.
    pub fn layout(&self) -> Vec<(String, String)> {
        self.own_rules()
            .iter()
            .map(|r| (r.chain.name().to_string(), r.comment()))
            .collect()
    }
}

/// The agent's table as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTable {
    /// The chains, by name.
    pub chains: BTreeSet<String>,
    /// Every rule as (chain, comment), in the order listed ("" for no comment).
    pub rules: Vec<(String, String)>,
    /// The members set's elements; `None` when the set does not exist.
    pub members: Option<BTreeSet<Ipv4Addr>>,
}

/// A rule carrying our mark in iptables' table, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedRule {
    pub chain: ForeignChain,
    pub handle: u64,
    pub comment: String,
}

/// What the node's filter holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The agent's table; `None` when it does not exist.
    pub table: Option<ObservedTable>,
    /// Where the FORWARD-drop accept rules belong: `DOCKER-USER` where it exists, else
    /// `FORWARD` of `ip filter`; `None` when neither exists (nothing drops forwarding in
    /// iptables' table, so nothing is added).
    pub forward_chain: Option<ForeignChain>,
    /// Our marked rules in either chain.
    pub marked: Vec<MarkedRule>,
}

/// One change to the node's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallOp {
    /// Makes the agent's table exactly `rules` in one transaction (created, or deleted
    /// and made again), whatever was in it.
    ReplaceTable(MeshRules),
    AddMembers(BTreeSet<Ipv4Addr>),
    DeleteMembers(BTreeSet<Ipv4Addr>),
    /// Deletes the agent's table (leaving).
    DeleteTable,
    /// Deletes marked rules from iptables' chains, by handle.
    DeleteMarked(Vec<MarkedRule>),
    /// Inserts accept rules at the top of iptables' `chain`.
    InsertForwardAccepts {
        chain: ForeignChain,
        rules: Vec<ForwardAccept>,
    },
}

/// Why the agent's table is replaced, when it is: for the log.
pub fn table_difference(desired: &MeshRules, observed: &Observed) -> Option<String> {
    let Some(table) = &observed.table else {
        return Some("table inet quilt is missing".into());
    };
    let chains: BTreeSet<String> = OwnChain::ALL.iter().map(|c| c.name().to_string()).collect();
    if table.chains != chains {
        return Some(format!("chains are {:?}, want {:?}", table.chains, chains));
    }
    let layout = desired.layout();
    if table.rules != layout {
        return Some(format!("rules are {:?}, want {:?}", table.rules, layout));
    }
    if table.members.is_none() {
        return Some(format!("set {MEMBERS_SET} is missing"));
    }
    None
}

/// The changes that turn `observed` into `desired`: the table replaced when its shape
/// differs (else only the set's elements changed), and the marked rules in iptables'
/// chain made exactly the wanted ones, in the right chain.
pub fn plan(desired: &MeshRules, observed: &Observed) -> Vec<FirewallOp> {
    let mut ops = Vec::new();
    if table_difference(desired, observed).is_some() {
        ops.push(FirewallOp::ReplaceTable(desired.clone()));
    } else {
        let have = observed
            .table
            .as_ref()
            .and_then(|t| t.members.clone())
            .unwrap_or_default();
        ops.extend(member_changes(&have, &desired.members));
    }
    ops.extend(plan_forward(desired, observed));
    ops
}

/// Adds and deletes that turn the set `have` into `want` (additions first).
pub fn member_changes(have: &BTreeSet<Ipv4Addr>, want: &BTreeSet<Ipv4Addr>) -> Vec<FirewallOp> {
    let add: BTreeSet<Ipv4Addr> = want.difference(have).copied().collect();
    let delete: BTreeSet<Ipv4Addr> = have.difference(want).copied().collect();
    let mut ops = Vec::new();
    if !add.is_empty() {
        ops.push(FirewallOp::AddMembers(add));
    }
    if !delete.is_empty() {
        ops.push(FirewallOp::DeleteMembers(delete));
    }
    ops
}

fn plan_forward(desired: &MeshRules, observed: &Observed) -> Vec<FirewallOp> {
    let wanted = desired.forward_accepts();
    let in_place = match observed.forward_chain {
        Some(chain) => {
            let have: Vec<String> = observed
                .marked
                .iter()
                .filter(|r| r.chain == chain)
                .map(|r| r.comment.clone())
                .collect();
            let want: BTreeSet<String> = wanted.iter().map(ForwardAccept::comment).collect();
            have.len() == want.len()
                && have.iter().cloned().collect::<BTreeSet<_>>() == want
                && observed.marked.iter().all(|r| r.chain == chain)
        }
        None => observed.marked.is_empty(),
    };
    if in_place {
        return Vec::new();
    }
    let mut ops = Vec::new();
    if !observed.marked.is_empty() {
        ops.push(FirewallOp::DeleteMarked(observed.marked.clone()));
    }
    if let Some(chain) = observed.forward_chain {
        ops.push(FirewallOp::InsertForwardAccepts {
            chain,
            rules: wanted.into_iter().collect(),
        });
    }
    ops
}

/// The changes that take away everything the agent put in: its table and its marked
/// rules.
pub fn plan_removal(observed: &Observed) -> Vec<FirewallOp> {
    let mut ops = Vec::new();
    if observed.table.is_some() {
        ops.push(FirewallOp::DeleteTable);
    }
    if !observed.marked.is_empty() {
        ops.push(FirewallOp::DeleteMarked(observed.marked.clone()));
    }
    ops
}

/// The node's packet filter, as the agent needs it.
pub trait Firewall: Send + Sync + 'static {
    /// Reads the agent's table and the marked rules in iptables' chains.
    fn observe(&self) -> impl Future<Output = Result<Observed, KernelError>> + Send;

    /// Runs `ops` in order, in one transaction.
    fn apply(&self, ops: &[FirewallOp]) -> impl Future<Output = Result<(), KernelError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(members: &[u8]) -> MeshRules {
        MeshRules {
            subnet: "10.42.1.0/24".parse().unwrap(),
            cluster: "10.42.0.0/16".parse().unwrap(),
            masquerade: true,
            vxlan_port: 4789,
            members: members
                .iter()
                .map(|m| Ipv4Addr::new(192, 168, 1, *m))
                .collect(),
            forward_interfaces: vec!["vxlan100".into(), "quilt0".into()],
        }
    }

    fn table_of(desired: &MeshRules) -> ObservedTable {
        ObservedTable {
            chains: OwnChain::ALL.iter().map(|c| c.name().into()).collect(),
            rules: desired.layout(),
            members: Some(desired.members.clone()),
        }
    }

    #[test]
    fn a_missing_table_is_made_whole() {
        let desired = rules(&[12, 13]);
        let ops = plan(&desired, &Observed::default());
        assert_eq!(ops, vec![FirewallOp::ReplaceTable(desired)]);
    }

    #[test]
    fn a_flushed_table_is_made_again_and_a_right_one_is_left_alone() {
        let desired = rules(&[12]);
        let mut flushed = table_of(&desired);
        flushed.rules.clear();
        let observed = Observed {
            table: Some(flushed),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![FirewallOp::ReplaceTable(desired.clone())]
        );
        let right = Observed {
            table: Some(table_of(&desired)),
            ..Default::default()
        };
        assert!(plan(&desired, &right).is_empty());
    }

    #[test]
    fn members_change_by_element() {
        let desired = rules(&[12, 14]);
        let observed = Observed {
            table: Some(table_of(&rules(&[12, 13]))),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![
                FirewallOp::AddMembers([Ipv4Addr::new(192, 168, 1, 14)].into()),
                FirewallOp::DeleteMembers([Ipv4Addr::new(192, 168, 1, 13)].into()),
            ]
        );
    }

    #[test]
    fn turning_masquerade_off_replaces_the_table() {
        let mut desired = rules(&[12]);
        let observed = Observed {
            table: Some(table_of(&desired)),
            ..Default::default()
        };
        desired.masquerade = false;
        assert_eq!(
            plan(&desired, &observed),
            vec![FirewallOp::ReplaceTable(desired.clone())]
        );
        assert!(desired.layout().iter().all(|(c, _)| c != "postrouting"));
    }

    #[test]
    fn forward_accepts_go_where_iptables_drops_and_nowhere_else() {
        let desired = rules(&[]);
        let table = Some(table_of(&desired));
        // No iptables chain: nothing to add.
        let none = Observed {
            table: table.clone(),
            ..Default::default()
        };
        assert!(plan(&desired, &none).is_empty());
        // FORWARD exists: four rules at its top.
        let forward = Observed {
            table: table.clone(),
            forward_chain: Some(ForeignChain::Forward),
            marked: vec![],
        };
        let ops = plan(&desired, &forward);
        assert_eq!(ops.len(), 1);
        let FirewallOp::InsertForwardAccepts { chain, rules: r } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!((*chain, r.len()), (ForeignChain::Forward, 4));
        assert!(r.iter().all(|r| r.comment().starts_with(MARK)));
        // In place: nothing.
        let marked: Vec<MarkedRule> = r
            .iter()
            .enumerate()
            .map(|(i, r)| MarkedRule {
                chain: ForeignChain::Forward,
                handle: i as u64 + 10,
                comment: r.comment(),
            })
            .collect();
        let done = Observed {
            table: table.clone(),
            forward_chain: Some(ForeignChain::Forward),
            marked: marked.clone(),
        };
        assert!(plan(&desired, &done).is_empty());
        // Docker appeared: the rules move to DOCKER-USER.
        let docker = Observed {
            table,
            forward_chain: Some(ForeignChain::DockerUser),
            marked: marked.clone(),
        };
        let ops = plan(&desired, &docker);
        assert_eq!(ops[0], FirewallOp::DeleteMarked(marked));
        assert!(matches!(
            ops[1],
            FirewallOp::InsertForwardAccepts {
                chain: ForeignChain::DockerUser,
                ..
            }
        ));
    }

    #[test]
    fn removal_takes_the_table_and_every_marked_rule() {
        let marked = vec![MarkedRule {
            chain: ForeignChain::Forward,
            handle: 7,
            comment: "quilt: accept forwarding in from vxlan100".into(),
        }];
        let observed = Observed {
            table: Some(ObservedTable::default()),
            forward_chain: Some(ForeignChain::Forward),
            marked: marked.clone(),
        };
        assert_eq!(
            plan_removal(&observed),
            vec![FirewallOp::DeleteTable, FirewallOp::DeleteMarked(marked)]
        );
        assert!(plan_removal(&Observed::default()).is_empty());
    }
}
