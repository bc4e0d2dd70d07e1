//! The 32-byte values the tree works with (key hashes, object hashes, node digests), the
//! order-independent sum that combines entries into node digests, and the key's path in the tree.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

use crate::limits::{FANOUT_BITS, HASH_BYTES, PATH_BITS, PATH_BYTE_OFFSET};

/// `blake3(key)`: how the tree names a key. The node keeps `key_hash → key` in its store so it
/// can turn the key hashes a session reports back into keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyHash(pub [u8; HASH_BYTES]);

/// `blake3(encoded object)`: the hash of a key's stored object (its causal state and values).
/// Two replicas hold the same object exactly when these are equal; the tree never sees the object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectHash(pub [u8; HASH_BYTES]);

/// A node's digest: the sum, modulo 2^256, of `blake3(key_hash ‖ object_hash)` over every entry
/// below the node, as 32 little-endian bytes. An empty node's digest is zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; HASH_BYTES]);

impl KeyHash {
    /// The key hash of `key`, exactly as the node must compute it.
    pub fn of_key(key: &[u8]) -> KeyHash {
        KeyHash(*blake3::hash(key).as_bytes())
    }

    /// The leaf bucket (`0..LEAVES`) this key lives in.
    pub fn leaf(&self) -> u32 {
        self.node_at(crate::limits::DEPTH)
    }

    /// The index of the node at `level` whose subtree holds this key.
    pub(crate) fn node_at(&self, level: usize) -> u32 {
        debug_assert!(level <= crate::limits::DEPTH);
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.0[PATH_BYTE_OFFSET..PATH_BYTE_OFFSET + 4]);
        let path = u32::from_be_bytes(word) >> (32 - PATH_BITS);
        // `checked_shr` because at level 0 the shift is the whole path width (32 when PATH_BITS
        // is 32): the root is node 0.
        path.checked_shr(PATH_BITS - level as u32 * FANOUT_BITS)
            .unwrap_or(0)
    }

    /// The key's position in tree order: the bytes rotated so the path comes first. Entries are
    /// stored and sent in this order, so every subtree is one contiguous range.
    pub(crate) fn tree_order(&self) -> [u8; HASH_BYTES] {
        let mut k = self.0;
        k.rotate_left(PATH_BYTE_OFFSET);
        k
    }

    /// Inverse of [`KeyHash::tree_order`].
    pub(crate) fn from_tree_order(mut k: [u8; HASH_BYTES]) -> KeyHash {
        k.rotate_right(PATH_BYTE_OFFSET);
        KeyHash(k)
    }
}

impl ObjectHash {
    /// The object hash of an encoded object, exactly as the node must compute it.
    pub fn of_encoded(object: &[u8]) -> ObjectHash {
        ObjectHash(*blake3::hash(object).as_bytes())
    }
}

impl Digest {
    /// The digest of an empty tree or subtree.
    pub const ZERO: Digest = Digest([0; HASH_BYTES]);
}

impl From<blake3::Hash> for KeyHash {
    fn from(h: blake3::Hash) -> KeyHash {
        KeyHash(*h.as_bytes())
    }
}

impl From<blake3::Hash> for ObjectHash {
    fn from(h: blake3::Hash) -> ObjectHash {
        ObjectHash(*h.as_bytes())
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    // Eight bytes tell hashes apart in logs and test failures; the rest is noise.
    for b in &bytes[..8] {
        write!(f, "{b:02x}")?;
    }
    f.write_str("…")
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("k:")?;
        hex(f, &self.0)
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Debug for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("o:")?;
        hex(f, &self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("d:")?;
        hex(f, &self.0)
    }
}

/// A 256-bit unsigned integer, four little-endian 64-bit limbs, with wrapping arithmetic.
///
/// Why a sum rather than XOR or a hash of the sorted entries: a sum is order-independent and
/// invertible, so an insert, update or remove changes a node by one addition or subtraction
/// without touching its other entries (a sorted-bucket hash must rehash the bucket, and then every
/// ancestor). Unlike XOR, an entry counted twice does not cancel to nothing, and two different
/// sets of random 256-bit values reach the same sum only by chance (2^-256). Like XOR, it is not
/// collision-resistant against someone choosing entries on purpose (Wagner's generalized
/// birthday): at worst a contrived difference stays hidden until its subtree changes again.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub(crate) struct Sum([u64; 4]);

impl Sum {
    pub(crate) const ZERO: Sum = Sum([0; 4]);

    /// The contribution of one entry: `blake3(key_hash ‖ object_hash)` read as a number.
    pub(crate) fn of_entry(key: &KeyHash, object: &ObjectHash) -> Sum {
        let mut h = blake3::Hasher::new();
        h.update(&key.0);
        h.update(&object.0);
        Sum::from_bytes(h.finalize().as_bytes())
    }

    fn from_bytes(b: &[u8; HASH_BYTES]) -> Sum {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(w);
        }
        Sum(limbs)
    }

    pub(crate) fn digest(&self) -> Digest {
        let mut b = [0u8; HASH_BYTES];
        for (i, limb) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        Digest(b)
    }
}

impl Add for Sum {
    type Output = Sum;
    fn add(self, rhs: Sum) -> Sum {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (s, c1) = self.0[i].overflowing_add(rhs.0[i]);
            let (s, c2) = s.overflowing_add(carry as u64);
            *o = s;
            carry = c1 || c2;
        }
        Sum(out)
    }
}

impl Sub for Sum {
    type Output = Sum;
    fn sub(self, rhs: Sum) -> Sum {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (d, b1) = self.0[i].overflowing_sub(rhs.0[i]);
            let (d, b2) = d.overflowing_sub(borrow as u64);
            *o = d;
            borrow = b1 || b2;
        }
        Sum(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_wraps_and_inverts() {
        let max = Sum([u64::MAX; 4]);
        let one = Sum([1, 0, 0, 0]);
        assert_eq!(max + one, Sum::ZERO, "carries through every limb and wraps");
        assert_eq!(Sum::ZERO - one, max, "borrows through every limb and wraps");
        let a = Sum::of_entry(&KeyHash([1; 32]), &ObjectHash([2; 32]));
        let b = Sum::of_entry(&KeyHash([3; 32]), &ObjectHash([4; 32]));
        assert_eq!(a + b - a, b);
        assert_eq!(a + b, b + a);
        assert_ne!(
            a + a,
            Sum::ZERO,
            "unlike XOR, a repeated entry does not cancel"
        );
    }

    #[test]
    fn path_bits_come_after_the_ring_bytes() {
        let mut k = [0xffu8; 32];
        k[PATH_BYTE_OFFSET..PATH_BYTE_OFFSET + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        let key = KeyHash(k);
        assert_eq!(key.node_at(0), 0);
        assert_eq!(key.node_at(1), 0x1);
        assert_eq!(key.node_at(2), 0x12);
        assert_eq!(key.leaf(), 0x1234_5678 >> (32 - PATH_BITS));
        assert_eq!(KeyHash::from_tree_order(key.tree_order()), key);
        assert_eq!(key.tree_order()[..4], [0x12, 0x34, 0x56, 0x78]);
    }
}
