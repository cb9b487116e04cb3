//! Who is calling, and whether the runtime trusts them: every connection's caller is
//! identified once, when it is accepted ([`stream`]), and one tower layer ([`layer`])
//! refuses every QuiltRuntime call of an untrusted caller with PERMISSION_DENIED.
//!
//! The rule ([`TrustPolicy`]): uid 0, the runtime's own uid, and members of the socket
//! group (the caller's gid on the unix socket, or the uid's groups in the system
//! database) are trusted; over TLS with `--tls-ca`, so is a client whose certificate the
//! CA issued. Health and reflection are open to everyone.

pub mod layer;
pub mod stream;

use std::ffi::CString;
use std::fmt;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

pub use layer::CallerCheckLayer;

/// How a caller reached the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

impl Transport {
    /// `unix` or `tcp`, as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runtime knows about one connection's caller: the connection information
/// every request of it carries.
#[derive(Debug, Clone)]
pub struct Caller {
    pub transport: Transport,
    /// The peer's address (TCP) or process id (unix), for logs.
    pub peer: String,
    /// The caller's uid, when it could be learnt.
    pub uid: Option<u32>,
    pub verdict: Verdict,
}

/// Whether a caller may use QuiltRuntime, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted(&'static str),
    Refused(String),
}

/// The group the unix socket belongs to, whose members are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

impl SocketGroup {
    /// `NAME` or a numeric gid; an unknown name is an error naming it.
    pub fn resolve(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        match Group::from_name(spec) {
            Ok(Some(group)) => Ok(Self {
                name: group.name,
                gid: group.gid.as_raw(),
            }),
            Ok(None) => match spec.parse::<u32>() {
                Ok(gid) => Ok(Self {
                    name: Group::from_gid(Gid::from_raw(gid))
                        .ok()
                        .flatten()
                        .map_or_else(|| gid.to_string(), |g| g.name),
                    gid,
                }),
                Err(_) => Err(format!(
                    "grpc socket group {spec:?} is neither a known group name nor a gid"
                )),
            },
            Err(e) => Err(format!("cannot look up grpc socket group {spec:?}: {e}")),
        }
    }
}

impl fmt::Display for SocketGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (gid {})", self.name, self.gid)
    }
}

/// Who is trusted.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    /// The runtime's own effective uid (0 in production).
    pub own_uid: u32,
    pub group: SocketGroup,
    /// TLS with `--tls-ca`: a client certificate the CA issued is trusted.
    pub certificates: bool,
}

impl TrustPolicy {
    pub fn new(group: SocketGroup, certificates: bool) -> Self {
        Self {
            own_uid: Uid::effective().as_raw(),
            group,
            certificates,
        }
    }

    /// The verdict that needs no lookup, if there is one: root and the runtime's own uid,
    /// or a process whose gid is the socket group.
    fn quick(&self, uid: u32, gid: Option<u32>) -> Option<Verdict> {
        if uid == 0 {
            Some(Verdict::Trusted("root"))
        } else if uid == self.own_uid {
            Some(Verdict::Trusted("the runtime's own uid"))
        } else if gid == Some(self.group.gid) {
            Some(Verdict::Trusted("gid of the socket group"))
        } else {
            None
        }
    }

    /// The verdict for `uid` (with the process's `gid` where known). May read the
    /// system's user and group database, so it blocks: call it off the async workers.
    pub fn judge_blocking(&self, uid: u32, gid: Option<u32>) -> Verdict {
        if let Some(verdict) = self.quick(uid, gid) {
            return verdict;
        }
        match groups_of(uid) {
            Ok(groups) if groups.contains(&self.group.gid) => {
                Verdict::Trusted("member of the socket group")
            }
            Ok(_) => Verdict::Refused(format!(
                "uid {uid} is neither root nor a member of group {}",
                self.group
            )),
            Err(reason) => Verdict::Refused(format!(
                "uid {uid} is not root and its groups are unknown: {reason}"
            )),
        }
    }

    /// [`Self::judge_blocking`] on a blocking thread when a lookup is needed.
    pub async fn judge(&self, uid: u32, gid: Option<u32>) -> Verdict {
        if let Some(verdict) = self.quick(uid, gid) {
            return verdict;
        }
        let policy = self.clone();
        tokio::task::spawn_blocking(move || policy.judge_blocking(uid, gid))
            .await
            .unwrap_or_else(|e| {
                Verdict::Refused(format!("the group lookup of uid {uid} failed: {e}"))
            })
    }
}

/// The primary and supplementary groups of `uid` in the system database.
fn groups_of(uid: u32) -> Result<Vec<u32>, String> {
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| format!("looking up uid {uid}: {e}"))?
        .ok_or_else(|| format!("uid {uid} has no entry in the user database"))?;
    let name = CString::new(user.name.clone())
        .map_err(|_| format!("user name {:?} holds a nul byte", user.name))?;
    let groups = getgrouplist(&name, user.gid)
        .map_err(|e| format!("listing the groups of user {}: {e}", user.name))?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own_uid: u32) -> TrustPolicy {
        TrustPolicy {
            own_uid,
            group: SocketGroup {
                name: "quilt".into(),
                gid: 4242,
            },
            certificates: false,
        }
    }

    #[test]
    fn root_own_uid_and_the_group_gid_are_trusted_without_lookup() {
        let p = policy(1000);
        assert_eq!(p.quick(0, None), Some(Verdict::Trusted("root")));
        assert!(matches!(p.quick(1000, None), Some(Verdict::Trusted(_))));
        assert!(matches!(p.quick(5, Some(4242)), Some(Verdict::Trusted(_))));
        assert_eq!(p.quick(5, Some(5)), None);
    }

    #[test]
    fn an_unknown_uid_is_refused_naming_it() {
        let Verdict::Refused(reason) = policy(0).judge_blocking(4_000_000_000, None) else {
            panic!("trusted an unknown uid");
        };
        assert!(reason.contains("uid 4000000000"), "{reason}");
    }

    #[test]
    fn groups_resolve_by_name_or_number_and_unknown_names_are_refused() {
        assert_eq!(SocketGroup::resolve("root").unwrap().gid, 0);
        assert_eq!(SocketGroup::resolve("0").unwrap().name, "root");
        let e = SocketGroup::resolve("no-such-group-quilt").unwrap_err();
        assert!(e.contains("\"no-such-group-quilt\""), "{e}");
    }
}
