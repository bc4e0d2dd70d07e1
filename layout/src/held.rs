//! A layout with the id of its cluster, as a node's layout file and its peers carry it, and the
//! stamp of it that gossip spreads: pure encoding, used by the node and the simulator alike.
//!
//! A layout travels with the id of its cluster: the digest of the version 1 it grew from. Two
//! layouts of different clusters never merge.

use serde::{Deserialize, Serialize};

use crate::limits::LAYOUT_ENCODED_BYTES_MAX;
use crate::{Digest, Layout};

/// A layout with the id of its cluster, as the file and peers carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The digest of the cluster's layout version 1.
    pub cluster: Digest,
    /// The layout.
    pub layout: Layout,
}

/// Bytes of the largest encoded [`Held`]: the layout and the cluster id.
pub const HELD_ENCODED_BYTES_MAX: usize = LAYOUT_ENCODED_BYTES_MAX + 32;

/// The small summary of a layout that gossip carries: its cluster, its newest version and a
/// digest of the whole layout, progress included. Two nodes of one cluster whose stamps differ
/// exchange layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The cluster's id.
    pub cluster: Digest,
    /// The newest version.
    pub version: u64,
    /// blake3 of the encoded layout.
    pub digest: [u8; 32],
}

impl Stamp {
    /// The stamp of `held`.
    pub fn of(held: &Held) -> Stamp {
        Stamp {
            cluster: held.cluster,
            version: held.layout.current().version(),
            digest: *blake3::hash(&encode(held)).as_bytes(),
        }
    }
}

/// A held layout encoded for a peer or the file (postcard). Its size is bounded by
/// `HELD_ENCODED_BYTES_MAX` by construction of the layout's limits.
pub fn encode(held: &Held) -> Vec<u8> {
    postcard::to_allocvec(held).expect("a layout always serializes")
}

/// A held layout from a peer or the file, checked for size first and for every invariant of
/// `Layout` while decoding.
pub fn decode(bytes: &[u8]) -> Result<Held, String> {
    if bytes.len() > HELD_ENCODED_BYTES_MAX {
        return Err(format!(
            "{} bytes, over HELD_ENCODED_BYTES_MAX ({HELD_ENCODED_BYTES_MAX})",
            bytes.len()
        ));
    }
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}
