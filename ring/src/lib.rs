//! The partition ring: fixed equal partitions, balanced claims and preference lists (pure, no I/O).
//!
//! The key space is cut into Q equal partitions (Q a power of two, fixed for the cluster's life);
//! a key's partition is the top `log2(Q)` bits of `blake3(key)` ([`Ring::partition_of`]). Each
//! partition has one owner. A key's N replicas are found by walking the ring from its partition
//! and taking each new owner ([`Ring::preference_list`]), skipping owners in a zone that already
//! holds a replica.
//!
//! Ownership is decided in two ways:
//! - [`Ring::new`] claims from scratch: every member owns `floor(Q/n)` or `ceil(Q/n)` partitions,
//!   striped so that a member's partitions are as far apart as any balanced claim can put them
//!   (whenever possible, no member owns two of N consecutive partitions, as Riak's claim aims
//!   for).
//! - [`Ring::rebalance`] changes the member set, moving the fewest partitions a balanced ring
//!   allows: from a balanced ring a join moves `floor(Q/(n+1))` partitions, all to the newcomer,
//!   and a leave moves only the leaver's partitions.
//!
//! Architecture invariant: this crate reads no clock, does no I/O and has no randomness; the same
//! inputs give the same ring on every node.

mod claim;
mod error;
pub mod limits;
mod ring;

pub use error::RingError;
pub use ring::{Member, Move, PartitionId, PreferenceList, Ring, RingConfig};
