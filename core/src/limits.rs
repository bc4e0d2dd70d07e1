//! The core's own limits, qualifier last.

use std::time::Duration;

/// Client requests one node coordinates at once (including ones answered but still collecting
/// late replies for hints or read repair). When it is reached, the answered request closest to
/// its deadline is ended early (its silent replicas get hints); only when none is answered are
/// new clients refused as overloaded.
pub const COORDINATOR_REQUESTS_MAX: usize = 4096;
/// How long a read with `ReadFanout::Needed` waits for the replicas it asked before it asks the
/// rest of its chosen replicas as well (a speculative retry, as Cassandra's).
pub const READ_SPARE_DELAY: Duration = Duration::from_millis(50);
/// Hinted keys handed to a peer per delivery round.
pub const HANDOFF_BATCH_MAX: usize = 256;
/// Hints one node sets aside per target after the target refused them; beyond it, the one set
/// aside longest is tried again at once.
pub const HANDOFF_REFUSED_MAX: usize = 256;
/// How long a refused hint waits before it is offered again (the target's copy may have
/// changed so that it fits, e.g. a client resolved its siblings).
pub const HANDOFF_REFUSED_RETRY: Duration = Duration::from_secs(60);
/// Hints read per target in one sweep of a target that is down, after a layout change, for
/// hints whose partition moved away from it (at most `KEY_BYTES_MAX` each: 4 MiB of keys).
/// A sweep that moved some and read this many runs again next round; one that moved none
/// stops until the next layout change.
pub const HANDOFF_SWEEP_HINTS_MAX: usize = 4096;

/// Keys in one transfer batch (one page of a partition's keys, sent before the next is read).
pub const TRANSFER_BATCH_KEYS_MAX: usize = 1024;
/// Bytes (keys and encoded objects) in one transfer batch; a single object larger than the
/// configured batch budget still goes alone, and no object exceeds `OBJECT_BYTES_MAX`.
pub const TRANSFER_BATCH_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Partitions one node pushes at once.
pub const TRANSFER_PARTITIONS_CONCURRENT_MAX: usize = 16;
/// Failed attempts in a row at one batch to one target (or at one page read) before the
/// transfer reports it stalled; it keeps retrying, at `TRANSFER_RETRY_MAX` intervals, because
/// only the operator may give up on a node (`cairn layout force`).
pub const TRANSFER_ATTEMPTS_MAX: u32 = 8;
/// The first retry's delay; each further one doubles, up to `TRANSFER_RETRY_MAX`.
pub const TRANSFER_RETRY_BASE: Duration = Duration::from_millis(200);
/// The longest delay between two attempts.
pub const TRANSFER_RETRY_MAX: Duration = Duration::from_secs(10);

/// Keys per batch unless configured.
pub const TRANSFER_BATCH_KEYS_DEFAULT: usize = 128;
/// Bytes per batch unless configured.
pub const TRANSFER_BATCH_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Partitions pushed at once unless configured: two keeps one partition's page read
/// overlapping another's sends without crowding client writes.
pub const TRANSFER_PARTITIONS_CONCURRENT_DEFAULT: usize = 2;
/// Bytes per second a node pushes unless configured (counted once per target): 8 MiB/s moves
/// a 1 GiB node's share in about two minutes per target and leaves room for client traffic.
pub const TRANSFER_BYTES_PER_SEC_DEFAULT: u64 = 8 * 1024 * 1024;

const _: () = assert!(HANDOFF_BATCH_MAX <= HANDOFF_SWEEP_HINTS_MAX);
const _: () = assert!(TRANSFER_BATCH_KEYS_DEFAULT <= TRANSFER_BATCH_KEYS_MAX);
const _: () = assert!(TRANSFER_BATCH_BYTES_DEFAULT <= TRANSFER_BATCH_BYTES_MAX);
const _: () = assert!(TRANSFER_PARTITIONS_CONCURRENT_DEFAULT <= TRANSFER_PARTITIONS_CONCURRENT_MAX);
const _: () = assert!(TRANSFER_RETRY_BASE.as_nanos() <= TRANSFER_RETRY_MAX.as_nanos());

/// How long a node must have held a tombstone, unchanged, before it may reap it, unless
/// configured (`[tombstones] grace_secs`). The reaper already asks every member of every live
/// layout version (a member that does not answer blocks), so the grace guards only what no
/// member can report: a message carrying an older copy of the key still in flight (a read
/// repair, a forward, a replicate or a handoff, each bounded by timeouts of seconds to a
/// minute) and a node paused (SIGSTOP, a frozen VM) while holding one. An hour is far above the
/// longest of those timeouts and costs little: a tombstone is a few dozen bytes.
pub const TOMBSTONE_GRACE_DEFAULT: Duration = Duration::from_secs(3600);
/// Time between two reaper rounds unless configured (`[tombstones] interval_ms`). A round reads
/// and decodes every stored object once (about a second per million keys), so five minutes
/// keeps it far below 1% of a core while adding little to the hour of grace.
pub const TOMBSTONE_ROUND_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);
/// The shortest configurable time between two rounds (each round scans the whole store).
pub const TOMBSTONE_ROUND_INTERVAL_MIN: Duration = Duration::from_millis(50);
/// Tombstones checked (and so at most reaped) per round unless configured: the reaper's rate
/// is this per `interval`.
pub const TOMBSTONE_KEYS_PER_ROUND_DEFAULT: usize = 256;
/// The most tombstones one round checks: one `PeerRequest::Tombstones` per member carries them
/// all.
pub const TOMBSTONE_KEYS_PER_ROUND_MAX: usize =
    cairn_proto::limits::TOMBSTONE_PROBES_PER_REQUEST_MAX;
/// Tombstones per page of the reaper's scan (a page ends at this many, or at the store's end).
pub const TOMBSTONE_SCAN_PAGE_MAX: usize = 1024;
/// Tombstones whose first sighting the reaper remembers (32-byte key hash, 32-byte object
/// hash and a time each, about 8 MB at the maximum); beyond it the rest wait until earlier
/// ones are reaped.
pub const TOMBSTONES_TRACKED_MAX: usize = 100_000;

/// How long a node remembers a tombstone it reaped, so that the same tombstone handed back by a
/// replica that had not reaped it yet is reaped again without a new grace period: many
/// anti-entropy intervals (30 s by default) and reaper rounds (four rounds at least, whatever the
/// configured interval).
pub const TOMBSTONE_REAPED_REMEMBER: Duration = Duration::from_secs(30 * 60);

const _: () = assert!(TOMBSTONE_KEYS_PER_ROUND_DEFAULT <= TOMBSTONE_KEYS_PER_ROUND_MAX);
const _: () =
    assert!(TOMBSTONE_ROUND_INTERVAL_MIN.as_nanos() <= TOMBSTONE_ROUND_INTERVAL_DEFAULT.as_nanos());

/// How long a member has to answer the reaper's `PeerRequest::Tombstones` (point reads of at
/// most `TOMBSTONE_PROBES_PER_REQUEST_MAX` keys); a member that does not answer blocks the
/// round's reaps.
pub const TOMBSTONE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one transferred key waits for the target's acknowledgement.
pub const TRANSFER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwarded writes whose outcome a replica remembers (by sender and request id), so a forward
/// retried after its reply was lost is answered with the first outcome instead of being applied
/// twice. The oldest is forgotten first when the table is full.
pub const FORWARD_REPLIES_MAX: usize = 4096;
/// How long a forwarded write's outcome is remembered: longer than a forwarder keeps retrying
/// (`FORWARD_ATTEMPTS_MAX` attempts of at most the forward timeout each).
pub const FORWARD_REPLY_TTL: Duration = Duration::from_secs(300);
/// Bytes of remembered forward replies (their siblings and contexts) across the table.
pub const FORWARD_REPLY_BYTES_MAX: usize = 64 << 20;
/// Largest single reply kept whole; a larger one is remembered only as "applied", and a retry
/// is told to read the key.
pub const FORWARD_REPLY_KEPT_BYTES_MAX: usize = 1 << 20;
/// Attempts a forwarder makes at one forward (same request id) before telling the client the
/// write may have been applied.
pub const FORWARD_ATTEMPTS_MAX: u32 = 3;
/// How long a forwarder waits for a replica whose forward failed to be judged up again (a
/// failure marks it down at once; its probe brings it back) before retrying; a replica still
/// down after it gets no retry, and the client hears at once that the write may have been
/// applied.
pub const FORWARD_RETRY_WAIT_MAX: Duration = Duration::from_secs(2);
/// How often the forwarder looks whether the replica is up again while it waits.
pub const FORWARD_RETRY_POLL: Duration = Duration::from_millis(50);
const _: () = assert!(FORWARD_REPLY_KEPT_BYTES_MAX <= FORWARD_REPLY_BYTES_MAX);

/// Exchanges one node answers at once (as responder, for all peers together); a new exchange
/// beyond it is refused as overloaded after idle ones are dropped. Room for every peer of a
/// large cluster to run its maximum at once would be wasteful: initiators simply retry next round.
pub const AE_RESPONDER_SESSIONS_MAX: usize = 64;
/// A responder's session that saw no request for this long is dropped (its initiator failed or
/// gave up); the next exchange starts afresh from the roots.
pub const AE_SESSION_IDLE_MAX: Duration = Duration::from_secs(60);
/// How long one anti-entropy request (a message, a key lookup, one object) may take.
pub const AE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one gossip exchange may take before it is abandoned (gossip tolerates loss).
pub const GOSSIP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Layout exchanges (`PeerRequest::Layout`) one node runs at once, one per peer; they count
/// toward the node's `GOSSIP_EXCHANGES_MAX` too. Layouts differ only after a change, so a few
/// suffice.
pub const LAYOUT_EXCHANGES_MAX: usize = 4;
/// How long one layout exchange may take (a layout is at most a few megabytes; the next round
/// tries again).
pub const LAYOUT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of requests one peer batch carries (keys and objects); a request larger than this
/// goes in a batch of its own, so a batch never nears a frame.
pub const PEER_BATCH_BYTES_MAX: usize = 1 << 20;
const _: () = assert!(PEER_BATCH_BYTES_MAX < cairn_proto::limits::FRAME_BYTES_MAX / 2);
