//! Byte fields are serialized as byte strings (`serde_bytes`) for speed; this checks that the
//! wire bytes are exactly those of the plain `Vec<u8>` fields they replaced, both ways, so nodes
//! of either build understand each other and nothing stored or sent changes.

use cairn_proto::{
    ActorId, Context, DotId, GetReply, NodeId, PeerRequest, PeerResponse, ReadOptions, Request,
    Response, Sibling, WriteOptions,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// The messages as they were declared before `serde_bytes`: every byte field a plain `Vec<u8>`,
/// every variant in its place (the variant index is on the wire).
mod plain {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Context(pub Vec<u8>);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Request {
        Ping,
        Get {
            key: Vec<u8>,
            opts: ReadOptions,
        },
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
            context: Context,
            opts: WriteOptions,
        },
        Delete {
            key: Vec<u8>,
            context: Context,
            opts: WriteOptions,
        },
        Status,
        Ring,
        Join {
            seed: String,
            dry_run: bool,
        },
        Leave {
            dry_run: bool,
        },
        Remove {
            node: String,
            dry_run: bool,
        },
        Replace {
            old: String,
            new: String,
            dry_run: bool,
        },
        LayoutForce {
            node: String,
        },
        Peer(PeerRequest),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum PeerRequest {
        Ping {
            from: String,
        },
        // Never compared: only holds the variant's place.
        Forward(Box<Request>),
        Replicate {
            key: Vec<u8>,
            object: Vec<u8>,
            hint_for: Option<NodeId>,
        },
        Read {
            key: Vec<u8>,
        },
        Gossip(Vec<u8>),
        AntiEntropy {
            from: NodeId,
            partition: u32,
            session: u64,
            message: Option<Vec<u8>>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum PeerResponse {
        Pong { node: String },
        Ack,
        Object(Vec<u8>),
        // Never compared: only holds the variant's place.
        Forwarded(Box<()>),
        Gossip(Option<Vec<u8>>),
        AntiEntropy { message: Option<Vec<u8>> },
        Keys(Vec<Option<Vec<u8>>>),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Sibling {
        pub value: Vec<u8>,
        pub dot: DotId,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct GetReply {
        pub siblings: Vec<Sibling>,
        pub context: Context,
    }
}

/// `new` and `old` encode to the same bytes, and each decodes from the other's bytes.
fn check<N, O>(new: &N, old: &O)
where
    N: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    O: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let new_bytes = postcard::to_allocvec(new).unwrap();
    let old_bytes = postcard::to_allocvec(old).unwrap();
    assert_eq!(
        new_bytes, old_bytes,
        "{new:?} encodes differently from {old:?}"
    );
    assert_eq!(&postcard::from_bytes::<N>(&old_bytes).unwrap(), new);
    assert_eq!(&postcard::from_bytes::<O>(&new_bytes).unwrap(), old);
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    // Lengths on both sides of the one-byte varint boundary (127/128).
    prop::collection::vec(any::<u8>(), 0..300)
}

fn dot(counter: u64) -> DotId {
    DotId {
        actor: ActorId {
            node: NodeId(3),
            epoch: 0xfeed,
        },
        counter,
    }
}

proptest! {
    #[test]
    fn client_requests_keep_their_wire_bytes(key in bytes(), value in bytes(), ctx in bytes()) {
        check(
            &Request::Get { key: key.clone(), opts: ReadOptions::default() },
            &plain::Request::Get { key: key.clone(), opts: ReadOptions::default() },
        );
        let opts = WriteOptions { w: Some(2), pw: None, timeout_ms: Some(500) };
        check(
            &Request::Put {
                key: key.clone(),
                value: value.clone(),
                context: Context(ctx.clone()),
                opts: opts.clone(),
            },
            &plain::Request::Put {
                key: key.clone(),
                value,
                context: plain::Context(ctx.clone()),
                opts: opts.clone(),
            },
        );
        check(
            &Request::Delete { key: key.clone(), context: Context(ctx.clone()), opts: opts.clone() },
            &plain::Request::Delete { key, context: plain::Context(ctx), opts },
        );
    }

    #[test]
    fn peer_requests_keep_their_wire_bytes(
        key in bytes(),
        object in bytes(),
        message in prop::option::of(bytes()),
        hint in prop::option::of(any::<u64>()),
    ) {
        let hint_for = hint.map(NodeId);
        check(
            &Request::Peer(PeerRequest::Replicate { key: key.clone(), object: object.clone(), hint_for }),
            &plain::Request::Peer(plain::PeerRequest::Replicate {
                key: key.clone(),
                object: object.clone(),
                hint_for,
            }),
        );
        check(
            &PeerRequest::Read { key: key.clone() },
            &plain::PeerRequest::Read { key },
        );
        check(&PeerRequest::Gossip(object.clone()), &plain::PeerRequest::Gossip(object));
        check(
            &PeerRequest::AntiEntropy { from: NodeId(9), partition: 7, session: 11, message: message.clone() },
            &plain::PeerRequest::AntiEntropy { from: NodeId(9), partition: 7, session: 11, message },
        );
    }

    #[test]
    fn peer_responses_keep_their_wire_bytes(
        object in bytes(),
        message in prop::option::of(bytes()),
        keys in prop::collection::vec(prop::option::of(bytes()), 0..5),
    ) {
        check(&PeerResponse::Object(object.clone()), &plain::PeerResponse::Object(object));
        check(&PeerResponse::Gossip(message.clone()), &plain::PeerResponse::Gossip(message.clone()));
        check(
            &PeerResponse::AntiEntropy { message: message.clone() },
            &plain::PeerResponse::AntiEntropy { message },
        );
        check(&PeerResponse::Keys(keys.clone()), &plain::PeerResponse::Keys(keys));
    }

    #[test]
    fn replies_keep_their_wire_bytes(values in prop::collection::vec(bytes(), 0..4), ctx in bytes()) {
        let reply = GetReply {
            siblings: values
                .iter()
                .enumerate()
                .map(|(i, v)| Sibling { value: v.clone(), dot: dot(i as u64 + 1) })
                .collect(),
            context: Context(ctx.clone()),
        };
        let old = plain::GetReply {
            siblings: values
                .iter()
                .enumerate()
                .map(|(i, v)| plain::Sibling { value: v.clone(), dot: dot(i as u64 + 1) })
                .collect(),
            context: plain::Context(ctx),
        };
        check(&reply, &old);
        // A reply travels inside `Response`; its variant index is outside the fields compared.
        let framed = postcard::to_allocvec(&Response::Written(reply.clone())).unwrap();
        prop_assert_eq!(&framed[1..], &postcard::to_allocvec(&old).unwrap()[..]);
    }
}
