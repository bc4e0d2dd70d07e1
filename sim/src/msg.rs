//! What travels on the simulated network: client requests and answers, and the peer protocol
//! (ping, forward, replicate, read, layout exchange, tombstones, anti-entropy) with the node
//! driver's request ids.

use std::fmt;

use cairn_antientropy::KeyHash;
use cairn_core::coordinator::Outcome;
use cairn_core::driver::Job;
use cairn_core::version::{Dot, Object, Payload};
use cairn_gossip::{GossipMessage, Payload as GossipPayload};
use cairn_layout::Layout;
use cairn_proto::{
    Context, ErrorReply, NodeId, ReadOptions, TombstoneHolding, TombstoneProbe, WriteOptions,
};
use cairn_ring::PartitionId;

use super::fmt::{obj, payload};
use super::history::WriteId;
use super::world::{ClientIx, NodeIx};

/// A sender or receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// A node.
    Node(NodeIx),
    /// A client.
    Client(ClientIx),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Node(n) => write!(f, "n{}", n + 1),
            Addr::Client(c) => write!(f, "client{}", c + 1),
        }
    }
}

/// A client request, as the client library would send it.
#[derive(Debug, Clone)]
pub enum ClientRequest {
    /// A get.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Quorum choices.
        opts: ReadOptions,
    },
    /// A put (value) or delete (tombstone).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The context token from the client's last read, or empty.
        context: Context,
        /// Value or tombstone.
        payload: Payload,
        /// Quorum choices.
        opts: WriteOptions,
        /// The history's name for this write: simulator bookkeeping the node never reads, only
        /// passes to the replica that mints the dot so the checker knows which dot it got.
        write: WriteId,
    },
}

impl ClientRequest {
    /// The key.
    pub fn key(&self) -> &[u8] {
        match self {
            ClientRequest::Get { key, .. } | ClientRequest::Put { key, .. } => key,
        }
    }

    /// The node's job for it, and the history's name of a write.
    pub fn into_job(self) -> (Job, Option<WriteId>) {
        match self {
            ClientRequest::Get { key, opts } => (Job::Get { key, opts }, None),
            ClientRequest::Put {
                key,
                context,
                payload,
                opts,
                write,
            } => (
                Job::Put {
                    key,
                    context,
                    payload,
                    opts,
                },
                Some(write),
            ),
        }
    }
}

/// The answer to a client request.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// The coordinator's outcome, or why there is none.
    pub result: Result<Outcome, String>,
    /// For a write: the dot its coordinating replica minted (simulator bookkeeping).
    pub minted: Option<Dot>,
}

/// A request from one node to another.
#[derive(Debug, Clone)]
pub enum PeerReq {
    /// Liveness probe.
    Ping,
    /// Coordinate this client request (`PeerRequest::Forward`): every attempt of one forward
    /// carries the same `id`, and `retry` says an earlier one went out unanswered.
    Forward {
        /// The forward's id.
        id: u64,
        /// Whether an earlier attempt went out.
        retry: bool,
        /// The request.
        req: ClientRequest,
    },
    /// Merge and store durably; keep a hint for `hint_for`.
    Replicate {
        /// The key.
        key: Vec<u8>,
        /// The object.
        object: Object,
        /// The primary this copy stands in for.
        hint_for: Option<NodeId>,
    },
    /// Return the local copy.
    Read {
        /// The key.
        key: Vec<u8>,
    },
    /// The sender's layout (`PeerRequest::Layout`): merge it, answer with yours.
    Layout(Option<Box<Layout>>),
    /// The reaper's question (`PeerRequest::Tombstones`): what do you hold of these keys?
    Tombstones(Vec<TombstoneProbe>),
    /// One message of an anti-entropy exchange (`PeerRequest::AntiEntropy`), or `None` to
    /// ask for the responder's next one.
    AntiEntropy {
        /// The partition compared.
        partition: PartitionId,
        /// The initiator's session id.
        session: u64,
        /// The encoded message.
        message: Option<Vec<u8>>,
    },
    /// A gossip message (`PeerRequest::Gossip`): a SYN, an ACK or an ACK2.
    Gossip(Box<GossipMessage>),
    /// Anti-entropy asks for the keys behind hashes only the receiver holds
    /// (`PeerRequest::Keys`).
    Keys {
        /// Their partition.
        partition: PartitionId,
        /// The hashes.
        hashes: Vec<KeyHash>,
    },
}

/// A successful answer to a [`PeerReq`].
#[derive(Debug, Clone)]
pub enum PeerResp {
    /// To `Ping`.
    Pong,
    /// To `Forward`.
    Forwarded(ClientResponse),
    /// To `Replicate`: durable.
    Ack,
    /// To `Read`.
    Object(Object),
    /// To `Layout`: the receiver's layout after merging.
    Layout(Option<Box<Layout>>),
    /// To `Tombstones`: one holding per probe, in order.
    Tombstones(Vec<TombstoneHolding>),
    /// To `AntiEntropy`: the responder's next message, if it has one.
    AntiEntropy(Option<Vec<u8>>),
    /// To `Keys`: the key behind each hash, in order (`None`: not stored).
    Keys(Vec<Option<Vec<u8>>>),
    /// To `Gossip`: the message that answers it, if any.
    Gossip(Option<Box<GossipMessage>>),
}

/// A message body.
#[derive(Debug, Clone)]
pub enum Body {
    /// Client to node.
    ClientReq {
        /// The client's operation number.
        seq: u64,
        /// The request.
        req: ClientRequest,
    },
    /// Node to client.
    ClientResp {
        /// The client's operation number.
        seq: u64,
        /// The answer.
        resp: ClientResponse,
    },
    /// Node to node.
    PeerReq {
        /// The sender's incarnation: the answer goes to it only.
        gen: u64,
        /// The sender's request id.
        rid: u64,
        /// The request.
        req: PeerReq,
    },
    /// The answer to a `PeerReq`.
    PeerResp {
        /// The requester's incarnation.
        gen: u64,
        /// The requester's request id.
        rid: u64,
        /// The answer.
        resp: Result<PeerResp, ErrorReply>,
    },
}

/// A message in flight.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Sender.
    pub from: Addr,
    /// Receiver.
    pub to: Addr,
    /// Content.
    pub body: Body,
}

impl Body {
    /// Pings, pongs, layout exchanges and the reapers' questions (background chatter that
    /// never ends, not counted when waiting for quiet).
    pub fn is_ping(&self) -> bool {
        matches!(
            self,
            Body::PeerReq {
                req: PeerReq::Ping
                    | PeerReq::Layout(_)
                    | PeerReq::Tombstones(_)
                    | PeerReq::Gossip(_),
                ..
            } | Body::PeerResp {
                resp: Ok(PeerResp::Pong
                    | PeerResp::Layout(_)
                    | PeerResp::Tombstones(_)
                    | PeerResp::Gossip(_)),
                ..
            }
        )
    }

    /// One line for the trace.
    pub fn describe(&self) -> String {
        match self {
            Body::ClientReq { seq, req } => format!("client op#{seq} {}", describe_req(req)),
            Body::ClientResp { seq, resp } => {
                format!("reply op#{seq} {}", describe_resp(resp))
            }
            Body::PeerReq { rid, req, .. } => match req {
                PeerReq::Ping => format!("ping r{rid}"),
                PeerReq::Forward { id, retry, req } => format!(
                    "forward r{rid} f{id:x}{} {}",
                    if *retry { " (retry)" } else { "" },
                    describe_req(req)
                ),
                PeerReq::Replicate {
                    key,
                    object,
                    hint_for,
                } => format!(
                    "replicate r{rid} {} {}{}",
                    key_str(key),
                    obj(object),
                    hint_for.map_or(String::new(), |h| format!(" hint_for={h}"))
                ),
                PeerReq::Read { key } => format!("read r{rid} {}", key_str(key)),
                PeerReq::Layout(l) => format!("layout r{rid} {}", describe_layout(l.as_deref())),
                PeerReq::Tombstones(probes) => {
                    let keys: Vec<String> = probes.iter().map(|p| key_str(&p.key)).collect();
                    format!("tombstones? r{rid} [{}]", keys.join(","))
                }
                PeerReq::AntiEntropy {
                    partition,
                    session,
                    message,
                } => format!(
                    "anti-entropy r{rid} p{partition} s{session:x} {}",
                    message
                        .as_ref()
                        .map_or("(next?)".to_owned(), |m| format!("{} bytes", m.len()))
                ),
                PeerReq::Keys { partition, hashes } => {
                    format!("keys? r{rid} p{partition} {} hashes", hashes.len())
                }
                PeerReq::Gossip(m) => format!("gossip r{rid} {}", gossip_kind(m)),
            },
            Body::PeerResp { rid, resp, .. } => match resp {
                Ok(PeerResp::Pong) => format!("pong r{rid}"),
                Ok(PeerResp::Ack) => format!("ack r{rid}"),
                Ok(PeerResp::Object(o)) => format!("object r{rid} {}", obj(o)),
                Ok(PeerResp::Forwarded(r)) => format!("forwarded r{rid} {}", describe_resp(r)),
                Ok(PeerResp::Layout(l)) => {
                    format!("layout r{rid} {}", describe_layout(l.as_deref()))
                }
                Ok(PeerResp::Tombstones(h)) => {
                    let held: Vec<String> = h
                        .iter()
                        .map(|h| format!("{:?}{}", h.copy, if h.hinted { "+hint" } else { "" }))
                        .collect();
                    format!("tombstones r{rid} [{}]", held.join(","))
                }
                Ok(PeerResp::AntiEntropy(m)) => format!(
                    "anti-entropy r{rid} {}",
                    m.as_ref()
                        .map_or("(waits)".to_owned(), |m| format!("{} bytes", m.len()))
                ),
                Ok(PeerResp::Keys(keys)) => {
                    let keys: Vec<String> = keys
                        .iter()
                        .map(|k| k.as_deref().map_or("-".to_owned(), key_str))
                        .collect();
                    format!("keys r{rid} [{}]", keys.join(","))
                }
                Ok(PeerResp::Gossip(m)) => format!(
                    "gossip r{rid} {}",
                    m.as_deref().map_or("(nothing)", gossip_kind)
                ),
                Err(e) => format!("error r{rid}: {e}"),
            },
        }
    }
}

/// A gossip message's kind, for the trace.
fn gossip_kind(m: &GossipMessage) -> &'static str {
    match m.payload {
        GossipPayload::Syn { .. } => "SYN",
        GossipPayload::Ack { .. } => "ACK",
        GossipPayload::Ack2 { .. } => "ACK2",
    }
}

/// A layout for the trace: its versions and the change's progress.
pub fn describe_layout(layout: Option<&Layout>) -> String {
    let Some(l) = layout else {
        return "none".into();
    };
    match l.transition() {
        None => format!("v{} settled", l.current().version()),
        Some(t) => format!(
            "v{}->v{} waiting acks [{}] pushes [{}]",
            t.from,
            t.to,
            t.waiting_acks
                .iter()
                .map(|n| super::fmt::node(*n))
                .collect::<Vec<_>>()
                .join(","),
            t.waiting_pushes
                .iter()
                .map(|n| super::fmt::node(*n))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// A key for the trace.
pub fn key_str(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// A client request for the trace.
pub fn describe_req(req: &ClientRequest) -> String {
    match req {
        ClientRequest::Get { key, opts } => format!(
            "get {} r={:?} pr={:?} notfound_ok={:?} basic_quorum={:?} timeout={:?}",
            key_str(key),
            opts.r,
            opts.pr,
            opts.notfound_ok,
            opts.basic_quorum,
            opts.timeout_ms
        ),
        ClientRequest::Put {
            key,
            context,
            payload: p,
            opts,
            write,
        } => format!(
            "put w{write} {} := {} ctx={} w={:?} pw={:?} timeout={:?}",
            key_str(key),
            payload(p),
            cairn_core::version::decode_context(context)
                .map_or_else(|e| format!("<{e}>"), |vv| super::fmt::vclock(&vv)),
            opts.w,
            opts.pw,
            opts.timeout_ms
        ),
    }
}

/// A client response for the trace.
pub fn describe_resp(resp: &ClientResponse) -> String {
    match &resp.result {
        Ok(Outcome::Read(o)) => format!("read ok {}", obj(o)),
        Ok(Outcome::Written(o)) => format!(
            "written ok dot={} {}",
            resp.minted.map_or("?".into(), super::fmt::dot),
            obj(o)
        ),
        Err(e) => format!("error: {e}"),
    }
}
