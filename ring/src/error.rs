//! `RingError`: why a ring could not be built, rebalanced, decoded or compared.

use cairn_proto::NodeId;

use crate::PartitionId;

/// Why a ring could not be built, rebalanced, decoded or compared.
///
/// Every variant is something a configuration, an operator or a peer can cause; bugs in this crate
/// are assertions instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Q is outside `PARTITIONS_MIN..=PARTITIONS_MAX`.
    #[error("{partitions} partitions is outside PARTITIONS_MIN..=PARTITIONS_MAX ({min}..={max})")]
    PartitionsOutOfRange {
        /// The configured partition count.
        partitions: u32,
        /// `PARTITIONS_MIN`.
        min: u32,
        /// `PARTITIONS_MAX`.
        max: u32,
    },
    /// Q is not a power of two, so partitions could not be the top bits of a hash.
    #[error("{partitions} partitions is not a power of two")]
    PartitionsNotPowerOfTwo {
        /// The configured partition count.
        partitions: u32,
    },
    /// N is 0 or above `REPLICAS_MAX`.
    #[error("{replicas} replicas is outside 1..=REPLICAS_MAX (1..={max})")]
    ReplicasOutOfRange {
        /// The configured replica count.
        replicas: usize,
        /// `REPLICAS_MAX`.
        max: usize,
    },
    /// The member list is empty: nobody could own the partitions.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// More members than `MEMBERS_MAX`.
    #[error("{count} members exceeds MEMBERS_MAX ({max})")]
    TooManyMembers {
        /// Members given.
        count: usize,
        /// `MEMBERS_MAX`.
        max: usize,
    },
    /// The same node id appears twice in the member list (with the same or another zone).
    #[error("node {node} is listed more than once as a member")]
    DuplicateMember {
        /// The repeated id.
        node: NodeId,
    },
    /// More members than partitions: some member would own nothing.
    #[error("{members} members cannot each own one of {partitions} partitions")]
    MoreMembersThanPartitions {
        /// Members given.
        members: usize,
        /// Q.
        partitions: u32,
    },
    /// A member's zone label is longer than `ZONE_BYTES_MAX`.
    #[error("zone label of node {node} is {len} bytes, above ZONE_BYTES_MAX ({max})")]
    ZoneTooLong {
        /// The member.
        node: NodeId,
        /// Length of its label in bytes.
        len: usize,
        /// `ZONE_BYTES_MAX`.
        max: usize,
    },
    /// A decoded ring does not list exactly one owner per partition.
    #[error("ring lists {owners} owners for {partitions} partitions")]
    OwnerCount {
        /// Owners listed.
        owners: usize,
        /// Q.
        partitions: u32,
    },
    /// A decoded ring gives a partition to a node that is not a member.
    #[error("partition {partition} is owned by {owner}, which is not a member")]
    OwnerNotMember {
        /// The partition.
        partition: PartitionId,
        /// Its listed owner.
        owner: NodeId,
    },
    /// A decoded ring has a member that owns no partition, so no preference-list walk would reach
    /// it.
    #[error("member {node} owns no partition")]
    MemberOwnsNothing {
        /// The idle member.
        node: NodeId,
    },
    /// Two rings with different partition counts were compared; their partitions are unrelated.
    #[error("cannot compare a ring of {left} partitions with one of {right}")]
    PartitionsDiffer {
        /// Q of the ring compared from.
        left: u32,
        /// Q of the ring compared to.
        right: u32,
    },
}
