//! The transport seam's error: why a request to a peer got no answer, and whether it may have
//! arrived. The node's QUIC transport (`node/src/peers.rs`) and the simulator's network both
//! report failures as a [`PeerError`], and the core's driver and routing decide from it.

use std::time::Duration;

use cairn_proto::{BatchAnswer, ErrorReply, KeyOpReply, PeerResponse};

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
    /// The peer answered with its own error reply (it is overloaded, its store failed, it
    /// refused the request's contents...).
    #[error("{node} refused the {request}: {reply}")]
    Refused {
        /// The node.
        node: String,
        /// The request, by kind.
        request: &'static str,
        /// Its answer.
        reply: ErrorReply,
    },
    /// The peer answered with a message that answers another request: it speaks another
    /// version of the protocol, or it is broken.
    #[error("{node} answered a {request} with {answer}")]
    Mismatch {
        /// The node.
        node: String,
        /// The request, by kind.
        request: &'static str,
        /// What came back, as debug text.
        answer: String,
    },
}

impl PeerError {
    /// Whether the peer may have received the request (and acted on it): a write whose
    /// forward failed this way must not be applied again elsewhere.
    pub fn may_have_arrived(&self) -> bool {
        // A refusal or an answer of the wrong kind came from a peer that received the request;
        // whether it acted on it is not known, so it counts as arrived.
        matches!(
            self,
            PeerError::Timeout { .. }
                | PeerError::Lost { .. }
                | PeerError::Refused { .. }
                | PeerError::Mismatch { .. }
        )
    }

    /// The node the request was for.
    pub fn node(&self) -> &str {
        match self {
            PeerError::NotAMember { node }
            | PeerError::Connect { node, .. }
            | PeerError::Timeout { node, .. }
            | PeerError::Lost { node, .. }
            | PeerError::Refused { node, .. }
            | PeerError::Mismatch { node, .. } => node,
        }
    }
}

/// A typed peer call's answer: what `pick` takes from the peer's answer to a `request` sent to
/// `node`, or why there is none: the transport's failure, the peer's refusal
/// ([`PeerError::Refused`]) or an answer of another kind ([`PeerError::Mismatch`]). The node's
/// transport and the simulator's network (with their own answer types `R`) both read their
/// answers through it.
pub fn typed_answer<R: std::fmt::Debug, T>(
    node: &str,
    request: &'static str,
    answer: Result<Result<R, ErrorReply>, PeerError>,
    pick: impl FnOnce(R) -> Result<T, R>,
) -> Result<T, PeerError> {
    match answer? {
        Ok(answer) => pick(answer).map_err(|other| PeerError::Mismatch {
            node: node.to_owned(),
            request,
            answer: format!("{other:?}"),
        }),
        Err(reply) => Err(PeerError::Refused {
            node: node.to_owned(),
            request,
            reply,
        }),
    }
}

/// [`typed_answer`]'s `pick` for requests answered by a bare acknowledgement.
pub fn ack(answer: PeerResponse) -> Result<(), PeerResponse> {
    match answer {
        PeerResponse::Ack => Ok(()),
        other => Err(other),
    }
}

/// [`typed_answer`]'s `pick` for a ping: the name the peer answers with.
pub fn pong(answer: PeerResponse) -> Result<String, PeerResponse> {
    match answer {
        PeerResponse::Pong { node } => Ok(node),
        other => Err(other),
    }
}

/// [`typed_answer`]'s `pick` for a forward: the coordinator's reply.
pub fn forwarded(answer: PeerResponse) -> Result<KeyOpReply, PeerResponse> {
    match answer {
        PeerResponse::Forwarded(reply) => Ok(reply),
        other => Err(other),
    }
}

/// [`typed_answer`]'s `pick` for a batch: one answer per item.
pub fn batch_answers(
    answer: PeerResponse,
) -> Result<Vec<Result<BatchAnswer, ErrorReply>>, PeerResponse> {
    match answer {
        PeerResponse::Batch(answers) => Ok(answers),
        other => Err(other),
    }
}

impl From<PeerError> for ErrorReply {
    fn from(e: PeerError) -> ErrorReply {
        match e {
            // The peer's own answer goes on as it was.
            PeerError::Refused { reply, .. } => reply,
            PeerError::Mismatch { .. } => ErrorReply::Malformed {
                reason: e.to_string(),
            },
            other => ErrorReply::Unreachable {
                node: other.node().to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_answer_names_a_refusal_a_mismatch_and_a_transport_failure() {
        let answered = Ok(Ok(PeerResponse::Pong {
            node: "node2".into(),
        }));
        assert_eq!(
            typed_answer("node2", "ping", answered, pong),
            Ok("node2".to_owned())
        );
        let busy = ErrorReply::Overloaded {
            reason: "queue full".into(),
        };
        let refused = typed_answer("node2", "ping", Ok(Err(busy.clone())), pong).unwrap_err();
        assert_eq!(
            refused,
            PeerError::Refused {
                node: "node2".into(),
                request: "ping",
                reply: busy.clone(),
            }
        );
        assert!(refused.may_have_arrived());
        // A refusal reaches the client as the peer's own answer.
        assert_eq!(ErrorReply::from(refused), busy);
        let mismatch = typed_answer("node2", "ping", Ok(Ok(PeerResponse::Ack)), pong).unwrap_err();
        assert_eq!(mismatch.to_string(), "node2 answered a ping with Ack");
        assert!(matches!(
            ErrorReply::from(mismatch),
            ErrorReply::Malformed { .. }
        ));
        let timeout = PeerError::Timeout {
            node: "node2".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(
            typed_answer("node2", "ping", Err(timeout.clone()), pong),
            Err(timeout.clone())
        );
        assert!(matches!(
            ErrorReply::from(timeout),
            ErrorReply::Unreachable { node, .. } if node == "node2"
        ));
    }
}
