//! The layout: which nodes own which partitions, as an explicit, numbered history that only
//! operator commands change, and the state of the transfer a change starts (pure, no I/O).
//!
//! Liveness never changes ownership (Dynamo §4.8.1): a node that is down keeps its partitions,
//! and fallbacks stand in for it. Ownership changes only through a [`Change`] (join, leave,
//! remove, replace) that an operator plans ([`Layout::plan`]) and applies ([`Layout::apply`]),
//! which pushes a new [`LayoutVersion`] onto the history. While two versions are live:
//!
//! 1. every member acknowledges the new version ([`Layout::ack`]); no data moves before all have,
//!    so a conflicting proposal (two operators at two nodes) is settled first;
//! 2. writes need W acknowledgements in the replica set of *every* live version
//!    ([`Layout::write_sets`]);
//! 3. each old replica of a partition whose replica set changed pushes every key it holds to the
//!    new replicas ([`Layout::transfers`]) and says so ([`Layout::record_pushed`]);
//! 4. reads of a partition switch to the new version once a quorum of its old replicas has pushed
//!    ([`Layout::read_version`]);
//! 5. the old version retires once every old replica that is not departed (removed or replaced
//!    while dead) or overridden ([`Layout::force`], which may lose data) has pushed
//!    ([`Layout::poll_retire`]); only then may a node drop the copies no live version needs
//!    ([`Layout::replicates`]).
//!
//! Layouts spread by merging ([`Layout::merge`]): the history whose newest version is greater by
//! (version, digest) wins, and progress (acks, pushes, overrides) is a grow-only set per version,
//! so merging is commutative and idempotent and every node ends with the same history.
//!
//! Architecture invariant: this crate reads no clock, does no I/O and has no randomness.

mod error;
pub mod held;
mod layout;
pub mod limits;
mod version;

pub use error::LayoutError;
pub use layout::{Layout, MergeOutcome, PartitionProgress, Retired, Transfer, TransitionStatus};
pub use version::{Change, Digest, LayoutVersion, PartitionMove, Plan};
