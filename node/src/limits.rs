//! The node's own limits: queues, batches and leases, qualifier last.

use std::time::Duration;

/// Write requests that may wait for the writer thread; when full, clients get `Overloaded`
/// instead of the node queueing without bound.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Most writes folded into one transaction (one fsync) by group commit.
pub const WRITE_BATCH_MAX: usize = 512;
/// Largest commit-log record (one group commit's batch); a batch over it is committed to redb
/// durably instead, which also checkpoints. Replay takes a longer length field for a torn tail.
pub const LOG_RECORD_BYTES_MAX: usize = 16 << 20;
/// Commit-log bytes after which the store checkpoints (one durable redb commit) and empties the
/// log: bounds the log on disk and the replay after a crash.
pub const LOG_BYTES_MAX: u64 = 64 << 20;
/// Bytes of logged objects the store keeps in memory before writing them to redb in one
/// non-durable transaction (a checkpoint writes them too); bounds that memory per node.
pub const PENDING_BYTES_MAX: usize = 8 << 20;
/// Bytes of redb's page cache per node (redb's own default is 1 GiB, which a node filled: 1.8
/// GiB resident per million 1 KiB keys, bench/curves). It holds the B-trees' interior pages,
/// which every lookup touches, several times over for tens of millions of keys; values are read
/// from the OS page cache beyond it.
pub const STORE_CACHE_BYTES: usize = 256 << 20;
/// Group commits after which the store checkpoints even if the log is small: bounds redb's
/// not-yet-durable state and the records a restart replays.
pub const LOG_COMMITS_MAX: u64 = 1024;
/// Dots leased per lease extension: the lease end is persisted before any dot under it is used,
/// so a crash can skip at most this many counter values and never reuse one.
pub const DOT_LEASE_BLOCK: u64 = 10_000;
/// Requests one node serves at once across all connections; beyond it streams wait.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Connections one node accepts at once.
pub const CONNECTIONS_MAX: usize = 1024;

const _: () = assert!(WRITE_BATCH_MAX <= WRITE_QUEUE_MAX);
const _: () = assert!((WRITE_BATCH_MAX as u64) < DOT_LEASE_BLOCK);

/// Defined by the pure core, which enforces it.
pub use cairn_core::limits::COORDINATOR_REQUESTS_MAX;
/// Hints one node keeps for one unreachable peer; beyond it, fallback writes for that peer are
/// refused (the coordinator counts them as failed) rather than growing without bound.
pub const HINTS_PER_PEER_MAX: u64 = 100_000;
/// Defined by the pure core's handoff policy, which enforces them.
pub use cairn_core::limits::{HANDOFF_BATCH_MAX, HANDOFF_REFUSED_MAX, HANDOFF_REFUSED_RETRY};
/// Client requests waiting for the coordinator task; when full, clients get `Overloaded`.
pub const COORDINATOR_QUEUE_MAX: usize = 4096;
/// Replica answers waiting for the coordinator task (senders wait when it is full).
pub const REPLICA_RESULTS_QUEUE_MAX: usize = 8192;
/// Hints waiting to be made durable by the coordinator's hint writer; when full, the coordinator
/// waits (acknowledgements wait for hints anyway).
pub const HINT_QUEUE_MAX: usize = 1024;

/// Replica requests (replicates and reads) waiting for their peer's next batch; when full, the
/// coordinator's sending task waits.
pub const PEER_BATCH_QUEUE_MAX: usize = 4096;
pub use cairn_core::limits::PEER_BATCH_BYTES_MAX;
/// Batches in flight to one peer at once: the next batch forms while these are answered, as the
/// writer's next group forms while the last one syncs.
pub const PEER_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Defined by the wire protocol, which the receiver checks.
pub use cairn_proto::limits::PEER_BATCH_ITEMS_MAX;
const _: () = assert!(PEER_BATCH_BYTES_MAX < cairn_proto::limits::FRAME_BYTES_MAX / 2);

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
pub use cairn_core::limits::LAYOUT_EXCHANGES_MAX;
pub use cairn_core::limits::LAYOUT_EXCHANGE_TIMEOUT;
/// How long an applied layout change waits for each member's answer when it is confirmed with
/// every member (a member slower than this is named as not confirmed): shorter than the
/// exchange's own timeout, as an operator's command waits for it, with the plan's counting
/// (`PLAN_SIZES_TIMEOUT`), within the CLI's request timeout.
pub const LAYOUT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
pub use cairn_core::health::{STORAGE_PROBE_RETRY_BASE, STORAGE_PROBE_RETRY_MAX};
/// A store that refused commits after a failed write recovers in place only once the disk has
/// this many times its commit log's bytes free (plus `RECOVERY_FREE_MARGIN_BYTES`): enough to
/// replay the log into redb with one durable commit, which writes the log's objects into fresh
/// pages next to the log (a replay with as much free as the log held failed with ENOSPC; twice
/// that is the smallest rule that the full-tmpfs tests of `tests/tests/disk_full.rs` pass
/// with, where 48 MiB free recovered a 15 MiB log), and enough for the next checkpoint. Less,
/// and a probe that a tiny record fits would clear the fault only for the next real write to
/// fail again: the node would flap between degraded and ok.
pub const RECOVERY_FREE_LOG_FACTOR: u64 = 2;
/// Free bytes a recovery needs besides `RECOVERY_FREE_LOG_FACTOR` times the log: room for a
/// few batches and redb's own pages when the log is nearly empty.
pub const RECOVERY_FREE_MARGIN_BYTES: u64 = 4 << 20;
/// How often a degraded writer with no queued write looks at its probe's schedule.
pub const STORAGE_PROBE_POLL: Duration = Duration::from_millis(50);
const _: () = assert!(STORAGE_PROBE_POLL.as_nanos() <= STORAGE_PROBE_RETRY_BASE.as_nanos());
/// How long a layout change's plan waits for an old replica to say how much it holds of the
/// moving partitions; one that does not answer leaves its partitions not counted.
pub const PLAN_SIZES_TIMEOUT: Duration = Duration::from_secs(2);
pub use cairn_core::limits::GOSSIP_EXCHANGE_TIMEOUT;
/// Gossip replies waiting to be sent by the gossip task; gossip tolerates loss, so a full queue
/// drops the message.
pub const GOSSIP_OUTBOX_MAX: usize = 64;
/// Peer up-transitions waiting for the handoff loop; when full, the loop's periodic scan finds
/// the peer anyway.
pub const UP_EVENTS_MAX: usize = 64;
/// Shortest pause between anti-entropy rounds a configuration may ask for.
pub const AE_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Most exchanges a node may be configured to run at once as initiator.
pub const AE_SESSIONS_MAX: usize = 16;
pub use cairn_core::limits::{AE_REQUEST_TIMEOUT, AE_RESPONDER_SESSIONS_MAX, AE_SESSION_IDLE_MAX};

const _: () = assert!(AE_RESPONDER_SESSIONS_MAX >= AE_SESSIONS_MAX);
// A diff batch's key hashes fit one `PeerRequest::Keys`.
const _: () = assert!(
    cairn_antientropy::limits::KEYS_PER_DIFF_BATCH_MAX
        <= cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX
);

/// Connections one TCP front-end listener (RESP, HTTP or metrics) accepts at once; beyond it new
/// connections are closed at once.
pub const FRONTEND_CONNECTIONS_MAX: usize = 1024;
/// How long a TCP client may take to complete its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest RESP request (one command with its arguments, as sent), checked while it arrives:
/// room for a value at `VALUE_BYTES_MAX` with its key, context and options.
pub const RESP_REQUEST_BYTES_MAX: usize =
    cairn_proto::limits::VALUE_BYTES_MAX + cairn_proto::limits::KEY_BYTES_MAX + 64 * 1024;
/// Most arguments in one RESP command (`MSET` and `MGET` take several keys).
pub const RESP_ARGS_MAX: usize = 1024;
/// Commands of one RESP connection answered concurrently while pipelined; later ones wait.
pub const RESP_PIPELINE_MAX: usize = 64;
/// Largest HTTP request body: a value at `VALUE_BYTES_MAX`. A larger body is answered 413.
pub const HTTP_BODY_BYTES_MAX: usize = cairn_proto::limits::VALUE_BYTES_MAX;

// A configured name fits the name a peer's ping may carry.
const _: () = assert!(NAME_BYTES_MAX <= cairn_proto::limits::NODE_NAME_BYTES_MAX);

pub use cairn_core::limits::{
    FORWARD_ATTEMPTS_MAX, FORWARD_REPLIES_MAX, FORWARD_REPLY_BYTES_MAX,
    FORWARD_REPLY_KEPT_BYTES_MAX, FORWARD_REPLY_TTL, FORWARD_RETRY_POLL, FORWARD_RETRY_WAIT_MAX,
};
/// Answers (pages read, batches sent) waiting for the transfer task; at most one per active
/// partition is outstanding, so this is never reached in practice.
pub const TRANSFER_RESULTS_QUEUE_MAX: usize = 64;
/// Peer batches of one transfer send in flight to its target at once (a default page of 128
/// keys or 1 MiB is one or two batches).
pub const TRANSFER_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Defined with the transfer machine's limits, which the simulator runs too.
pub use cairn_core::limits::TRANSFER_REQUEST_TIMEOUT;
/// Defined by the pure core's transfer machine, which enforces them.
pub use cairn_core::limits::{
    TRANSFER_ATTEMPTS_MAX, TRANSFER_BATCH_BYTES_MAX, TRANSFER_BATCH_KEYS_MAX,
    TRANSFER_PARTITIONS_CONCURRENT_MAX, TRANSFER_RETRY_MAX,
};

const _: () = assert!(TRANSFER_RESULTS_QUEUE_MAX >= TRANSFER_PARTITIONS_CONCURRENT_MAX);

/// Keys one page of the cleanup sweep (`cleanup.rs`) reads and drops at once: few enough that
/// their drops fit one group commit (`WRITE_BATCH_MAX`) and a page is quick to hold in memory.
pub const CLEANUP_PAGE_MAX: usize = 256;
/// How long a cleanup sweep that had to keep keys waits before it tries again (a key changed
/// since it was read, or still backs a hint that is being delivered).
pub const CLEANUP_RETRY_INTERVAL: Duration = Duration::from_secs(30);

const _: () = assert!(CLEANUP_PAGE_MAX <= WRITE_BATCH_MAX);

/// Defined with the reaper's other limits, which the simulator runs too.
pub use cairn_core::limits::TOMBSTONE_REQUEST_TIMEOUT;
/// Answers (a page, a member's check, a drop) waiting for the reaper task: a round has one page
/// read, or one check per member, or its drops in flight; the senders wait when it is full.
pub const TOMBSTONE_ANSWERS_QUEUE_MAX: usize = 64;
/// Defined by the pure core's reaper, which enforces them.
pub use cairn_core::limits::{TOMBSTONE_GRACE_DEFAULT, TOMBSTONE_KEYS_PER_ROUND_MAX};

// The default grace period outlasts, many times over, the longest any message carrying an older
// copy of a key can stay in flight: a forwarded write and its retries, remembered for
// `FORWARD_REPLY_TTL`.
const _: () = assert!(TOMBSTONE_GRACE_DEFAULT.as_secs() >= 10 * FORWARD_REPLY_TTL.as_secs());
// One `PeerRequest::PartitionSizes` can ask about every partition of any ring.
const _: () = assert!(
    cairn_ring::limits::PARTITIONS_MAX as usize
        <= cairn_proto::limits::PARTITION_SIZES_PER_REQUEST_MAX
);
