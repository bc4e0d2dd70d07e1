//! Every limit and fixed shape of anti-entropy, in one place, qualifier last; relations between
//! them are checked at compile time below.
//!
//! The tree's shape (fan-out, depth) is part of the protocol: two replicas can only compare trees
//! of the same shape, so the root message carries it and a mismatch is refused.

use cairn_proto::limits::FRAME_BYTES_MAX;

/// Children per inner node. 16 rather than 2 or 4: a narrow tree sends fewer digests per
/// difference (a node's children cost `FANOUT` × 32 bytes, and `FANOUT / log2(FANOUT)` is smallest
/// at 2–4), but needs `log2(FANOUT)` times more round trips. At 16, a difference costs about
/// 0.5 KiB of digests per level and the whole descent takes `DEPTH` one-way trips.
pub const FANOUT: usize = 16;
/// `log2(FANOUT)`: bits of the key hash that pick a child at each level.
pub const FANOUT_BITS: u32 = FANOUT.trailing_zeros();

/// Levels below the root; the leaf buckets sit at level `DEPTH`.
///
/// 5 gives 16^5 = 1,048,576 leaf buckets, so at the design size (`KEYS_PER_PARTITION_DESIGN`) a
/// bucket holds about one key and one difference moves about one key's entry, not a range
/// (Cassandra's over-streaming). The leaves cost no memory of their own: below
/// `STORED_LEVELS` the digests are computed on demand from the entries, so a deeper tree only
/// adds one round of digests (~0.5 KiB per difference) to an exchange.
pub const DEPTH: usize = 5;
/// Leaf buckets per tree: `FANOUT ^ DEPTH`.
pub const LEAVES: usize = FANOUT.pow(DEPTH as u32);
/// Bits of the key hash that place a key in its leaf (`DEPTH × FANOUT_BITS`). They are read from
/// bytes `PATH_BYTE_OFFSET..` of the key hash.
pub const PATH_BITS: u32 = DEPTH as u32 * FANOUT_BITS;
/// Where in the key hash the tree path starts. The ring takes a key's partition from the first
/// 8 bytes of the same hash, so inside one partition those bits are (partly) constant; bytes 8..
/// are independent of the partition, so keys spread evenly over the leaves whatever Q is.
pub const PATH_BYTE_OFFSET: usize = 8;

/// Levels whose node digests are kept in memory (the root is level 0). Deeper nodes are summed on
/// demand from the entries below them, which costs at most `keys / FANOUT^STORED_LEVELS` entry
/// hashes per node (256 at the design size). 3 levels are 273 digests, 8.7 KiB per non-empty
/// tree, so even `PARTITIONS_MAX` trees on one node stay cheap.
pub const STORED_LEVELS: usize = 3;
/// Node digests kept per non-empty tree: `1 + FANOUT + … + FANOUT^(STORED_LEVELS-1)`.
pub const STORED_NODES: usize = (FANOUT.pow(STORED_LEVELS as u32) - 1) / (FANOUT - 1);

/// Bytes of a key hash, an object hash or a node digest (a blake3 output).
pub const HASH_BYTES: usize = 32;
/// Bytes of one (key hash, object hash) entry on the wire.
pub const ENTRY_BYTES: usize = 2 * HASH_BYTES;

/// Keys per partition the geometry is sized for (not enforced: a bigger partition still works,
/// its leaves just hold more keys and one difference moves more entries).
pub const KEYS_PER_PARTITION_DESIGN: usize = 1 << 20;
/// Keys per leaf bucket at the design size: the entries one difference moves besides its own.
pub const KEYS_PER_LEAF_DESIGN: usize = KEYS_PER_PARTITION_DESIGN.div_ceil(LEAVES);
/// Most entries of one leaf bucket in one message. A bucket holds this many keys only far past
/// the design size (~2 billion keys per partition) or with keys crafted to share a path; such a
/// bucket is sent in several chunks rather than refused, so anti-entropy cannot be wedged by it.
pub const KEYS_PER_LEAF_CHUNK_MAX: usize = 2048;
/// Most keys in one `Action::Diff` and in one verdict message: the driver reads and sends this
/// many objects at most per action, which is its unit of pacing.
pub const KEYS_PER_DIFF_BATCH_MAX: usize = 1024;

/// Largest encoded message, checked before a byte of it is decoded. Small next to a frame, so an
/// exchange never holds a connection for long, and big enough that a message of node digests
/// carries hundreds of nodes.
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Room the driver may need around a message in its frame (partition, session id, enum tags).
pub const MESSAGE_ENVELOPE_BYTES_MAX: usize = 1024;

/// Upper bound on a message's fixed part: enum tag, level, up to three sequence lengths (varints
/// of at most 5 bytes), the `last` flag.
pub const MESSAGE_HEADER_BYTES_MAX: usize = 32;
/// Upper bound on one node item of a `Nodes` message: parent index (varint ≤ 5 bytes), the
/// length of the packed digests (varint ≤ 5) and the digests.
pub const NODE_ITEM_BYTES_MAX: usize = 5 + 5 + FANOUT * HASH_BYTES;
/// Upper bound on one leaf chunk's fixed part: bucket (varint ≤ 5), two optional key hashes,
/// the length of the packed entries (varint ≤ 5).
pub const CHUNK_HEADER_BYTES_MAX: usize = 5 + 2 * (1 + HASH_BYTES) + 5;
/// Most node items in one `Nodes` message.
pub const NODES_PER_MESSAGE_MAX: usize =
    (MESSAGE_BYTES_MAX - MESSAGE_HEADER_BYTES_MAX) / NODE_ITEM_BYTES_MAX;

const _: () = assert!(FANOUT.is_power_of_two() && FANOUT >= 2);
// Children digests travel as a fixed array, which serde supports up to 32 elements; the root
// message carries the fan-out in a byte.
const _: () = assert!(FANOUT <= 32);
const _: () = assert!(DEPTH >= 1);
// Steps of an exchange (root, DEPTH levels, entries, verdict) are numbered in a byte.
const _: () = assert!(DEPTH + 2 <= u8::MAX as usize);
// Node and leaf indices are u32, and the path is read from one big-endian u32.
const _: () = assert!(PATH_BITS <= 32);
const _: () = assert!(LEAVES == 1 << PATH_BITS);
const _: () = assert!(PATH_BYTE_OFFSET + 4 <= HASH_BYTES);
// The ring reads the first 8 bytes of the key hash; the path must not overlap them.
const _: () = assert!(PATH_BYTE_OFFSET >= 8);
const _: () = assert!(1 <= STORED_LEVELS && STORED_LEVELS <= DEPTH);
// The design size fits the leaves at the stated keys per leaf.
const _: () = assert!(LEAVES * KEYS_PER_LEAF_DESIGN >= KEYS_PER_PARTITION_DESIGN);
const _: () = assert!(KEYS_PER_LEAF_DESIGN <= KEYS_PER_LEAF_CHUNK_MAX);
// A fresh message holds a full chunk, a full verdict batch and at least one node item, so a
// session always makes progress.
const _: () = assert!(
    MESSAGE_HEADER_BYTES_MAX + CHUNK_HEADER_BYTES_MAX + KEYS_PER_LEAF_CHUNK_MAX * ENTRY_BYTES
        <= MESSAGE_BYTES_MAX
);
const _: () =
    assert!(MESSAGE_HEADER_BYTES_MAX + KEYS_PER_DIFF_BATCH_MAX * HASH_BYTES <= MESSAGE_BYTES_MAX);
const _: () = assert!(NODES_PER_MESSAGE_MAX >= 1);
const _: () = assert!(KEYS_PER_DIFF_BATCH_MAX >= 1 && KEYS_PER_LEAF_CHUNK_MAX >= 1);
// A message, wrapped by the driver, fits one frame of the wire protocol.
const _: () = assert!(MESSAGE_BYTES_MAX + MESSAGE_ENVELOPE_BYTES_MAX <= FRAME_BYTES_MAX);
// An anti-entropy message fits the room a peer request gives it (`PEER_MESSAGE_BYTES_MAX`).
const _: () = assert!(MESSAGE_BYTES_MAX <= cairn_proto::limits::PEER_MESSAGE_BYTES_MAX);
