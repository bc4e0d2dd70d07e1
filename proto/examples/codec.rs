//! A fixed codec workload for instruction counts (`valgrind --tool=callgrind`): frames of the
//! request path — a client put, the replica's replicate, the reply — encoded and decoded.
//!
//! `cargo run --release -p cairn-proto --example codec -- [ROUNDS] [VALUE_BYTES]`

use cairn_proto::{
    decode_body, encode_frame, ActorId, Context, DotId, GetReply, NodeId, PeerRequest, Request,
    Response, Sibling, WriteOptions, FRAME_HEADER_BYTES,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(10_000, |a| a.parse().expect("ROUNDS"));
    let value_bytes: usize = args
        .next()
        .map_or(1024, |a| a.parse().expect("VALUE_BYTES"));
    let value: Vec<u8> = (0..value_bytes).map(|i| i as u8).collect();
    let mut checksum = 0u64;
    for round in 0..rounds {
        let key = format!("bench:{round}").into_bytes();
        let put = Request::Put {
            key: key.clone(),
            value: value.clone(),
            context: Context(vec![7; 24]),
            opts: WriteOptions::default(),
        };
        let replicate = Request::Peer(PeerRequest::Replicate {
            key: key.clone(),
            object: value.clone(),
            hint_for: None,
        });
        let written = Response::Written(GetReply {
            siblings: vec![Sibling {
                value: value.clone(),
                dot: DotId {
                    actor: ActorId {
                        node: NodeId(1),
                        epoch: 1,
                    },
                    counter: round as u64,
                },
            }],
            context: Context(vec![7; 24]),
        });
        for frame in [encode_frame(&put), encode_frame(&replicate)] {
            let frame = frame.expect("encode");
            let back: Request = decode_body(&frame[FRAME_HEADER_BYTES..]).expect("decode");
            checksum += back.key().map_or(0, |k| k.len() as u64);
        }
        let frame = encode_frame(&written).expect("encode");
        let back: Response = decode_body(&frame[FRAME_HEADER_BYTES..]).expect("decode");
        checksum += matches!(back, Response::Written(_)) as u64;
    }
    println!("{rounds} rounds of {value_bytes}-byte values, checksum {checksum}");
}
