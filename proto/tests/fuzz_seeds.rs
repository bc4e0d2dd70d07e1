//! The request fuzz target's seeds (fuzz/seeds/request) are generated here from typed values, so
//! they always match the current protocol version and wire shapes instead of being edited by hand
//! after each change. `CAIRN_WRITE_FUZZ_SEEDS=1 cargo test -p cairn-proto --test fuzz_seeds`
//! rewrites them; without it the test fails when a committed seed differs from what it would write
//! (a protocol change that left the seeds behind would otherwise only fuzz the version check).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_proto::{
    decode_body, encode_frame, ActorId, Context, CopyHeld, DotId, ErrorReply, GetReply, KeyOp,
    KeyOpReply, NodeId, PeerRequest, PeerResponse, ReadOptions, ReplicaFailure, Request, Response,
    Role, Sibling, TombstoneHolding, TombstoneProbe, WriteOptions,
};
use serde::Serialize;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request")
}

/// A frame's body (version + postcard), which is what the fuzz target decodes.
fn body<T: Serialize>(msg: &T) -> Vec<u8> {
    let frame = encode_frame(msg).expect("a seed encodes");
    frame[4..].to_vec()
}

fn get_reply() -> GetReply {
    GetReply {
        siblings: vec![Sibling {
            value: b"v1".to_vec(),
            dot: DotId {
                actor: ActorId {
                    node: NodeId::from_name("node1"),
                    epoch: 1,
                },
                counter: 7,
            },
        }],
        context: Context(vec![1, 2, 3, 4]),
    }
}

/// Every seed: its file name and its body.
fn seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let write = WriteOptions {
        w: Some(2),
        pw: Some(1),
        timeout_ms: Some(1_000),
    };
    let read = ReadOptions {
        r: Some(2),
        ..ReadOptions::default()
    };
    let peer = |p: PeerRequest| body(&Request::Peer(p));
    let answer = |p: PeerResponse| body(&Response::Peer(p));
    let mut s = BTreeMap::new();
    s.insert("seed-ping", body(&Request::Ping));
    s.insert(
        "seed-get",
        body(&Request::Get {
            key: b"k1".to_vec(),
            opts: read.clone(),
        }),
    );
    s.insert(
        "seed-put",
        body(&Request::Put {
            key: b"k1".to_vec(),
            value: b"hello".to_vec(),
            context: Context(vec![9; 8]),
            opts: write.clone(),
        }),
    );
    s.insert(
        "seed-delete",
        body(&Request::Delete {
            key: b"k1".to_vec(),
            context: Context(vec![9; 8]),
            opts: write.clone(),
        }),
    );
    s.insert("seed-status", body(&Request::Status));
    s.insert("seed-ring", body(&Request::Ring));
    s.insert(
        "seed-join",
        body(&Request::Join {
            seed: "127.0.0.1:7000".to_string(),
            dry_run: false,
        }),
    );
    s.insert("seed-leave", body(&Request::Leave { dry_run: true }));
    s.insert(
        "seed-remove",
        body(&Request::Remove {
            node: "node3".to_string(),
            dry_run: true,
        }),
    );
    s.insert(
        "seed-replace",
        body(&Request::Replace {
            old: "node3".to_string(),
            new: "node4".to_string(),
            dry_run: false,
        }),
    );
    s.insert(
        "seed-layout-force",
        body(&Request::LayoutForce {
            node: "node4".to_string(),
        }),
    );
    s.insert(
        "seed-peerping",
        peer(PeerRequest::Ping {
            from: "node2".to_string(),
        }),
    );
    s.insert(
        "seed-forward",
        peer(PeerRequest::Forward {
            id: 42,
            retry: false,
            op: KeyOp::Put {
                key: b"k1".to_vec(),
                value: b"hello".to_vec(),
                context: Context::default(),
                opts: write,
            },
        }),
    );
    s.insert(
        "seed-forward-get",
        peer(PeerRequest::Forward {
            id: 43,
            retry: true,
            op: KeyOp::Get {
                key: b"k1".to_vec(),
                opts: read,
            },
        }),
    );
    s.insert(
        "seed-replicate",
        peer(PeerRequest::Replicate {
            key: b"k1".to_vec(),
            object: vec![0, 1, 2, 3, 4, 5, 6, 7],
            hint_for: Some(NodeId::from_name("node3")),
        }),
    );
    s.insert(
        "seed-read",
        peer(PeerRequest::Read {
            key: b"k1".to_vec(),
        }),
    );
    s.insert("seed-gossip", peer(PeerRequest::Gossip(vec![0, 1, 2])));
    s.insert(
        "seed-ae",
        peer(PeerRequest::AntiEntropy {
            from: NodeId::from_name("node1"),
            partition: 5,
            session: 77,
            message: Some(vec![1, 2]),
        }),
    );
    s.insert(
        "seed-keys",
        peer(PeerRequest::Keys {
            partition: 5,
            key_hashes: vec![[7; 32]],
        }),
    );
    s.insert("seed-layout", peer(PeerRequest::Layout(Vec::new())));
    s.insert(
        "seed-tombstones",
        peer(PeerRequest::Tombstones {
            probes: vec![TombstoneProbe {
                key: b"k1".to_vec(),
                object_hash: [9; 32],
            }],
        }),
    );
    s.insert(
        "seed-partition-sizes",
        peer(PeerRequest::PartitionSizes {
            partitions: vec![0, 5, 63],
        }),
    );
    s.insert(
        "seed-batch",
        peer(PeerRequest::Batch(vec![
            cairn_proto::BatchItem::Replicate {
                key: b"k1".to_vec(),
                object: vec![0, 1, 2, 3],
                hint_for: None,
            },
            cairn_proto::BatchItem::Read {
                key: b"k2".to_vec(),
            },
        ])),
    );
    s.insert("seed-response-value", body(&Response::Value(get_reply())));
    s.insert(
        "seed-response-quorum",
        body(&Response::Error(ErrorReply::QuorumNotReached {
            kind: "write".to_string(),
            needed: 2,
            got: 1,
            failed: vec![ReplicaFailure {
                node: "node3".to_string(),
                reason: "timed out".to_string(),
            }],
        })),
    );
    s.insert(
        "seed-response-forbidden",
        body(&Response::Error(ErrorReply::Forbidden {
            what: "leave".to_string(),
            needed: Role::Admin,
            held: Role::Data,
        })),
    );
    s.insert(
        "seed-response-forwarded",
        answer(PeerResponse::Forwarded(KeyOpReply::Written(get_reply()))),
    );
    s.insert("seed-response-ack", answer(PeerResponse::Ack));
    s.insert(
        "seed-response-keys",
        answer(PeerResponse::Keys(vec![Some(b"k1".to_vec()), None])),
    );
    s.insert(
        "seed-response-layout",
        answer(PeerResponse::Layout(vec![1, 2, 3])),
    );
    s.insert(
        "seed-response-tombstones",
        answer(PeerResponse::Tombstones(vec![
            TombstoneHolding {
                copy: CopyHeld::Same,
                hinted: false,
            },
            TombstoneHolding {
                copy: CopyHeld::Other,
                hinted: true,
            },
        ])),
    );
    s.insert(
        "seed-response-partition-sizes",
        answer(PeerResponse::PartitionSizes(vec![
            cairn_proto::PartitionSize {
                partition: 5,
                keys: 12,
                bytes: 3400,
            },
        ])),
    );
    s.insert(
        "seed-response-batch",
        answer(PeerResponse::Batch(vec![
            Ok(cairn_proto::BatchAnswer::Ack),
            Ok(cairn_proto::BatchAnswer::Object(vec![4, 5])),
            Err(ErrorReply::ShuttingDown),
        ])),
    );
    s
}

#[test]
fn the_committed_request_seeds_are_the_generated_ones() {
    let seeds = seeds();
    let dir = dir();
    if std::env::var_os("CAIRN_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !seeds.contains_key(name.as_str()) {
                std::fs::remove_file(&path).unwrap();
            }
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut stale = Vec::new();
    for (name, bytes) in &seeds {
        if std::fs::read(dir.join(name)).ok().as_ref() != Some(bytes) {
            stale.push(*name);
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            seeds.contains_key(name.as_str()),
            "{name} in {} is not a generated seed; remove it or add it to seeds()",
            dir.display()
        );
    }
    assert!(
        stale.is_empty(),
        "seeds {stale:?} differ from the current wire format; run \
         `CAIRN_WRITE_FUZZ_SEEDS=1 cargo test -p cairn-proto --test fuzz_seeds` and commit them"
    );
}

#[test]
fn every_generated_seed_decodes_as_what_it_was_made_from() {
    for (name, bytes) in seeds() {
        if name.starts_with("seed-response") {
            let r = decode_body::<Response>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(body(&r), bytes, "{name}");
        } else {
            let r = decode_body::<Request>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(body(&r), bytes, "{name}");
        }
    }
}
