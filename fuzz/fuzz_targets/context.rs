//! Fuzzes what a node does with the context a client hands back with a write: opening its tag
//! (`ContextKey::open`) and decoding the version vector inside (`decode_context`).
#![no_main]

use cairn_node::version::{decode_context, encode_context};
use cairn_proto::{Context, ContextKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ContextKey::from_bytes([7; 32]);
    let given = Context(data.to_vec());
    // Without the key no input opens, except by guessing a 32-byte tag; either way no panic.
    if let Ok(raw) = key.open(b"k", &given) {
        let _ = decode_context(&raw);
    }
    if let Ok(vv) = decode_context(&given) {
        let raw = encode_context(&vv);
        assert_eq!(decode_context(&raw).as_ref(), Ok(&vv));
        // What a node tags opens to itself, for that key only.
        let sealed = key.seal(b"k", &raw);
        assert_eq!(key.open(b"k", &sealed).as_ref(), Ok(&raw));
        assert!(raw.is_empty() || key.open(b"k2", &sealed).is_err());
    }
});
