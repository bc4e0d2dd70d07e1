//! The CLI's own limits and deadlines, qualifier last.

use std::time::Duration;

/// How long `cairn dev` waits for every node to answer a ping after starting it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one readiness ping (connect and answer) may take, once the node says it listens.
pub const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between readiness pings; it doubles up to `READY_BACKOFF_MAX`.
pub const READY_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between readiness pings.
pub const READY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// How long `cairn dev` waits for its nodes to stop after SIGTERM before it kills them. A node
/// drains in-flight requests for up to 10 s and then closes its connections, so this leaves room.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Most nodes one cluster directory may hold (also bounds the failover loop of client commands).
pub const NODES_MAX: usize = 64;
/// Bytes of a node's log read (from where this run's output starts) to see that it listens.
pub const LOG_SCAN_BYTES_MAX: usize = 64 * 1024;
/// Bytes read from the end of a node's log to quote its last line when it fails to start.
pub const LOG_TAIL_BYTES_MAX: usize = 4096;

const _: () = assert!(READY_BACKOFF_MIN.as_millis() < READY_BACKOFF_MAX.as_millis());
const _: () = assert!(READY_ATTEMPT_TIMEOUT.as_secs() < READY_TIMEOUT.as_secs());

/// Most nodes `cairn dev` runs on one machine (each is a process with its own database).
pub const DEV_NODES_MAX: usize = 16;
/// Nodes `cairn dev` makes in a fresh directory when --nodes is not given.
pub const DEV_NODES_DEFAULT: usize = 3;
/// Replicas per key (N) in a dev cluster's config (fewer when the cluster has fewer nodes).
pub const DEV_REPLICAS: u8 = 3;
/// Partitions (Q) in a dev cluster's ring.
pub const DEV_PARTITIONS: u32 = 64;
/// Lowest port a dev cluster draws its listeners from (they go below the kernel's ephemeral
/// range; the registered ports under this are left to the services that own them).
pub const DEV_PORT_MIN: u16 = 10_000;
/// How many times more free ports than it needs the range below the ephemeral ones must hold
/// before a dev cluster draws from it at random; with less room, the kernel chooses.
pub const DEV_PORT_ROOM_FACTOR: usize = 16;
/// Random draws per port a dev cluster needs before it lets the kernel choose the rest.
pub const DEV_PORT_ATTEMPTS_PER_PORT: usize = 64;
/// How much longer than the timeout it sent a client waits for the node's answer, so the node's
/// own timeout error (which names the replicas that failed) arrives before the client gives up.
pub const REPLY_GRACE: Duration = Duration::from_secs(2);
/// How long `cairn status` waits for a member it asks for its own hint count.
pub const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for a member the asked node believes down: most likely it is, so do not wait long.
pub const MEMBER_DOWN_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the benchmark's progress bar is redrawn.
pub const BENCH_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Seconds a benchmark runs when neither --ops nor --duration is given.
pub const BENCH_DURATION_DEFAULT: Duration = Duration::from_secs(10);

const _: () = assert!(DEV_NODES_DEFAULT <= DEV_NODES_MAX);
const _: () = assert!(DEV_NODES_MAX <= NODES_MAX);
const _: () = assert!(DEV_PARTITIONS.is_power_of_two());
const _: () = assert!(DEV_NODES_MAX as u32 <= DEV_PARTITIONS);
const _: () = assert!(MEMBER_DOWN_STATUS_TIMEOUT.as_millis() <= MEMBER_STATUS_TIMEOUT.as_millis());
/// How long `cairn join` waits for the node to hear from the cluster when --wait is not given.
pub const JOIN_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// How often `cairn join` asks the node whether it has joined.
pub const JOIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
