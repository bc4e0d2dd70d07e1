//! Requests, responses, identities and the errors a node reports to a client.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::limits::{
    ADDRESS_BYTES_MAX, CONTEXT_BYTES_MAX, KEY_BYTES_MAX, KEY_HASHES_PER_REQUEST_MAX,
    LAYOUT_BYTES_MAX, NODE_NAME_BYTES_MAX, OBJECT_BYTES_HARD_MAX, PARTITION_SIZES_PER_REQUEST_MAX,
    PEER_BATCH_ITEMS_MAX, PEER_MESSAGE_BYTES_MAX, TOMBSTONE_PROBES_PER_REQUEST_MAX,
    VALUE_BYTES_MAX,
};

/// A node's stable identity in the cluster, derived from its configured name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The id of the node called `name` (the first 8 bytes of blake3 would also do; a simple,
    /// stable FNV-1a keeps this crate free of hashing dependencies).
    pub fn from_name(name: &str) -> NodeId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        NodeId(h)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Who minted a dot: a node in one incarnation of its data directory.
///
/// A node that loses its data directory comes back with a new random `epoch`, so it can never
/// mint a dot that the cluster already knows (Riak's KV679).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActorId {
    /// The node.
    pub node: NodeId,
    /// The incarnation of the node's data directory.
    pub epoch: u64,
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:016x}", self.node, self.epoch)
    }
}

/// One write event: the `counter`-th dot minted by `actor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DotId {
    /// Who minted it.
    pub actor: ActorId,
    /// Its sequence number at that actor.
    pub counter: u64,
}

impl fmt::Display for DotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// The causal context a client got from a read and hands back with its next write.
///
/// Opaque to clients: bytes the node encoded, shown to people as a base64url token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Why a context token typed by a person or a script could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The token is not base64url.
    #[error(
        "context is not a valid token (expected the base64url text printed by `get`): {reason}"
    )]
    NotBase64 {
        /// What the decoder reported.
        reason: String,
    },
    /// The token is longer than any context a node hands out.
    #[error("context of {len} bytes exceeds CONTEXT_BYTES_MAX ({max} bytes)")]
    TooLarge {
        /// Decoded length.
        len: u64,
        /// `CONTEXT_BYTES_MAX`.
        max: u64,
    },
}

impl Context {
    /// The empty context: a write that saw nothing (a "blind" write).
    pub fn empty() -> Context {
        Context(Vec::new())
    }

    /// Whether this is the empty context.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token printed for people and scripts.
    pub fn to_token(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses a token printed by [`Context::to_token`].
    pub fn from_token(token: &str) -> Result<Context, ContextError> {
        let token = token.trim();
        // Checked before decoding so a huge argument is refused without allocating for it.
        if token.len() > CONTEXT_BYTES_MAX * 4 / 3 + 4 {
            return Err(ContextError::TooLarge {
                len: (token.len() * 3 / 4) as u64,
                max: CONTEXT_BYTES_MAX as u64,
            });
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| ContextError::NotBase64 {
                reason: e.to_string(),
            })?;
        if bytes.len() > CONTEXT_BYTES_MAX {
            return Err(ContextError::TooLarge {
                len: bytes.len() as u64,
                max: CONTEXT_BYTES_MAX as u64,
            });
        }
        Ok(Context(bytes))
    }
}

/// A request; one per QUIC bidirectional stream.
///
/// Generic over what its `Peer` variant carries so that one definition gives both the type a
/// node decodes from another node ([`Request`]) and the type it decodes from a client
/// ([`ClientRequest`], whose `Peer` variant holds the uninhabited [`NoPeer`]): the two share
/// every byte of their encoding, and nothing a client sends can be decoded as a peer message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOf<P> {
    /// Liveness and identity check.
    Ping,
    /// Read every sibling of `key` and the context covering them.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Quorum and timeout choices.
        opts: ReadOptions,
    },
    /// Write `value`, superseding exactly what `context` saw.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The context of the read this write follows, or empty for a blind write.
        context: Context,
        /// Quorum and timeout choices.
        opts: WriteOptions,
    },
    /// Write a tombstone, superseding exactly what `context` saw.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The context of the read this delete follows.
        context: Context,
        /// Quorum and timeout choices.
        opts: WriteOptions,
    },
    /// The node's view of the cluster: members, reachability, partitions, hints.
    Status,
    /// The partition ring: partition → preference list.
    Ring,
    /// Join the cluster `seed` belongs to: the node takes the seed's layout, adds itself to it
    /// (a layout change) and gossips with the seed's cluster from then on. Answered with the
    /// plan; with `dry_run` nothing changes.
    Join {
        /// The seed's address (host:port), at most `ADDRESS_BYTES_MAX` bytes.
        seed: String,
        /// Only plan.
        dry_run: bool,
    },
    /// Take the asked node out of the layout: its partitions go to their new owners, which
    /// receive its keys; it is `left` once no live layout version has it. Answered with the plan.
    Leave {
        /// Only plan.
        dry_run: bool,
    },
    /// Take the dead node `node` out of the layout: its replicas are rebuilt on the new owners
    /// from the surviving replicas. Answered with the plan.
    Remove {
        /// The node's name, at most `NODE_NAME_BYTES_MAX` bytes.
        node: String,
        /// Only plan.
        dry_run: bool,
    },
    /// Give the dead node `old`'s partitions to the fresh node `new`. Answered with the plan.
    Replace {
        /// The dead node's name.
        old: String,
        /// The fresh node's name.
        new: String,
        /// Only plan.
        dry_run: bool,
    },
    /// Stop waiting for `node` in the layout change in flight (it died in the middle of the
    /// transfer): the change goes on without its acknowledgement or its push, and what only it
    /// held may be lost. Answered with the asked node's status.
    LayoutForce {
        /// The node's name, at most `NODE_NAME_BYTES_MAX` bytes.
        node: String,
    },
    /// A message between nodes; refused unless the sender holds a node certificate. Must stay
    /// the last variant: its tag is [`PEER_REQUEST_TAG`].
    Peer(P),
}

/// Any request, peer requests included: what a node certificate may send.
pub type Request = RequestOf<PeerRequest>;

/// A request from a client certificate: the same encoding as [`Request`], but its `Peer`
/// variant cannot be decoded, so a client's frame is never decoded as a peer message.
pub type ClientRequest = RequestOf<NoPeer>;

/// The uninhabited content of a [`ClientRequest`]'s `Peer` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoPeer {}

/// The first byte of an encoded `Request::Peer` (postcard writes a variant's index as a varint,
/// and `Peer` is the twelfth variant), so a refused peer request can be named without decoding
/// it.
pub const PEER_REQUEST_TAG: u8 = 11;

impl From<ClientRequest> for Request {
    fn from(req: ClientRequest) -> Request {
        match req {
            RequestOf::Ping => Request::Ping,
            op @ (RequestOf::Get { .. } | RequestOf::Put { .. } | RequestOf::Delete { .. }) => {
                Request::from(
                    op.into_op()
                        .expect("gets, puts and deletes are key operations"),
                )
            }
            RequestOf::Status => Request::Status,
            RequestOf::Ring => Request::Ring,
            RequestOf::Join { seed, dry_run } => Request::Join { seed, dry_run },
            RequestOf::Leave { dry_run } => Request::Leave { dry_run },
            RequestOf::Remove { node, dry_run } => Request::Remove { node, dry_run },
            RequestOf::Replace { old, new, dry_run } => Request::Replace { old, new, dry_run },
            RequestOf::LayoutForce { node } => Request::LayoutForce { node },
            RequestOf::Peer(never) => match never {},
        }
    }
}

impl<P> RequestOf<P> {
    /// The key a get, put or delete is about.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            RequestOf::Get { key, .. }
            | RequestOf::Put { key, .. }
            | RequestOf::Delete { key, .. } => Some(key),
            RequestOf::Ping
            | RequestOf::Status
            | RequestOf::Ring
            | RequestOf::Join { .. }
            | RequestOf::Leave { .. }
            | RequestOf::Remove { .. }
            | RequestOf::Replace { .. }
            | RequestOf::LayoutForce { .. }
            | RequestOf::Peer(_) => None,
        }
    }

    /// The key operation this request is, if it is a get, put or delete.
    pub fn into_op(self) -> Option<KeyOp> {
        match self {
            RequestOf::Get { key, opts } => Some(KeyOp::Get { key, opts }),
            RequestOf::Put {
                key,
                value,
                context,
                opts,
            } => Some(KeyOp::Put {
                key,
                value,
                context,
                opts,
            }),
            RequestOf::Delete { key, context, opts } => Some(KeyOp::Delete { key, context, opts }),
            RequestOf::Ping
            | RequestOf::Status
            | RequestOf::Ring
            | RequestOf::Join { .. }
            | RequestOf::Leave { .. }
            | RequestOf::Remove { .. }
            | RequestOf::Replace { .. }
            | RequestOf::LayoutForce { .. }
            | RequestOf::Peer(_) => None,
        }
    }
}

/// What a certificate lets its holder do; the cluster CA writes it into every certificate it
/// signs (`cairn_net::certificate_role` reads it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A node of the cluster: peer requests (replicate, read, forward, gossip, anti-entropy).
    Node,
    /// An operator: membership and layout changes, and everything a data client may do.
    Admin,
    /// An application: get, put, delete, ping, status and ring.
    Data,
}

impl Role {
    /// Whether a holder of this role may send a request that needs `needed`: every role may do
    /// what a data client does; admin and node requests need exactly that role.
    pub fn permits(self, needed: Role) -> bool {
        needed == Role::Data || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Data => "data",
        })
    }
}

impl<P> RequestOf<P> {
    /// The role a sender needs for this request.
    pub fn role_needed(&self) -> Role {
        match self {
            RequestOf::Join { .. }
            | RequestOf::Leave { .. }
            | RequestOf::Remove { .. }
            | RequestOf::Replace { .. }
            | RequestOf::LayoutForce { .. } => Role::Admin,
            // A replica's own copy is for operators checking convergence, not for applications.
            RequestOf::Get { opts, .. } if opts.is_local() => Role::Admin,
            RequestOf::Peer(_) => Role::Node,
            RequestOf::Ping
            | RequestOf::Get { .. }
            | RequestOf::Put { .. }
            | RequestOf::Delete { .. }
            | RequestOf::Status
            | RequestOf::Ring => Role::Data,
        }
    }
}

/// A client's get, put or delete: the only requests a node forwards to another. It cannot hold
/// another request, so a forward cannot nest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOp {
    /// As `Request::Get`.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Quorum and timeout choices.
        opts: ReadOptions,
    },
    /// As `Request::Put`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The context of the read this write follows, or empty for a blind write.
        context: Context,
        /// Quorum and timeout choices.
        opts: WriteOptions,
    },
    /// As `Request::Delete`.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The context of the read this delete follows.
        context: Context,
        /// Quorum and timeout choices.
        opts: WriteOptions,
    },
}

impl From<KeyOp> for Request {
    fn from(op: KeyOp) -> Request {
        match op {
            KeyOp::Get { key, opts } => Request::Get { key, opts },
            KeyOp::Put {
                key,
                value,
                context,
                opts,
            } => Request::Put {
                key,
                value,
                context,
                opts,
            },
            KeyOp::Delete { key, context, opts } => Request::Delete { key, context, opts },
        }
    }
}

/// Per-request read choices; `None` takes the cluster default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Replies needed before answering (default: a majority of N).
    pub r: Option<u8>,
    /// Of those, replies needed from primary replicas (not fallbacks).
    pub pr: Option<u8>,
    /// Whether a replica's "not found" counts toward R (Riak's `notfound_ok`, default true).
    pub notfound_ok: Option<bool>,
    /// With `notfound_ok = false`: answer "not found" as soon as a majority said so
    /// (Riak's `basic_quorum`, default false).
    pub basic_quorum: Option<bool>,
    /// How long to wait for replicas, milliseconds.
    pub timeout_ms: Option<u32>,
    /// Answer from the asked node's own stored copy alone: no quorum, no forward, no read
    /// repair, so each replica can be compared with the others (needs an admin certificate).
    pub local: Option<bool>,
}

impl ReadOptions {
    /// Whether this read asks for the node's own copy only.
    pub fn is_local(&self) -> bool {
        self.local == Some(true)
    }
}

/// Per-request write choices; `None` takes the cluster default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOptions {
    /// Durable acknowledgements needed (default: a majority of N); the coordinator counts.
    pub w: Option<u8>,
    /// Of those, acknowledgements needed from primary replicas (fallbacks do not count).
    pub pw: Option<u8>,
    /// How long to wait for replicas, milliseconds.
    pub timeout_ms: Option<u32>,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Liveness probe.
    Ping {
        /// The sender's name.
        from: String,
    },
    /// Coordinate this client get, put or delete: the sender is not a replica of its key.
    Forward {
        /// Drawn at random by the sender for this client request and kept across its retries:
        /// the receiver remembers the outcome of a forwarded write by (sender, id), so a retry
        /// after a lost reply is answered with it instead of applying the write twice.
        id: u64,
        /// Whether an earlier attempt with this id was sent and got no answer. A receiver with
        /// no record of the id then applies the write only if its records cover the time the
        /// earlier attempt could have arrived (not after a restart, say).
        retry: bool,
        /// The operation.
        op: KeyOp,
    },
    /// Merge `object` into the local copy and make it durable. `hint_for` names the primary
    /// this copy stands in for: the receiver keeps a hint and hands the key over later.
    Replicate {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The encoded object.
        #[serde(with = "serde_bytes")]
        object: Vec<u8>,
        /// The unreachable primary this fallback copy is for.
        hint_for: Option<NodeId>,
    },
    /// Read the local copy of `key`.
    Read {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A gossip message (encoded by the `gossip` crate): a SYN is answered with the ACK, an
    /// ACK2 with nothing.
    Gossip(#[serde(with = "serde_bytes")] Vec<u8>),
    /// One message of the anti-entropy exchange `session` of `partition` (encoded by the
    /// `cairn-antientropy` crate), or none to ask for the responder's next message. The
    /// responder keeps its side of the exchange between requests.
    AntiEntropy {
        /// The initiator (with `session`, the responder's name for the exchange).
        from: NodeId,
        /// The partition whose trees are compared.
        partition: u32,
        /// Chosen by the initiator, fresh for each exchange.
        session: u64,
        /// The initiator's next message, if it has one.
        #[serde(with = "serde_bytes")]
        message: Option<Vec<u8>>,
    },
    /// The keys stored under these key hashes (`blake3(key)`), which anti-entropy found the
    /// asker lacks; at most `KEY_HASHES_PER_REQUEST_MAX`.
    Keys {
        /// The partition the keys belong to.
        partition: u32,
        /// The key hashes.
        key_hashes: Vec<[u8; 32]>,
    },
    /// The sender's layout (encoded by the node; empty: it holds none yet), sent when gossip
    /// shows the two nodes' layout stamps differ. The receiver merges it and answers with its
    /// own layout after the merge. At most `LAYOUT_BYTES_MAX` bytes.
    Layout(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Which of these tombstones the receiver holds, and whether it holds a hint for any of
    /// their keys (asked by a node that wants to reap its own copies); at most
    /// `TOMBSTONE_PROBES_PER_REQUEST_MAX`. Changes nothing at the receiver.
    Tombstones {
        /// The tombstones, each by key and the hash of the asker's encoded object.
        probes: Vec<TombstoneProbe>,
    },
    /// How many keys and bytes the receiver stores of each of these partitions (at most
    /// `PARTITION_SIZES_PER_REQUEST_MAX`), for a layout change's plan.
    PartitionSizes {
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// Several replica operations for one peer in one frame (a coordinator sends what queued
    /// for that peer while its previous batches were in flight), answered by
    /// `PeerResponse::Batch` with one answer per item, in order. Items are [`BatchItem`]s,
    /// not `PeerRequest`s, so a batch cannot hold a batch (the wire types cannot nest); the
    /// receiver applies the writes together, so they share one group commit. At most
    /// `PEER_BATCH_ITEMS_MAX` items.
    Batch(Vec<BatchItem>),
}

/// One replica operation in a [`PeerRequest::Batch`]: the two requests a batch may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchItem {
    /// As [`PeerRequest::Replicate`].
    Replicate {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The encoded object.
        #[serde(with = "serde_bytes")]
        object: Vec<u8>,
        /// The unreachable primary this fallback copy is for.
        hint_for: Option<NodeId>,
    },
    /// As [`PeerRequest::Read`].
    Read {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl BatchItem {
    /// The batch item for `req`, or `req` back when it may not be batched.
    pub fn from_request(req: PeerRequest) -> Result<BatchItem, PeerRequest> {
        match req {
            PeerRequest::Replicate {
                key,
                object,
                hint_for,
            } => Ok(BatchItem::Replicate {
                key,
                object,
                hint_for,
            }),
            PeerRequest::Read { key } => Ok(BatchItem::Read { key }),
            other => Err(other),
        }
    }

    /// The request this item stands for (to send it alone).
    pub fn into_request(self) -> PeerRequest {
        match self {
            BatchItem::Replicate {
                key,
                object,
                hint_for,
            } => PeerRequest::Replicate {
                key,
                object,
                hint_for,
            },
            BatchItem::Read { key } => PeerRequest::Read { key },
        }
    }
}

/// The answer to one [`BatchItem`] in a [`PeerResponse::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchAnswer {
    /// The replicate is durable (as [`PeerResponse::Ack`]).
    Ack,
    /// The local copy, empty when absent (as [`PeerResponse::Object`]).
    Object(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl From<BatchAnswer> for PeerResponse {
    fn from(answer: BatchAnswer) -> PeerResponse {
        match answer {
            BatchAnswer::Ack => PeerResponse::Ack,
            BatchAnswer::Object(bytes) => PeerResponse::Object(bytes),
        }
    }
}

/// One tombstone a reaping node asks a peer about ([`PeerRequest::Tombstones`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneProbe {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// `blake3` of the asker's encoded object for the key.
    pub object_hash: [u8; 32],
}

/// What a peer stores for one probed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyHeld {
    /// No object at all.
    Absent,
    /// An object whose encoding hashes to the probe's hash: the same tombstone.
    Same,
    /// Some other object (an older value, a newer write, a tombstone with another history).
    Other,
}

/// A peer's answer about one probed key, in the order of the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneHolding {
    /// What it stores for the key.
    pub copy: CopyHeld,
    /// Whether it holds a hint for the key (for any target): it will hand its copy on.
    pub hinted: bool,
}

/// How much one node stores of one partition (keys and encoded objects, tombstones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSize {
    /// The partition.
    pub partition: u32,
    /// Keys stored.
    pub keys: u64,
    /// Bytes of those keys and their encoded objects.
    pub bytes: u64,
}

/// A node's answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `Ping`.
    Pong {
        /// The responder's name.
        node: String,
    },
    /// `Replicate` is durable.
    Ack,
    /// The local copy (empty bytes: the key is absent); answer to `Read`.
    Object(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to `Forward`.
    Forwarded(KeyOpReply),
    /// Answer to `Gossip`: the reply message, if the message asked for one.
    Gossip(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Answer to `AntiEntropy`: the responder's next message, if it has one now.
    AntiEntropy {
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Option<Vec<u8>>,
    },
    /// Answer to `Keys`: the key for each hash, in order (`None`: not stored here).
    Keys(#[serde(with = "byte_strings")] Vec<Option<Vec<u8>>>),
    /// Answer to `Layout`: the responder's layout after merging the sender's (empty: it holds
    /// none).
    Layout(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer to `Tombstones`: one holding per probe, in order.
    Tombstones(Vec<TombstoneHolding>),
    /// Answer to `PartitionSizes`: one entry per partition asked that the responder can count
    /// (none before its Merkle trees are rebuilt, or with anti-entropy off).
    PartitionSizes(Vec<PartitionSize>),
    /// Answer to `Batch`: the answer to each item, in the items' order (answers are
    /// [`BatchAnswer`]s, so an answer cannot nest either).
    Batch(Vec<Result<BatchAnswer, ErrorReply>>),
}

/// A node's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Ping`.
    Pong {
        /// The node's configured name.
        node: String,
    },
    /// Answer to `Get`: no siblings means not found (never written, or only tombstones).
    Value(GetReply),
    /// Answer to `Put` and `Delete`: the write is durable. Carries every sibling the key holds
    /// after the write, not only a context: a context covering siblings the writer never saw
    /// would let its next write silently supersede them.
    Written(GetReply),
    /// Answer to `Status`.
    Status(StatusReply),
    /// Answer to `Ring`.
    Ring(RingReply),
    /// Answer to `Peer`.
    Peer(PeerResponse),
    /// The request failed; nothing was changed unless the variant says otherwise.
    Error(ErrorReply),
    /// Answer to `Join`, `Leave`, `Remove` and `Replace`: the plan, applied or not.
    LayoutChange(LayoutChangeReply),
}

/// What a node answers to a [`KeyOp`]; carried back by `PeerResponse::Forwarded`, and holding no
/// response inside, so an answer cannot nest either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyOpReply {
    /// As `Response::Value`.
    Value(GetReply),
    /// As `Response::Written`.
    Written(GetReply),
    /// As `Response::Error`.
    Error(ErrorReply),
}

impl From<KeyOpReply> for Response {
    fn from(reply: KeyOpReply) -> Response {
        match reply {
            KeyOpReply::Value(r) => Response::Value(r),
            KeyOpReply::Written(r) => Response::Written(r),
            KeyOpReply::Error(e) => Response::Error(e),
        }
    }
}

impl KeyOpReply {
    /// The reply to a key operation, from the response its coordinator gave; any other kind of
    /// response (a bug) becomes an error rather than a wrong answer.
    pub fn from_response(resp: Response) -> KeyOpReply {
        match resp {
            Response::Value(r) => KeyOpReply::Value(r),
            Response::Written(r) => KeyOpReply::Written(r),
            Response::Error(e) => KeyOpReply::Error(e),
            other => KeyOpReply::Error(ErrorReply::Malformed {
                reason: format!(
                    "a key operation was answered with {}",
                    response_kind(&other)
                ),
            }),
        }
    }
}

fn response_kind(resp: &Response) -> &'static str {
    match resp {
        Response::Pong { .. } => "a pong",
        Response::Value(_) => "a value",
        Response::Written(_) => "a write reply",
        Response::Status(_) => "a status",
        Response::Ring(_) => "a ring",
        Response::Peer(_) => "a peer response",
        Response::Error(_) => "an error",
        Response::LayoutChange(_) => "a layout change",
    }
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The node asked.
    pub node: String,
    /// Replicas per key (N).
    pub replicas: u8,
    /// Partitions in the ring (Q).
    pub partitions: u32,
    /// Every member as the asked node sees it, the asked node included.
    pub members: Vec<MemberStatus>,
    /// The asked node's anti-entropy.
    pub anti_entropy: AntiEntropyStatus,
    /// The layout the asked node holds (`None` while it holds none).
    pub layout: Option<Box<LayoutStatus>>,
    /// The asked node's own push of the change in flight (`None` when it has none to make).
    pub transfer: Option<TransferProgress>,
    /// The asked node's tombstones: held and reaped.
    pub tombstones: TombstoneStatus,
}

/// One node's tombstones (keys whose every sibling is a delete) and their reaping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneStatus {
    /// Whether the node reaps tombstones at all (`[tombstones] reap`).
    pub enabled: bool,
    /// Tombstones it stored at its last complete scan.
    pub held: u64,
    /// Tombstones it reaped (removed by compare-and-delete) since it started.
    pub reaped: u64,
    /// Tombstones past their grace period that its last round could not reap (a member did
    /// not answer, holds a hint for the key, or holds another copy of it).
    pub blocked: u64,
    /// Members that did not answer its last round (every reap waits for them).
    pub waiting_on: Vec<String>,
}

/// One node's push of its partitions to their new replicas during a layout change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// The layout version pushed for.
    pub version: u64,
    /// Partitions the node must push.
    pub partitions_total: u32,
    /// Of those, pushed to every new replica.
    pub partitions_pushed: u32,
    /// Being pushed now.
    pub partitions_active: u32,
    /// Keys delivered, counted once per target.
    pub keys_moved: u64,
    /// Bytes delivered, counted once per target.
    pub bytes_moved: u64,
    /// Bytes per second since the push started.
    pub bytes_per_sec: u64,
    /// Keys still to deliver (from the partitions' key counts), if known.
    pub keys_left_estimate: Option<u64>,
    /// Seconds left at the rate so far, if known.
    pub seconds_left_estimate: Option<u64>,
    /// What the push is waiting on: targets (or page reads) that failed
    /// `TRANSFER_ATTEMPTS_MAX` times in a row.
    pub stalled: Vec<TransferStalled>,
}

/// A target the push waits on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStalled {
    /// The partition.
    pub partition: u32,
    /// The target's name, or `None` when the node's own page read fails.
    pub target: Option<String>,
    /// Failures in a row.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
}

/// The layout as one node holds it: its versions and the change in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutStatus {
    /// The newest version.
    pub version: u64,
    /// Every live version, oldest first: one when settled, two while a change is transferred.
    pub versions: Vec<u64>,
    /// Members of the newest version, by name.
    pub members: Vec<String>,
    /// The change in flight, if there is one.
    pub transition: Option<TransitionStatusReply>,
}

/// Where the change into the newest layout version stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionStatusReply {
    /// The version being replaced.
    pub from: u64,
    /// The version being transferred to.
    pub to: u64,
    /// Members that have not acknowledged the new version yet (no data moves before all have).
    pub waiting_acks: Vec<String>,
    /// Old replicas that have not pushed their partitions yet.
    pub waiting_pushes: Vec<String>,
    /// Nodes the operator said not to wait for (data only they held may be lost).
    pub forced: Vec<String>,
    /// Per node: partitions it must send and receive in this change.
    pub nodes: Vec<NodeTransfers>,
    /// Every partition whose replicas change.
    pub partitions: Vec<PartitionProgressReply>,
}

/// One node's part of a transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTransfers {
    /// The node.
    pub node: String,
    /// Partitions it pushes as an old replica (and has not pushed yet).
    pub to_send: u32,
    /// Partitions it gains.
    pub to_receive: u32,
}

/// One changed partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgressReply {
    /// The partition.
    pub partition: u32,
    /// Its replicas before.
    pub from: Vec<String>,
    /// Its replicas after.
    pub to: Vec<String>,
    /// Old replicas that pushed it.
    pub pushed: Vec<String>,
    /// Whether reads use the new replicas.
    pub reads_switched: bool,
}

/// What a layout change (join, leave, remove, replace) does: answered whether it was applied
/// or only planned (`dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutChangeReply {
    /// The node that planned (and applied) it.
    pub node: String,
    /// The change, in words (`join node4`, `leave node6`, ...).
    pub change: String,
    /// The version it was planned against.
    pub from_version: u64,
    /// The version it makes.
    pub to_version: u64,
    /// Whether it was applied (persisted, spreading by gossip).
    pub applied: bool,
    /// Every partition whose replicas change.
    pub moves: Vec<PartitionMoveReply>,
    /// Keys the new replicas must receive, if counted.
    pub keys: Option<u64>,
    /// Bytes the new replicas must receive, if counted.
    pub bytes: Option<u64>,
    /// Members that did not answer when the applied change was sent to every member at once:
    /// a change applied at one of them at the same moment, against the same version, could
    /// still supersede this one (the layout's merge keeps one of two such changes). Empty when
    /// every member answered, or when nothing was applied.
    pub unconfirmed: Vec<String>,
}

/// One partition of a plan: its replicas before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMoveReply {
    /// The partition.
    pub partition: u32,
    /// Its replicas before.
    pub from: Vec<String>,
    /// Its replicas after.
    pub to: Vec<String>,
    /// Keys each new replica must receive (the most any old replica that answered holds),
    /// if counted.
    pub keys: Option<u64>,
    /// Bytes (keys and encoded objects) each new replica must receive, if counted.
    pub bytes: Option<u64>,
}

/// What anti-entropy did on one node since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyStatus {
    /// Whether the node runs anti-entropy exchanges at all.
    pub enabled: bool,
    /// Whether its Merkle trees are rebuilt after the start (no exchange runs before).
    pub trees_ready: bool,
    /// Keys in its trees: every object it stores, tombstones included.
    pub keys: u64,
    /// Exchanges it started that completed.
    pub exchanges: u64,
    /// Exchanges it started that failed (peer unreachable, refused, timed out).
    pub exchanges_failed: u64,
    /// Keys it repaired in exchanges it started (sent, fetched, or both).
    pub keys_repaired: u64,
    /// Bytes of anti-entropy messages and repaired objects it sent.
    pub bytes_sent: u64,
    /// When its last exchange completed, milliseconds since the Unix epoch.
    pub last_exchange_unix_ms: Option<u64>,
    /// The peer of that exchange.
    pub last_peer: Option<String>,
    /// The partition of that exchange.
    pub last_partition: Option<u32>,
}

/// One member in a [`StatusReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// `joining`, `up`, `degraded`, `down`, `leaving` or `left`, as the asked node believes: the
    /// status the member declares, except `degraded` when it declares its storage failing (its
    /// commits fail; it is routed around) and `down` when the asked node judges it unreachable.
    pub status: String,
    /// Its generation (incarnation): higher on every start of the node.
    pub generation: u64,
    /// The asked node's suspicion that it is down (phi accrual; 0 for the asked node itself).
    pub phi: f64,
    /// Milliseconds since its heartbeat last moved, as the asked node saw it (`None` for the
    /// asked node itself and before any heartbeat arrived).
    pub heartbeat_age_ms: Option<u64>,
    /// Its failure zone, if it declares one.
    pub zone: Option<String>,
    /// Whether this entry is the asked node.
    pub this_node: bool,
    /// Partitions it owns.
    pub partitions: u32,
    /// Hints it holds for other nodes, not yet delivered (known only for the asked node;
    /// `None` for others).
    pub hints_pending: Option<u64>,
}

/// The partition ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingReply {
    /// Replicas per key (N).
    pub replicas: u8,
    /// One entry per partition, in order.
    pub partitions: Vec<PartitionEntry>,
}

/// One partition of a [`RingReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// Partition number.
    pub partition: u32,
    /// The N primary replicas, owner first.
    pub primaries: Vec<String>,
    /// Fallbacks, in the order they are tried.
    pub fallbacks: Vec<String>,
}

/// A replica that did not acknowledge, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFailure {
    /// The node's name.
    pub node: String,
    /// What happened (unreachable, timed out, refused: …).
    pub reason: String,
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Admin => "n",
        Role::Node | Role::Data => "",
    }
}

fn role_hint(needed: Role) -> &'static str {
    match needed {
        Role::Admin => " (issue one with `cairn cert client --role admin`)",
        Role::Node | Role::Data => "",
    }
}

fn failures(f: &[ReplicaFailure]) -> String {
    if f.is_empty() {
        return "no replica failed, but too few were reachable".to_owned();
    }
    f.iter()
        .map(|r| format!("{} ({})", r.node, r.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The siblings of a key and the context covering them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// Live values, one per concurrent write; tombstones are not listed.
    pub siblings: Vec<Sibling>,
    /// The context to hand back with the next write.
    pub context: Context,
}

/// One concurrent value of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The value's bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The write event that produced it.
    pub dot: DotId,
}

/// A size limit was exceeded; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LimitError {
    /// Keys must not be empty.
    #[error("key is empty")]
    KeyEmpty,
    /// The key is too long.
    #[error("key of {len} bytes exceeds KEY_BYTES_MAX ({max} bytes)")]
    KeyTooLarge {
        /// Key length.
        len: u64,
        /// `KEY_BYTES_MAX`.
        max: u64,
    },
    /// The value is too long.
    #[error("value of {len} bytes exceeds VALUE_BYTES_MAX ({max} bytes)")]
    ValueTooLarge {
        /// Value length.
        len: u64,
        /// `VALUE_BYTES_MAX`.
        max: u64,
    },
    /// The write would leave more concurrent siblings than allowed; read and resolve them first.
    #[error("key would hold {count} siblings, over SIBLINGS_MAX ({max}); read it and write with its context to resolve them")]
    TooManySiblings {
        /// Siblings the write would have left.
        count: u64,
        /// `SIBLINGS_MAX`.
        max: u64,
    },
    /// The key's version vector (or the context) has too many actors.
    #[error("version vector of {entries} entries exceeds VV_ENTRIES_MAX ({max})")]
    VersionVectorTooLarge {
        /// Entries it would have.
        entries: u64,
        /// `VV_ENTRIES_MAX`.
        max: u64,
    },
    /// The key's stored object (all siblings) would be too large.
    #[error("object of {len} bytes (all siblings) exceeds OBJECT_BYTES_MAX ({max} bytes); resolve siblings first")]
    ObjectTooLarge {
        /// Encoded object length.
        len: u64,
        /// `OBJECT_BYTES_MAX`.
        max: u64,
    },
    /// The context token is too long.
    #[error("context of {len} bytes exceeds CONTEXT_BYTES_MAX ({max} bytes)")]
    ContextTooLarge {
        /// Context length.
        len: u64,
        /// `CONTEXT_BYTES_MAX`.
        max: u64,
    },
    /// A node address is too long.
    #[error("address of {len} bytes exceeds ADDRESS_BYTES_MAX ({max} bytes)")]
    AddressTooLong {
        /// Address length.
        len: u64,
        /// `ADDRESS_BYTES_MAX`.
        max: u64,
    },
    /// A node name in a peer request is too long.
    #[error("node name of {len} bytes exceeds NODE_NAME_BYTES_MAX ({max} bytes)")]
    NameTooLong {
        /// Name length.
        len: u64,
        /// `NODE_NAME_BYTES_MAX`.
        max: u64,
    },
    /// A gossip or anti-entropy message in a peer request is too long.
    #[error("peer message of {len} bytes exceeds PEER_MESSAGE_BYTES_MAX ({max} bytes)")]
    MessageTooLarge {
        /// Message length.
        len: u64,
        /// `PEER_MESSAGE_BYTES_MAX`.
        max: u64,
    },
    /// A merge from a peer would leave a key over a hard limit (only three or more sides of a
    /// partition filling one key at once get there); the replicas keep their copies until a
    /// client resolves the key's siblings.
    #[error("merge would leave {value} against {limit} ({max}); resolve the key's siblings so its replicas can converge")]
    OverHardLimit {
        /// The hard limit's name (`SIBLINGS_HARD_MAX`, `VV_ENTRIES_HARD_MAX`,
        /// `OBJECT_BYTES_HARD_MAX`).
        limit: String,
        /// What the merge would leave.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A reply or a peer request would not fit in a frame (a read whose merged answer is too
    /// large, or an object to send that grew past what a frame carries).
    #[error("{what} of {len} bytes exceeds FRAME_BYTES_MAX ({max} bytes); read with a smaller R, or resolve the key's siblings")]
    FrameTooLarge {
        /// What would not fit ("the answer", "a replicate request", …).
        what: String,
        /// Its encoded length.
        len: u64,
        /// `FRAME_BYTES_MAX`.
        max: u64,
    },
    /// A `Keys` request asks for too many key hashes.
    #[error("{count} key hashes exceed KEY_HASHES_PER_REQUEST_MAX ({max})")]
    TooManyKeyHashes {
        /// Hashes asked for.
        count: u64,
        /// `KEY_HASHES_PER_REQUEST_MAX`.
        max: u64,
    },
    /// A `Tombstones` request asks about too many keys.
    #[error("{count} tombstone probes exceed TOMBSTONE_PROBES_PER_REQUEST_MAX ({max})")]
    TooManyTombstoneProbes {
        /// Probes sent.
        count: u64,
        /// `TOMBSTONE_PROBES_PER_REQUEST_MAX`.
        max: u64,
    },
    /// A `PartitionSizes` request asks for too many partitions.
    #[error("{count} partitions exceed PARTITION_SIZES_PER_REQUEST_MAX ({max})")]
    TooManyPartitions {
        /// Partitions asked for.
        count: u64,
        /// `PARTITION_SIZES_PER_REQUEST_MAX`.
        max: u64,
    },
    /// A `Batch` peer request holds too many items.
    #[error("{count} items in one batch exceed PEER_BATCH_ITEMS_MAX ({max})")]
    TooManyBatchItems {
        /// Items sent.
        count: u64,
        /// `PEER_BATCH_ITEMS_MAX`.
        max: u64,
    },
}

/// Checks a key against its limits.
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    if key.is_empty() {
        return Err(LimitError::KeyEmpty);
    }
    check_len(key.len(), KEY_BYTES_MAX, |len, max| {
        LimitError::KeyTooLarge { len, max }
    })
}

/// Checks a value against its limit.
pub fn check_value(value: &[u8]) -> Result<(), LimitError> {
    check_len(value.len(), VALUE_BYTES_MAX, |len, max| {
        LimitError::ValueTooLarge { len, max }
    })
}

/// Checks a context against its limit.
pub fn check_context(context: &Context) -> Result<(), LimitError> {
    check_len(context.0.len(), CONTEXT_BYTES_MAX, |len, max| {
        LimitError::ContextTooLarge { len, max }
    })
}

/// Why a node refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorReply {
    /// A size limit was exceeded; nothing was stored.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The context is not one this cluster produced.
    #[error("context is not valid: {reason}")]
    BadContext {
        /// Why it could not be decoded.
        reason: String,
    },
    /// The request frame could not be read.
    #[error("malformed request: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
    /// The request was written in another protocol version.
    #[error("node speaks protocol version {supported}; the request used {got}")]
    UnsupportedVersion {
        /// Version of the request.
        got: u16,
        /// The node's version.
        supported: u16,
    },
    /// The node's disk failed the operation; the write is not acknowledged.
    #[error("storage error on node: {reason}")]
    Storage {
        /// What the storage engine reported.
        reason: String,
    },
    /// The node is busy (its write queue is full); retry later.
    #[error("node is overloaded: {reason}")]
    Overloaded {
        /// Which limit was hit.
        reason: String,
    },
    /// The node is shutting down and took no action.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Fewer replicas answered than the request asked for. For a write, the value may still be
    /// stored on the replicas that did acknowledge.
    #[error("{needed} {kind} needed, {got} received; failed: {}", failures(.failed))]
    QuorumNotReached {
        /// "acks", "primary acks", "replies" or "primary replies".
        kind: String,
        /// How many were needed.
        needed: u8,
        /// How many arrived.
        got: u8,
        /// Which replicas failed and why.
        failed: Vec<ReplicaFailure>,
    },
    /// The request's options are impossible (e.g. R or W above N).
    #[error("invalid options: {reason}")]
    BadOptions {
        /// Which option and why.
        reason: String,
    },
    /// A replica could not be reached.
    #[error("{node} unreachable: {reason}")]
    Unreachable {
        /// The node's name.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The sender's certificate does not allow this request.
    #[error("{what} needs a{} {needed} certificate; this connection presented a{} {held} certificate{}", article(*.needed), article(*.held), role_hint(*.needed))]
    Forbidden {
        /// What was refused ("leave", "a peer request", …).
        what: String,
        /// The role the request needs.
        needed: Role,
        /// The role of the certificate presented.
        held: Role,
    },
    /// The node has no ring to route by yet: no member is up in its view (it is still joining,
    /// or every member left).
    #[error(
        "{node} is not part of a ring yet ({reason}); wait for it to join, or `cairn join SEED`"
    )]
    NoRing {
        /// The node asked.
        node: String,
        /// What it is waiting for.
        reason: String,
    },
    /// A membership command could not be carried out.
    #[error("membership change refused: {reason}")]
    Membership {
        /// Why.
        reason: String,
    },
    /// A peer asked for something this node does not take part in now (anti-entropy switched
    /// off or still rebuilding its trees, or not a replica of the partition asked about).
    #[error("refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
}

/// Limits checked by the sender before a request leaves, so a person gets the error without a
/// round trip; the node checks the same limits again. Peer requests are not checked here: the
/// receiving node checks them with [`check_peer_request`] (and tests send them over the limits
/// on purpose).
pub fn check_request(req: &Request) -> Result<(), LimitError> {
    match req {
        Request::Ping
        | Request::Status
        | Request::Ring
        | Request::Leave { .. }
        | Request::Peer(_) => Ok(()),
        Request::Join { seed, .. } => check_len(seed.len(), ADDRESS_BYTES_MAX, |len, max| {
            LimitError::AddressTooLong { len, max }
        }),
        Request::Remove { node, .. } | Request::LayoutForce { node } => {
            check_len(node.len(), NODE_NAME_BYTES_MAX, |len, max| {
                LimitError::NameTooLong { len, max }
            })
        }
        Request::Replace { old, new, .. } => {
            for name in [old, new] {
                check_len(name.len(), NODE_NAME_BYTES_MAX, |len, max| {
                    LimitError::NameTooLong { len, max }
                })?;
            }
            Ok(())
        }
        Request::Get { key, .. } => check_key(key),
        Request::Put {
            key,
            value,
            context,
            ..
        } => {
            check_key(key)?;
            check_value(value)?;
            check_context(context)
        }
        Request::Delete { key, context, .. } => {
            check_key(key)?;
            check_context(context)
        }
    }
}

/// Serde for a list of optional byte strings with each one as a byte string (`serde_bytes`):
/// the postcard bytes of a plain `Vec<Option<Vec<u8>>>`, without a call per byte.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(list: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|item| item.as_deref().map(Bytes::new)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
        let list = Vec::<Option<ByteBuf>>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|item| item.map(ByteBuf::into_vec))
            .collect())
    }
}

/// Limits of a key operation, as for the client request it came from.
pub fn check_op(op: &KeyOp) -> Result<(), LimitError> {
    match op {
        KeyOp::Get { key, .. } => check_key(key),
        KeyOp::Put {
            key,
            value,
            context,
            ..
        } => {
            check_key(key)?;
            check_value(value)?;
            check_context(context)
        }
        KeyOp::Delete { key, context, .. } => {
            check_key(key)?;
            check_context(context)
        }
    }
}

/// Limits of a peer request, checked by the receiving node before it acts on it: a node
/// certificate does not make a message well-formed.
pub fn check_peer_request(req: &PeerRequest) -> Result<(), LimitError> {
    let message = |len, max| LimitError::MessageTooLarge { len, max };
    match req {
        PeerRequest::Ping { from } => check_len(from.len(), NODE_NAME_BYTES_MAX, |len, max| {
            LimitError::NameTooLong { len, max }
        }),
        PeerRequest::Forward { op, .. } => check_op(op),
        PeerRequest::Replicate { key, object, .. } => check_replicate(key, object),
        PeerRequest::Read { key } => check_key(key),
        PeerRequest::Gossip(m) => check_len(m.len(), PEER_MESSAGE_BYTES_MAX, message),
        PeerRequest::AntiEntropy { message: m, .. } => m.as_ref().map_or(Ok(()), |m| {
            check_len(m.len(), PEER_MESSAGE_BYTES_MAX, message)
        }),
        PeerRequest::Keys { key_hashes, .. } => check_len(
            key_hashes.len(),
            KEY_HASHES_PER_REQUEST_MAX,
            |count, max| LimitError::TooManyKeyHashes { count, max },
        ),
        PeerRequest::Layout(layout) => check_len(layout.len(), LAYOUT_BYTES_MAX, message),
        PeerRequest::Tombstones { probes } => {
            check_len(
                probes.len(),
                TOMBSTONE_PROBES_PER_REQUEST_MAX,
                |count, max| LimitError::TooManyTombstoneProbes { count, max },
            )?;
            probes.iter().try_for_each(|p| check_key(&p.key))
        }
        PeerRequest::PartitionSizes { partitions } => check_len(
            partitions.len(),
            PARTITION_SIZES_PER_REQUEST_MAX,
            |count, max| LimitError::TooManyPartitions { count, max },
        ),
        PeerRequest::Batch(items) => {
            check_len(items.len(), PEER_BATCH_ITEMS_MAX, |count, max| {
                LimitError::TooManyBatchItems { count, max }
            })?;
            items.iter().try_for_each(|item| match item {
                BatchItem::Replicate { key, object, .. } => check_replicate(key, object),
                BatchItem::Read { key } => check_key(key),
            })
        }
    }
}

/// A replicated object may be a merge past the client limits, up to the hard ones.
fn check_replicate(key: &[u8], object: &[u8]) -> Result<(), LimitError> {
    check_key(key)?;
    check_len(object.len(), OBJECT_BYTES_HARD_MAX, |len, max| {
        LimitError::OverHardLimit {
            limit: "OBJECT_BYTES_HARD_MAX".to_owned(),
            value: len,
            max,
        }
    })
}

/// Checks a size (a length or a count) against its limit: `err(size, max)` names the limit.
/// Every size limit is checked through this one comparison.
pub fn check_len(
    len: usize,
    max: usize,
    err: impl FnOnce(u64, u64) -> LimitError,
) -> Result<(), LimitError> {
    if len > max {
        return Err(err(len as u64, max as u64));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_tokens_roundtrip() {
        let ctx = Context(vec![0, 1, 2, 250, 255]);
        assert_eq!(Context::from_token(&ctx.to_token()).unwrap(), ctx);
        assert_eq!(Context::from_token("").unwrap(), Context::empty());
        assert!(matches!(
            Context::from_token("not base64!"),
            Err(ContextError::NotBase64 { .. })
        ));
        let huge = "A".repeat(CONTEXT_BYTES_MAX * 2);
        assert!(matches!(
            Context::from_token(&huge),
            Err(ContextError::TooLarge { .. })
        ));
    }

    #[test]
    fn limits_name_the_size() {
        let err = check_value(&vec![0; VALUE_BYTES_MAX + 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "value of {} bytes exceeds VALUE_BYTES_MAX ({} bytes)",
                VALUE_BYTES_MAX + 1,
                VALUE_BYTES_MAX
            )
        );
        assert_eq!(check_key(b""), Err(LimitError::KeyEmpty));
        assert!(check_key(&[b'k'; KEY_BYTES_MAX]).is_ok());
        assert!(check_key(&[b'k'; KEY_BYTES_MAX + 1]).is_err());
        assert!(check_value(&vec![0; VALUE_BYTES_MAX]).is_ok());
    }
}
