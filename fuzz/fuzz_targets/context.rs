//! Fuzzes `decode_context`, which reads the context token a client hands back with a write.
#![no_main]

use cairn_node::version::{decode_context, encode_context};
use cairn_proto::Context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(vv) = decode_context(&Context(data.to_vec())) {
        assert_eq!(decode_context(&encode_context(&vv)).as_ref(), Ok(&vv));
    }
});
