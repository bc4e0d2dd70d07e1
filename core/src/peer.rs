//! The transport seam's error: why a request to a peer got no answer, and whether it may have
//! arrived. The node's QUIC transport (`node/src/peers.rs`) and the simulator's network both
//! report failures as a [`PeerError`], and the core's driver and routing decide from it.

use std::time::Duration;

use cairn_proto::ErrorReply;

/// Why a request to a peer got no answer, with what is known about whether it arrived.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeerError {
    /// The node is not a member: nothing was sent.
    #[error("{node} is not a member")]
    NotAMember {
        /// The node, by name or id.
        node: String,
    },
    /// No connection could be made (or opened a stream on): nothing was sent.
    #[error("cannot reach {node}: {reason}")]
    Connect {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The request went out and no answer came within `after`: the peer may have acted on it.
    #[error("{node} did not answer within {after:?}")]
    Timeout {
        /// The node.
        node: String,
        /// How long the caller waited.
        after: Duration,
    },
    /// The request went out and the exchange broke before the answer: the peer may have acted
    /// on it.
    #[error("lost the exchange with {node}: {reason}")]
    Lost {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

impl PeerError {
    /// Whether the peer may have received the request (and acted on it): a write whose
    /// forward failed this way must not be applied again elsewhere.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, PeerError::Timeout { .. } | PeerError::Lost { .. })
    }
}

impl From<PeerError> for ErrorReply {
    fn from(e: PeerError) -> ErrorReply {
        let reason = e.to_string();
        let node = match e {
            PeerError::NotAMember { node }
            | PeerError::Connect { node, .. }
            | PeerError::Timeout { node, .. }
            | PeerError::Lost { node, .. } => node,
        };
        ErrorReply::Unreachable { node, reason }
    }
}
