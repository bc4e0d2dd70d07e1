//! Fuzzes `Object::decode`, which reads stored objects from redb and replicated ones from peers.
#![no_main]

use cairn_node::version::{Limits, Object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = Object::decode(data) {
        let _ = object.check_limits(Limits::Client);
        let _ = object.check_limits(Limits::Merge);
        let _ = object.live();
        let _ = object.join();
        // A decoded object is well formed: it encodes and decodes to itself, and merges with
        // itself to itself.
        assert_eq!(Object::decode(&object.encode()).as_ref(), Ok(&object));
        assert_eq!(object.sync(&object), object);
    }
});
