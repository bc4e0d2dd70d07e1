//! Fuzzes `GossipMessage::decode`, which reads every gossip message a peer sends.
#![no_main]

use cairn_gossip::GossipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = GossipMessage::decode(data) {
        assert_eq!(
            GossipMessage::decode(&message.encode()).as_ref(),
            Ok(&message)
        );
    }
});
