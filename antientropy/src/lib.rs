//! Merkle-tree anti-entropy: per-partition trees and the exchange session that finds the keys
//! two replicas disagree on (pure, no I/O).
//!
//! Two pieces:
//! - [`MerkleTree`]: one per partition replica, over (key hash → object hash) entries the node
//!   supplies as blake3 digests (`key_hash = blake3(key)`, `object_hash = blake3(encoded
//!   object)`; this crate never sees keys or objects). Updated on every write with
//!   [`MerkleTree::insert`] / [`MerkleTree::remove`] in O(depth), rebuilt after a restart with
//!   [`MerkleTree::from_entries`]; never rebuilt for an exchange.
//! - [`Session`]: one side of an exchange between two replicas of a partition. It compares roots,
//!   descends level by level only into differing children, exchanges the entries of differing
//!   leaf buckets, and reports the differing keys as [`Action::Diff`]. The driver maps the key
//!   hashes back to keys (the node keeps `key_hash → key` in its store), reads the local objects
//!   and sends them to the peer, which merges them with `sync`; both sides do this, so repair
//!   runs both ways and keeps concurrent values as siblings.
//!
//! Cost follows the number of differences, not the number of keys (the lesson of Riak's AAE and
//! Cassandra's repair, REFERENCE.md §4): identical replicas exchange one round trip of 39 bytes;
//! d differences cost about `d × DEPTH × 0.5 KiB` of digests plus 64 bytes per entry of each
//! differing leaf, in at most `DEPTH + 3` one-way trips. Leaves are small enough (2^20 per tree)
//! that at a million keys per partition one difference moves about one neighbour's entry, not a
//! range. See [`Session`] for the protocol and `limits` for the shape and its reasons.
//!
//! Architecture invariant: this crate reads no clock, does no I/O and draws no randomness; the
//! same trees and messages give the same actions on every run.

mod error;
mod hash;
pub mod limits;
mod message;
mod session;
mod tree;

pub use error::AntiEntropyError;
pub use hash::{Digest, KeyHash, ObjectHash};
pub use message::{LeafChunk, Message, NodeChildren, STEP_ENTRIES, STEP_ROOT, STEP_VERDICT};
pub use session::{Action, Role, Session};
pub use tree::MerkleTree;
