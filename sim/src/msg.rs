//! What travels on the simulated network: client requests and answers, and between nodes the
//! node's own peer protocol (`cairn_proto::PeerRequest` / `PeerResponse`, objects, layouts and
//! gossip as the node encodes them), with the node driver's request ids and the history's
//! bookkeeping beside them.

use std::fmt;

use cairn_core::driver::Job;
use cairn_core::version::{Dot, Object, Payload};
use cairn_gossip::{GossipMessage, Payload as GossipPayload};
use cairn_layout::Layout;
use cairn_proto::{
    BatchAnswer, BatchItem, ErrorReply, GetReply, KeyOp, KeyOpReply, PeerRequest, PeerResponse,
    Request,
};

use super::fmt::{dot, obj};
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

/// A client request: the key operation the client library sends, and for a write the
/// history's name for it (simulator bookkeeping the node never reads, only passes to the
/// replica that mints the dot, so the checker knows which dot it got).
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The operation, as the node's wire carries it.
    pub op: KeyOp,
    /// The history's write, for a put or delete.
    pub write: Option<WriteId>,
}

impl ClientRequest {
    /// The key.
    pub fn key(&self) -> &[u8] {
        match &self.op {
            KeyOp::Get { key, .. } | KeyOp::Put { key, .. } | KeyOp::Delete { key, .. } => key,
        }
    }

    /// A put or delete.
    pub fn is_write(&self) -> bool {
        !matches!(self.op, KeyOp::Get { .. })
    }

    /// The timeout the client asked for.
    pub fn timeout_ms(&self) -> Option<u32> {
        match &self.op {
            KeyOp::Get { opts, .. } => opts.timeout_ms,
            KeyOp::Put { opts, .. } | KeyOp::Delete { opts, .. } => opts.timeout_ms,
        }
    }

    /// The node's job for it (`Job::from_request`, as the node's dispatch makes it), and the
    /// history's name of a write.
    pub fn into_job(self) -> (Job, Option<WriteId>) {
        let job = Job::from_request(Request::from(self.op)).expect("a key operation is a job");
        (job, self.write)
    }
}

/// The answer to a client request: the node's reply as a real client gets it
/// (`cairn_core::reply`), and for a write the dot its coordinating replica minted (simulator
/// bookkeeping).
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// The reply.
    pub reply: KeyOpReply,
    /// For a write: the dot its coordinating replica minted.
    pub minted: Option<Dot>,
}

impl ClientResponse {
    /// An error reply.
    pub fn error(e: ErrorReply) -> ClientResponse {
        ClientResponse {
            reply: KeyOpReply::Error(e),
            minted: None,
        }
    }
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
        /// The request, as the node sends it.
        req: PeerRequest,
        /// For a forwarded write: the history's name for it (bookkeeping beside the request).
        write: Option<WriteId>,
    },
    /// The answer to a `PeerReq`.
    PeerResp {
        /// The requester's incarnation.
        gen: u64,
        /// The requester's request id.
        rid: u64,
        /// The answer, as the node sends it (`Response::Peer` or `Response::Error`).
        resp: Result<PeerResponse, ErrorReply>,
        /// For a forwarded write's answer: the dot minted for it (bookkeeping beside it).
        minted: Option<Dot>,
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
                req: PeerRequest::Ping { .. }
                    | PeerRequest::Layout(_)
                    | PeerRequest::Tombstones { .. }
                    | PeerRequest::Gossip(_),
                ..
            } | Body::PeerResp {
                resp: Ok(PeerResponse::Pong { .. }
                    | PeerResponse::Layout(_)
                    | PeerResponse::Tombstones(_)
                    | PeerResponse::Gossip(_)),
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
                PeerRequest::Ping { .. } => format!("ping r{rid}"),
                PeerRequest::Forward { id, retry, op } => format!(
                    "forward r{rid} f{id:x}{} {}",
                    if *retry { " (retry)" } else { "" },
                    describe_op(op)
                ),
                PeerRequest::Replicate {
                    key,
                    object,
                    hint_for,
                } => format!(
                    "replicate r{rid} {} {}{}",
                    key_str(key),
                    wire_obj(object),
                    hint_for.map_or(String::new(), |h| format!(" hint_for={h}"))
                ),
                PeerRequest::Read { key } => format!("read r{rid} {}", key_str(key)),
                PeerRequest::Layout(l) => format!("layout r{rid} {}", wire_layout(l)),
                PeerRequest::Tombstones { probes } => {
                    let keys: Vec<String> = probes.iter().map(|p| key_str(&p.key)).collect();
                    format!("tombstones? r{rid} [{}]", keys.join(","))
                }
                PeerRequest::AntiEntropy {
                    partition,
                    session,
                    message,
                    ..
                } => format!(
                    "anti-entropy r{rid} p{partition} s{session:x} {}",
                    message
                        .as_ref()
                        .map_or("(next?)".to_owned(), |m| format!("{} bytes", m.len()))
                ),
                PeerRequest::Keys {
                    partition,
                    key_hashes,
                } => {
                    format!("keys? r{rid} p{partition} {} hashes", key_hashes.len())
                }
                PeerRequest::Gossip(m) => format!("gossip r{rid} {}", gossip_kind(m)),
                PeerRequest::Batch(items) => {
                    let keys: Vec<String> = items
                        .iter()
                        .map(|i| match i {
                            BatchItem::Replicate { key, object, .. } => {
                                format!("{}:={}", key_str(key), wire_obj(object))
                            }
                            BatchItem::Read { key } => format!("{}?", key_str(key)),
                        })
                        .collect();
                    format!("batch r{rid} [{}]", keys.join(" "))
                }
                other => format!("r{rid} {other:?}"),
            },
            Body::PeerResp {
                rid, resp, minted, ..
            } => match resp {
                Ok(PeerResponse::Pong { .. }) => format!("pong r{rid}"),
                Ok(PeerResponse::Ack) => format!("ack r{rid}"),
                Ok(PeerResponse::Object(o)) => format!("object r{rid} {}", wire_copy(o)),
                Ok(PeerResponse::Forwarded(r)) => {
                    format!("forwarded r{rid} {}", describe_reply(r, *minted))
                }
                Ok(PeerResponse::Layout(l)) => format!("layout r{rid} {}", wire_layout(l)),
                Ok(PeerResponse::Tombstones(h)) => {
                    let held: Vec<String> = h
                        .iter()
                        .map(|h| format!("{:?}{}", h.copy, if h.hinted { "+hint" } else { "" }))
                        .collect();
                    format!("tombstones r{rid} [{}]", held.join(","))
                }
                Ok(PeerResponse::AntiEntropy { message }) => format!(
                    "anti-entropy r{rid} {}",
                    message
                        .as_ref()
                        .map_or("(waits)".to_owned(), |m| format!("{} bytes", m.len()))
                ),
                Ok(PeerResponse::Keys(keys)) => {
                    let keys: Vec<String> = keys
                        .iter()
                        .map(|k| k.as_deref().map_or("-".to_owned(), key_str))
                        .collect();
                    format!("keys r{rid} [{}]", keys.join(","))
                }
                Ok(PeerResponse::Gossip(m)) => format!(
                    "gossip r{rid} {}",
                    m.as_deref().map_or("(nothing)", gossip_kind)
                ),
                Ok(PeerResponse::Batch(answers)) => {
                    let answers: Vec<String> = answers
                        .iter()
                        .map(|a| match a {
                            Ok(BatchAnswer::Ack) => "ack".to_owned(),
                            Ok(BatchAnswer::Object(o)) => wire_copy(o),
                            Err(e) => format!("error: {e}"),
                        })
                        .collect();
                    format!("batch r{rid} [{}]", answers.join(", "))
                }
                Ok(other) => format!("r{rid} {other:?}"),
                Err(e) => format!("error r{rid}: {e}"),
            },
        }
    }
}

/// An encoded object (`Object::encode`) for the trace.
fn wire_obj(bytes: &[u8]) -> String {
    Object::decode(bytes).map_or_else(|e| format!("<{e}>"), |o| obj(&o))
}

/// A copy as a read answers it (`Object::encode_copy`) for the trace.
fn wire_copy(bytes: &[u8]) -> String {
    Object::decode_copy(bytes).map_or_else(|e| format!("<{e}>"), |o| obj(&o))
}

/// An encoded layout (`cairn_layout::held`) for the trace.
fn wire_layout(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return describe_layout(None);
    }
    cairn_layout::held::decode(bytes)
        .map_or_else(|e| format!("<{e}>"), |h| describe_layout(Some(&h.layout)))
}

/// An encoded gossip message's kind, for the trace.
fn gossip_kind(m: &[u8]) -> &'static str {
    match GossipMessage::decode(m).map(|m| m.payload) {
        Ok(GossipPayload::Syn { .. }) => "SYN",
        Ok(GossipPayload::Ack { .. }) => "ACK",
        Ok(GossipPayload::Ack2 { .. }) => "ACK2",
        Err(_) => "(undecodable)",
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
    match req.write {
        Some(w) => format!("w{w} {}", describe_op(&req.op)),
        None => describe_op(&req.op),
    }
}

/// A key operation for the trace.
pub fn describe_op(op: &KeyOp) -> String {
    let ctx = |context| {
        cairn_core::version::decode_context(context)
            .map_or_else(|e| format!("<{e}>"), |vv| super::fmt::vclock(&vv))
    };
    match op {
        KeyOp::Get { key, opts } => format!(
            "get {} r={:?} pr={:?} notfound_ok={:?} basic_quorum={:?} timeout={:?}",
            key_str(key),
            opts.r,
            opts.pr,
            opts.notfound_ok,
            opts.basic_quorum,
            opts.timeout_ms
        ),
        KeyOp::Put {
            key,
            value,
            context,
            opts,
        } => format!(
            "put {} := {} ctx={} w={:?} pw={:?} timeout={:?}",
            key_str(key),
            super::fmt::payload(&Payload::Value(value.clone())),
            ctx(context),
            opts.w,
            opts.pw,
            opts.timeout_ms
        ),
        KeyOp::Delete { key, context, opts } => format!(
            "put {} := DEL ctx={} w={:?} pw={:?} timeout={:?}",
            key_str(key),
            ctx(context),
            opts.w,
            opts.pw,
            opts.timeout_ms
        ),
    }
}

/// A client response for the trace.
pub fn describe_resp(resp: &ClientResponse) -> String {
    describe_reply(&resp.reply, resp.minted)
}

/// A key operation's reply (and the dot minted for a write) for the trace.
pub fn describe_reply(reply: &KeyOpReply, minted: Option<Dot>) -> String {
    match reply {
        KeyOpReply::Value(r) => format!("read ok {}", super::fmt::reply(r)),
        KeyOpReply::Written(r) => format!(
            "written ok dot={} {}",
            minted.map_or("?".into(), dot),
            super::fmt::reply(r)
        ),
        KeyOpReply::Error(e) => format!("error: {e}"),
    }
}

/// A reply's siblings as the history reads them: (dot, value).
pub fn reply_siblings(r: &GetReply) -> Vec<(Dot, Payload)> {
    r.siblings
        .iter()
        .map(|s| {
            let d = Dot::new(s.dot.actor, s.dot.counter);
            (d, Payload::Value(s.value.clone()))
        })
        .collect()
}
