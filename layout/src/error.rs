//! `LayoutError`: why a layout change could not be planned or applied, or a layout could not be
//! decoded.

use cairn_proto::NodeId;
use cairn_ring::RingError;

/// Why a layout change or a decoded layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The ring of the proposed version could not be built.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A change is already in flight; only one may be at once.
    #[error("layout version {version} is still being transferred (from version {from}); wait for it to finish (`cairn status`) before the next change")]
    ChangeInFlight {
        /// The version being transferred to.
        version: u64,
        /// The version it replaces.
        from: u64,
    },
    /// The node to add is already a member.
    #[error("{name} is already a member of layout version {version}")]
    AlreadyMember {
        /// The node's name.
        name: String,
        /// The current version.
        version: u64,
    },
    /// The node named is not a member.
    #[error("{node} is not a member of layout version {version}")]
    NotMember {
        /// The node (its name if known, else its id).
        node: String,
        /// The current version.
        version: u64,
    },
    /// The change would leave no member.
    #[error("{name} is the last member; a cluster cannot lose its last node")]
    LastMember {
        /// The node's name.
        name: String,
    },
    /// A name is empty or too long.
    #[error("node name of {len} bytes is empty or exceeds NODE_NAME_BYTES_MAX ({max})")]
    BadName {
        /// Its length.
        len: usize,
        /// `NODE_NAME_BYTES_MAX`.
        max: usize,
    },
    /// A plan was made against another version than the current one.
    #[error("the plan was made against layout version {planned}, but the layout is now at {current}; plan again")]
    StalePlan {
        /// The version the plan started from.
        planned: u64,
        /// The current version.
        current: u64,
    },
    /// An override named a node the change does not wait for.
    #[error("{node} is not holding up the change to layout version {version}")]
    NotWaitingFor {
        /// The node.
        node: NodeId,
        /// The version being transferred to.
        version: u64,
    },
    /// There is no change in flight.
    #[error("no layout change is in flight (layout version {version} is settled)")]
    Settled {
        /// The current version.
        version: u64,
    },
    /// A decoded layout breaks an invariant.
    #[error("invalid layout: {reason}")]
    Invalid {
        /// Which invariant.
        reason: String,
    },
}
