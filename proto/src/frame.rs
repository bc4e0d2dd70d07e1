//! The frame: `[u32 big-endian body length][u16 big-endian protocol version][postcard message]`.
//!
//! The length is checked against `FRAME_BYTES_MAX` before any body byte is read or allocated, and
//! the version before any byte of the message is decoded.

use serde::{de::DeserializeOwned, Serialize};

use crate::limits::FRAME_BYTES_MAX;
use crate::PROTOCOL_VERSION;

/// Bytes of the length prefix that precedes every frame body.
pub const FRAME_HEADER_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than `FRAME_BYTES_MAX`; nothing of the body was read.
    #[error("frame of {len} bytes exceeds FRAME_BYTES_MAX ({max} bytes)")]
    TooLarge {
        /// Announced (or encoded) body length.
        len: u64,
        /// `FRAME_BYTES_MAX`.
        max: u64,
    },
    /// The body is too short to hold even the protocol version.
    #[error("frame of {len} bytes is too short to carry a protocol version")]
    TooShort {
        /// Body length.
        len: u64,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}; this build speaks {supported}")]
    UnsupportedVersion {
        /// Version in the frame.
        got: u16,
        /// `PROTOCOL_VERSION`.
        supported: u16,
    },
    /// The body is not a valid message.
    #[error("malformed message: {reason}")]
    Decode {
        /// What postcard reported.
        reason: String,
    },
    /// The message could not be encoded (a bug, or a value that cannot be serialized).
    #[error("cannot encode message: {reason}")]
    Encode {
        /// What postcard reported.
        reason: String,
    },
}

/// Encodes `msg` as one complete frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; FRAME_HEADER_BYTES];
    buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    let mut buf = postcard::to_extend(msg, buf).map_err(|e| FrameError::Encode {
        reason: e.to_string(),
    })?;
    let body_len = buf.len() - FRAME_HEADER_BYTES;
    if body_len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: body_len as u64,
            max: FRAME_BYTES_MAX as u64,
        });
    }
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads the body length from a frame header, refusing lengths above `FRAME_BYTES_MAX`.
pub fn frame_body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: FRAME_BYTES_MAX as u64,
        });
    }
    if len < VERSION_BYTES {
        return Err(FrameError::TooShort { len: len as u64 });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the length prefix): version first, then the message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() < VERSION_BYTES {
        return Err(FrameError::TooShort {
            len: body.len() as u64,
        });
    }
    let got = u16::from_be_bytes([body[0], body[1]]);
    if got != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            got,
            supported: PROTOCOL_VERSION,
        });
    }
    let (msg, rest): (T, &[u8]) =
        postcard::take_from_bytes(&body[VERSION_BYTES..]).map_err(|e| FrameError::Decode {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Decode {
            reason: format!("{} trailing bytes after the message", rest.len()),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Request};
    use proptest::prelude::*;

    fn roundtrip(req: &Request) -> Request {
        let frame = encode_frame(req).unwrap();
        let len = frame_body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        decode_body(&frame[4..]).unwrap()
    }

    #[test]
    fn frames_roundtrip() {
        for req in [
            Request::Ping,
            Request::Get {
                key: b"k".to_vec(),
                opts: Default::default(),
            },
            Request::Put {
                key: b"k".to_vec(),
                value: vec![0xff; 300],
                context: Context(vec![1, 2, 3]),
                opts: Default::default(),
            },
        ] {
            assert_eq!(roundtrip(&req), req);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_decoding() {
        let header = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        assert_eq!(
            frame_body_len(header),
            Err(FrameError::TooLarge {
                len: FRAME_BYTES_MAX as u64 + 1,
                max: FRAME_BYTES_MAX as u64
            })
        );
        assert_eq!(
            frame_body_len([0, 0, 0, 1]),
            Err(FrameError::TooShort { len: 1 })
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let mut frame = encode_frame(&Request::Ping).unwrap();
        frame[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        assert_eq!(
            decode_body::<Request>(&frame[4..]),
            Err(FrameError::UnsupportedVersion {
                got: PROTOCOL_VERSION + 1,
                supported: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = encode_frame(&Request::Ping).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_body::<Request>(&frame[4..]),
            Err(FrameError::Decode { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<Request>(&body);
        }
    }
}
