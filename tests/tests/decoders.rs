//! Regression tests for inputs the fuzz targets (`fuzz/`) found: each decoder answers them with an
//! error or a value, never a panic.

use cairn_node::version::{Dot, Object, Payload, VClock, VersionError};
use cairn_proto::{ActorId, NodeId};

/// `fuzz/` target `object`: an entry whose counter is u64::MAX overflowed the bound on its
/// siblings' counters while the object was checked.
#[test]
fn an_object_with_a_counter_of_u64_max_decodes_without_overflow() {
    let crash = [
        0x01, 0x6d, 0xff, 0x0c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00,
    ];
    // One actor at counter u64::MAX with no live sibling: well formed, and decoded as such.
    let decoded = Object::decode(&crash).unwrap();
    assert_eq!(decoded.encode(), crash);
    // A sibling above its entry's counter is refused by the bound, not by noise.
    let mut above = crash[..4].to_vec(); // one entry, the same actor
    above.extend_from_slice(&[0x01, 0x01]); // counter 1, one sibling
    above.extend_from_slice(&[0x02, 0x00, 0x01, b'v']); // at counter 2: Value("v")
    match Object::decode(&above) {
        Err(VersionError::BadObject { reason }) => {
            assert!(reason.contains("sibling counter 2"), "{reason}")
        }
        other => panic!("a sibling above its entry's counter decoded as {other:?}"),
    }

    // The largest counter is a counter like any other: an object holding it roundtrips.
    let actor = ActorId {
        node: NodeId::from_name("n1"),
        epoch: 1,
    };
    let object = Object::default()
        .update(
            &VClock::new(),
            Dot::new(actor, u64::MAX),
            Payload::Value(b"v".to_vec()),
        )
        .unwrap();
    assert_eq!(Object::decode(&object.encode()), Ok(object));
}

/// The committed `request` seeds (`fuzz/seeds/request`) are frames of the current protocol
/// version that decode: seeds of an old version would only exercise the version check.
#[test]
fn every_request_seed_decodes_at_the_current_protocol_version() {
    use cairn_proto::{decode_body, PeerRequest, PeerResponse, Request, Response};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let decoded = if name.starts_with("seed-response-") {
            decode_body::<Response>(&bytes).map(|r| format!("{r:?}"))
        } else {
            decode_body::<Request>(&bytes).map(|r| format!("{r:?}"))
        };
        assert!(decoded.is_ok(), "{name}: {decoded:?}");
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds in {}", dir.display());
    // The layout exchange has seeds of its own.
    let layout = std::fs::read(dir.join("seed-layout")).unwrap();
    assert_eq!(
        decode_body::<Request>(&layout).unwrap(),
        Request::Peer(PeerRequest::Layout(Vec::new()))
    );
    // So does the operator's override.
    let force = std::fs::read(dir.join("seed-layout-force")).unwrap();
    assert_eq!(
        decode_body::<Request>(&force).unwrap(),
        Request::LayoutForce {
            node: "node4".into()
        }
    );
    let answer = std::fs::read(dir.join("seed-response-layout")).unwrap();
    assert_eq!(
        decode_body::<Response>(&answer).unwrap(),
        Response::Peer(PeerResponse::Layout(vec![1, 2, 3]))
    );
}
