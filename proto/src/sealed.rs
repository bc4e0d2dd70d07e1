//! Contexts a client cannot forge: the cluster's context key and the MAC it puts on every context
//! a node hands to a client.
//!
//! A node's reply carries `raw ‖ tag`, where `raw` is the version vector as the core encodes it and
//! `tag` is keyed blake3 (under the cluster's [`ContextKey`]) of a domain string, the item's key
//! and `raw`. A client's put or delete is opened before the node acts on it: a context whose tag
//! does not match was edited, or was made for another key or by another cluster, and is refused.
//! Binding the item's key matters: a context from one key, whose counters and actors are real,
//! would otherwise raise another key's version vector. Nodes exchange raw contexts (forwards),
//! since only nodes hold the key and a node certificate is trusted to speak for its node.

use std::fmt;

use crate::limits::CONTEXT_TAG_BYTES;
use crate::Context;

/// Separates context tags from any other use of the key, and names the format's version.
const DOMAIN: &[u8] = b"cairn context v1\0";

/// The cluster's secret for context tags (32 bytes); every node of a cluster holds the same one.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextKey([u8; 32]);

/// Why a context key file or a sealed context could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key's text is not 64 hexadecimal digits.
    #[error("a context key is 64 hexadecimal digits (32 bytes); found {found}")]
    BadKeyText {
        /// What was found instead.
        found: String,
    },
    /// The context is shorter than a tag: not one a node handed out.
    #[error(
        "context of {len} bytes is shorter than its {CONTEXT_TAG_BYTES}-byte tag: not a context a node handed out"
    )]
    Untagged {
        /// The context's length.
        len: u64,
    },
    /// The tag does not match the context's bytes and key.
    #[error("context tag does not match: the context was edited, or was handed out for another key or by another cluster")]
    TagMismatch,
}

impl ContextKey {
    /// A key from 32 secret bytes (the caller draws them from the OS's random source).
    pub fn from_bytes(bytes: [u8; 32]) -> ContextKey {
        ContextKey(bytes)
    }

    /// Reads the text form written by [`ContextKey::to_text`]: 64 hex digits, surrounding
    /// whitespace ignored.
    pub fn from_text(text: &str) -> Result<ContextKey, SealError> {
        let text = text.trim();
        let bad = || SealError::BadKeyText {
            found: if text.len() == 64 {
                "a non-hexadecimal digit".to_owned()
            } else {
                format!("{} characters", text.chars().count())
            },
        };
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ContextKey(bytes))
    }

    /// The key as 64 lowercase hex digits and a newline, as key files hold it.
    pub fn to_text(&self) -> String {
        let mut text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        text
    }

    fn tag(&self, key: &[u8], raw: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(DOMAIN);
        // The key's length first, so (key, raw) pairs cannot be re-split into another pair.
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(raw);
        h.finalize()
    }

    /// The context handed to a client for item `key`: `raw` followed by its tag. The empty
    /// context (a blind write's) stays empty: it claims nothing, so there is nothing to forge.
    pub fn seal(&self, key: &[u8], raw: &Context) -> Context {
        if raw.is_empty() {
            return Context::empty();
        }
        let mut bytes = Vec::with_capacity(raw.0.len() + CONTEXT_TAG_BYTES);
        bytes.extend_from_slice(&raw.0);
        bytes.extend_from_slice(self.tag(key, &raw.0).as_bytes());
        Context(bytes)
    }

    /// The raw context inside `sealed`, if its tag is this cluster's for item `key`.
    pub fn open(&self, key: &[u8], sealed: &Context) -> Result<Context, SealError> {
        if sealed.is_empty() {
            return Ok(Context::empty());
        }
        let len = sealed.0.len();
        let Some(split) = len.checked_sub(CONTEXT_TAG_BYTES).filter(|&s| s > 0) else {
            return Err(SealError::Untagged { len: len as u64 });
        };
        let (raw, tag) = sealed.0.split_at(split);
        let tag: [u8; 32] = tag.try_into().expect("split at the tag's length");
        // `Hash`'s equality is constant-time: no timing tells a forger how much of a tag matched.
        if self.tag(key, raw) != blake3::Hash::from(tag) {
            return Err(SealError::TagMismatch);
        }
        Ok(Context(raw.to_vec()))
    }
}

impl fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret (configs and errors are logged).
        f.write_str("ContextKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ContextKey {
        ContextKey::from_bytes([7; 32])
    }

    #[test]
    fn a_sealed_context_opens_for_its_key_only() {
        let raw = Context(vec![1, 2, 3, 4]);
        let sealed = key().seal(b"k", &raw);
        assert_eq!(sealed.0.len(), raw.0.len() + CONTEXT_TAG_BYTES);
        assert_eq!(key().open(b"k", &sealed), Ok(raw.clone()));
        assert_eq!(key().open(b"k2", &sealed), Err(SealError::TagMismatch));
        let other = ContextKey::from_bytes([8; 32]);
        assert_eq!(other.open(b"k", &sealed), Err(SealError::TagMismatch));
    }

    #[test]
    fn every_edit_is_refused() {
        let raw = Context(vec![1, 2, 3, 4, 5, 6]);
        let sealed = key().seal(b"k", &raw);
        for i in 0..sealed.0.len() {
            for bit in 0..8 {
                let mut edited = sealed.clone();
                edited.0[i] ^= 1 << bit;
                assert_eq!(key().open(b"k", &edited), Err(SealError::TagMismatch));
            }
        }
        // Bytes added before the tag (an extra actor) or after it, or bytes cut off.
        let mut longer = raw.0.clone();
        longer.push(9);
        longer.extend_from_slice(&sealed.0[raw.0.len()..]);
        assert_eq!(
            key().open(b"k", &Context(longer)),
            Err(SealError::TagMismatch)
        );
        let mut trailing = sealed.clone();
        trailing.0.push(0);
        assert_eq!(key().open(b"k", &trailing), Err(SealError::TagMismatch));
        let cut = Context(sealed.0[1..].to_vec());
        assert_eq!(key().open(b"k", &cut), Err(SealError::TagMismatch));
        let tag_only = Context(sealed.0[raw.0.len()..].to_vec());
        assert_eq!(
            key().open(b"k", &tag_only),
            Err(SealError::Untagged {
                len: CONTEXT_TAG_BYTES as u64
            })
        );
        // A raw context, as nodes encode it, is not a client's context.
        assert!(key().open(b"k", &raw).is_err());
    }

    #[test]
    fn the_empty_context_stays_empty() {
        assert_eq!(key().seal(b"k", &Context::empty()), Context::empty());
        assert_eq!(key().open(b"k", &Context::empty()), Ok(Context::empty()));
    }

    #[test]
    fn key_text_round_trips_and_bad_text_is_refused() {
        let k = ContextKey::from_bytes(std::array::from_fn(|i| (i as u8).wrapping_mul(9)));
        assert_eq!(ContextKey::from_text(&k.to_text()), Ok(k.clone()));
        assert_eq!(format!("{k:?}"), "ContextKey(..)");
        for bad in ["", "abc", &"g".repeat(64), &"é".repeat(32), &"0".repeat(65)] {
            assert!(
                matches!(
                    ContextKey::from_text(bad),
                    Err(SealError::BadKeyText { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
