//! Cairn's wire protocol: the messages clients and nodes exchange, their limits, and the frame.
//!
//! This crate is pure (no sockets, no clock, no disk) so the node, the client library, the CLI and
//! the simulator all agree on one definition of what may cross the wire.

pub mod frame;
pub mod limits;
mod message;
mod sealed;

pub use frame::{
    decode_body, decode_client_request, encode_frame, frame_body_len, FrameError,
    FRAME_HEADER_BYTES,
};
pub use message::*;
pub use sealed::{ContextKey, SealError};

/// Version of the message set carried in every frame; a peer speaking another version gets
/// `ErrorReply::UnsupportedVersion` instead of a misread message.
/// 2: anti-entropy peer requests and the anti-entropy part of `StatusReply`.
/// 3: a forward carries a `KeyOp` and its answer a `KeyOpReply`, so neither can nest.
/// 4: certificate roles; `ErrorReply::Forbidden` names the role a request needs.
/// 5: `ReadOptions.local`.
/// 6: `PeerRequest::Layout` and its answer: layouts exchanged between nodes.
/// 7: a client's context carries a tag (`ContextKey`); an untagged one is refused.
/// 8: `LimitError::{OverHardLimit, FrameTooLarge}`; merges held to the hard limits.
/// 9: `PeerRequest::Forward` carries a request id (forwarded writes applied at most once).
/// 10: `Request::LayoutForce`; `StatusReply.transfer`.
/// 11: gossip's `Key::Storage`/`Value::Storage`: a node declares its storage degraded.
/// 12: `PeerRequest::Tombstones` and its answer (tombstone reaping); `StatusReply.tombstones`.
/// 13: `PeerRequest::PartitionSizes` and its answer; a plan's moves carry keys and bytes.
/// 14: `PeerRequest::Batch`/`PeerResponse::Batch` (replicates and reads to one peer in one
///     frame) and `LimitError::TooManyBatchItems`.
/// 15: `LayoutChangeReply.unconfirmed` (members an applied change could not be confirmed with).
pub const PROTOCOL_VERSION: u16 = 15;

/// ALPN protocol id negotiated in the TLS handshake; a QUIC peer that does not offer it is refused.
pub const ALPN: &[u8] = b"cairn/1";
