//! Transport limits: how much one connection may ask of a node at once, and how long it may idle.

use std::time::Duration;

use cairn_proto::limits::FRAME_BYTES_MAX;

/// Concurrent request streams one connection may have open; further streams wait for credit
/// (QUIC flow control), so a single client cannot queue unbounded work on a node.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well under `IDLE_TIMEOUT`, so idle but wanted connections survive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes of frames one connection may have in flight at a node (received or being received, and
/// held while their requests are served), reserved at each frame's announced length before its
/// body is read; a frame over it is refused as overloaded.
pub const FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX: usize = 4 * FRAME_BYTES_MAX;
/// Bytes of frames over `SMALL_FRAME_BYTES_MAX` all connections together may have in flight at a
/// node.
pub const FRAME_BYTES_IN_FLIGHT_MAX: usize = 128 * 1024 * 1024;
/// Frames up to this size (pings, gets, small writes) count against their connection's budget
/// only, so clients that filled the node's budget with large frames cannot starve the others;
/// their memory is bounded by `FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX` per connection.
pub const SMALL_FRAME_BYTES_MAX: usize = 64 * 1024;
/// How long a frame's body may take to arrive once its length is known; its reservation is
/// released then, so a sender that stalls cannot hold it.
pub const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC flow-control window of one connection: the most bytes quinn buffers for it that the
/// node has not read yet. Frames waiting for budget are not read, so this bounds what they cost.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX as u32;

/// Receive and send buffer asked for a node's UDP socket (`SO_RCVBUF`, `SO_SNDBUF`). Linux's
/// default, about 208 KiB, dropped datagrams under 64 clients' writes on a 2-core machine
/// (96 of 131,707 in `nstat`), each one a QUIC loss and a retransmission; the kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`, so a machine with smaller caps gets those.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

const _: () = assert!(FRAME_BYTES_MAX <= FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX);
const _: () = assert!(SMALL_FRAME_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX <= FRAME_BYTES_IN_FLIGHT_MAX);
const _: () = assert!(FRAME_BYTES_IN_FLIGHT_MAX < u32::MAX as usize);

/// Days a certificate issued by `cairn cert` stays valid.
pub const CERT_VALIDITY_DAYS: i64 = 3650;

const _: () = assert!(KEEP_ALIVE_INTERVAL.as_secs() * 2 < IDLE_TIMEOUT.as_secs());
