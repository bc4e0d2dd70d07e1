//! Every size limit a client, a peer or a disk can hit, in one place, qualifier last.
//!
//! Each limit is checked where data enters (the CLI before sending, the node before storing, the
//! frame reader before decoding) and exceeding it is a `LimitError` naming the limit and the size.

/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest single value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most siblings (live values and tombstones) a client write may leave on a key; a write that
/// would exceed it is refused rather than silently dropping a concurrent value (Riak's
/// `too_many_siblings`).
pub const SIBLINGS_MAX: usize = 64;
/// Most entries (actors) a client write may leave in a key's version vector.
pub const VV_ENTRIES_MAX: usize = 64;
/// Largest encoded object (all siblings plus their causal history) a client write may leave.
pub const OBJECT_BYTES_MAX: usize = 3 * 1024 * 1024;

// The rule that keeps replicas together: client writes stop at the limits above, but merges from
// peers (replicate, read repair, anti-entropy, handoff) are accepted up to the larger hard limits
// below, and a merge that leaves a key over a client limit is reported (log and metric). Replicas
// on the two sides of a partition each accept writes up to the client limits, so their merge, at
// most twice a client limit, is always accepted; only three or more sides filling one key at once
// can pass a hard limit, and such a merge is refused (and reported).

/// Most siblings a merge from a peer may leave on a key.
pub const SIBLINGS_HARD_MAX: usize = 4 * SIBLINGS_MAX;
/// Most entries a merge from a peer may leave in a key's version vector.
pub const VV_ENTRIES_HARD_MAX: usize = 2 * VV_ENTRIES_MAX;
/// Largest encoded object a merge from a peer may leave: whatever a replicate frame carries.
pub const OBJECT_BYTES_HARD_MAX: usize = FRAME_BYTES_MAX - FRAME_OVERHEAD_MAX;
const _: () = assert!(SIBLINGS_HARD_MAX >= 2 * SIBLINGS_MAX);
const _: () = assert!(VV_ENTRIES_HARD_MAX >= 2 * VV_ENTRIES_MAX);
const _: () = assert!(OBJECT_BYTES_HARD_MAX >= 2 * OBJECT_BYTES_MAX);
/// Bytes of the tag (keyed blake3) that ends every context a node hands to a client.
pub const CONTEXT_TAG_BYTES: usize = 32;
/// Largest encoded client context token, in bytes before base64: the version vector of a key
/// merged up to its hard limit, and its tag (a client must be able to resolve such a key).
pub const CONTEXT_BYTES_MAX: usize = 64 + VV_ENTRIES_HARD_MAX * 40 + CONTEXT_TAG_BYTES;
/// Largest frame on the wire (length prefix excluded), checked before a byte of it is decoded.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Longest node name a peer request may carry (the node refuses longer names in `node.toml`).
pub const NODE_NAME_BYTES_MAX: usize = 64;
/// Largest gossip or anti-entropy message a peer request or response may embed; each protocol's
/// own message limit is asserted to be within it.
pub const PEER_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(PEER_MESSAGE_BYTES_MAX + FRAME_OVERHEAD_MAX < FRAME_BYTES_MAX);

/// Largest encoded layout a `PeerRequest::Layout` or its answer may carry (the layout crate's
/// own bound on an encoded layout is asserted to be within it where both are known).
pub const LAYOUT_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(LAYOUT_BYTES_MAX + FRAME_OVERHEAD_MAX < FRAME_BYTES_MAX);

/// Most key hashes in one `PeerRequest::Keys` (anti-entropy asks for one diff batch at a time).
pub const KEY_HASHES_PER_REQUEST_MAX: usize = 1024;
/// Partitions one `PeerRequest::PartitionSizes` asks about: the ring's `PARTITIONS_MAX`, so one
/// request covers any plan (an answer is 20 bytes or less per partition).
pub const PARTITION_SIZES_PER_REQUEST_MAX: usize = 4096;

/// Most tombstones in one `PeerRequest::Tombstones` (one reaper round asks about at most this
/// many keys).
pub const TOMBSTONE_PROBES_PER_REQUEST_MAX: usize = 256;
// A full probe list (each key with its length, a 32-byte object hash) fits a frame.
const _: () = assert!(
    TOMBSTONE_PROBES_PER_REQUEST_MAX * (KEY_BYTES_MAX + 32 + 8) + FRAME_OVERHEAD_MAX
        < FRAME_BYTES_MAX
);

/// Most items in one `PeerRequest::Batch` (replicates and reads a coordinator sends one peer in
/// one frame); the sender also keeps a batch's bytes within its own budget, below a frame.
pub const PEER_BATCH_ITEMS_MAX: usize = 256;

/// Room in a frame for everything that is not the object itself (message tags, key, context,
/// a forward's request id).
const FRAME_OVERHEAD_MAX: usize = KEY_BYTES_MAX + CONTEXT_BYTES_MAX + 4096;

const _: () = assert!(VALUE_BYTES_MAX < OBJECT_BYTES_MAX);
const _: () = assert!(OBJECT_BYTES_HARD_MAX + FRAME_OVERHEAD_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX < u32::MAX as usize);
/// Longest node address (host:port) a request may carry; DNS names stop at 253 bytes. Gossip
/// holds addresses to the same bound.
pub const ADDRESS_BYTES_MAX: usize = 256;
// The keys answering a full `PeerRequest::Keys` (each with a length and an option tag) fit a
// frame.
const _: () = assert!(
    KEY_HASHES_PER_REQUEST_MAX * (KEY_BYTES_MAX + 8) + FRAME_OVERHEAD_MAX < FRAME_BYTES_MAX
);
