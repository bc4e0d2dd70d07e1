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
