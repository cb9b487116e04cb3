//! [`NftFirewall`]: the node's filter through the `nft` program. Changes are built with
//! the `nftables` crate's typed JSON schema and sent as one `nft -j -f -` transaction
//! (so a table is replaced atomically: no moment without the allow-list). What is there
//! is read with `nft -j list ruleset` as plain JSON: iptables-nft and Docker put
//! expressions in their chains (`xt` matches) that a typed schema may not know, and
//! only tables, chains, comments, handles and set elements are read.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{
    Direction, FOREIGN_TABLE, FirewallOp, ForeignChain, ForwardAccept, MARK, MEMBERS_SET,
    MarkedRule, Observed, ObservedTable, OwnChain, OwnRule, RuleKind, TABLE,
};
use crate::KernelError;

/// `nft`, run in this process's network namespace, or in a named one through
/// `ip netns exec` (tests and the lab, from outside).
#[derive(Debug, Clone, Default)]
pub struct NftFirewall {
    netns: Option<String>,
}

impl NftFirewall {
    /// `nft` in the caller's own namespace (the agent's host).
    pub fn new() -> Self {
        Self { netns: None }
    }

    /// `nft` inside namespace `name`.
    pub fn in_netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_string()),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => tokio::process::Command::new("nft"),
        };
        command.kill_on_drop(true);
        command
    }

    /// Runs `nft ARGS` with `input` on its standard input; answers its output.
    async fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, KernelError> {
        let operation = format!("nft {}", args.join(" "));
        let fail = |message: String| KernelError::Other {
            operation: operation.clone(),
            message,
        };
        let mut child = self
            .command()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run nft (install Debian's nftables): {e}")))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|e| fail(format!("cannot write to nft: {e}")))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| fail(format!("nft did not finish: {e}")))?;
        if !output.status.success() {
            return Err(fail(format!(
                "{} ({})",
                String::from_utf8_lossy(&output.stderr).trim(),
                output.status
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl super::Firewall for NftFirewall {
    async fn observe(&self) -> Result<Observed, KernelError> {
        let text = self.run(&["-j", "list", "ruleset"], None).await?;
        let json: Value = serde_json::from_str(&text).map_err(|e| KernelError::Other {
            operation: "nft -j list ruleset".into(),
            message: format!("answer is not JSON: {e}"),
        })?;
        Ok(parse_ruleset(&json))
    }

    async fn apply(&self, ops: &[FirewallOp]) -> Result<(), KernelError> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = Nftables {
            objects: commands(ops).into(),
        };
        let text = serde_json::to_string(&batch).map_err(|e| KernelError::Other {
            operation: "serialize nft commands".into(),
            message: e.to_string(),
        })?;
        self.run(&["-j", "-f", "-"], Some(&text))
            .await
            .map_err(|e| match e {
                KernelError::Other { message, .. } => KernelError::Other {
                    operation: format!("nft -j -f - ({})", describe(ops)),
                    message,
                },
                other => other,
            })?;
        Ok(())
    }
}

/// The ops in a few words, for an error.
fn describe(ops: &[FirewallOp]) -> String {
    ops.iter()
        .map(|op| match op {
            FirewallOp::ReplaceTable(_) => "replace table inet quilt".to_string(),
            FirewallOp::AddMembers(m) => format!("add {} members", m.len()),
            FirewallOp::DeleteMembers(m) => format!("delete {} members", m.len()),
            FirewallOp::DeleteTable => "delete table inet quilt".to_string(),
            FirewallOp::DeleteMarked(r) => format!("delete {} marked rules", r.len()),
            FirewallOp::InsertForwardAccepts { chain, rules } => {
                format!(
                    "insert {} rules into ip filter {}",
                    rules.len(),
                    chain.name()
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn own_table() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn members(set: &BTreeSet<Ipv4Addr>) -> Vec<Expression<'static>> {
    set.iter()
        .map(|ip| Expression::String(ip.to_string().into()))
        .collect()
}

fn element(set: &BTreeSet<Ipv4Addr>) -> NfListObject<'static> {
    NfListObject::Element(schema::Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: MEMBERS_SET.into(),
        elem: members(set).into(),
    })
}

/// The JSON commands of `ops`, in order.
pub fn commands(ops: &[FirewallOp]) -> Vec<NfObject<'static>> {
    let mut out = Vec::new();
    let mut cmd = |c: NfCmd<'static>| out.push(NfObject::CmdObject(c));
    for op in ops {
        match op {
            FirewallOp::ReplaceTable(rules) => {
                // `add` first, so that `delete` finds a table whether or not one was there.
                cmd(NfCmd::Add(NfListObject::Table(own_table())));
                cmd(NfCmd::Delete(NfListObject::Table(own_table())));
                cmd(NfCmd::Add(NfListObject::Table(own_table())));
                for chain in OwnChain::ALL {
                    cmd(NfCmd::Add(NfListObject::Chain(own_chain(chain))));
                }
                cmd(NfCmd::Add(NfListObject::Set(Box::new(schema::Set {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    name: MEMBERS_SET.into(),
                    comment: Some("quilt: member host addresses that may send vxlan".into()),
                    elem: (!rules.members.is_empty()).then(|| members(&rules.members).into()),
                    ..Default::default()
                }))));
                for rule in rules.own_rules() {
                    cmd(NfCmd::Add(NfListObject::Rule(own_rule(&rule))));
                }
            }
            FirewallOp::AddMembers(set) => cmd(NfCmd::Add(element(set))),
            FirewallOp::DeleteMembers(set) => cmd(NfCmd::Delete(element(set))),
            FirewallOp::DeleteTable => cmd(NfCmd::Delete(NfListObject::Table(own_table()))),
            FirewallOp::DeleteMarked(rules) => {
                for r in rules {
                    cmd(NfCmd::Delete(NfListObject::Rule(schema::Rule {
                        family: NfFamily::IP,
                        table: FOREIGN_TABLE.into(),
                        chain: r.chain.name().into(),
                        handle: Some(r.handle as u32),
                        ..Default::default()
                    })));
                }
            }
            FirewallOp::InsertForwardAccepts { chain, rules } => {
                // Each insert goes to the top: insert in reverse to keep the order.
                for r in rules.iter().rev() {
                    cmd(NfCmd::Insert(NfListObject::Rule(forward_rule(*chain, r))));
                }
            }
        }
    }
    out
}

fn own_chain(chain: OwnChain) -> schema::Chain<'static> {
    let (kind, hook, prio) = match chain {
        OwnChain::Input => (NfChainType::Filter, NfHook::Input, 0),
        OwnChain::Postrouting => (NfChainType::NAT, NfHook::Postrouting, 100),
    };
    schema::Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: chain.name().into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn prefix(net: ipnet::Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn own_rule(rule: &OwnRule) -> schema::Rule<'static> {
    let expr: Vec<Statement<'static>> = match &rule.kind {
        RuleKind::AcceptVxlanFromMembers { port } => vec![
            matches(
                field("udp", "dport"),
                Operator::EQ,
                Expression::Number(u32::from(*port)),
            ),
            matches(
                field("ip", "saddr"),
                Operator::EQ,
                Expression::String(format!("@{MEMBERS_SET}").into()),
            ),
            counter(),
            Statement::Accept(None),
        ],
        RuleKind::DropOtherVxlan { port } => vec![
            matches(
                field("udp", "dport"),
                Operator::EQ,
                Expression::Number(u32::from(*port)),
            ),
            counter(),
            Statement::Drop(None),
        ],
        RuleKind::Masquerade { subnet, cluster } => vec![
            matches(field("ip", "saddr"), Operator::EQ, prefix(*subnet)),
            matches(field("ip", "daddr"), Operator::NEQ, prefix(*cluster)),
            counter(),
            Statement::Masquerade(None),
        ],
    };
    schema::Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: rule.chain.name().into(),
        expr: Cow::Owned(expr),
        comment: Some(rule.comment().into()),
        ..Default::default()
    }
}

fn forward_rule(chain: ForeignChain, rule: &ForwardAccept) -> schema::Rule<'static> {
    let key = match rule.direction {
        Direction::In => MetaKey::Iifname,
        Direction::Out => MetaKey::Oifname,
    };
    schema::Rule {
        family: NfFamily::IP,
        table: FOREIGN_TABLE.into(),
        chain: chain.name().into(),
        expr: Cow::Owned(vec![
            matches(
                Expression::Named(NamedExpression::Meta(Meta { key })),
                Operator::EQ,
                Expression::String(rule.interface.clone().into()),
            ),
            counter(),
            Statement::Accept(None),
        ]),
        comment: Some(rule.comment().into()),
        ..Default::default()
    }
}

/// Reads our table and the marked rules of iptables' chains from `nft -j list ruleset`.
pub fn parse_ruleset(json: &Value) -> Observed {
    let objects = json
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut observed = Observed::default();
    let mut table: Option<ObservedTable> = None;
    let mut foreign_chains = BTreeSet::new();
    let is = |o: &Value, family: &str, name: &str| {
        o.get("family").and_then(Value::as_str) == Some(family)
            && o.get("table").and_then(Value::as_str) == Some(name)
    };
    for object in &objects {
        if let Some(t) = object.get("table") {
            if t.get("family").and_then(Value::as_str) == Some("inet")
                && t.get("name").and_then(Value::as_str) == Some(TABLE)
            {
                table.get_or_insert_with(ObservedTable::default);
            }
        } else if let Some(c) = object.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if is(c, "inet", TABLE) {
                table
                    .get_or_insert_with(ObservedTable::default)
                    .chains
                    .insert(name.to_string());
            } else if is(c, "ip", FOREIGN_TABLE) {
                foreign_chains.insert(name.to_string());
            }
        } else if let Some(s) = object.get("set") {
            if is(s, "inet", TABLE) && s.get("name").and_then(Value::as_str) == Some(MEMBERS_SET) {
                let elements = s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().and_then(|s| s.parse().ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                table.get_or_insert_with(ObservedTable::default).members = Some(elements);
            }
        } else if let Some(r) = object.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            let comment = r.get("comment").and_then(Value::as_str).unwrap_or_default();
            if is(r, "inet", TABLE) {
                table
                    .get_or_insert_with(ObservedTable::default)
                    .rules
                    .push((chain.to_string(), comment.to_string()));
            } else if is(r, "ip", FOREIGN_TABLE) && comment.starts_with(MARK) {
                let chain = match chain {
                    "DOCKER-USER" => ForeignChain::DockerUser,
                    "FORWARD" => ForeignChain::Forward,
                    _ => continue,
                };
                if let Some(handle) = r.get("handle").and_then(Value::as_u64) {
                    observed.marked.push(MarkedRule {
                        chain,
                        handle,
                        comment: comment.to_string(),
                    });
                }
            }
        }
    }
    observed.table = table;
    observed.forward_chain = if foreign_chains.contains("DOCKER-USER") {
        Some(ForeignChain::DockerUser)
    } else if foreign_chains.contains("FORWARD") {
        Some(ForeignChain::Forward)
    } else {
        None
    };
    observed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::MeshRules;

    #[test]
    fn a_listing_is_read_for_our_table_and_marked_rules_only() {
        let json: Value = serde_json::from_str(
            r#"{"nftables":[
              {"metainfo":{"version":"1.0.6","json_schema_version":1}},
              {"table":{"family":"ip","name":"filter","handle":1}},
              {"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"drop"}},
              {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":4,"comment":"quilt: accept forwarding in from vxlan100","expr":[]}},
              {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":5,"comment":"docker","expr":[{"xt":{"type":"match","name":"conntrack"}}]}},
              {"table":{"family":"inet","name":"quilt","handle":2}},
              {"chain":{"family":"inet","table":"quilt","name":"input","handle":1}},
              {"set":{"family":"inet","name":"vxlan_members","table":"quilt","type":"ipv4_addr","handle":3,"elem":["192.168.1.12","192.168.1.13"]}},
              {"rule":{"family":"inet","table":"quilt","chain":"input","handle":4,"comment":"quilt: vxlan udp 4789 from members","expr":[]}}
            ]}"#,
        )
        .unwrap();
        let o = parse_ruleset(&json);
        assert_eq!(o.forward_chain, Some(ForeignChain::Forward));
        assert_eq!(o.marked.len(), 1);
        assert_eq!(o.marked[0].handle, 4);
        let t = o.table.unwrap();
        assert_eq!(t.chains, ["input".to_string()].into());
        assert_eq!(t.members.unwrap().len(), 2);
        assert_eq!(t.rules.len(), 1);
        assert!(
            parse_ruleset(&serde_json::json!({"nftables": []}))
                .table
                .is_none()
        );
    }

    #[test]
    fn a_replaced_table_is_one_batch_that_adds_before_it_deletes() {
        let rules = MeshRules {
            subnet: "10.42.1.0/24".parse().unwrap(),
            cluster: "10.42.0.0/16".parse().unwrap(),
            masquerade: true,
            vxlan_port: 4789,
            members: [Ipv4Addr::new(192, 168, 1, 12)].into(),
            forward_interfaces: vec![],
        };
        let text = serde_json::to_string(&Nftables {
            objects: commands(&[FirewallOp::ReplaceTable(rules)]).into(),
        })
        .unwrap();
        let add = text.find(r#"{"add":{"table""#).unwrap();
        let delete = text.find(r#"{"delete":{"table""#).unwrap();
        assert!(add < delete, "{text}");
        assert!(text.contains("masquerade"), "{text}");
        assert!(text.contains("@vxlan_members"), "{text}");
    }
}
