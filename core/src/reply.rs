//! The client's reply to a key operation, built from the coordinator's outcome: a read's live
//! siblings and context, or the error reply naming the replicas that failed. The node's driver
//! and the simulator answer clients with it, so a simulated client reads what a real one reads.

use cairn_proto::{DotId, ErrorReply, GetReply, KeyOpReply, NodeId, ReplicaFailure, Sibling};

use crate::coordinator::{CoordinatorError, Outcome};
use crate::version::{encode_context, Object};

/// The reply to a read or write: live siblings only, and a context covering tombstones too, so
/// a write with it supersedes the delete as well.
pub fn get_reply(obj: &Object) -> GetReply {
    GetReply {
        siblings: obj
            .live()
            .into_iter()
            .map(|(dot, value)| Sibling {
                value: value.to_vec(),
                dot: DotId {
                    actor: dot.actor,
                    counter: dot.counter,
                },
            })
            .collect(),
        context: encode_context(&obj.join()),
    }
}

/// The reply to a coordinated get, put or delete; `name` names a node in the errors.
pub fn reply(
    outcome: Result<Outcome, CoordinatorError>,
    name: impl Fn(NodeId) -> String,
) -> KeyOpReply {
    let failures = |failed: Vec<(NodeId, String)>| -> Vec<ReplicaFailure> {
        failed
            .into_iter()
            .map(|(node, reason)| ReplicaFailure {
                node: name(node),
                reason,
            })
            .collect()
    };
    match outcome {
        Ok(Outcome::Read(obj)) => KeyOpReply::Value(get_reply(&obj)),
        Ok(Outcome::Written(obj)) => KeyOpReply::Written(get_reply(&obj)),
        Err(CoordinatorError::BadOptions(reason)) => {
            KeyOpReply::Error(ErrorReply::BadOptions { reason })
        }
        Err(CoordinatorError::Local(e)) => KeyOpReply::Error(e),
        Err(CoordinatorError::Overloaded(_)) => KeyOpReply::Error(ErrorReply::Overloaded {
            reason: "too many requests in flight at this coordinator".into(),
        }),
        Err(CoordinatorError::Quorum {
            kind,
            needed,
            got,
            failed,
        }) => KeyOpReply::Error(ErrorReply::QuorumNotReached {
            kind: kind.to_owned(),
            needed,
            got,
            failed: failures(failed),
        }),
        Err(CoordinatorError::SetsShort { short, failed }) => {
            // The reply has room for one count: the first set short; the kind names every one
            // (the wire type is unchanged, so old clients read it).
            let first = short.first().map_or((0, 0), |s| (s.needed, s.got));
            let sets: Vec<String> = short
                .iter()
                .map(|s| {
                    let names: Vec<String> = s.replicas.iter().map(|n| name(*n)).collect();
                    format!(
                        "{} {} of {} in layout version {} [{}]",
                        s.got,
                        s.kind,
                        s.needed,
                        s.version,
                        names.join(",")
                    )
                })
                .collect();
            KeyOpReply::Error(ErrorReply::QuorumNotReached {
                kind: format!(
                    "acks in every live layout version's replica set ({})",
                    sets.join("; ")
                ),
                needed: first.0,
                got: first.1,
                failed: failures(failed),
            })
        }
    }
}
