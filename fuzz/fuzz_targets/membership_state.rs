//! Fuzzes the reader of `data/membership.toml`, the state a node keeps across restarts
//! (generation, leaving, seeds, last-seen peers): whatever it accepts, written out again, reads
//! back as itself.
#![no_main]

use cairn_node::membership::parse_state_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(canonical) = parse_state_file(text) {
            assert_eq!(parse_state_file(&canonical).as_ref(), Ok(&canonical));
        }
    }
});
