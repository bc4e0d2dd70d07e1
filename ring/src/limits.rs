//! Every limit of the ring, in one place, qualifier last; relations between them are checked at
//! compile time below.

use cairn_proto::limits::FRAME_BYTES_MAX;

/// Fewest partitions (Q) a ring may have. One partition is a legal ring (a single-node development
/// cluster); it just cannot spread load.
pub const PARTITIONS_MIN: u32 = 1;
/// Most partitions (Q) a ring may have. Each partition is a unit of handoff and of anti-entropy
/// (one Merkle tree per replica), and the whole ring travels in gossip, so Q bounds both the
/// per-node bookkeeping and the size of the ring on the wire.
pub const PARTITIONS_MAX: u32 = 4096;
/// Q when nothing else is configured: room for 64 nodes with one partition each, and small enough
/// that per-partition bookkeeping is cheap on a three-node cluster.
pub const PARTITIONS_DEFAULT: u32 = 64;

/// Most members one ring may hold. Every member owns at least one partition, so this can never
/// exceed `PARTITIONS_MAX`.
pub const MEMBERS_MAX: usize = 1024;

/// Most replicas (N) per key. Beyond 7 a quorum costs more round trips than it buys durability,
/// and preference lists stay short enough to walk on every request.
pub const REPLICAS_MAX: usize = 7;
/// N when nothing else is configured.
pub const REPLICAS_DEFAULT: usize = 3;

/// Longest zone label, in bytes. Labels name a rack or an availability zone; the bound keeps the
/// ring's encoding small (it is gossiped whole).
pub const ZONE_BYTES_MAX: usize = 64;

/// Upper bound on a ring's postcard encoding: config, then members (id varint ≤ 10 bytes, option
/// tag, label length and label), then owners (id varint ≤ 10 bytes each), plus slack for the
/// sequence lengths.
pub const RING_ENCODED_BYTES_MAX: usize =
    64 + MEMBERS_MAX * (10 + 1 + 2 + ZONE_BYTES_MAX) + PARTITIONS_MAX as usize * 10;

const _: () = assert!(PARTITIONS_MIN >= 1);
const _: () = assert!(PARTITIONS_MIN.is_power_of_two());
const _: () = assert!(PARTITIONS_MAX.is_power_of_two());
const _: () = assert!(PARTITIONS_DEFAULT.is_power_of_two());
const _: () = assert!(PARTITIONS_MIN <= PARTITIONS_DEFAULT && PARTITIONS_DEFAULT <= PARTITIONS_MAX);
// `partition_of` keeps the top log2(Q) bits of a 64-bit hash prefix.
const _: () = assert!(PARTITIONS_MAX.trailing_zeros() < 64);
// Every member must be able to own a partition.
const _: () = assert!(MEMBERS_MAX as u64 <= PARTITIONS_MAX as u64);
const _: () = assert!(1 <= REPLICAS_DEFAULT && REPLICAS_DEFAULT <= REPLICAS_MAX);
const _: () = assert!(REPLICAS_MAX <= MEMBERS_MAX);
// The largest ring fits in one frame, so gossip can always carry a whole ring.
const _: () = assert!(RING_ENCODED_BYTES_MAX < FRAME_BYTES_MAX);
