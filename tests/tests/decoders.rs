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
