//! Reading and writing one length-prefixed frame on a QUIC stream, and the byte budgets that
//! bound how much memory frames being received may take.
//!
//! A frame's body is read as it arrives, never allocated at its announced length up front, so a
//! stream that announces 8 MiB and sends nothing costs nothing; a server also reserves the
//! announced length from its connection's and its node's budget before reading a byte of it.

use std::sync::Arc;

use cairn_proto::{decode_body, encode_frame, frame_body_len, FRAME_HEADER_BYTES};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::limits::{
    FRAME_BODY_TIMEOUT, FRAME_BYTES_IN_FLIGHT_MAX, FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX,
    SMALL_FRAME_BYTES_MAX,
};
use crate::NetError;

/// Writes `msg` as one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), NetError> {
    let frame = encode_frame(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame: the length is checked against `FRAME_BYTES_MAX` before the body is read, and
/// the protocol version before the message is decoded.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, NetError> {
    let len = read_header(recv).await?;
    let body = read_body(recv, len).await?;
    Ok(decode_body(&body)?)
}

/// The bytes of frames a node is receiving, and may hold while it serves them: at most
/// `FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX` for one connection, and at most
/// `FRAME_BYTES_IN_FLIGHT_MAX` of frames over `SMALL_FRAME_BYTES_MAX` for the node.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    node: Arc<Semaphore>,
}

impl Default for FrameBudget {
    fn default() -> FrameBudget {
        FrameBudget::new()
    }
}

impl FrameBudget {
    /// A node's budget, of `FRAME_BYTES_IN_FLIGHT_MAX` bytes.
    pub fn new() -> FrameBudget {
        FrameBudget {
            node: Arc::new(Semaphore::new(FRAME_BYTES_IN_FLIGHT_MAX)),
        }
    }

    /// A new connection's budget, drawing on this node's as well.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            node: self.node.clone(),
            connection: Arc::new(Semaphore::new(FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX)),
        }
    }

    /// Bytes reserved now across the node (for tests and status).
    pub fn in_use(&self) -> usize {
        FRAME_BYTES_IN_FLIGHT_MAX - self.node.available_permits()
    }
}

/// One connection's share of a [`FrameBudget`].
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    node: Arc<Semaphore>,
    connection: Arc<Semaphore>,
}

/// A frame body read within a budget; the bytes stay reserved until this is dropped, so a server
/// keeps it while it serves the request the frame holds.
#[derive(Debug)]
pub struct BudgetedFrame {
    /// The body: protocol version and message, undecoded.
    pub body: Vec<u8>,
    _connection: OwnedSemaphorePermit,
    _node: Option<OwnedSemaphorePermit>,
}

/// Reads one frame's body (undecoded, for a caller that decodes by who sent it), reserving its
/// announced length from `budget` first: a frame that does not fit is refused
/// ([`NetError::OverBudget`]) without a byte of its body read, and a body must arrive within
/// `FRAME_BODY_TIMEOUT`, so a stalled sender cannot hold its reservation for ever.
pub async fn read_frame_body_within(
    recv: &mut quinn::RecvStream,
    budget: &ConnectionBudget,
) -> Result<BudgetedFrame, NetError> {
    let len = read_header(recv).await?;
    // `len` is at most FRAME_BYTES_MAX, far below u32::MAX (proto's limits assert it).
    let permits = len as u32;
    let over = |limit: &'static str, max: usize| NetError::OverBudget {
        limit,
        len: len as u64,
        max: max as u64,
    };
    let connection = match budget.connection.clone().try_acquire_many_owned(permits) {
        Ok(p) => p,
        Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
            return Err(over(
                "FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX",
                FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX,
            ))
        }
    };
    // Small frames (pings, gets, small writes) draw on their connection's budget only, so
    // connections that filled the node's budget with large frames cannot starve other clients.
    let node = if len > SMALL_FRAME_BYTES_MAX {
        match budget.node.clone().try_acquire_many_owned(permits) {
            Ok(p) => Some(p),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                return Err(over("FRAME_BYTES_IN_FLIGHT_MAX", FRAME_BYTES_IN_FLIGHT_MAX))
            }
        }
    } else {
        None
    };
    let body = tokio::time::timeout(FRAME_BODY_TIMEOUT, read_body(recv, len))
        .await
        .map_err(|_| NetError::Read {
            reason: format!("frame body of {len} bytes not received within {FRAME_BODY_TIMEOUT:?}"),
        })??;
    Ok(BudgetedFrame {
        body,
        _connection: connection,
        _node: node,
    })
}

async fn read_header(recv: &mut quinn::RecvStream) -> Result<usize, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| NetError::Read {
            reason: e.to_string(),
        })?;
    Ok(frame_body_len(header)?)
}

/// Reads `len` bytes as they arrive: the buffer grows with what was received (doubling, capped
/// at `len`), so memory follows the bytes sent, not the bytes announced.
async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, NetError> {
    let mut body = Vec::new();
    while body.len() < len {
        let chunk = recv
            .read_chunk(len - body.len(), true)
            .await
            .map_err(|e| NetError::Read {
                reason: e.to_string(),
            })?
            .ok_or_else(|| NetError::Read {
                reason: format!("stream ended after {} of {len} frame bytes", body.len()),
            })?;
        let needed = body.len() + chunk.bytes.len();
        if needed > body.capacity() {
            let target = (body.capacity() * 2).clamp(needed, len);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(body)
}
