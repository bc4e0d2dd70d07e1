//! The core's own limits, qualifier last.

/// Client requests one node coordinates at once (including ones answered but still collecting
/// late replies for hints or read repair). When it is reached, the answered request closest to
/// its deadline is ended early (its silent replicas get hints); only when none is answered are
/// new clients refused as overloaded.
pub const COORDINATOR_REQUESTS_MAX: usize = 4096;
