//! The core's own limits, qualifier last.

use std::time::Duration;

/// Client requests one node coordinates at once (including ones answered but still collecting
/// late replies for hints or read repair). When it is reached, the answered request closest to
/// its deadline is ended early (its silent replicas get hints); only when none is answered are
/// new clients refused as overloaded.
pub const COORDINATOR_REQUESTS_MAX: usize = 4096;
/// Hinted keys handed to a peer per delivery round.
pub const HANDOFF_BATCH_MAX: usize = 256;
/// Hints one node sets aside per target after the target refused them; beyond it, the one set
/// aside longest is tried again at once.
pub const HANDOFF_REFUSED_MAX: usize = 256;
/// How long a refused hint waits before it is offered again (the target's copy may have
/// changed so that it fits, e.g. a client resolved its siblings).
pub const HANDOFF_REFUSED_RETRY: Duration = Duration::from_secs(60);
