//! Every limit and default of gossip, in one place, qualifier last; relations between them are
//! checked at compile time below.

use std::time::Duration;

use cairn_proto::limits::FRAME_BYTES_MAX;

/// Most nodes one node keeps state for (members, joiners and nodes that left but are still
/// remembered). Matches the ring's `MEMBERS_MAX`: a node the ring cannot hold is no use to gossip
/// either. State for a node beyond this is ignored.
pub const MEMBERS_MAX: usize = 1024;
/// Most removed nodes remembered by tombstone at once. A tombstone is two numbers; when the table
/// is full the one closest to expiry makes room.
pub const TOMBSTONES_MAX: usize = 1024;
/// Most seed addresses in a configuration. Seeds are a handful of well-known nodes, not a member
/// list.
pub const SEEDS_MAX: usize = 64;

/// Longest address, in bytes (a host name and port; DNS names stop at 253 bytes).
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Longest zone label, in bytes; the same bound as the ring's, so every gossiped label fits a
/// ring member.
pub const ZONE_BYTES_MAX: usize = 64;
/// Longest opaque ring field, in bytes: room for a ring version and a hash (or a small claim). A
/// whole ring (up to 120 KiB) travels by its own request; this bound keeps one node's entry small
/// enough to fit the smallest message budget (checked below), so no entry can block its node's
/// deltas forever.
pub const RING_BYTES_MAX: usize = 256;
/// Keys in one node's state: address, status, zone, ring, load, storage, heartbeat.
pub const KEYS_PER_NODE: usize = 7;

/// Smallest message budget a configuration may set: small enough for a QUIC datagram (about
/// 1200 bytes), should a driver carry gossip that way.
pub const MESSAGE_BYTES_MIN: usize = 1024;
/// Message budget when nothing else is configured: one QUIC stream write, far above a
/// 200-node cluster's full digest (about 4 KiB) so only catch-up after a long partition is
/// trimmed.
pub const MESSAGE_BYTES_DEFAULT: usize = 64 * 1024;
/// Largest message budget, and the largest encoded message [`GossipMessage::decode`] accepts.
///
/// [`GossipMessage::decode`]: crate::GossipMessage::decode
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Most inter-arrival intervals one node's failure detector keeps (Cassandra's window).
pub const ARRIVAL_WINDOW_MAX: usize = 1000;
/// Fewest intervals before the detector trusts their mean; below it the mean is the configured
/// `arrival_interval_max`, which errs towards waiting longer (a false negative corrects itself
/// after a few more seconds, a false positive makes the node flap).
pub const PHI_SAMPLES_MIN: usize = 5;

/// Most events waiting for `poll_event`. A full queue drops new events and says how many with
/// `MembershipEvent::EventsLost`, so the driver knows to re-read `members()`.
pub const EVENTS_QUEUED_MAX: usize = 8 * MEMBERS_MAX;
/// Most messages waiting for `poll_transmit`. Gossip tolerates loss, so a full queue drops its
/// oldest message.
pub const TRANSMITS_QUEUED_MAX: usize = 256;

/// Time between gossip rounds when nothing else is configured (Cassandra's and the 1 s).
pub const GOSSIP_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Phi above which a node is convicted when nothing else is configured (Cassandra's 8: about
/// 18.4 mean intervals of silence).
pub const PHI_THRESHOLD_DEFAULT: f64 = 8.0;
/// Longest gap between two ticks that is not a local pause, when nothing else is configured
/// (Cassandra's `MAX_LOCAL_PAUSE_IN_MS`).
pub const LOCAL_PAUSE_DEFAULT: Duration = Duration::from_secs(5);
/// How long the state of a node that left keeps being gossiped, so that every node hears it left
/// even if it was away at the time, when nothing else is configured.
pub const LEFT_RETENTION_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// How long a removed node's tombstone keeps stale gossip from bringing it back, when nothing
/// else is configured (Cassandra keeps dead state three days, chitchat one).
pub const TOMBSTONE_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest duration a configuration may set (a year): every `now + duration` the state machine
/// computes stays representable on every platform.
pub const CONFIG_DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Longest postcard varint (a `u64`, so also a `NodeId`, a generation or a version).
pub const VARINT_BYTES_MAX: usize = 10;
/// Longest encoded [`Entry`](crate::Entry): version, value tag, option tag, length prefix (two
/// varint bytes hold lengths below 16384) and the longest value.
pub const ENTRY_BYTES_MAX: usize =
    VARINT_BYTES_MAX + 1 + 1 + 2 + max(ADDRESS_BYTES_MAX, max(ZONE_BYTES_MAX, RING_BYTES_MAX));
/// Longest encoded [`NodeDelta`](crate::NodeDelta) holding one entry: node, generation, from
/// version, entry count, the entry.
pub const DELTA_ONE_ENTRY_BYTES_MAX: usize = 3 * VARINT_BYTES_MAX + 1 + ENTRY_BYTES_MAX;
/// Longest encoded [`DigestEntry`](crate::DigestEntry): node, generation, max version.
pub const DIGEST_ENTRY_BYTES_MAX: usize = 3 * VARINT_BYTES_MAX;
/// Longest encoding of a message with empty lists: sender, variant tag, two list lengths (three
/// varint bytes hold lengths below 2^21) and the `complete` flag.
pub const MESSAGE_EMPTY_BYTES_MAX: usize = VARINT_BYTES_MAX + 1 + 3 + 3 + 1;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const _: () = assert!(MESSAGE_BYTES_MIN <= MESSAGE_BYTES_DEFAULT);
const _: () = assert!(MESSAGE_BYTES_DEFAULT <= MESSAGE_BYTES_MAX);
// A gossip message travels in one frame.
const _: () = assert!(MESSAGE_BYTES_MAX < FRAME_BYTES_MAX);
// An ACK gives at most half its budget to requests, so the other half must always carry at least
// one entry of the first node's delta: every delta makes progress under any budget.
const _: () = assert!(MESSAGE_EMPTY_BYTES_MAX + DELTA_ONE_ENTRY_BYTES_MAX <= MESSAGE_BYTES_MIN / 2);
// A SYN always carries at least the sender's own digest entry, and the request half of an ACK at
// least one request.
const _: () = assert!(MESSAGE_EMPTY_BYTES_MAX + DIGEST_ENTRY_BYTES_MAX <= MESSAGE_BYTES_MIN / 2);
// List lengths are counted as three varint bytes above.
const _: () = assert!(MEMBERS_MAX < 1 << 21);
const _: () = assert!(MESSAGE_BYTES_MAX < 1 << 21);
// Entry lengths are counted as two varint bytes above.
const _: () = assert!(max(ADDRESS_BYTES_MAX, max(ZONE_BYTES_MAX, RING_BYTES_MAX)) < 1 << 14);
const _: () = assert!(PHI_SAMPLES_MIN >= 1 && PHI_SAMPLES_MIN <= ARRIVAL_WINDOW_MAX);
const _: () = assert!(TOMBSTONES_MAX >= 1);
const _: () = assert!(LEFT_RETENTION_DEFAULT.as_secs() <= CONFIG_DURATION_MAX.as_secs());
const _: () = assert!(TOMBSTONE_RETENTION_DEFAULT.as_secs() <= CONFIG_DURATION_MAX.as_secs());
const _: () = assert!(LOCAL_PAUSE_DEFAULT.as_secs() <= CONFIG_DURATION_MAX.as_secs());
// The pause guard must not fire between two regular ticks.
const _: () = assert!(LOCAL_PAUSE_DEFAULT.as_nanos() > GOSSIP_INTERVAL_DEFAULT.as_nanos() * 2);
// A tick queues at most three SYNs and every handled message at most one reply.
const _: () = assert!(TRANSMITS_QUEUED_MAX >= 3);
// One node can cause a handful of events per message; room for every member to change at once.
const _: () = assert!(EVENTS_QUEUED_MAX >= MEMBERS_MAX * 4);
// A gossip message fits the room a peer request gives it (`PEER_MESSAGE_BYTES_MAX`).
const _: () = assert!(MESSAGE_BYTES_MAX <= cairn_proto::limits::PEER_MESSAGE_BYTES_MAX);
