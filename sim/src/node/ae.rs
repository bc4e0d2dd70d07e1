//! Anti-entropy in a simulated node: the core's round plan, exchange, key repair and responder
//! table (`cairn_core::antientropy`) carried out over the simulated network and disk as
//! `node/src/antientropy.rs` carries them out: rounds every `SIM_AE_INTERVAL`, at most
//! `SIM_AE_SESSIONS_MAX` exchanges at once, each key repair's merge through the node's disk
//! queue.
//!
//! The partition's Merkle tree is the one the node's commits kept (`cairn_core::trees`, built
//! at start and updated from each commit's puts and removes as the engine's writer updates the
//! node's); each turn also builds it afresh from the store, and a difference is a violation
//! ("Merkle tree out of date"). Requests are checked as the node checks them
//! (`check_peer_request`, `keys_asked`). What differs from the node: repairs are not paced (the
//! node's token bucket is the core's, tested there).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cairn_antientropy::{KeyHash, MerkleTree};
use cairn_core::antientropy::{
    keys_asked, refusal, round_jobs, Action, Exchange, KeyRepair, RepairStep, Responders,
};
use cairn_core::limits::{AE_REQUEST_TIMEOUT, AE_RESPONDER_SESSIONS_MAX, AE_SESSION_IDLE_MAX};
use cairn_core::store::Store;
use cairn_core::version::Object;
use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse};
use cairn_ring::PartitionId;

use super::{Ctx, DiskJob, MergeDone, Outgoing, SimNode};
use crate::fmt::node;
use crate::history::Violation;
use crate::msg::key_str;
use crate::world::Event;

/// Pause between a node's anti-entropy rounds (the node's default is a minute; short here so
/// exchanges meet the faults and the final repair converges quickly).
pub const SIM_AE_INTERVAL: Duration = Duration::from_secs(2);
/// Exchanges a simulated node runs at once as initiator.
pub const SIM_AE_SESSIONS_MAX: usize = 2;
/// Keys repaired at a time in one exchange (small, so exchanges cross batches).
pub const SIM_AE_BATCH_KEYS: usize = 3;

/// A node's anti-entropy state (lost on a crash).
#[derive(Debug)]
pub struct AntiEntropy {
    round: u64,
    /// This round's exchanges not yet started.
    queue: VecDeque<(PartitionId, NodeId)>,
    exchanges: BTreeMap<u64, Running>,
    next_session: u64,
    responders: Responders,
}

impl AntiEntropy {
    /// A fresh state; the first round starts one interval after the node.
    pub fn new() -> AntiEntropy {
        AntiEntropy {
            round: 0,
            queue: VecDeque::new(),
            exchanges: BTreeMap::new(),
            next_session: 0,
            responders: Responders::new(AE_RESPONDER_SESSIONS_MAX, AE_SESSION_IDLE_MAX),
        }
    }
}

/// One exchange this node started (its session id is its key in `exchanges`).
#[derive(Debug)]
struct Running {
    partition: PartitionId,
    peer: NodeId,
    exchange: Exchange,
    /// Key repairs of the current batch not yet over.
    outstanding: usize,
    /// Keys of the current batch repaired.
    repaired: u64,
    /// Why the exchange cannot go on (the peer is gone), once its batch is over.
    broken: Option<String>,
}

/// What an anti-entropy request waits for.
#[derive(Debug)]
pub enum Wait {
    /// The answer to a session message.
    Answer,
    /// The keys behind hashes.
    Keys,
    /// A key repair's read of the peer's copy.
    PeerCopy {
        /// The key.
        key: Vec<u8>,
        /// Its repair.
        repair: KeyRepair,
    },
    /// A key repair's replicate.
    Replicated,
}

impl SimNode {
    /// Schedules the next round.
    pub(super) fn arm_anti_entropy(&mut self, cx: &mut Ctx) {
        let gen = self.gen;
        cx.w.after(
            SIM_AE_INTERVAL,
            Event::AntiEntropyTick { node: self.ix, gen },
        );
    }

    fn ae(&mut self) -> &mut AntiEntropy {
        self.run().ae.as_mut().expect("anti-entropy runs here")
    }

    /// A round: one exchange per partition this node is a primary of in its routing ring, with
    /// the core's choice of partner.
    pub fn on_anti_entropy_tick(&mut self, cx: &mut Ctx) {
        let me = self.id;
        let Some(layout) = &self.layout else {
            self.arm_anti_entropy(cx);
            return;
        };
        let run = self.run.as_mut().expect("running");
        let liveness = &run.liveness;
        let ae = run.ae.as_mut().expect("anti-entropy runs here");
        let jobs = round_jobs(layout.routing_ring(), me, |id| liveness.is_up(id), ae.round);
        ae.round += 1;
        ae.queue.extend(jobs);
        if !self.ae_start_more(cx) {
            self.arm_anti_entropy(cx);
        }
    }

    /// Starts queued exchanges up to `SIM_AE_SESSIONS_MAX`; whether any runs.
    fn ae_start_more(&mut self, cx: &mut Ctx) -> bool {
        let gen = self.gen;
        loop {
            let ae = self.ae();
            if ae.exchanges.len() >= SIM_AE_SESSIONS_MAX {
                return true;
            }
            let Some((partition, peer)) = ae.queue.pop_front() else {
                return !ae.exchanges.is_empty();
            };
            ae.next_session += 1;
            let session = (gen << 32) | ae.next_session;
            let mut exchange = Exchange::new(SIM_AE_BATCH_KEYS);
            exchange.set_sabotage(cx.exchange_sabotage);
            ae.exchanges.insert(
                session,
                Running {
                    partition,
                    peer,
                    exchange,
                    outstanding: 0,
                    repaired: 0,
                    broken: None,
                },
            );
            self.ae_pump(cx, session);
        }
    }

    /// The partition's tree over what the store holds now.
    fn ae_tree(&self, cx: &mut Ctx, partition: PartitionId) -> MerkleTree {
        let kept = self
            .run
            .as_ref()
            .and_then(|r| r.trees.as_ref())
            .expect("trees are kept with anti-entropy")[partition as usize]
            .tree()
            .clone();
        // The checker of the trees' upkeep: the tree the commits kept must be the one the store
        // builds.
        let built = cairn_core::trees::build(&self.store, cx.config, &|| true)
            .expect("the simulated store scans");
        let fresh = built.trees[partition as usize].tree();
        if fresh.root() != kept.root() {
            cx.history.online.push(Violation {
                rule: "Merkle tree out of date",
                key: Vec::new(),
                detail: format!(
                    "n{} partition {partition}: the tree its commits kept ({} keys) differs from \
                     the one its store builds ({} keys)",
                    self.ix + 1,
                    kept.len(),
                    fresh.len()
                ),
            });
        }
        kept
    }

    /// Carries out exchange `id`'s actions until it waits for an answer or ends.
    fn ae_pump(&mut self, cx: &mut Ctx, id: u64) {
        loop {
            let Some(x) = self.ae().exchanges.get_mut(&id) else {
                return;
            };
            let Some(action) = x.exchange.poll() else {
                return;
            };
            let (partition, peer) = (x.partition, x.peer);
            match action {
                Action::Turn => {
                    let tree = self.ae_tree(cx, partition);
                    let x = self.ae().exchanges.get_mut(&id).expect("exchange");
                    if let Err(e) = x.exchange.turn(&tree) {
                        return self.ae_end(cx, id, Err(e.to_string()));
                    }
                }
                Action::LocalKeys(hashes) => {
                    let keys = self.ae_keys_for(&hashes);
                    let x = self.ae().exchanges.get_mut(&id).expect("exchange");
                    if let Err(e) = x.exchange.handle_local_keys(keys) {
                        return self.ae_end(cx, id, Err(e.to_string()));
                    }
                }
                Action::PeerKeys(hashes) => {
                    let req = PeerRequest::Keys {
                        partition,
                        key_hashes: hashes.iter().map(|h| h.0).collect(),
                    };
                    return self.ae_request(cx, id, peer, req, Wait::Keys);
                }
                Action::Repair(batch) => {
                    let x = self.ae().exchanges.get_mut(&id).expect("exchange");
                    x.outstanding = batch.len();
                    x.repaired = 0;
                    for (key, direction) in batch {
                        let (repair, step) = KeyRepair::start(direction);
                        self.ae_key_step(cx, id, key, repair, step);
                    }
                    return;
                }
                Action::Send(message) => {
                    let req = PeerRequest::AntiEntropy {
                        from: self.id,
                        partition,
                        session: id,
                        message,
                    };
                    return self.ae_request(cx, id, peer, req, Wait::Answer);
                }
                Action::Done { repaired } => return self.ae_end(cx, id, Ok(repaired)),
            }
        }
    }

    fn ae_request(&mut self, cx: &mut Ctx, id: u64, peer: NodeId, req: PeerRequest, wait: Wait) {
        let to = cx.ix(peer);
        let out = Outgoing::AntiEntropy { exchange: id, wait };
        self.request(cx, to, req, out, AE_REQUEST_TIMEOUT);
    }

    /// Carries out one key repair's steps until it waits or is over.
    fn ae_key_step(
        &mut self,
        cx: &mut Ctx,
        id: u64,
        key: Vec<u8>,
        mut repair: KeyRepair,
        mut step: RepairStep,
    ) {
        let Some(peer) = self.ae().exchanges.get(&id).map(|x| x.peer) else {
            return;
        };
        loop {
            step = match step {
                RepairStep::ReadLocal => repair.handle_local(self.object(&key)),
                RepairStep::ReadPeer => {
                    let req = PeerRequest::Read { key: key.clone() };
                    return self.ae_request(cx, id, peer, req, Wait::PeerCopy { key, repair });
                }
                RepairStep::Merge(theirs) => {
                    let done = MergeDone::AntiEntropy {
                        exchange: id,
                        repair,
                    };
                    let job = DiskJob::Merge {
                        key,
                        object: theirs,
                        hint_for: None,
                        done,
                    };
                    return self.queue_disk(cx, job);
                }
                RepairStep::Replicate(object) => {
                    cx.w.logf(self.me(), || {
                        format!("anti-entropy: {} to {}", key_str(&key), node(peer))
                    });
                    let req = PeerRequest::Replicate {
                        key,
                        object: object.encode(),
                        hint_for: None,
                    };
                    return self.ae_request(cx, id, peer, req, Wait::Replicated);
                }
                RepairStep::Done => return self.ae_key_done(cx, id, true, None),
            };
        }
    }

    /// The merge of a key repair is on disk (or failed).
    pub(super) fn ae_merged(
        &mut self,
        cx: &mut Ctx,
        id: u64,
        key: Vec<u8>,
        mut repair: KeyRepair,
        merged: Result<Object, ErrorReply>,
    ) {
        match merged {
            Ok(merged) => {
                let step = repair.handle_merged(merged);
                self.ae_key_step(cx, id, key, repair, step);
            }
            // One key that cannot be repaired does not stop the others.
            Err(_) => self.ae_key_done(cx, id, false, None),
        }
    }

    /// One key of the batch is over; `broken` says the peer is gone.
    fn ae_key_done(&mut self, cx: &mut Ctx, id: u64, ok: bool, broken: Option<String>) {
        let Some(x) = self.ae().exchanges.get_mut(&id) else {
            return;
        };
        x.outstanding = x.outstanding.saturating_sub(1);
        x.repaired += u64::from(ok);
        if broken.is_some() {
            x.broken = broken;
        }
        if x.outstanding > 0 {
            return;
        }
        if let Some(reason) = x.broken.take() {
            return self.ae_end(cx, id, Err(reason));
        }
        let repaired = x.repaired;
        x.exchange.handle_repaired(repaired);
        self.ae_pump(cx, id);
    }

    /// The answer to one of exchange `id`'s requests (`Err`: refused, or the transport gave
    /// up, with `gone` when the peer is unreachable).
    pub(super) fn ae_answer(
        &mut self,
        cx: &mut Ctx,
        id: u64,
        wait: Wait,
        answer: Result<PeerResponse, (String, bool)>,
    ) {
        if !self.ae().exchanges.contains_key(&id) {
            return;
        }
        match (wait, answer) {
            (Wait::Answer, Ok(PeerResponse::AntiEntropy { message })) => {
                let x = self.ae().exchanges.get_mut(&id).expect("exchange");
                match x.exchange.handle_answer(message) {
                    Ok(()) => self.ae_pump(cx, id),
                    Err(e) => self.ae_end(cx, id, Err(e.to_string())),
                }
            }
            (Wait::Keys, Ok(PeerResponse::Keys(keys))) => {
                let x = self.ae().exchanges.get_mut(&id).expect("exchange");
                match x.exchange.handle_peer_keys(keys) {
                    Ok(_) => self.ae_pump(cx, id),
                    Err(e) => self.ae_end(cx, id, Err(e.to_string())),
                }
            }
            (Wait::PeerCopy { key, mut repair }, Ok(PeerResponse::Object(theirs))) => {
                match Object::decode_copy(&theirs) {
                    Ok(theirs) => {
                        let step = repair.handle_peer_copy(theirs);
                        self.ae_key_step(cx, id, key, repair, step);
                    }
                    // As the node: one key that cannot be repaired does not stop the others.
                    Err(_) => self.ae_key_done(cx, id, false, None),
                }
            }
            (Wait::Replicated, Ok(PeerResponse::Ack)) => self.ae_key_done(cx, id, true, None),
            (Wait::PeerCopy { .. } | Wait::Replicated, Err((reason, gone))) => {
                self.ae_key_done(cx, id, false, gone.then_some(reason))
            }
            (_, Err((reason, _))) => self.ae_end(cx, id, Err(reason)),
            (_, Ok(other)) => self.ae_end(cx, id, Err(format!("unexpected answer {other:?}"))),
        }
    }

    fn ae_end(&mut self, cx: &mut Ctx, id: u64, outcome: Result<u64, String>) {
        let Some(x) = self.ae().exchanges.remove(&id) else {
            return;
        };
        cx.w.logf(self.me(), || match &outcome {
            Ok(n) => format!(
                "anti-entropy p{} with {}: done, {n} keys repaired",
                x.partition,
                node(x.peer)
            ),
            Err(e) => format!(
                "anti-entropy p{} with {} s{:x}: failed: {e}",
                x.partition,
                node(x.peer),
                id
            ),
        });
        if !self.ae_start_more(cx) {
            self.arm_anti_entropy(cx);
        }
    }

    /// Why this node refuses exchange requests about `partition` now, if it does.
    fn ae_refusal(&self, cx: &Ctx, partition: PartitionId) -> Result<(), ErrorReply> {
        let primary = || {
            self.layout.as_ref().is_some_and(|l| {
                l.routing_ring()
                    .preference_list(partition)
                    .primaries
                    .contains(&self.id)
            })
        };
        refusal(true, partition, cx.config.partitions, primary, true)
    }

    /// Answers `PeerRequest::AntiEntropy` as `AntiEntropy::respond` does.
    pub(super) fn ae_respond(
        &mut self,
        cx: &mut Ctx,
        from: NodeId,
        partition: PartitionId,
        session: u64,
        message: Option<Vec<u8>>,
    ) -> Result<PeerResponse, ErrorReply> {
        self.ae_refusal(cx, partition)?;
        let tree = self.ae_tree(cx, partition);
        let now = cx.w.instant();
        let answer = self.ae().responders.respond(
            from,
            partition,
            session,
            message.as_deref(),
            &tree,
            now,
        )?;
        Ok(PeerResponse::AntiEntropy { message: answer })
    }

    /// Answers `PeerRequest::Keys` as `AntiEntropy::keys` does.
    pub(super) fn ae_keys(
        &self,
        cx: &Ctx,
        partition: PartitionId,
        key_hashes: Vec<[u8; 32]>,
    ) -> Result<PeerResponse, ErrorReply> {
        self.ae_refusal(cx, partition)?;
        let hashes = keys_asked(partition, key_hashes, |h| cx.config.partition_of_hash(&h.0))?;
        Ok(PeerResponse::Keys(self.ae_keys_for(&hashes)))
    }

    /// The stored keys behind `hashes` (the store's key-hash index).
    fn ae_keys_for(&self, hashes: &[KeyHash]) -> Vec<Option<Vec<u8>>> {
        hashes
            .iter()
            .map(|h| {
                self.store
                    .key_for_hash(h)
                    .expect("the simulated store reads")
            })
            .collect()
    }
}
