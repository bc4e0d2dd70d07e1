//! Anti-entropy in the node: the driver that periodically compares this node's Merkle trees with
//! another replica's and repairs every key found to differ, and the responder that answers other
//! nodes' exchanges. The rules (partners, the order of an exchange's steps, each key's repair,
//! the responder's table, the pace) are the core's `cairn_core::antientropy` machines, which the
//! simulator runs too; this module carries them out over the trees, the engine and QUIC peers.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_antientropy::KeyHash;
use cairn_core::antientropy::{
    keys_asked, refusal, round_jobs, Action, Direction, Exchange, ExchangeFault, KeyRepair,
    RepairStep, Responders,
};
use cairn_core::bucket::TokenBucket;
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
    /// The peer's answer broke the exchange.
    #[error(transparent)]
    Fault(#[from] ExchangeFault),
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
    responders: Arc<Mutex<Responders>>,
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
                Instant::now(),
                config.repair_keys_per_sec.into(),
                burst.into(),
            )),
            config,
            membership,
            engine,
            trees,
            peers,
            responders: Arc::new(Mutex::new(Responders::new(
                AE_RESPONDER_SESSIONS_MAX,
                AE_SESSION_IDLE_MAX,
            ))),
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
        let jobs = round_jobs(&ring, self.me, |id| self.membership.is_up(id), round);
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

    /// Runs one exchange of partition `p` with `peer` as initiator and repairs what it finds
    /// (the core's [`Exchange`], carried out over the trees, the engine and the peer).
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
        let mut exchange = Exchange::new(self.config.repair_batch_keys);
        loop {
            let Some(action) = exchange.poll() else {
                return Err(ExchangeError::Unexpected(
                    "the exchange waits for an answer nobody asked for".into(),
                ));
            };
            match action {
                Action::Turn => {
                    let Some((ex, turned)) = self.turn(p, exchange).await else {
                        return Err(ExchangeError::ShuttingDown);
                    };
                    exchange = ex;
                    turned?;
                }
                Action::LocalKeys(hashes) => {
                    let keys = self.engine.keys_for_hashes(hashes).await?;
                    for hash in exchange.handle_local_keys(keys)? {
                        warn!("anti-entropy: no key stored for {hash:?}, which the tree holds");
                    }
                }
                Action::PeerKeys(hashes) => {
                    let keys = self.peer_keys(p, peer, hashes).await?;
                    let absent = exchange.handle_peer_keys(keys)?;
                    if absent > 0 {
                        debug!(
                            absent,
                            "the peer holds no key for some hashes its tree listed"
                        );
                    }
                }
                Action::Repair(batch) => {
                    let repaired = self.repair(peer, batch).await?;
                    exchange.handle_repaired(repaired);
                }
                Action::Send(message) => {
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
                        PeerResponse::AntiEntropy { message } => exchange.handle_answer(message)?,
                        other => return Err(ExchangeError::Unexpected(format!("{other:?}"))),
                    }
                }
                Action::Done { repaired } => return Ok(repaired),
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

    /// The exchange's turn over partition `p`'s tree, off the async workers: below the stored
    /// levels a step sums entries (at the design size up to 256 blake3 calls per node of a
    /// message).
    async fn turn(
        &self,
        p: PartitionId,
        mut exchange: Exchange,
    ) -> Option<(Exchange, Result<(), ExchangeFault>)> {
        let trees = self.trees.clone();
        let step = tokio::task::spawn_blocking(move || {
            let turned = trees.with_tree(p, |tree| exchange.turn(tree));
            (exchange, turned)
        });
        match step.await {
            Ok(done) => Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => None,
        }
    }

    /// Repairs one batch of keys with `peer`, all at once once the bucket allows them; returns
    /// the keys repaired.
    async fn repair(
        self: &Arc<Self>,
        peer: NodeId,
        batch: Vec<(Vec<u8>, Direction)>,
    ) -> Result<u64, ExchangeError> {
        self.pace(batch.len()).await;
        let mut repairs = JoinSet::new();
        for (key, direction) in batch {
            let this = self.clone();
            repairs.spawn(async move { this.repair_key(peer, key, direction).await });
        }
        let mut repaired = 0;
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
        match failure {
            Some(e) => Err(e),
            None => Ok(repaired),
        }
    }

    /// Asks `peer` for the keys behind `hashes` (which this node lacks).
    async fn peer_keys(
        &self,
        p: PartitionId,
        peer: NodeId,
        hashes: Vec<KeyHash>,
    ) -> Result<Vec<Option<Vec<u8>>>, ExchangeError> {
        let req = PeerRequest::Keys {
            partition: p,
            key_hashes: hashes.iter().map(|k| k.0).collect(),
        };
        match self.ask(peer, req).await? {
            PeerResponse::Keys(keys) => Ok(keys),
            other => Err(ExchangeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Waits until the token bucket allows `n` more repairs.
    async fn pace(&self, n: usize) {
        let wait = self
            .bucket
            .lock()
            .expect("bucket lock")
            .take(Instant::now(), n as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Repairs one key with `peer` (the core's [`KeyRepair`]); returns the object bytes sent.
    async fn repair_key(
        &self,
        peer: NodeId,
        key: Vec<u8>,
        direction: Direction,
    ) -> Result<u64, ExchangeError> {
        let (mut repair, mut step) = KeyRepair::start(direction);
        loop {
            step = match step {
                RepairStep::Done => return Ok(0),
                RepairStep::ReadLocal => repair.handle_local(self.engine.read(key.clone()).await?),
                RepairStep::ReadPeer => {
                    let theirs = match self
                        .ask(peer, PeerRequest::Read { key: key.clone() })
                        .await?
                    {
                        PeerResponse::Object(bytes) => {
                            Object::decode_copy(&bytes).map_err(|e| {
                                ExchangeError::Unexpected(format!(
                                    "the peer sent a bad object: {e}"
                                ))
                            })?
                        }
                        other => return Err(ExchangeError::Unexpected(format!("{other:?}"))),
                    };
                    repair.handle_peer_copy(theirs)
                }
                RepairStep::Merge(theirs) => {
                    let merge = Write::Merge {
                        object: theirs,
                        hint_for: None,
                    };
                    repair.handle_merged(self.engine.apply(key.clone(), merge).await?)
                }
                RepairStep::Replicate(object) => {
                    let object = object.encode();
                    let bytes = object.len() as u64;
                    let req = PeerRequest::Replicate {
                        key,
                        object,
                        hint_for: None,
                    };
                    return match self.ask(peer, req).await? {
                        PeerResponse::Ack => Ok(bytes),
                        other => Err(ExchangeError::Unexpected(format!("{other:?}"))),
                    };
                }
            };
        }
    }

    /// Refuses requests about a partition this node cannot answer for now.
    fn check_partition(&self, partition: PartitionId) -> Result<(), ErrorReply> {
        let primary = || {
            self.membership
                .ring()
                .is_some_and(|ring| ring.preference_list(partition).primaries.contains(&self.me))
        };
        refusal(
            self.config.enabled,
            partition,
            self.trees.partitions(),
            primary,
            self.trees.is_ready(),
        )
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
        let trees = self.trees.clone();
        let responders = self.responders.clone();
        let now = Instant::now();
        // Off the async workers, as the initiator's turn.
        let answered = tokio::task::spawn_blocking(move || {
            trees.with_tree(partition, |tree| {
                responders.lock().expect("responders lock").respond(
                    from,
                    partition,
                    session,
                    message.as_deref(),
                    tree,
                    now,
                )
            })
        })
        .await;
        let message = match answered {
            Ok(answer) => answer?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(ErrorReply::ShuttingDown),
        };
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
        let hashes = keys_asked(partition, key_hashes, |k| self.trees.partition_of(k))?;
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
