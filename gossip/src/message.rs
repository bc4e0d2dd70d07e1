//! The three gossip messages (SYN, ACK, ACK2), their postcard encoding, and the checks a decoded
//! message must pass before any of it is applied.

use cairn_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::limits::{KEYS_PER_NODE, MEMBERS_MAX, MESSAGE_BYTES_MAX};
use crate::{GossipError, Value};

/// One gossip message and its sender.
///
/// A round is three messages on one exchange, as in Cassandra and chitchat: the initiator sends a
/// [`Payload::Syn`], the receiver answers with a [`Payload::Ack`], and the initiator finishes with
/// a [`Payload::Ack2`]. Each is built to encode within the sender's message budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMessage {
    /// The sending node. Replies go to it, so a driver should send an ACK back over the stream
    /// its SYN arrived on: a joiner's address is not known before its ACK2.
    pub from: NodeId,
    /// What the message says.
    pub payload: Payload,
}

/// The body of a gossip message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// "This is how far I am": the sender's digest.
    Syn {
        /// Per node, the generation and highest version the sender holds. The sender's own entry
        /// always comes first.
        digest: Vec<DigestEntry>,
        /// Whether the digest lists every node the sender knows. A digest cut to fit the budget
        /// is a random subset; its receiver then cannot take a missing node as unknown to the
        /// sender, so it sends nothing for nodes the digest does not list.
        complete: bool,
    },
    /// The answer to a SYN: what the receiver has that the initiator lacks, and what it wants
    /// from the initiator.
    Ack {
        /// State newer than the initiator's digest, in scuttle-depth order.
        deltas: Vec<NodeDelta>,
        /// Nodes the initiator is ahead on, each with the generation and version the ACK's sender
        /// holds; the ACK2 answers them.
        request: Vec<DigestEntry>,
    },
    /// The end of an exchange: the state the ACK requested.
    Ack2 {
        /// State newer than the ACK's request, in scuttle-depth order.
        deltas: Vec<NodeDelta>,
    },
}

/// How far one node's state a digest's sender holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The node.
    pub node: NodeId,
    /// Its generation as the sender knows it.
    pub generation: u64,
    /// The highest version of that generation the sender holds; by the prefix rule, the sender
    /// holds every write of the node up to this version.
    pub max_version: u64,
}

/// The writes of one node that a peer lacks, oldest first.
///
/// `entries` are the node's current keys with a version above `from_version`, in increasing
/// version order; a delta cut by the budget is a prefix of that list (the prefix rule). A receiver
/// holding this generation up to at least `from_version` can apply it and then holds everything
/// up to the last entry's version; one that holds less would have a gap and ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDelta {
    /// The node these writes are from.
    pub node: NodeId,
    /// Their generation.
    pub generation: u64,
    /// The version the receiver must already hold; 0 for the whole state of the generation.
    pub from_version: u64,
    /// The writes, in strictly increasing version order, every one above `from_version`.
    pub entries: Vec<Entry>,
}

/// One key's value and the version its owner wrote it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The version of the write.
    pub version: u64,
    /// The value (its variant names the key).
    pub value: Value,
}

impl DigestEntry {
    /// Length of the postcard encoding: three varints (computed directly; SYNs size hundreds
    /// of these every round).
    pub(crate) fn encoded_len(&self) -> usize {
        varint_u64_len(self.node.0)
            + varint_u64_len(self.generation)
            + varint_u64_len(self.max_version)
    }
}

impl GossipMessage {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Length of the postcard encoding, without encoding.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self)
    }

    /// Decodes and checks a message from a peer.
    ///
    /// Refuses, with an error and without panicking: input above `MESSAGE_BYTES_MAX` (before
    /// decoding a byte), bytes that are not a message, trailing bytes, and messages that break a
    /// limit or the prefix rule's ordering ([`GossipMessage::validate`]).
    pub fn decode(bytes: &[u8]) -> Result<GossipMessage, GossipError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(GossipError::MessageTooLarge {
                len: bytes.len(),
                max: MESSAGE_BYTES_MAX,
            });
        }
        let (message, rest): (GossipMessage, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|source| GossipError::Decode { source })?;
        if !rest.is_empty() {
            return Err(GossipError::TrailingBytes {
                len: bytes.len(),
                trailing: rest.len(),
            });
        }
        message.validate()?;
        Ok(message)
    }

    /// Checks what a well-formed message must satisfy: list lengths within `MEMBERS_MAX`, no node
    /// twice in one list, at most `KEYS_PER_NODE` entries per delta with no key twice, entries in
    /// strictly increasing version order above `from_version`, and every value within its limit.
    pub fn validate(&self) -> Result<(), GossipError> {
        match &self.payload {
            Payload::Syn { digest, .. } => validate_digest(digest),
            Payload::Ack { deltas, request } => {
                validate_deltas(deltas)?;
                validate_digest(request)
            }
            Payload::Ack2 { deltas } => validate_deltas(deltas),
        }
    }
}

fn validate_digest(digest: &[DigestEntry]) -> Result<(), GossipError> {
    if digest.len() > MEMBERS_MAX {
        return Err(GossipError::TooManyDigestEntries {
            count: digest.len(),
            max: MEMBERS_MAX,
        });
    }
    unique_nodes(digest.iter().map(|e| e.node))
}

fn validate_deltas(deltas: &[NodeDelta]) -> Result<(), GossipError> {
    if deltas.len() > MEMBERS_MAX {
        return Err(GossipError::TooManyDeltas {
            count: deltas.len(),
            max: MEMBERS_MAX,
        });
    }
    unique_nodes(deltas.iter().map(|d| d.node))?;
    for delta in deltas {
        if delta.entries.len() > KEYS_PER_NODE {
            return Err(GossipError::TooManyEntries {
                node: delta.node,
                count: delta.entries.len(),
                max: KEYS_PER_NODE,
            });
        }
        let mut after = delta.from_version;
        let mut keys = [false; KEYS_PER_NODE];
        for entry in &delta.entries {
            if entry.version <= after {
                return Err(GossipError::EntryOutOfOrder {
                    node: delta.node,
                    version: entry.version,
                    after,
                });
            }
            after = entry.version;
            let key = entry.value.key();
            if std::mem::replace(&mut keys[key.index()], true) {
                return Err(GossipError::DuplicateKey {
                    node: delta.node,
                    key,
                });
            }
            entry.value.validate()?;
        }
    }
    Ok(())
}

fn unique_nodes(nodes: impl Iterator<Item = NodeId>) -> Result<(), GossipError> {
    // Sorting a copy is cheaper than a set for lists of a few hundred ids.
    let mut ids: Vec<NodeId> = nodes.collect();
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(GossipError::DuplicateNode { node: w[0] }),
        None => Ok(()),
    }
}

/// Length of the postcard encoding of `value`, counted without allocating.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .expect("counting bytes cannot fail")
}

/// Length of postcard's varint encoding of a length `n`.
pub(crate) fn varint_len(n: usize) -> usize {
    varint_u64_len(n as u64)
}

/// Length of postcard's varint encoding of `v`: seven bits per byte.
fn varint_u64_len(v: u64) -> usize {
    let bits = u64::BITS - v.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// A list being filled under a byte budget, counting the growth of its length prefix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fill {
    /// Bytes still free in the message.
    pub left: usize,
    /// Items in the list so far.
    pub count: usize,
}

impl Fill {
    /// Takes `bytes` for one more item if they (and the longer length prefix) fit.
    pub fn take(&mut self, bytes: usize) -> bool {
        let cost = bytes + varint_len(self.count + 1) - varint_len(self.count);
        if cost > self.left {
            return false;
        }
        self.left -= cost;
        self.count += 1;
        true
    }
}
