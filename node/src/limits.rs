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

/// Client requests one node coordinates at once (including ones answered but still collecting
/// late replies for hints or read repair).
pub const COORDINATOR_REQUESTS_MAX: usize = 4096;
/// Hints one node keeps for one unreachable peer; beyond it, fallback writes for that peer are
/// refused (the coordinator counts them as failed) rather than growing without bound.
pub const HINTS_PER_PEER_MAX: u64 = 100_000;
/// Hinted keys handed to a peer per delivery round.
pub const HANDOFF_BATCH_MAX: usize = 256;
/// Client requests waiting for the coordinator task; when full, clients get `Overloaded`.
pub const COORDINATOR_QUEUE_MAX: usize = 4096;
/// Replica answers waiting for the coordinator task (senders wait when it is full).
pub const REPLICA_RESULTS_QUEUE_MAX: usize = 8192;
/// Hints waiting to be made durable by the coordinator's hint writer; when full, the coordinator
/// waits (acknowledgements wait for hints anyway).
pub const HINT_QUEUE_MAX: usize = 1024;

/// Longest node name, in bytes; the name travels in every gossip round inside the ring field.
pub const NAME_BYTES_MAX: usize = 64;
/// Shortest gossip interval a configuration may set (tests use short ones).
pub const GOSSIP_INTERVAL_MS_MIN: u64 = 10;
/// Longest gossip interval a configuration may set: beyond it a dead node takes minutes to be
/// noticed.
pub const GOSSIP_INTERVAL_MS_MAX: u64 = 60_000;
/// Gossip exchanges (SYN → ACK → ACK2) one node runs at once; a round starts at most three, so
/// more means peers are slow to answer, and further rounds skip rather than pile up.
pub const GOSSIP_EXCHANGES_MAX: usize = 16;
/// How long one gossip exchange may take before it is abandoned (gossip tolerates loss).
pub const GOSSIP_EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Gossip replies waiting to be sent by the gossip task; gossip tolerates loss, so a full queue
/// drops the message.
pub const GOSSIP_OUTBOX_MAX: usize = 64;
/// Peer up-transitions waiting for the handoff loop; when full, the loop's periodic scan finds
/// the peer anyway.
pub const UP_EVENTS_MAX: usize = 64;
