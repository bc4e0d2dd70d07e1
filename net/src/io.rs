//! Reading and writing one length-prefixed frame on a QUIC stream.

use cairn_proto::{decode_body, encode_frame, frame_body_len, FRAME_HEADER_BYTES};
use serde::{de::DeserializeOwned, Serialize};

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
    let body = read_frame_body(recv).await?;
    Ok(decode_body(&body)?)
}

/// Reads one frame's body (version and message, undecoded), its length checked against
/// `FRAME_BYTES_MAX` before it is read, for a caller that decodes by who sent it.
pub async fn read_frame_body(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| NetError::Read {
            reason: e.to_string(),
        })?;
    let len = frame_body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| NetError::Read {
            reason: e.to_string(),
        })?;
    Ok(body)
}
