//! What one node says about itself: its keys and their values, written only by that node.

use serde::{Deserialize, Serialize};

use crate::limits::{ADDRESS_BYTES_MAX, KEYS_PER_NODE, RING_BYTES_MAX, ZONE_BYTES_MAX};
use crate::GossipError;

/// Where a node stands in the cluster, as the node itself declares it.
///
/// Whether a node is *reachable* is a separate judgement each observer makes with its failure
/// detector ([`NodeView::is_alive`](crate::NodeView::is_alive)); a node that is `Up` may be down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Started and gossiping, not yet owning partitions.
    Joining,
    /// A full member.
    Up,
    /// Handing its partitions off; about to leave.
    Leaving,
    /// Gone for good (until it starts again with a higher generation). Its state is remembered
    /// for a while so that stale gossip cannot bring it back.
    Left,
}

/// One key of a node's state. Every key carries the version of its last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// [`NodeState::address`].
    Address,
    /// [`NodeState::status`].
    Status,
    /// [`NodeState::zone`].
    Zone,
    /// [`NodeState::ring`].
    Ring,
    /// [`NodeState::load`].
    Load,
    /// [`NodeState::storage`].
    Storage,
    /// The heartbeat counter, bumped by every gossip round of its owner; its version increasing
    /// is what feeds the failure detectors of the other nodes.
    Heartbeat,
}

impl Key {
    /// Every key, in the order a new generation writes them.
    pub const ALL: [Key; KEYS_PER_NODE] = [
        Key::Address,
        Key::Status,
        Key::Zone,
        Key::Ring,
        Key::Load,
        Key::Storage,
        Key::Heartbeat,
    ];

    /// Position in [`Key::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Whether a node's disk accepts its writes, as the node itself declares it. Other nodes route
/// around a node that is not `Ok` as they do around a down one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Storage {
    /// Commits succeed.
    #[default]
    Ok,
    /// The last commit failed and none has succeeded since; the node refuses writes.
    Degraded {
        /// The disk is full (as opposed to any other I/O error).
        disk_full: bool,
    },
}

impl Storage {
    /// Whether writes to the node fail.
    pub fn is_degraded(self) -> bool {
        self != Storage::Ok
    }
}

/// A value of one key; the variant says which key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// The address peers reach the node at (host:port), at most `ADDRESS_BYTES_MAX` bytes.
    Address(String),
    /// The node's declared status.
    Status(Status),
    /// The node's failure zone, at most `ZONE_BYTES_MAX` bytes; `None` shares fate with no one.
    Zone(Option<String>),
    /// Opaque ring information (a ring version and hash, or a claim), at most `RING_BYTES_MAX`
    /// bytes. Gossip only carries it; the driver gives it meaning.
    Ring(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The node's load (for instance bytes stored), for operators and placement.
    Load(u64),
    /// Whether the node's disk accepts writes.
    Storage(Storage),
    /// The heartbeat counter.
    Heartbeat(u64),
}

impl Value {
    /// The key this value belongs to.
    pub fn key(&self) -> Key {
        match self {
            Value::Address(_) => Key::Address,
            Value::Status(_) => Key::Status,
            Value::Zone(_) => Key::Zone,
            Value::Ring(_) => Key::Ring,
            Value::Load(_) => Key::Load,
            Value::Storage(_) => Key::Storage,
            Value::Heartbeat(_) => Key::Heartbeat,
        }
    }

    /// Checks the value against its length limit.
    pub fn validate(&self) -> Result<(), GossipError> {
        let (len, max) = match self {
            Value::Address(a) => (a.len(), ADDRESS_BYTES_MAX),
            Value::Zone(Some(z)) => (z.len(), ZONE_BYTES_MAX),
            Value::Ring(r) => (r.len(), RING_BYTES_MAX),
            Value::Zone(None)
            | Value::Status(_)
            | Value::Load(_)
            | Value::Storage(_)
            | Value::Heartbeat(_) => return Ok(()),
        };
        if len > max {
            return Err(GossipError::ValueTooLong {
                key: self.key(),
                len,
                max,
            });
        }
        Ok(())
    }
}

/// The state a node gossips about itself (all its keys but the heartbeat, which the gossip loop
/// owns).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeState {
    /// Where peers reach the node (host:port).
    pub address: String,
    /// Its declared status.
    pub status: Status,
    /// Its failure zone, if it has one.
    pub zone: Option<String>,
    /// Opaque ring information; see [`Value::Ring`].
    #[serde(with = "serde_bytes")]
    pub ring: Vec<u8>,
    /// Its load.
    pub load: u64,
    /// Whether its disk accepts writes.
    pub storage: Storage,
}

impl NodeState {
    /// A joining node at `address`, with no zone, ring information or load yet.
    pub fn joining(address: impl Into<String>) -> NodeState {
        NodeState {
            address: address.into(),
            status: Status::Joining,
            zone: None,
            ring: Vec::new(),
            load: 0,
            storage: Storage::Ok,
        }
    }

    /// The state as values, in [`Key::ALL`] order, without the heartbeat.
    pub(crate) fn values(&self) -> [Value; KEYS_PER_NODE - 1] {
        [
            Value::Address(self.address.clone()),
            Value::Status(self.status),
            Value::Zone(self.zone.clone()),
            Value::Ring(self.ring.clone()),
            Value::Load(self.load),
            Value::Storage(self.storage),
        ]
    }

    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<(), GossipError> {
        self.values().iter().try_for_each(Value::validate)
    }
}

/// Placeholder contents of a node whose keys have not all arrived yet; never shown, because only
/// complete nodes are listed by [`Gossip::members`](crate::Gossip::members).
impl Default for NodeState {
    fn default() -> NodeState {
        NodeState::joining("")
    }
}
