//! Every limit of the layout, in one place, qualifier last; relations between them are checked at
//! compile time below.

use cairn_proto::limits::FRAME_BYTES_MAX;
use cairn_ring::limits::{MEMBERS_MAX, RING_ENCODED_BYTES_MAX};

/// Versions live at once: the settled one and at most one change in flight. A second change
/// waits until the first has retired its old version, which keeps every write's replica sets
/// to two and every transfer to one step.
pub const LIVE_VERSIONS_MAX: usize = 2;

/// Bytes of a node name kept in the layout.
pub const NODE_NAME_BYTES_MAX: usize = 128;

/// Bytes of the largest encoded layout (postcard): every live version with its ring and names,
/// plus three progress sets of every member per version. It must fit in one frame so a node can
/// always send its whole history.
pub const LAYOUT_ENCODED_BYTES_MAX: usize = LIVE_VERSIONS_MAX
    * (64 + RING_ENCODED_BYTES_MAX + MEMBERS_MAX * (10 + 2 + NODE_NAME_BYTES_MAX))
    + 3 * LIVE_VERSIONS_MAX * (40 + MEMBERS_MAX * 10);

const _: () = assert!(
    LIVE_VERSIONS_MAX >= 2,
    "a change needs its old and its new version"
);
const _: () = assert!(LAYOUT_ENCODED_BYTES_MAX < FRAME_BYTES_MAX);
