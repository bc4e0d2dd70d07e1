//! The node's own limits: queues, batches and leases, qualifier last.

/// Write requests that may wait for the writer thread; when full, clients get `Overloaded`
/// instead of the node queueing without bound.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Most writes folded into one transaction (one fsync) by group commit.
pub const WRITE_BATCH_MAX: usize = 512;
/// Dots leased per lease extension: the lease end is persisted before any dot under it is used,
/// so a crash can skip at most this many counter values and never reuse one.
pub const DOT_LEASE_BLOCK: u64 = 10_000;
/// Requests one node serves at once across all connections; beyond it streams wait.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Connections one node accepts at once.
pub const CONNECTIONS_MAX: usize = 1024;

const _: () = assert!(WRITE_BATCH_MAX <= WRITE_QUEUE_MAX);
const _: () = assert!((WRITE_BATCH_MAX as u64) < DOT_LEASE_BLOCK);
