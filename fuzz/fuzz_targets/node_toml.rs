//! Fuzzes `NodeConfig::parse`, which reads the `node.toml` a person wrote.
#![no_main]

use std::path::Path;

use cairn_node::NodeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = NodeConfig::parse(text, Path::new("/fuzz/node.toml")) {
            let _ = config.cluster();
        }
    }
});
