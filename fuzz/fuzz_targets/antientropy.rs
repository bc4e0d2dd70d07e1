//! Fuzzes `Message::decode`, which reads every anti-entropy message a peer sends.
#![no_main]

use cairn_antientropy::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        if let Ok(bytes) = message.encode() {
            assert_eq!(Message::decode(&bytes).as_ref(), Ok(&message));
        }
    }
});
