//! `GossipError`: why a configuration, a local state change or a peer's message was refused.

use cairn_proto::NodeId;

use crate::Key;

/// Why a configuration, a local state change or a peer's message was refused.
///
/// Every variant is something a configuration, the driver or a peer can cause; bugs in this crate
/// are assertions instead. A refused message changes nothing: it is checked whole before any of it
/// is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GossipError {
    /// The message budget is outside `MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX`.
    #[error("message budget of {budget} bytes is outside {min}..={max}")]
    BudgetOutOfRange {
        /// The configured budget.
        budget: usize,
        /// `MESSAGE_BYTES_MIN`.
        min: usize,
        /// `MESSAGE_BYTES_MAX`.
        max: usize,
    },
    /// The phi threshold is not a positive finite number.
    #[error("phi threshold {threshold} is not a positive finite number")]
    PhiThresholdInvalid {
        /// The configured threshold.
        threshold: f64,
    },
    /// A configured duration that must be positive is zero.
    #[error("configured {field} is zero")]
    ZeroDuration {
        /// The configuration field.
        field: &'static str,
    },
    /// A configured duration is longer than `CONFIG_DURATION_MAX`.
    #[error("configured {field} of {value:?} exceeds CONFIG_DURATION_MAX ({max:?})")]
    DurationTooLong {
        /// The configuration field.
        field: &'static str,
        /// Its value.
        value: std::time::Duration,
        /// `CONFIG_DURATION_MAX`.
        max: std::time::Duration,
    },
    /// More seeds than `SEEDS_MAX`.
    #[error("{count} seeds exceeds SEEDS_MAX ({max})")]
    TooManySeeds {
        /// Seeds configured.
        count: usize,
        /// `SEEDS_MAX`.
        max: usize,
    },
    /// A value (address, zone label or ring bytes; local, configured or from a peer) is longer
    /// than its limit.
    #[error("{key:?} value of {len} bytes exceeds its limit of {max}")]
    ValueTooLong {
        /// Which key.
        key: Key,
        /// Its length in bytes.
        len: usize,
        /// The limit (`ADDRESS_BYTES_MAX`, `ZONE_BYTES_MAX` or `RING_BYTES_MAX`).
        max: usize,
    },
    /// `set_local` was given a heartbeat: the heartbeat is the gossip loop's own, bumped by every
    /// tick, because it is what tells other nodes this one is running.
    #[error("the heartbeat is bumped by every tick and cannot be set")]
    HeartbeatNotSettable,
    /// An encoded message is larger than `MESSAGE_BYTES_MAX`; not a byte of it was decoded.
    #[error("gossip message of {len} bytes exceeds MESSAGE_BYTES_MAX ({max})")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// `MESSAGE_BYTES_MAX`.
        max: usize,
    },
    /// The bytes are not a postcard-encoded gossip message.
    #[error("gossip message does not decode: {source}")]
    Decode {
        /// What postcard found.
        #[source]
        source: postcard::Error,
    },
    /// A message decoded from the start of the bytes, but bytes were left after it.
    #[error("gossip message of {len} bytes has {trailing} trailing bytes")]
    TrailingBytes {
        /// Length of the whole input.
        len: usize,
        /// Bytes left after the message.
        trailing: usize,
    },
    /// A digest or request lists more nodes than `MEMBERS_MAX`.
    #[error("{count} digest entries exceeds MEMBERS_MAX ({max})")]
    TooManyDigestEntries {
        /// Entries in the message.
        count: usize,
        /// `MEMBERS_MAX`.
        max: usize,
    },
    /// A message carries deltas for more nodes than `MEMBERS_MAX`.
    #[error("deltas for {count} nodes exceeds MEMBERS_MAX ({max})")]
    TooManyDeltas {
        /// Node deltas in the message.
        count: usize,
        /// `MEMBERS_MAX`.
        max: usize,
    },
    /// One list (digest, request or deltas) names the same node twice.
    #[error("node {node} is listed twice in one gossip list")]
    DuplicateNode {
        /// The repeated node.
        node: NodeId,
    },
    /// A node delta carries more entries than a node has keys.
    #[error("delta for node {node} has {count} entries, above KEYS_PER_NODE ({max})")]
    TooManyEntries {
        /// The node.
        node: NodeId,
        /// Entries in its delta.
        count: usize,
        /// `KEYS_PER_NODE`.
        max: usize,
    },
    /// A node delta's entries are not in strictly increasing version order above its
    /// `from_version` (the prefix rule needs them in order to apply a prefix safely).
    #[error("delta for node {node}: version {version} does not follow {after}")]
    EntryOutOfOrder {
        /// The node.
        node: NodeId,
        /// The offending entry's version.
        version: u64,
        /// The version it must exceed (the previous entry's, or `from_version`).
        after: u64,
    },
    /// A node delta carries the same key twice; a node holds each key once.
    #[error("delta for node {node} carries {key:?} twice")]
    DuplicateKey {
        /// The node.
        node: NodeId,
        /// The repeated key.
        key: Key,
    },
}
