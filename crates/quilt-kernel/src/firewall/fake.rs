//! [`FakeFirewall`]: the node's filter in memory, for daemon tests without root. It
//! applies ops as the real one does (a table replaced whole, members by element, marked
//! rules by handle) and records every batch.

use std::sync::{Arc, Mutex};

use super::{FirewallOp, MarkedRule, Observed, ObservedTable, OwnChain};
use crate::KernelError;

#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Observed,
    batches: Vec<Vec<FirewallOp>>,
    next_handle: u64,
}

impl FakeFirewall {
    /// What the filter holds now.
    pub fn state(&self) -> Observed {
        self.inner.lock().expect("fake firewall lock").state.clone()
    }

    /// Sets what the filter holds (a table flushed, iptables' chain present, ...).
    pub fn set_state(&self, state: Observed) {
        self.inner.lock().expect("fake firewall lock").state = state;
    }

    /// Every batch applied so far.
    pub fn batches(&self) -> Vec<Vec<FirewallOp>> {
        self.inner
            .lock()
            .expect("fake firewall lock")
            .batches
            .clone()
    }
}

impl super::Firewall for FakeFirewall {
    async fn observe(&self) -> Result<Observed, KernelError> {
        Ok(self.state())
    }

    async fn apply(&self, ops: &[FirewallOp]) -> Result<(), KernelError> {
        let mut inner = self.inner.lock().expect("fake firewall lock");
        let mut state = inner.state.clone();
        let missing = |what: &str| KernelError::Other {
            operation: "nft -j -f -".into(),
            message: format!("{what}: No such file or directory"),
        };
        for op in ops {
            match op {
                FirewallOp::ReplaceTable(rules) => {
                    state.table = Some(ObservedTable {
                        chains: OwnChain::ALL.iter().map(|c| c.name().into()).collect(),
                        rules: rules.layout(),
                        members: Some(rules.members.clone()),
                    });
                }
                FirewallOp::AddMembers(add) => {
                    let table = state.table.as_mut().ok_or_else(|| missing("table"))?;
                    let set = table.members.as_mut().ok_or_else(|| missing("set"))?;
                    set.extend(add.iter().copied());
                }
                FirewallOp::DeleteMembers(delete) => {
                    let table = state.table.as_mut().ok_or_else(|| missing("table"))?;
                    let set = table.members.as_mut().ok_or_else(|| missing("set"))?;
                    for ip in delete {
                        if !set.remove(ip) {
                            return Err(missing(&format!("element {ip}")));
                        }
                    }
                }
                FirewallOp::DeleteTable => {
                    state.table.take().ok_or_else(|| missing("table"))?;
                }
                FirewallOp::DeleteMarked(rules) => {
                    for r in rules {
                        let before = state.marked.len();
                        state.marked.retain(|m| m.handle != r.handle);
                        if state.marked.len() == before {
                            return Err(missing(&format!("rule handle {}", r.handle)));
                        }
                    }
                }
                FirewallOp::InsertForwardAccepts { chain, rules } => {
                    if state.forward_chain.is_none() {
                        return Err(missing(&format!("chain {}", chain.name())));
                    }
                    for r in rules {
                        inner.next_handle += 1;
                        state.marked.push(MarkedRule {
                            chain: *chain,
                            handle: 1000 + inner.next_handle,
                            comment: r.comment(),
                        });
                    }
                }
            }
        }
        // One transaction: all or nothing.
        inner.state = state;
        inner.batches.push(ops.to_vec());
        Ok(())
    }
}
