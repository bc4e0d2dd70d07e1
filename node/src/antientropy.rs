//! Anti-entropy in the node: the driver that periodically compares this node's Merkle trees with
//! another replica's (the pure `cairn-antientropy` session over peer requests) and repairs every
//! key found to differ, and the responder that answers other nodes' exchanges.
//!
//! One round: for each partition this node is a primary replica of, one exchange with another
//! primary that is up (the peer rotates from round to round), at most `sessions_max` at once,
//! then a pause of `interval_ms`. The initiator repairs both ways, so the responder only answers:
//! - a key only this node holds: read it here, `PeerRequest::Replicate` it to the peer;
//! - a key only the peer holds: learn the key from its hash (`PeerRequest::Keys`, the peer's
//!   `key_hashes` table), `PeerRequest::Read` it and merge it here (`Write::Merge`);
//! - a key both hold differently: read the peer's, merge it here, and send the merge back.
//!
//! Every merge is `sync`, so concurrent siblings on the two sides both survive and nothing only
//! one side had is dropped. Repairs are paced by a token bucket (`repair_keys_per_sec`) in
//! batches of `repair_batch_keys`, and the session is polled only after a batch is done, so the
//! exchange goes at the pace of its repairs and cannot starve client traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_antientropy::limits::KEYS_PER_DIFF_BATCH_MAX;
use cairn_antientropy::{Action, AntiEntropyError, KeyHash, MerkleTree, Message, Role, Session};
use cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX;
use cairn_proto::{AntiEntropyStatus, ErrorReply, NodeId, PeerRequest, PeerResponse};
use cairn_ring::{PartitionId, Ring};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::AntiEntropyConfig;
use crate::engine::{Engine, EngineError, Write};
use crate::limits::{AE_REQUEST_TIMEOUT, AE_RESPONDER_SESSIONS_MAX, AE_SESSION_IDLE_MAX};
use crate::peers::Peers;
use crate::trees::Trees;
use crate::version::Object;

/// What anti-entropy needs to know about membership: the current ring and who is up. Gossip's
/// [`Membership`](crate::membership::Membership) provides it; the driver reads both afresh every
/// round, so exchanges follow membership changes.
pub trait MembershipView: Send + Sync + 'static {
    /// The ring as this node currently sees it (`None` while it has none, e.g. joining).
    fn ring(&self) -> Option<Arc<Ring>>;
    /// Whether `node` is believed reachable.
    fn is_up(&self, node: NodeId) -> bool;
}

impl MembershipView for crate::membership::Membership {
    fn ring(&self) -> Option<Arc<Ring>> {
        self.view().ring.clone()
    }

    fn is_up(&self, node: NodeId) -> bool {
        crate::membership::Membership::is_up(self, node)
    }
}

/// Why an exchange this node started failed. The next round starts afresh from the roots.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// This node's trees are still being rebuilt after its start.
    #[error("trees are still being rebuilt")]
    NotReady,
    /// The peer could not be reached or refused a request.
    #[error("{peer}: {error}")]
    Peer {
        /// The peer's name.
        peer: String,
        /// What it answered, or why it could not be asked.
        error: ErrorReply,
    },
    /// A message of the peer broke the protocol (or ours did not encode).
    #[error("protocol: {0}")]
    Protocol(#[from] AntiEntropyError),
    /// The peer answered with something that is not an answer to the request.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The local engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Taking more than there are
/// leaves a debt that later takers wait out too, so concurrent takers are served in turn.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens at `now`; returns how long the taker must wait before using them.
    pub fn take(&mut self, n: u32, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - f64::from(n);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What one turn of a session produced: the differences it reported, then what comes next.
struct Turn {
    diffs: Vec<Diff>,
    next: Next,
}

enum Next {
    /// Send this encoded message.
    Send(Vec<u8>),
    /// Wait for the peer.
    Wait,
    /// The exchange is over.
    Done,
}

/// One `Action::Diff`.
struct Diff {
    missing_here: Vec<KeyHash>,
    missing_there: Vec<KeyHash>,
    differing: Vec<KeyHash>,
}

/// How one key is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Only this node has it: send it.
    Push,
    /// Only the peer has it: fetch and merge it here.
    Pull,
    /// Both have it, differently: fetch and merge here, send the merge back.
    Both,
}

/// One side of a peer's exchange, kept between its requests. If the initiator spends longer than
/// `AE_SESSION_IDLE_MAX` repairing between two requests (a very low configured rate), the
/// session may be dropped and its exchange fails; the repairs done stay done, and the next
/// round finds only what is left.
struct Responder {
    session: Session,
    partition: PartitionId,
    last_used: Instant,
}

#[derive(Debug, Clone, Copy)]
struct LastExchange {
    unix_ms: u64,
    peer: NodeId,
    partition: PartitionId,
}

#[derive(Debug, Default)]
struct Stats {
    exchanges: AtomicU64,
    exchanges_failed: AtomicU64,
    keys_repaired: AtomicU64,
    bytes_sent: AtomicU64,
    last: Mutex<Option<LastExchange>>,
}

/// This node's anti-entropy: the driver (`run`) and the responder (`respond`, `keys`).
pub struct AntiEntropy {
    me: NodeId,
    config: AntiEntropyConfig,
    membership: Arc<dyn MembershipView>,
    engine: Arc<Engine>,
    trees: Arc<Trees>,
    peers: Arc<Peers>,
    /// Peers' exchanges in progress, by (initiator, session id); at most
    /// `AE_RESPONDER_SESSIONS_MAX`, idle ones dropped after `AE_SESSION_IDLE_MAX`.
    responders: Mutex<HashMap<(NodeId, u64), Responder>>,
    bucket: Mutex<TokenBucket>,
    stats: Stats,
}

impl AntiEntropy {
    /// Anti-entropy for node `me`, over its engine and trees.
    pub fn new(
        me: NodeId,
        config: AntiEntropyConfig,
        membership: Arc<dyn MembershipView>,
        engine: Arc<Engine>,
        trees: Arc<Trees>,
        peers: Arc<Peers>,
    ) -> AntiEntropy {
        let burst = config
            .repair_keys_per_sec
            .max(config.repair_batch_keys as u32);
        AntiEntropy {
            me,
            bucket: Mutex::new(TokenBucket::new(
                config.repair_keys_per_sec,
                burst,
                Instant::now(),
            )),
            config,
            membership,
            engine,
            trees,
            peers,
            responders: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }
    }

    /// What anti-entropy did so far, for `status`.
    pub fn status(&self) -> AntiEntropyStatus {
        let last = *self.stats.last.lock().expect("stats lock");
        AntiEntropyStatus {
            enabled: self.config.enabled,
            trees_ready: self.trees.is_ready(),
            keys: self.trees.keys(),
            exchanges: self.stats.exchanges.load(Ordering::Relaxed),
            exchanges_failed: self.stats.exchanges_failed.load(Ordering::Relaxed),
            keys_repaired: self.stats.keys_repaired.load(Ordering::Relaxed),
            bytes_sent: self.stats.bytes_sent.load(Ordering::Relaxed),
            last_exchange_unix_ms: last.map(|l| l.unix_ms),
            last_peer: last.map(|l| self.peers.name(l.peer)),
            last_partition: last.map(|l| l.partition),
        }
    }

    /// Runs rounds forever, once the trees are rebuilt. The first round comes one interval
    /// after that, so a node (or a whole cluster) starting up does not compare trees at once.
    pub async fn run(self: Arc<Self>) {
        self.trees.wait_ready().await;
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut round = 0u64;
        loop {
            tokio::time::sleep(interval).await;
            self.round(round).await;
            round = round.wrapping_add(1);
        }
    }

    /// One exchange for each partition this node is a primary of, `sessions_max` at a time.
    async fn round(self: &Arc<Self>, round: u64) {
        let Some(ring) = self.membership.ring() else {
            return;
        };
        let jobs: Vec<(PartitionId, NodeId)> = ring
            .primary_partitions(self.me)
            .into_iter()
            .filter_map(|p| {
                let others: Vec<NodeId> = ring
                    .preference_list(p)
                    .primaries
                    .into_iter()
                    .filter(|&id| id != self.me && self.membership.is_up(id))
                    .collect();
                // Rotating through the other primaries round by round pairs every two replicas
                // of a partition in turn.
                let pick = (round as usize).wrapping_add(p as usize) % others.len().max(1);
                others.get(pick).map(|&peer| (p, peer))
            })
            .collect();
        let slots = Arc::new(Semaphore::new(self.config.sessions_max));
        // Exchanges live in this set: when the driver is stopped, they stop with it.
        let mut exchanges = JoinSet::new();
        for (p, peer) in jobs {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let this = self.clone();
            exchanges.spawn(async move {
                this.run_exchange(p, peer).await;
                drop(slot);
            });
            while exchanges.try_join_next().is_some() {}
        }
        while exchanges.join_next().await.is_some() {}
    }

    /// Runs one exchange and records its outcome.
    async fn run_exchange(self: &Arc<Self>, p: PartitionId, peer: NodeId) {
        match self.exchange(p, peer).await {
            Ok(repaired) => {
                self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
                *self.stats.last.lock().expect("stats lock") = Some(LastExchange {
                    unix_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    peer,
                    partition: p,
                });
                if repaired > 0 {
                    info!(peer = %self.peers.name(peer), partition = p, repaired, "anti-entropy repaired keys");
                }
            }
            Err(ExchangeError::NotReady) => {}
            Err(e) => {
                self.stats.exchanges_failed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %self.peers.name(peer), partition = p, "anti-entropy exchange failed: {e}");
            }
        }
    }

    /// Runs one exchange of partition `p` with `peer` as initiator and repairs what it finds.
    /// Returns the number of keys repaired.
    pub async fn exchange(
        self: &Arc<Self>,
        p: PartitionId,
        peer: NodeId,
    ) -> Result<u64, ExchangeError> {
        if !self.trees.is_ready() {
            return Err(ExchangeError::NotReady);
        }
        let id: u64 = rand::random();
        let mut session = Session::new(Role::Initiator);
        let mut incoming = None;
        let mut repaired = 0;
        loop {
            let Some((s, turn)) = self.turn(p, session, incoming.take()).await else {
                return Err(ExchangeError::ShuttingDown);
            };
            session = s;
            let turn = turn?;
            for diff in turn.diffs {
                repaired += self.repair(p, peer, diff).await?;
            }
            let message = match turn.next {
                Next::Done => return Ok(repaired),
                Next::Send(bytes) => Some(bytes),
                Next::Wait => None,
            };
            let sent = message.is_some();
            let bytes = message.as_ref().map_or(0, Vec::len) as u64;
            let req = PeerRequest::AntiEntropy {
                from: self.me,
                partition: p,
                session: id,
                message,
            };
            let resp = self.ask(peer, req).await?;
            self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            match resp {
                PeerResponse::AntiEntropy {
                    message: Some(bytes),
                } => incoming = Some(Message::decode(&bytes)?),
                PeerResponse::AntiEntropy { message: None } if sent => {}
                PeerResponse::AntiEntropy { message: None } => {
                    // Every message was delivered and handled before its answer, so both sides
                    // waiting means one of them broke the protocol.
                    return Err(ExchangeError::Unexpected(
                        "the peer waits for a message while this side waits for one".into(),
                    ));
                }
                other => return Err(ExchangeError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Sends `req` to `peer` under `AE_REQUEST_TIMEOUT`.
    async fn ask(&self, peer: NodeId, req: PeerRequest) -> Result<PeerResponse, ExchangeError> {
        self.peers
            .request(peer, req, AE_REQUEST_TIMEOUT)
            .await
            .map_err(|error| ExchangeError::Peer {
                peer: self.peers.name(peer),
                error,
            })
    }

    /// Hands `incoming` (if any) to the session, then polls it until it has a message to send,
    /// waits for the peer, or is done. Off the async workers: below the stored levels a step
    /// sums entries (at the design size up to 256 blake3 calls per node of a message).
    async fn turn(
        &self,
        p: PartitionId,
        mut session: Session,
        incoming: Option<Message>,
    ) -> Option<(Session, Result<Turn, AntiEntropyError>)> {
        let trees = self.trees.clone();
        let step = tokio::task::spawn_blocking(move || {
            let turn = trees.with_tree(p, |tree| turn(&mut session, tree, incoming));
            (session, turn)
        });
        match step.await {
            Ok(done) => Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => None,
        }
    }

    /// Repairs one batch of differences with `peer`; returns the keys repaired.
    async fn repair(
        self: &Arc<Self>,
        p: PartitionId,
        peer: NodeId,
        diff: Diff,
    ) -> Result<u64, ExchangeError> {
        let mut work: Vec<(Vec<u8>, Direction)> = Vec::new();
        let ours: Vec<(KeyHash, Direction)> = diff
            .missing_there
            .iter()
            .map(|k| (*k, Direction::Push))
            .chain(diff.differing.iter().map(|k| (*k, Direction::Both)))
            .collect();
        let keys = self
            .engine
            .keys_for_hashes(ours.iter().map(|(k, _)| *k).collect())
            .await?;
        for ((hash, direction), key) in ours.into_iter().zip(keys) {
            match key {
                Some(key) => work.push((key, direction)),
                // The tree and the index are written from the same commits; a miss means the
                // store lost a row under us. Nothing to send for it.
                None => warn!("anti-entropy: no key stored for {hash:?}, which the tree holds"),
            }
        }
        if !diff.missing_here.is_empty() {
            for key in self.peer_keys(p, peer, &diff.missing_here).await? {
                work.push((key, Direction::Pull));
            }
        }

        let mut repaired = 0;
        for batch in work.chunks(self.config.repair_batch_keys) {
            self.pace(batch.len()).await;
            let mut repairs = JoinSet::new();
            for (key, direction) in batch.iter().cloned() {
                let this = self.clone();
                repairs.spawn(async move { this.repair_key(peer, key, direction).await });
            }
            let mut failure = None;
            while let Some(result) = repairs.join_next().await {
                match result.expect("a repair task panicked") {
                    Ok(sent) => {
                        repaired += 1;
                        self.stats.keys_repaired.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
                    }
                    // The peer is gone: the rest of the exchange cannot succeed either.
                    Err(
                        e @ ExchangeError::Peer {
                            error: ErrorReply::Unreachable { .. } | ErrorReply::ShuttingDown,
                            ..
                        },
                    ) => failure = Some(e),
                    // One key that cannot be repaired (a limit its merge would exceed, say)
                    // must not stop the others.
                    Err(e) => warn!("anti-entropy could not repair a key: {e}"),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(repaired)
    }

    /// Asks `peer` for the keys behind `hashes` (which this node lacks), checking each answer
    /// hashes to what was asked.
    async fn peer_keys(
        &self,
        p: PartitionId,
        peer: NodeId,
        hashes: &[KeyHash],
    ) -> Result<Vec<Vec<u8>>, ExchangeError> {
        let req = PeerRequest::Keys {
            partition: p,
            key_hashes: hashes.iter().map(|k| k.0).collect(),
        };
        let PeerResponse::Keys(keys) = self.ask(peer, req).await? else {
            return Err(ExchangeError::Unexpected("not an answer to Keys".into()));
        };
        if keys.len() != hashes.len() {
            return Err(ExchangeError::Unexpected(format!(
                "{} keys for {} hashes",
                keys.len(),
                hashes.len()
            )));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (hash, key) in hashes.iter().zip(keys) {
            match key {
                Some(key) if KeyHash::of_key(&key) == *hash => out.push(key),
                Some(_) => {
                    return Err(ExchangeError::Unexpected(format!(
                        "the key sent for {hash:?} has another hash"
                    )))
                }
                // The peer dropped the key since its tree listed it (it replicates it in no
                // live layout version any more, see cleanup.rs): nothing to fetch.
                None => debug!("peer has no key for {hash:?}"),
            }
        }
        Ok(out)
    }

    /// Waits until the token bucket allows `n` more repairs.
    async fn pace(&self, n: usize) {
        let wait = self
            .bucket
            .lock()
            .expect("bucket lock")
            .take(n as u32, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Repairs one key with `peer`; returns the object bytes sent.
    async fn repair_key(
        &self,
        peer: NodeId,
        key: Vec<u8>,
        direction: Direction,
    ) -> Result<u64, ExchangeError> {
        let send = match direction {
            Direction::Push => self.engine.read(key.clone()).await?,
            Direction::Pull | Direction::Both => {
                let theirs = match self
                    .ask(peer, PeerRequest::Read { key: key.clone() })
                    .await?
                {
                    PeerResponse::Object(bytes) => Object::decode_copy(&bytes).map_err(|e| {
                        ExchangeError::Unexpected(format!("the peer sent a bad object: {e}"))
                    })?,
                    other => return Err(ExchangeError::Unexpected(format!("{other:?}"))),
                };
                let merged = if theirs.is_empty() {
                    self.engine.read(key.clone()).await?
                } else {
                    self.engine
                        .apply(
                            key.clone(),
                            Write::Merge {
                                object: theirs.clone(),
                                hint_for: None,
                            },
                        )
                        .await?
                };
                // The peer needs the merge only if it adds to what it has.
                if direction == Direction::Pull || merged == theirs {
                    return Ok(0);
                }
                merged
            }
        };
        if send.is_empty() {
            return Ok(0);
        }
        let object = send.encode();
        let bytes = object.len() as u64;
        let req = PeerRequest::Replicate {
            key,
            object,
            hint_for: None,
        };
        match self.ask(peer, req).await? {
            PeerResponse::Ack => Ok(bytes),
            other => Err(ExchangeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Refuses requests about a partition this node cannot answer for now.
    fn check_partition(&self, partition: PartitionId) -> Result<(), ErrorReply> {
        if !self.config.enabled {
            return Err(ErrorReply::Refused {
                reason: "anti-entropy is switched off on this node".into(),
            });
        }
        if partition >= self.trees.partitions() {
            return Err(ErrorReply::Malformed {
                reason: format!(
                    "partition {partition} does not exist (Q = {})",
                    self.trees.partitions()
                ),
            });
        }
        let primary = self
            .membership
            .ring()
            .is_some_and(|ring| ring.preference_list(partition).primaries.contains(&self.me));
        if !primary {
            return Err(ErrorReply::Refused {
                reason: format!("not a primary replica of partition {partition}"),
            });
        }
        if !self.trees.is_ready() {
            return Err(ErrorReply::Refused {
                reason: "Merkle trees are still being rebuilt".into(),
            });
        }
        Ok(())
    }

    /// Answers one request of `from`'s exchange `session` of `partition`: takes its message (if
    /// any) and returns this side's next message (if any). Diffs this side finds are the mirror
    /// image of the initiator's, which repairs both ways; they are dropped here.
    pub async fn respond(
        &self,
        from: NodeId,
        partition: PartitionId,
        session: u64,
        message: Option<Vec<u8>>,
    ) -> Result<PeerResponse, ErrorReply> {
        self.check_partition(partition)?;
        let incoming = message
            .map(|bytes| Message::decode(&bytes))
            .transpose()
            .map_err(protocol_error)?;
        let id = (from, session);
        let now = Instant::now();
        let existing = {
            let mut table = self.responders.lock().expect("responders lock");
            match table.remove(&id) {
                Some(r) if r.partition == partition => r.session,
                Some(_) => {
                    return Err(ErrorReply::Malformed {
                        reason: format!("session {session} is about another partition"),
                    })
                }
                None if incoming.is_none() => {
                    return Err(ErrorReply::Malformed {
                        reason: format!("no anti-entropy session {session} (expired?)"),
                    })
                }
                None => {
                    table.retain(|_, r| now.duration_since(r.last_used) < AE_SESSION_IDLE_MAX);
                    if table.len() >= AE_RESPONDER_SESSIONS_MAX {
                        return Err(ErrorReply::Overloaded {
                            reason: format!(
                                "anti-entropy sessions at AE_RESPONDER_SESSIONS_MAX \
                                 ({AE_RESPONDER_SESSIONS_MAX})"
                            ),
                        });
                    }
                    Session::new(Role::Responder)
                }
            }
        };
        let Some((session_state, turn)) = self.turn(partition, existing, incoming).await else {
            return Err(ErrorReply::ShuttingDown);
        };
        // A session that failed is dropped: the next exchange starts from the roots.
        let turn = turn.map_err(protocol_error)?;
        let message = match turn.next {
            Next::Send(bytes) => Some(bytes),
            Next::Wait | Next::Done => None,
        };
        if !session_state.is_done() {
            self.responders.lock().expect("responders lock").insert(
                id,
                Responder {
                    session: session_state,
                    partition,
                    last_used: now,
                },
            );
        }
        let bytes = message.as_ref().map_or(0, Vec::len) as u64;
        self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        Ok(PeerResponse::AntiEntropy { message })
    }

    /// Answers `PeerRequest::Keys`: the stored key behind each hash.
    pub async fn keys(
        &self,
        partition: PartitionId,
        key_hashes: Vec<[u8; 32]>,
    ) -> Result<PeerResponse, ErrorReply> {
        self.check_partition(partition)?;
        if key_hashes.len() > KEY_HASHES_PER_REQUEST_MAX {
            return Err(ErrorReply::Malformed {
                reason: format!(
                    "{} key hashes exceed KEY_HASHES_PER_REQUEST_MAX ({KEY_HASHES_PER_REQUEST_MAX})",
                    key_hashes.len()
                ),
            });
        }
        let hashes: Vec<KeyHash> = key_hashes.into_iter().map(KeyHash).collect();
        if let Some(stray) = hashes
            .iter()
            .find(|k| self.trees.partition_of(k) != partition)
        {
            return Err(ErrorReply::Malformed {
                reason: format!("key hash {stray:?} is not in partition {partition}"),
            });
        }
        let keys = self.engine.keys_for_hashes(hashes).await?;
        let bytes: usize = keys.iter().flatten().map(Vec::len).sum();
        self.stats
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(PeerResponse::Keys(keys))
    }

    /// Exchanges of peers this node is answering now.
    pub fn responder_sessions(&self) -> usize {
        self.responders.lock().expect("responders lock").len()
    }
}

fn protocol_error(e: AntiEntropyError) -> ErrorReply {
    ErrorReply::Malformed {
        reason: format!("anti-entropy: {e}"),
    }
}

/// The blocking part of [`AntiEntropy::turn`].
fn turn(
    session: &mut Session,
    tree: &MerkleTree,
    incoming: Option<Message>,
) -> Result<Turn, AntiEntropyError> {
    if let Some(message) = incoming {
        session.handle_message(tree, message)?;
    }
    let mut diffs = Vec::new();
    loop {
        let next = match session.poll_action(tree) {
            None => Next::Wait,
            Some(Action::Send(message)) => Next::Send(message.encode()?),
            Some(Action::Done) => Next::Done,
            Some(Action::Diff {
                keys_missing_here,
                keys_missing_there,
                keys_differing,
            }) => {
                debug_assert!(
                    keys_missing_here.len() + keys_missing_there.len() + keys_differing.len()
                        <= KEYS_PER_DIFF_BATCH_MAX
                );
                diffs.push(Diff {
                    missing_here: keys_missing_here,
                    missing_there: keys_missing_there,
                    differing: keys_differing,
                });
                continue;
            }
        };
        return Ok(Turn { diffs, next });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_paces_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 50, t0);
        assert_eq!(
            b.take(50, t0),
            Duration::ZERO,
            "a full bucket gives its burst"
        );
        assert_eq!(b.take(10, t0), Duration::from_millis(100), "10 at 100/s");
        // The debt is shared: the next taker waits for it too.
        assert_eq!(b.take(10, t0), Duration::from_millis(200));
        // Time pays the debt back, and no more than the burst is ever saved.
        assert_eq!(b.take(0, t0 + Duration::from_millis(200)), Duration::ZERO);
        assert_eq!(b.take(50, t0 + Duration::from_secs(100)), Duration::ZERO);
        assert_eq!(
            b.take(1, t0 + Duration::from_secs(100)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn a_clock_step_back_does_not_refill_the_bucket() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(10, 10, t0);
        assert_eq!(b.take(10, t0), Duration::ZERO);
        assert_eq!(
            b.take(10, t0 - Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    /// Two sessions driven through `turn` the way the driver and the responder drive them (one
    /// message per request, pulls when the initiator has nothing to send) end together and find
    /// mirror-image differences.
    #[test]
    fn turns_carry_an_exchange_to_the_end() {
        use cairn_antientropy::ObjectHash;
        let entry = |i: u32, v: u32| {
            (
                KeyHash::of_key(&i.to_le_bytes()),
                ObjectHash::of_encoded(&v.to_le_bytes()),
            )
        };
        let a = MerkleTree::from_entries((0..3000).map(|i| entry(i, 0)));
        let b = MerkleTree::from_entries(
            (0..3000)
                .filter(|i| i % 100 != 1)
                .map(|i| entry(i, u32::from(i % 100 == 2)))
                .chain((5000..5010).map(|i| entry(i, 0))),
        );
        let mut init = Session::new(Role::Initiator);
        let mut resp = Session::new(Role::Responder);
        let (mut found_here, mut found_there, mut found_differing) = (0, 0, 0);
        let mut incoming = None;
        for _ in 0..100 {
            let t = turn(&mut init, &a, incoming.take()).unwrap();
            for d in &t.diffs {
                found_here += d.missing_here.len();
                found_there += d.missing_there.len();
                found_differing += d.differing.len();
            }
            let message = match t.next {
                Next::Done => {
                    assert!(resp.is_done(), "the responder ends with the initiator");
                    assert_eq!(
                        (found_here, found_there, found_differing),
                        (10, 30, 30),
                        "keys only b has, only a has, both differently"
                    );
                    return;
                }
                Next::Send(bytes) => Some(Message::decode(&bytes).unwrap()),
                Next::Wait => None,
            };
            let sent = message.is_some();
            let r = turn(&mut resp, &b, message).unwrap();
            incoming = match r.next {
                Next::Send(bytes) => Some(Message::decode(&bytes).unwrap()),
                Next::Wait | Next::Done => {
                    assert!(sent, "both sides wait");
                    None
                }
            };
        }
        panic!("the exchange did not end within 100 round trips");
    }
}
