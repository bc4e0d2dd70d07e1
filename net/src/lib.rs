//! Cairn's QUIC transport: cluster certificates, mutual-TLS endpoints and async frame I/O.
//!
//! Shared by the node (serving, and later talking to peers) and the client library, so both sides
//! build TLS the same way and read frames with the same limits.

mod io;
pub mod limits;
mod socket;
mod tcp;
mod tls;

pub use cairn_proto::Role;
pub use io::{
    read_frame, read_frame_body_within, write_frame, BudgetedFrame, ConnectionBudget, FrameBudget,
};
pub use socket::SocketClosed;
pub use tcp::{chain_is_node, tcp_server_config};
pub use tls::{
    certificate_role, client_endpoint, peer_is_node, peer_node_name, peer_role, server_endpoint,
    ClusterCa, Identity, Issued, SERVER_NAME,
};

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate or key could not be created, read or used.
    #[error("TLS setup failed: {reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No connection could be made to a node.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The node's address.
        addr: std::net::SocketAddr,
        /// What failed (handshake refused, timeout, ...).
        reason: String,
    },
    /// An established connection failed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed or it ended early.
    #[error("stream read failed: {reason}")]
    Read {
        /// What failed.
        reason: String,
    },
    /// A frame's announced length does not fit the receiver's budget of frame bytes in flight;
    /// nothing of its body was read.
    #[error("frame of {len} bytes refused: {limit} ({max} bytes) is in use by frames in flight")]
    OverBudget {
        /// The limit that is full.
        limit: &'static str,
        /// The frame's announced length.
        len: u64,
        /// The limit's value.
        max: u64,
    },
    /// The frame was refused (too large, wrong version, malformed).
    #[error(transparent)]
    Frame(#[from] cairn_proto::FrameError),
}
