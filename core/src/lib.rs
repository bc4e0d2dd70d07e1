//! Cairn's node core: the decisions a node makes that need no socket, disk, clock or runtime
//! (versioning, request coordination, the writer's batch application over a synchronous store,
//! hinted handoff's policy, peer liveness, the layout transfer, tombstone reaping, anti-entropy's exchanges), as sans-I/O state machines that the production node
//! (`cairn-node`, over tokio, quinn and redb) and the simulator both drive. Cargo keeps it pure:
//! nothing here may depend, even transitively, on an I/O crate (see `tests/tests/architecture.rs`).

pub mod antientropy;
pub mod bucket;
pub mod cleanup;
pub mod coordinator;
pub mod driver;
pub mod forward;
pub mod handoff;
pub mod health;
pub mod limits;
pub mod liveness;
pub mod membership;
pub mod peer;
pub mod reaper;
pub mod reply;
pub mod serve;
pub mod store;
pub mod transfer;
pub mod trees;
pub mod version;
pub mod writer;
