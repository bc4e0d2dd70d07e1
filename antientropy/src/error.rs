//! `AntiEntropyError`: why a message was refused or an exchange session failed.

use crate::hash::KeyHash;

/// Why a message was refused or an exchange session failed.
///
/// Every variant is something a peer (or a corrupted byte on the way) can cause; bugs in this
/// crate are assertions instead. After any of them the session is failed and the driver should
/// drop it: the next exchange starts afresh from the roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AntiEntropyError {
    /// An encoded message is longer than `MESSAGE_BYTES_MAX`; refused before decoding.
    #[error("message of {len} bytes exceeds MESSAGE_BYTES_MAX ({max})")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// `MESSAGE_BYTES_MAX`.
        max: usize,
    },
    /// The bytes are not a message.
    #[error("message of {len} bytes does not decode: {reason}")]
    Undecodable {
        /// Their length.
        len: usize,
        /// What the decoder found.
        reason: String,
    },
    /// A message decoded but bytes were left after it.
    #[error("message of {len} bytes has {trailing} bytes after its end")]
    TrailingBytes {
        /// The whole length.
        len: usize,
        /// Bytes left over.
        trailing: usize,
    },
    /// The peer's tree has another shape, so node digests cannot be compared (a node running
    /// another build).
    #[error(
        "peer tree has fan-out {fanout} and depth {depth}, ours {local_fanout} and {local_depth}"
    )]
    GeometryMismatch {
        /// The peer's fan-out.
        fanout: u8,
        /// The peer's depth.
        depth: u8,
        /// `FANOUT`.
        local_fanout: u8,
        /// `DEPTH`.
        local_depth: u8,
    },
    /// A message arrived for a step the session is not at (or after it ended).
    #[error("got a message of step {got}, expected {}", expected.map_or("none (session over)".to_string(), |s| format!("step {s}")))]
    UnexpectedMessage {
        /// The step the message belongs to (0 root, 1..=DEPTH node levels, then entries, verdict).
        got: u8,
        /// The step the session waits for; `None` when it is not waiting for the peer.
        expected: Option<u8>,
    },
    /// A node message names a level outside `1..=DEPTH`.
    #[error("level {level} is outside 1..=DEPTH (1..={max})")]
    LevelOutOfRange {
        /// The level given.
        level: u8,
        /// `DEPTH`.
        max: u8,
    },
    /// A node or leaf index does not exist at its level.
    #[error("node {index} does not exist at level {level} ({nodes} nodes)")]
    IndexOutOfRange {
        /// The level.
        level: u8,
        /// The index given.
        index: u32,
        /// Nodes at that level.
        nodes: u64,
    },
    /// The peer answered about a node whose digest this side never sent, or listed a key in a
    /// bucket this side never sent.
    #[error("peer answered about node {index} at level {level}, which was never offered")]
    NotOffered {
        /// The level of the node (`DEPTH` for a leaf bucket).
        level: u8,
        /// Its index.
        index: u32,
    },
    /// Items of one step were not in strictly ascending order (a repeat or a step back).
    #[error("node {index} at level {level} does not follow {previous}")]
    OutOfOrder {
        /// The level.
        level: u8,
        /// The index that came.
        index: u32,
        /// The index before it.
        previous: u32,
    },
    /// A list in a message is longer than its limit.
    #[error("{what}: {count} items exceeds {limit} ({max})")]
    TooManyItems {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit's name.
        limit: &'static str,
        /// The limit.
        max: usize,
    },
    /// A leaf chunk holds or names a key that does not live in its bucket.
    #[error("key {key} is not in leaf bucket {bucket}")]
    KeyOutsideBucket {
        /// The chunk's bucket.
        bucket: u32,
        /// The stray key.
        key: KeyHash,
    },
    /// A leaf chunk's entries are not strictly ascending in tree order, or fall outside the
    /// chunk's bounds.
    #[error("entries of leaf bucket {bucket} out of order or out of bounds at key {key}")]
    EntriesOutOfOrder {
        /// The chunk's bucket.
        bucket: u32,
        /// The first offending key.
        key: KeyHash,
    },
    /// Chunks of one bucket do not continue where the previous one stopped, or a bucket was left
    /// unfinished.
    #[error("chunks of leaf bucket {bucket} leave a gap")]
    ChunkGap {
        /// The bucket.
        bucket: u32,
    },
}
