//! The request fuzz target's seeds (fuzz/seeds/request) decode under the current protocol
//! version, so a protocol change that leaves them behind fails here rather than silently
//! starting the fuzzer from frames every node refuses at once.

use cairn_proto::{decode_body, Request, Response};

#[test]
fn every_request_seed_decodes_at_the_current_version() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        if name.starts_with("seed-response") {
            decode_body::<Response>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            decode_body::<Request>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds in {}", dir.display());
}
