//! Who may do what: the join token for registering, each node's own token for its
//! heartbeats, either for leaving; under mutual TLS, a certificate naming the node's host
//! IP for anything done as that node. Pure decisions; the API layer maps them to 401/403.
//!
//! Without a join token the control plane runs open: requests without a token are
//! accepted (the original clients send none), but a token that is presented must still
//! be right.

use crate::model::{Node, NodeId, constant_time_eq};
use crate::tls::Peer;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authorization header is not of the form \"Bearer <token>\"")]
    Malformed,
    #[error("registering needs the join token: send \"Authorization: Bearer <join token>\"")]
    MissingJoinToken,
    #[error("the presented join token is wrong")]
    WrongJoinToken,
    #[error(
        "node {0} needs its node token: send \"Authorization: Bearer <node_token>\" as answered by register"
    )]
    MissingNodeToken(NodeId),
    #[error("the presented token is not node {0}'s node token")]
    WrongNodeToken(NodeId),
    /// Under mutual TLS a node is acted for only with a certificate naming its host IP.
    #[error(
        "host {host_ip} needs a client certificate naming it; this connection presented {presented}"
    )]
    NotThisNodesCertificate {
        host_ip: std::net::Ipv4Addr,
        presented: String,
    },
}

impl AuthError {
    /// True when the caller did not prove who it is (401); false when it proved to be
    /// someone without the right (403).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(
            self,
            AuthError::WrongNodeToken(_) | AuthError::NotThisNodesCertificate { .. }
        )
    }

    /// Refuses `peer` acting as the node at `host_ip` unless its certificate (if mutual
    /// TLS asks for one) names that address.
    pub fn check_certificate(peer: &Peer, host_ip: std::net::Ipv4Addr) -> Result<(), AuthError> {
        if peer.may_act_as(host_ip) {
            Ok(())
        } else {
            Err(AuthError::NotThisNodesCertificate {
                host_ip,
                presented: peer.named(),
            })
        }
    }
}

/// Reads `Authorization: Bearer <token>`: `None` when absent.
pub fn bearer(header: Option<&axum::http::HeaderValue>) -> Result<Option<String>, AuthError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token.to_string()))
}

/// The access policy of one control plane.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    join_token: Option<String>,
}

impl Policy {
    pub fn new(join_token: Option<String>) -> Self {
        Self { join_token }
    }

    pub fn is_open(&self) -> bool {
        self.join_token.is_none()
    }

    /// Whether `presented` is the join token (the operator's credential).
    pub fn is_join_token_of_operator(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| self.is_join_token(p))
    }

    fn is_join_token(&self, presented: &str) -> bool {
        self.join_token
            .as_deref()
            .is_some_and(|j| constant_time_eq(j.as_bytes(), presented.as_bytes()))
    }

    pub fn register(&self, presented: Option<&str>) -> Result<(), AuthError> {
        match (&self.join_token, presented) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(AuthError::MissingJoinToken),
            (Some(_), Some(t)) if self.is_join_token(t) => Ok(()),
            (Some(_), Some(_)) => Err(AuthError::WrongJoinToken),
        }
    }

    pub fn heartbeat(&self, node: &Node, presented: Option<&str>) -> Result<(), AuthError> {
        match presented {
            None if self.is_open() => Ok(()),
            None => Err(AuthError::MissingNodeToken(node.id)),
            Some(t) if node.token_hash.matches(t) => Ok(()),
            Some(_) => Err(AuthError::WrongNodeToken(node.id)),
        }
    }

    pub fn delete(&self, node: &Node, presented: Option<&str>) -> Result<(), AuthError> {
        match presented {
            Some(t) if self.is_join_token(t) => Ok(()),
            other => self.heartbeat(node, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn node() -> Node {
        crate::model::test_node(3, "node-secret")
    }

    #[test]
    fn reads_bearer_headers() {
        assert_eq!(bearer(None), Ok(None));
        let h = HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&h)), Ok(Some("abc".into())));
        let h = HeaderValue::from_static("bearer  abc ");
        assert_eq!(bearer(Some(&h)), Ok(Some("abc".into())));
        for bad in ["Basic abc", "Bearer", "abc", "Bearer  "] {
            let h = HeaderValue::from_static(bad);
            assert_eq!(bearer(Some(&h)), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_matrix() {
        let n = node();
        let open = Policy::new(None);
        let closed = Policy::new(Some("join-secret".into()));
        assert_eq!(open.register(None), Ok(()));
        assert_eq!(open.register(Some("anything")), Ok(()));
        assert_eq!(closed.register(None), Err(AuthError::MissingJoinToken));
        assert_eq!(
            closed.register(Some("nope")),
            Err(AuthError::WrongJoinToken)
        );
        assert_eq!(closed.register(Some("join-secret")), Ok(()));

        assert_eq!(open.heartbeat(&n, None), Ok(()));
        assert_eq!(open.heartbeat(&n, Some("node-secret")), Ok(()));
        assert_eq!(
            open.heartbeat(&n, Some("nope")),
            Err(AuthError::WrongNodeToken(n.id))
        );
        assert_eq!(
            closed.heartbeat(&n, None),
            Err(AuthError::MissingNodeToken(n.id))
        );
        assert_eq!(
            closed.heartbeat(&n, Some("join-secret")),
            Err(AuthError::WrongNodeToken(n.id))
        );
        assert_eq!(closed.heartbeat(&n, Some("node-secret")), Ok(()));

        assert_eq!(closed.delete(&n, Some("join-secret")), Ok(()));
        assert_eq!(closed.delete(&n, Some("node-secret")), Ok(()));
        assert_eq!(
            closed.delete(&n, None),
            Err(AuthError::MissingNodeToken(n.id))
        );
        assert_eq!(
            closed.delete(&n, Some("nope")),
            Err(AuthError::WrongNodeToken(n.id))
        );
        assert_eq!(open.delete(&n, None), Ok(()));
    }
}
