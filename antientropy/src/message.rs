//! The messages two replicas exchange, their postcard encoding under `MESSAGE_BYTES_MAX`, and
//! the checks that need no session state (shape, ranges, lengths, ordering inside a chunk).

use serde::{Deserialize, Serialize};

use crate::hash::{Digest, KeyHash, ObjectHash};
use crate::limits::{
    DEPTH, FANOUT, KEYS_PER_DIFF_BATCH_MAX, KEYS_PER_LEAF_CHUNK_MAX, LEAVES, MESSAGE_BYTES_MAX,
    NODES_PER_MESSAGE_MAX,
};
use crate::tree::nodes_at;
use crate::AntiEntropyError;

/// Step of the root message.
pub const STEP_ROOT: u8 = 0;
/// Step of the leaf entries, after the `DEPTH` steps of node digests (step `k` carries level `k`).
pub const STEP_ENTRIES: u8 = DEPTH as u8 + 1;
/// Step of the verdict, the last one.
pub const STEP_VERDICT: u8 = DEPTH as u8 + 2;

/// One message of an exchange. Steps alternate between the two sides: the initiator sends the
/// even steps, the responder the odd ones, so every step is one one-way trip. A step may span
/// several messages; the last one says so with `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Step 0, initiator → responder: the tree's shape and root digest (35 bytes encoded).
    Root {
        /// `FANOUT` of the sender's build.
        fanout: u8,
        /// `DEPTH` of the sender's build.
        depth: u8,
        /// The sender's root digest.
        digest: Digest,
    },
    /// Steps `1..=DEPTH`: for every node of `level - 1` where the sender found its digest differs
    /// from the peer's, the sender's digests of that node's children (at `level`). An empty step
    /// means nothing differs any more: the exchange is over.
    Nodes {
        /// Level of the digests carried, `1..=DEPTH`.
        level: u8,
        /// Differing parents in strictly ascending order (across all messages of the step).
        nodes: Vec<NodeChildren>,
        /// Whether this is the step's last message.
        last: bool,
    },
    /// Step `DEPTH + 1`: the sender's entries of every leaf bucket whose digest differs from the
    /// peer's, in ascending bucket order. A bucket too big for one message comes in several
    /// chunks, each starting where the previous stopped.
    Entries {
        /// Chunks in ascending (bucket, position) order.
        chunks: Vec<LeafChunk>,
        /// Whether this is the step's last message.
        last: bool,
    },
    /// Step `DEPTH + 2`: what the receiver of the entries found, so both sides learn the same
    /// differences. Lists are from the verdict sender's point of view.
    Verdict {
        /// Keys the verdict sender holds and its peer lacks.
        #[serde(with = "packed::keys")]
        only_sender: Vec<KeyHash>,
        /// Keys the peer holds and the verdict sender lacks.
        #[serde(with = "packed::keys")]
        only_receiver: Vec<KeyHash>,
        /// Keys both hold with different object hashes.
        #[serde(with = "packed::keys")]
        differing: Vec<KeyHash>,
        /// Whether this is the step's last message.
        last: bool,
    },
}

/// The children digests of one differing node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChildren {
    /// The node (at the message's level − 1).
    pub parent: u32,
    /// Its children's digests, child 0 first.
    #[serde(with = "packed::digests")]
    pub digests: [Digest; FANOUT],
}

/// The sender's entries of one leaf bucket in the key range `(after, through]` (tree order; an
/// absent bound is the bucket's edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafChunk {
    /// The leaf bucket, `0..LEAVES`.
    pub bucket: u32,
    /// Exclusive lower bound: where the previous chunk of this bucket stopped; `None` for the
    /// bucket's first chunk.
    pub after: Option<KeyHash>,
    /// Inclusive upper bound: the last key of this chunk when more chunks of the bucket follow;
    /// `None` when this chunk runs to the end of the bucket.
    pub through: Option<KeyHash>,
    /// Every entry the sender holds in the range, strictly ascending in tree order.
    #[serde(with = "packed::entries")]
    pub entries: Vec<(KeyHash, ObjectHash)>,
}

impl Message {
    /// The step this message belongs to.
    pub fn step(&self) -> u8 {
        match self {
            Message::Root { .. } => STEP_ROOT,
            Message::Nodes { level, .. } => *level,
            Message::Entries { .. } => STEP_ENTRIES,
            Message::Verdict { .. } => STEP_VERDICT,
        }
    }

    /// The postcard encoding.
    ///
    /// Messages a [`crate::Session`] builds always fit; a hand-built one may not, and is refused
    /// with [`AntiEntropyError::MessageTooLarge`].
    pub fn encode(&self) -> Result<Vec<u8>, AntiEntropyError> {
        let bytes = postcard::to_stdvec(self)
            .expect("postcard encodes these plain structs into a Vec without failing");
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(AntiEntropyError::MessageTooLarge {
                len: bytes.len(),
                max: MESSAGE_BYTES_MAX,
            });
        }
        Ok(bytes)
    }

    /// Decodes and checks a message from a peer: the length against `MESSAGE_BYTES_MAX` before
    /// a byte is decoded, then the encoding (nothing may follow it), then [`Message::validate`].
    /// Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, AntiEntropyError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(AntiEntropyError::MessageTooLarge {
                len: bytes.len(),
                max: MESSAGE_BYTES_MAX,
            });
        }
        let (message, rest) = postcard::take_from_bytes::<Message>(bytes).map_err(|e| {
            AntiEntropyError::Undecodable {
                len: bytes.len(),
                reason: e.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(AntiEntropyError::TrailingBytes {
                len: bytes.len(),
                trailing: rest.len(),
            });
        }
        message.validate()?;
        Ok(message)
    }

    /// The checks that need no session: the tree shape, levels and indices in range, list
    /// lengths within their limits, and each chunk's keys in its bucket, in order and within its
    /// bounds. [`crate::Session::handle_message`] runs them too, so a message built in memory
    /// (a simulator's) gets the same scrutiny as one off the wire.
    pub fn validate(&self) -> Result<(), AntiEntropyError> {
        match self {
            Message::Root { fanout, depth, .. } => {
                if usize::from(*fanout) != FANOUT || usize::from(*depth) != DEPTH {
                    return Err(AntiEntropyError::GeometryMismatch {
                        fanout: *fanout,
                        depth: *depth,
                        local_fanout: FANOUT as u8,
                        local_depth: DEPTH as u8,
                    });
                }
            }
            Message::Nodes { level, nodes, .. } => {
                if !(1..=DEPTH).contains(&usize::from(*level)) {
                    return Err(AntiEntropyError::LevelOutOfRange {
                        level: *level,
                        max: DEPTH as u8,
                    });
                }
                check_count(
                    "nodes",
                    nodes.len(),
                    "NODES_PER_MESSAGE_MAX",
                    NODES_PER_MESSAGE_MAX,
                )?;
                let parents = nodes_at(usize::from(*level) - 1);
                for n in nodes {
                    if u64::from(n.parent) >= parents {
                        return Err(AntiEntropyError::IndexOutOfRange {
                            level: level - 1,
                            index: n.parent,
                            nodes: parents,
                        });
                    }
                }
            }
            Message::Entries { chunks, .. } => {
                for chunk in chunks {
                    chunk.validate()?;
                }
            }
            Message::Verdict {
                only_sender,
                only_receiver,
                differing,
                ..
            } => {
                let count = only_sender.len() + only_receiver.len() + differing.len();
                check_count(
                    "verdict keys",
                    count,
                    "KEYS_PER_DIFF_BATCH_MAX",
                    KEYS_PER_DIFF_BATCH_MAX,
                )?;
            }
        }
        Ok(())
    }
}

impl LeafChunk {
    fn validate(&self) -> Result<(), AntiEntropyError> {
        let bucket = self.bucket;
        if bucket as usize >= LEAVES {
            return Err(AntiEntropyError::IndexOutOfRange {
                level: DEPTH as u8,
                index: bucket,
                nodes: LEAVES as u64,
            });
        }
        check_count(
            "chunk entries",
            self.entries.len(),
            "KEYS_PER_LEAF_CHUNK_MAX",
            KEYS_PER_LEAF_CHUNK_MAX,
        )?;
        for key in self.after.iter().chain(&self.through) {
            if key.leaf() != bucket {
                return Err(AntiEntropyError::KeyOutsideBucket { bucket, key: *key });
            }
        }
        // Every key must come strictly after the previous one (or `after`) and not past
        // `through`; this also rejects `through <= after`, which a range scan could not take.
        let mut floor = self.after.map(|k| k.tree_order());
        let keys = self.entries.iter().map(|(k, _)| k).chain(&self.through);
        for (i, key) in keys.enumerate() {
            if key.leaf() != bucket {
                return Err(AntiEntropyError::KeyOutsideBucket { bucket, key: *key });
            }
            let order = key.tree_order();
            let is_through = i == self.entries.len();
            let ok = match floor {
                None => true,
                // `through` may equal the last entry: it is that entry.
                Some(f) if is_through && !self.entries.is_empty() => order >= f,
                Some(f) => order > f,
            };
            if !ok {
                return Err(AntiEntropyError::EntriesOutOfOrder { bucket, key: *key });
            }
            floor = Some(order);
        }
        Ok(())
    }
}

fn check_count(
    what: &'static str,
    count: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), AntiEntropyError> {
    if count > max {
        return Err(AntiEntropyError::TooManyItems {
            what,
            count,
            limit,
            max,
        });
    }
    Ok(())
}

/// Lists of hashes on the wire as one byte string each (a length, then the hashes back to back)
/// rather than as sequences of 32-element tuples: the same bytes plus one length per list instead
/// of per item, and a decoder that copies slices instead of visiting every byte.
mod packed {
    use std::fmt;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::hash::{Digest, KeyHash, ObjectHash};
    use crate::limits::{ENTRY_BYTES, FANOUT, HASH_BYTES};

    /// Accepts any byte string; the caller checks its length.
    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string of packed hashes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    fn hash(bytes: &[u8]) -> [u8; HASH_BYTES] {
        let mut h = [0u8; HASH_BYTES];
        h.copy_from_slice(bytes);
        h
    }

    /// The byte string, checked to be whole items of `width` bytes.
    fn items<'de, D: Deserializer<'de>>(d: D, width: usize) -> Result<Vec<u8>, D::Error> {
        let bytes = d.deserialize_bytes(Bytes)?;
        if bytes.len() % width != 0 {
            return Err(D::Error::invalid_length(
                bytes.len(),
                &"a whole number of packed hashes",
            ));
        }
        Ok(bytes)
    }

    pub(super) mod digests {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            digests: &[Digest; FANOUT],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let mut bytes = [0u8; FANOUT * HASH_BYTES];
            for (out, d) in bytes.chunks_exact_mut(HASH_BYTES).zip(digests) {
                out.copy_from_slice(&d.0);
            }
            s.serialize_bytes(&bytes)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<[Digest; FANOUT], D::Error> {
            let bytes = items(d, HASH_BYTES)?;
            if bytes.len() != FANOUT * HASH_BYTES {
                return Err(D::Error::invalid_length(bytes.len(), &"FANOUT digests"));
            }
            Ok(std::array::from_fn(|i| {
                Digest(hash(&bytes[i * HASH_BYTES..(i + 1) * HASH_BYTES]))
            }))
        }
    }

    pub(super) mod keys {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(keys: &[KeyHash], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&keys.iter().flat_map(|k| k.0).collect::<Vec<u8>>())
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<KeyHash>, D::Error> {
            let bytes = items(d, HASH_BYTES)?;
            Ok(bytes
                .chunks_exact(HASH_BYTES)
                .map(|c| KeyHash(hash(c)))
                .collect())
        }
    }

    pub(super) mod entries {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            entries: &[(KeyHash, ObjectHash)],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let bytes: Vec<u8> = entries
                .iter()
                .flat_map(|(k, o)| k.0.into_iter().chain(o.0))
                .collect();
            s.serialize_bytes(&bytes)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(KeyHash, ObjectHash)>, D::Error> {
            let bytes = items(d, ENTRY_BYTES)?;
            Ok(bytes
                .chunks_exact(ENTRY_BYTES)
                .map(|c| {
                    (
                        KeyHash(hash(&c[..HASH_BYTES])),
                        ObjectHash(hash(&c[HASH_BYTES..])),
                    )
                })
                .collect())
        }
    }
}
