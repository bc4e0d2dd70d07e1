//! The frame: `[u32 big-endian body length][u16 big-endian protocol version][postcard message]`.
//!
//! The length is checked against `FRAME_BYTES_MAX` before any body byte is read or allocated, and
//! the version before any byte of the message is decoded.

use serde::{de::DeserializeOwned, Serialize};

use crate::limits::FRAME_BYTES_MAX;
use crate::{ClientRequest, PEER_REQUEST_TAG, PROTOCOL_VERSION};

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
    /// A peer request from a sender without a node certificate; nothing after its tag was
    /// decoded.
    #[error("peer requests need a node certificate")]
    PeerRequestFromClient,
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
///
/// Every message type this crate defines is bounded in depth (no type contains itself), so
/// decoding uses a bounded stack whatever the bytes say.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let message = check_version(body)?;
    let (msg, rest): (T, &[u8]) =
        postcard::take_from_bytes(message).map_err(|e| FrameError::Decode {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Decode {
            reason: format!("{} trailing bytes after the message", rest.len()),
        });
    }
    Ok(msg)
}

/// Decodes a request from a sender without a node certificate: a peer request is refused by its
/// tag, before any of it is decoded, and no other request can carry one.
pub fn decode_client_request(body: &[u8]) -> Result<ClientRequest, FrameError> {
    let message = check_version(body)?;
    if message.first() == Some(&PEER_REQUEST_TAG) {
        return Err(FrameError::PeerRequestFromClient);
    }
    decode_body(body)
}

/// Checks the protocol version at the start of `body` and returns the message after it.
fn check_version(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((version, message)) = body.split_first_chunk::<VERSION_BYTES>() else {
        return Err(FrameError::TooShort {
            len: body.len() as u64,
        });
    };
    let got = u16::from_be_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            got,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(message)
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

    /// The frame that overflowed a node's stack before version 3: a `Request::Peer(Forward(…))`
    /// nested 200,000 deep (`08 01` repeated, then `00`), under the version it was sent with
    /// and under the current one (where `08` after a forward's tag reads as its request id).
    fn nested_forward_body(version: u16) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        for _ in 0..200_000 {
            body.extend_from_slice(&[crate::PEER_REQUEST_TAG, 0x01]);
        }
        body.push(0x00);
        body
    }

    /// Runs `f` on a thread with a small stack: decoding must not need more, whatever it reads.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .expect("decoding overflowed a 128 KiB stack or panicked")
    }

    #[test]
    fn deeply_nested_forwards_are_refused_with_a_bounded_stack() {
        let (from_node, from_client, old) = on_small_stack(|| {
            let body = nested_forward_body(PROTOCOL_VERSION);
            (
                decode_body::<Request>(&body),
                decode_client_request(&body),
                decode_client_request(&nested_forward_body(2)),
            )
        });
        // A node certificate gets as far as the forward's operation, which cannot be a request.
        assert!(
            matches!(from_node, Err(FrameError::Decode { .. })),
            "{from_node:?}"
        );
        assert_eq!(from_client, Err(FrameError::PeerRequestFromClient));
        assert_eq!(
            old,
            Err(FrameError::UnsupportedVersion {
                got: 2,
                supported: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn a_client_request_is_a_request_without_the_peer_variant() {
        use crate::{ClientRequest, KeyOp, PeerRequest};
        let peer = encode_frame(&Request::Peer(PeerRequest::Ping { from: "n".into() })).unwrap();
        assert_eq!(peer[6], PEER_REQUEST_TAG);
        assert_eq!(
            decode_client_request(&peer[4..]),
            Err(FrameError::PeerRequestFromClient)
        );
        // Ping to Leave: each client request decodes as itself from a node's encoding.
        for req in [
            Request::Ping,
            Request::Get {
                key: b"k".to_vec(),
                opts: Default::default(),
            },
            Request::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                context: Context(vec![9]),
                opts: Default::default(),
            },
            Request::Delete {
                key: b"k".to_vec(),
                context: Context::empty(),
                opts: Default::default(),
            },
            Request::Status,
            Request::Ring,
            Request::Join {
                seed: "127.0.0.1:1".into(),
                dry_run: false,
            },
            Request::Leave { dry_run: true },
            Request::Remove {
                node: "n3".into(),
                dry_run: false,
            },
            Request::Replace {
                old: "n3".into(),
                new: "n9".into(),
                dry_run: true,
            },
            Request::LayoutForce { node: "n3".into() },
        ] {
            let frame = encode_frame(&req).unwrap();
            let client: ClientRequest = decode_client_request(&frame[4..]).unwrap();
            assert_eq!(Request::from(client), req);
            if let Some(op) = req.clone().into_op() {
                let forwarded = Request::Peer(PeerRequest::Forward {
                    id: 7,
                    retry: false,
                    op: op.clone(),
                });
                assert_eq!(roundtrip(&forwarded), forwarded);
                assert_eq!(Request::from(op), req);
            }
        }
        // A forward holding a forward does not exist any more: its tag is not a key operation.
        let mut nested = encode_frame(&Request::Peer(PeerRequest::Forward {
            id: 1,
            retry: false,
            op: KeyOp::Get {
                key: b"k".to_vec(),
                opts: Default::default(),
            },
        }))
        .unwrap();
        // [len 4][version 2][Peer][Forward][id 1][retry 0]: then the operation's tag.
        nested[10] = PEER_REQUEST_TAG;
        assert!(matches!(
            decode_body::<Request>(&nested[4..]),
            Err(FrameError::Decode { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_client_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client_request(&body);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<Request>(&body);
        }
    }
}
