//! Transport limits: how much one connection may ask of a node at once, and how long it may idle.

use std::time::Duration;

/// Concurrent request streams one connection may have open; further streams wait for credit
/// (QUIC flow control), so a single client cannot queue unbounded work on a node.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well under `IDLE_TIMEOUT`, so idle but wanted connections survive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Days a certificate issued by `cairn cert` stays valid.
pub const CERT_VALIDITY_DAYS: i64 = 3650;

const _: () = assert!(KEEP_ALIVE_INTERVAL.as_secs() * 2 < IDLE_TIMEOUT.as_secs());
