//! Anti-entropy's decisions as sans-I/O state machines: which exchanges a round runs, one
//! exchange at its initiator (the tree session, then the repair of what it found: which keys to
//! look up, which to ask the peer for, which to repair in which direction), one key's repair,
//! the responder's table of peers' sessions, and the token bucket that paces repairs. The node
//! (`node/src/antientropy.rs`, over its engine, trees and QUIC peers) and the simulator drive
//! the same machines; neither holds these rules.
//!
//! One exchange, at the initiator ([`Exchange`]): a turn of the session over the partition's
//! tree ([`Action::Turn`]) yields differences and the next message; for each batch of
//! differences the initiator looks up its own keys behind the hashes it holds
//! ([`Action::LocalKeys`]), asks the peer for the keys behind the hashes only the peer holds
//! ([`Action::PeerKeys`]), and repairs them in batches ([`Action::Repair`]), each key by a
//! [`KeyRepair`]:
//! - a key only this node holds: read it here, replicate it to the peer;
//! - a key only the peer holds: read the peer's copy and merge it here;
//! - a key both hold differently: read the peer's, merge it here, and send the merge back if it
//!   adds to what the peer has.
//!
//! Then it sends the session's next message ([`Action::Send`]) and takes the answer. The
//! responder only answers: its diffs mirror the initiator's, which repairs both ways. Every
//! merge is `sync`, so concurrent siblings on the two sides both survive.

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::time::{Duration, Instant};

use cairn_antientropy::{
    Action as SessionAction, AntiEntropyError, KeyHash, MerkleTree, Message, Role, Session,
};
use cairn_proto::{ErrorReply, NodeId};
use cairn_ring::{PartitionId, Ring};

use crate::version::Object;

/// The exchanges of round `round`: for each partition `me` is a primary of, one other primary
/// that is up. The partner rotates from round to round, so every two replicas of a partition are
/// paired in turn.
pub fn round_jobs(
    ring: &Ring,
    me: NodeId,
    is_up: impl Fn(NodeId) -> bool,
    round: u64,
) -> Vec<(PartitionId, NodeId)> {
    ring.primary_partitions(me)
        .into_iter()
        .filter_map(|p| {
            let others: Vec<NodeId> = ring
                .preference_list(p)
                .primaries
                .into_iter()
                .filter(|&id| id != me && is_up(id))
                .collect();
            let pick = (round as usize).wrapping_add(p as usize) % others.len().max(1);
            others.get(pick).map(|&peer| (p, peer))
        })
        .collect()
}

/// Why a partition's exchange requests are refused here, if they are: anti-entropy off, a
/// partition that does not exist, one this node is not a primary of (`primary` is asked only
/// of a partition that exists), or trees not yet rebuilt.
pub fn refusal(
    enabled: bool,
    partition: PartitionId,
    partitions: u32,
    primary: impl FnOnce() -> bool,
    trees_ready: bool,
) -> Result<(), ErrorReply> {
    if !enabled {
        return Err(ErrorReply::Refused {
            reason: "anti-entropy is switched off on this node".into(),
        });
    }
    if partition >= partitions {
        return Err(ErrorReply::Malformed {
            reason: format!("partition {partition} does not exist (Q = {partitions})"),
        });
    }
    if !primary() {
        return Err(ErrorReply::Refused {
            reason: format!("not a primary replica of partition {partition}"),
        });
    }
    if !trees_ready {
        return Err(ErrorReply::Refused {
            reason: "Merkle trees are still being rebuilt".into(),
        });
    }
    Ok(())
}

/// The key hashes of a `PeerRequest::Keys` about `partition`, checked: at most
/// `KEY_HASHES_PER_REQUEST_MAX`, and each in that partition (`partition_of`). The node's
/// responder and the simulator's both read the request through it.
pub fn keys_asked(
    partition: PartitionId,
    key_hashes: Vec<[u8; 32]>,
    partition_of: impl Fn(&KeyHash) -> PartitionId,
) -> Result<Vec<KeyHash>, ErrorReply> {
    use cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX;
    if key_hashes.len() > KEY_HASHES_PER_REQUEST_MAX {
        return Err(ErrorReply::Malformed {
            reason: format!(
                "{} key hashes exceed KEY_HASHES_PER_REQUEST_MAX ({KEY_HASHES_PER_REQUEST_MAX})",
                key_hashes.len()
            ),
        });
    }
    let hashes: Vec<KeyHash> = key_hashes.into_iter().map(KeyHash).collect();
    if let Some(stray) = hashes.iter().find(|k| partition_of(k) != partition) {
        return Err(ErrorReply::Malformed {
            reason: format!("key hash {stray:?} is not in partition {partition}"),
        });
    }
    Ok(hashes)
}

/// A deliberate bug in the exchange, compiled only with the `sabotage` feature, so the
/// simulator's checker can be shown to catch an anti-entropy that does not converge.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeSabotage {
    /// None: the exchange behaves as in production.
    #[default]
    None,
    /// Keys both replicas hold differently are never repaired (only missing keys are).
    IgnoreDiffering,
}

/// How one key is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// Only this node has it: send it.
    Push,
    /// Only the peer has it: fetch and merge it here.
    Pull,
    /// Both have it, differently: fetch and merge here, send the merge back.
    Both,
}

/// A peer's answer that breaks the exchange; the next round starts afresh from the roots.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeFault {
    /// A message of the peer broke the protocol (or ours did not encode).
    #[error("protocol: {0}")]
    Protocol(#[from] AntiEntropyError),
    /// The peer answered with something that is not an answer to the request.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// What the driver of an [`Exchange`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run [`Exchange::turn`] over the partition's tree (off the async workers in the node: a
    /// turn below the stored levels sums entries).
    Turn,
    /// Look up the stored keys behind these hashes; answer [`Exchange::handle_local_keys`].
    LocalKeys(Vec<KeyHash>),
    /// Ask the peer for the keys behind these hashes (`PeerRequest::Keys`); answer
    /// [`Exchange::handle_peer_keys`].
    PeerKeys(Vec<KeyHash>),
    /// Repair these keys, each with a [`KeyRepair`] (the node runs them at once, after the token
    /// bucket allows as many); answer [`Exchange::handle_repaired`].
    Repair(Vec<(Vec<u8>, Direction)>),
    /// Send the session's message (`None`: ask for the peer's next one) as
    /// `PeerRequest::AntiEntropy`; answer [`Exchange::handle_answer`].
    Send(Option<Vec<u8>>),
    /// The exchange is over; `repaired` keys were repaired.
    Done {
        /// Keys repaired.
        repaired: u64,
    },
}

/// What the session said after its differences.
#[derive(Debug)]
enum Next {
    Send(Vec<u8>),
    Wait,
    Done,
}

/// One `Action::Diff` of the session.
#[derive(Debug)]
struct Diff {
    missing_here: Vec<KeyHash>,
    missing_there: Vec<KeyHash>,
    differing: Vec<KeyHash>,
}

#[derive(Debug)]
enum State {
    /// The session must take its turn.
    Turn,
    /// Ready to hand out the next action.
    Ready,
    /// Waiting for the local key lookup of these hashes.
    LocalKeys(Vec<(KeyHash, Direction)>),
    /// Waiting for the peer's keys behind these hashes.
    PeerKeys(Vec<KeyHash>),
    /// Waiting for a batch of repairs.
    Repair,
    /// Waiting for the answer to a sent message (`sent`: it carried one).
    Answer {
        sent: bool,
    },
    Done,
}

/// One exchange of a partition with a peer, at the initiator.
#[derive(Debug)]
pub struct Exchange {
    session: Session,
    incoming: Option<Message>,
    state: State,
    diffs: VecDeque<Diff>,
    next: Option<Next>,
    /// Hashes only the peer holds, from the current diff, not yet asked for.
    pull: Vec<KeyHash>,
    /// Keys of the current diff to repair, in order.
    work: VecDeque<(Vec<u8>, Direction)>,
    batch_keys: usize,
    repaired: u64,
    #[cfg(feature = "sabotage")]
    sabotage: ExchangeSabotage,
}

impl Exchange {
    /// A new exchange that repairs at most `batch_keys` keys at a time.
    pub fn new(batch_keys: usize) -> Exchange {
        Exchange {
            session: Session::new(Role::Initiator),
            incoming: None,
            state: State::Turn,
            diffs: VecDeque::new(),
            next: None,
            pull: Vec::new(),
            work: VecDeque::new(),
            batch_keys: batch_keys.max(1),
            repaired: 0,
            #[cfg(feature = "sabotage")]
            sabotage: ExchangeSabotage::None,
        }
    }

    /// Puts `sabotage` into this exchange.
    #[cfg(feature = "sabotage")]
    pub fn set_sabotage(&mut self, sabotage: ExchangeSabotage) {
        self.sabotage = sabotage;
    }

    /// Keys repaired so far.
    pub fn repaired(&self) -> u64 {
        self.repaired
    }

    /// The next action, or `None` while an answer is awaited.
    pub fn poll(&mut self) -> Option<Action> {
        loop {
            match &self.state {
                State::Turn => return Some(Action::Turn),
                State::Done => {
                    return Some(Action::Done {
                        repaired: self.repaired,
                    })
                }
                State::Ready => {}
                _ => return None,
            }
            if !self.pull.is_empty() {
                let hashes = mem::take(&mut self.pull);
                self.state = State::PeerKeys(hashes.clone());
                return Some(Action::PeerKeys(hashes));
            }
            if !self.work.is_empty() {
                let n = self.batch_keys.min(self.work.len());
                let batch: Vec<_> = self.work.drain(..n).collect();
                self.state = State::Repair;
                return Some(Action::Repair(batch));
            }
            if let Some(mut diff) = self.diffs.pop_front() {
                #[cfg(feature = "sabotage")]
                if self.sabotage == ExchangeSabotage::IgnoreDiffering {
                    diff.differing.clear();
                }
                self.pull = mem::take(&mut diff.missing_here);
                let ours: Vec<(KeyHash, Direction)> = diff
                    .missing_there
                    .into_iter()
                    .map(|k| (k, Direction::Push))
                    .chain(diff.differing.into_iter().map(|k| (k, Direction::Both)))
                    .collect();
                if !ours.is_empty() {
                    let hashes = ours.iter().map(|(k, _)| *k).collect();
                    self.state = State::LocalKeys(ours);
                    return Some(Action::LocalKeys(hashes));
                }
                continue;
            }
            return Some(match self.next.take() {
                Some(Next::Send(bytes)) => {
                    self.state = State::Answer { sent: true };
                    Action::Send(Some(bytes))
                }
                Some(Next::Wait) => {
                    self.state = State::Answer { sent: false };
                    Action::Send(None)
                }
                Some(Next::Done) | None => {
                    self.state = State::Done;
                    Action::Done {
                        repaired: self.repaired,
                    }
                }
            });
        }
    }

    /// The session's turn over `tree`: takes the peer's last message (if any), collects the
    /// differences it reports and what it says next.
    pub fn turn(&mut self, tree: &MerkleTree) -> Result<(), ExchangeFault> {
        if !matches!(self.state, State::Turn) {
            return Ok(());
        }
        let (diffs, next) = session_turn(&mut self.session, tree, self.incoming.take())?;
        self.diffs.extend(diffs);
        self.next = Some(next);
        self.state = State::Ready;
        Ok(())
    }

    /// The keys stored here behind the hashes of [`Action::LocalKeys`], in order (`None` where
    /// none is stored). Returns the hashes with no key: the tree and the key index are written
    /// from the same commits, so a miss means the store lost a row; nothing is sent for it.
    pub fn handle_local_keys(
        &mut self,
        keys: Vec<Option<Vec<u8>>>,
    ) -> Result<Vec<KeyHash>, ExchangeFault> {
        let State::LocalKeys(asked) = mem::replace(&mut self.state, State::Ready) else {
            return Err(ExchangeFault::Unexpected(
                "no local key lookup was asked".into(),
            ));
        };
        if keys.len() != asked.len() {
            return Err(ExchangeFault::Unexpected(format!(
                "{} local keys for {} hashes",
                keys.len(),
                asked.len()
            )));
        }
        let mut lost = Vec::new();
        for ((hash, direction), key) in asked.into_iter().zip(keys) {
            match key {
                Some(key) => self.work.push_back((key, direction)),
                None => lost.push(hash),
            }
        }
        Ok(lost)
    }

    /// The peer's answer to [`Action::PeerKeys`], checked: one entry per hash, each key hashing
    /// to what was asked. A `None` is a key the peer dropped since its tree listed it (it
    /// replicates it in no live layout version any more): nothing to fetch. Returns how many.
    pub fn handle_peer_keys(&mut self, keys: Vec<Option<Vec<u8>>>) -> Result<usize, ExchangeFault> {
        let State::PeerKeys(asked) = mem::replace(&mut self.state, State::Ready) else {
            return Err(ExchangeFault::Unexpected("no peer keys were asked".into()));
        };
        if keys.len() != asked.len() {
            return Err(ExchangeFault::Unexpected(format!(
                "{} keys for {} hashes",
                keys.len(),
                asked.len()
            )));
        }
        let mut absent = 0;
        for (hash, key) in asked.iter().zip(keys) {
            match key {
                Some(key) if KeyHash::of_key(&key) == *hash => {
                    self.work.push_back((key, Direction::Pull))
                }
                Some(_) => {
                    return Err(ExchangeFault::Unexpected(format!(
                        "the key sent for {hash:?} has another hash"
                    )))
                }
                None => absent += 1,
            }
        }
        Ok(absent)
    }

    /// A batch of [`Action::Repair`] is over: `repaired` of its keys were repaired (one that
    /// failed for itself, a limit its merge would exceed say, does not stop the others).
    pub fn handle_repaired(&mut self, repaired: u64) {
        if matches!(self.state, State::Repair) {
            self.repaired += repaired;
            self.state = State::Ready;
        }
    }

    /// The peer's answer to [`Action::Send`]: its next message, if it sent one.
    pub fn handle_answer(&mut self, message: Option<Vec<u8>>) -> Result<(), ExchangeFault> {
        let State::Answer { sent } = self.state else {
            return Err(ExchangeFault::Unexpected("no message was sent".into()));
        };
        match message {
            Some(bytes) => self.incoming = Some(Message::decode(&bytes)?),
            None if sent => {}
            // Every message was delivered and handled before its answer, so both sides
            // waiting means one of them broke the protocol.
            None => {
                return Err(ExchangeFault::Unexpected(
                    "the peer waits for a message while this side waits for one".into(),
                ))
            }
        }
        self.state = State::Turn;
        Ok(())
    }
}

/// Hands `incoming` (if any) to the session, then polls it until it has a message to send,
/// waits for the peer, or is done.
fn session_turn(
    session: &mut Session,
    tree: &MerkleTree,
    incoming: Option<Message>,
) -> Result<(Vec<Diff>, Next), AntiEntropyError> {
    if let Some(message) = incoming {
        session.handle_message(tree, message)?;
    }
    let mut diffs = Vec::new();
    loop {
        let next = match session.poll_action(tree) {
            None => Next::Wait,
            Some(SessionAction::Send(message)) => Next::Send(message.encode()?),
            Some(SessionAction::Done) => Next::Done,
            Some(SessionAction::Diff {
                keys_missing_here,
                keys_missing_there,
                keys_differing,
            }) => {
                diffs.push(Diff {
                    missing_here: keys_missing_here,
                    missing_there: keys_missing_there,
                    differing: keys_differing,
                });
                continue;
            }
        };
        return Ok((diffs, next));
    }
}

/// One step of a key's repair, for its driver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum RepairStep {
    /// Read this node's copy; answer [`KeyRepair::handle_local`].
    ReadLocal,
    /// Read the peer's copy (`PeerRequest::Read`); answer [`KeyRepair::handle_peer_copy`].
    ReadPeer,
    /// Merge the peer's copy here (`Write::Merge`, no hint); answer [`KeyRepair::handle_merged`].
    Merge(Object),
    /// Send this object to the peer (`PeerRequest::Replicate`, no hint); then the key is done.
    Replicate(Object),
    /// Nothing more to do for the key.
    Done,
}

/// One key's repair with the peer.
#[derive(Debug)]
pub struct KeyRepair {
    direction: Direction,
    /// The peer's copy, once read (to tell whether the merge adds to it).
    theirs: Option<Object>,
}

impl KeyRepair {
    /// The repair of a key in `direction`, and its first step.
    pub fn start(direction: Direction) -> (KeyRepair, RepairStep) {
        let step = match direction {
            Direction::Push => RepairStep::ReadLocal,
            Direction::Pull | Direction::Both => RepairStep::ReadPeer,
        };
        (
            KeyRepair {
                direction,
                theirs: None,
            },
            step,
        )
    }

    /// This node's copy: sent unless absent (or, when the peer's copy was empty, the merge
    /// that would have been).
    pub fn handle_local(&mut self, ours: Object) -> RepairStep {
        if ours.is_empty() || self.direction == Direction::Pull {
            RepairStep::Done
        } else {
            RepairStep::Replicate(ours)
        }
    }

    /// The peer's copy: merged here, unless it is absent (then a key both were said to hold
    /// is sent as this node has it).
    pub fn handle_peer_copy(&mut self, theirs: Object) -> RepairStep {
        if theirs.is_empty() {
            return match self.direction {
                Direction::Pull => RepairStep::Done,
                Direction::Push | Direction::Both => RepairStep::ReadLocal,
            };
        }
        self.theirs = Some(theirs.clone());
        RepairStep::Merge(theirs)
    }

    /// The merged object stored here: sent back only if it adds to what the peer has.
    pub fn handle_merged(&mut self, merged: Object) -> RepairStep {
        let same = self.theirs.as_ref() == Some(&merged);
        if self.direction == Direction::Pull || same || merged.is_empty() {
            RepairStep::Done
        } else {
            RepairStep::Replicate(merged)
        }
    }
}

/// One side of a peer's exchange, kept between its requests.
#[derive(Debug)]
struct Responder {
    session: Session,
    partition: PartitionId,
    last_used: Instant,
}

/// The responder's sessions of peers' exchanges, by (initiator, session id): at most `max`,
/// idle ones dropped after `idle_max`. If the initiator spends longer than that repairing
/// between two requests (a very low configured rate), its session is dropped and its exchange
/// fails; the repairs done stay done, and the next round finds only what is left.
#[derive(Debug)]
pub struct Responders {
    table: HashMap<(NodeId, u64), Responder>,
    max: usize,
    idle_max: Duration,
}

impl Responders {
    /// An empty table.
    pub fn new(max: usize, idle_max: Duration) -> Responders {
        Responders {
            table: HashMap::new(),
            max,
            idle_max,
        }
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Answers one request of `from`'s exchange `session` of `partition` at `now`: takes its
    /// message (if any) and returns this side's next message (if any). A new session starts
    /// only with a message. Diffs this side finds mirror the initiator's, which repairs both
    /// ways; they are dropped. A session that fails is dropped: the next exchange starts from
    /// the roots.
    pub fn respond(
        &mut self,
        from: NodeId,
        partition: PartitionId,
        session: u64,
        message: Option<&[u8]>,
        tree: &MerkleTree,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, ErrorReply> {
        let incoming = message.map(Message::decode).transpose().map_err(protocol)?;
        let id = (from, session);
        let mut state = match self.table.remove(&id) {
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
                let idle_max = self.idle_max;
                self.table
                    .retain(|_, r| now.saturating_duration_since(r.last_used) < idle_max);
                if self.table.len() >= self.max {
                    return Err(ErrorReply::Overloaded {
                        reason: format!(
                            "anti-entropy sessions at AE_RESPONDER_SESSIONS_MAX ({})",
                            self.max
                        ),
                    });
                }
                Session::new(Role::Responder)
            }
        };
        let (_, next) = session_turn(&mut state, tree, incoming).map_err(protocol)?;
        if !state.is_done() {
            self.table.insert(
                id,
                Responder {
                    session: state,
                    partition,
                    last_used: now,
                },
            );
        }
        Ok(match next {
            Next::Send(bytes) => Some(bytes),
            Next::Wait | Next::Done => None,
        })
    }
}

fn protocol(e: AntiEntropyError) -> ErrorReply {
    ErrorReply::Malformed {
        reason: format!("anti-entropy: {e}"),
    }
}

#[cfg(test)]
// A test's clock starts at the real now; the core itself only takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use cairn_antientropy::ObjectHash;

    #[test]
    fn a_keys_request_is_refused_over_its_limit_or_with_a_stray_hash() {
        use cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX;
        let partition_of = |k: &KeyHash| u32::from(k.0[0]);
        let asked = keys_asked(7, vec![[7; 32], [7; 32]], partition_of).unwrap();
        assert_eq!(asked, vec![KeyHash([7; 32]); 2]);
        let too_many = vec![[7; 32]; KEY_HASHES_PER_REQUEST_MAX + 1];
        let err = keys_asked(7, too_many, partition_of).unwrap_err();
        assert!(
            matches!(&err, ErrorReply::Malformed { reason } if reason.contains("KEY_HASHES_PER_REQUEST_MAX")),
            "{err:?}"
        );
        let err = keys_asked(7, vec![[7; 32], [8; 32]], partition_of).unwrap_err();
        assert!(
            matches!(&err, ErrorReply::Malformed { reason } if reason.contains("not in partition 7")),
            "{err:?}"
        );
    }

    /// An exchange over trees of thousands of keys (several levels, leaf chunks, a streamed
    /// verdict) driven as the node drives it ends with the responder and repairs exactly the
    /// keys that differ, each in its direction.
    #[test]
    fn an_exchange_of_large_trees_repairs_exactly_the_differences() {
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
        let key_of = |h: &KeyHash| {
            (0..6000u32)
                .find(|i| KeyHash::of_key(&i.to_le_bytes()) == *h)
                .map(|i| i.to_le_bytes().to_vec())
        };
        let mut ex = Exchange::new(16);
        let mut responders = Responders::new(4, Duration::from_secs(60));
        let now = Instant::now();
        let mut counts = [0usize; 3];
        for _ in 0..1000 {
            match ex.poll().expect("the driver answers every action") {
                Action::Turn => ex.turn(&a).unwrap(),
                Action::LocalKeys(h) => {
                    let keys = h.iter().map(key_of).collect();
                    assert!(ex.handle_local_keys(keys).unwrap().is_empty());
                }
                Action::PeerKeys(h) => {
                    let keys = h.iter().map(key_of).collect();
                    assert_eq!(ex.handle_peer_keys(keys).unwrap(), 0);
                }
                Action::Repair(batch) => {
                    assert!(batch.len() <= 16);
                    for (_, d) in &batch {
                        counts[*d as usize] += 1;
                    }
                    ex.handle_repaired(batch.len() as u64);
                }
                Action::Send(m) => {
                    let answer = responders
                        .respond(NodeId(1), 0, 1, m.as_deref(), &b, now)
                        .unwrap();
                    ex.handle_answer(answer).unwrap();
                }
                Action::Done { repaired } => {
                    assert!(
                        responders.is_empty(),
                        "the responder ends with the initiator"
                    );
                    assert_eq!(counts, [30, 10, 30], "push, pull, both");
                    assert_eq!(repaired, 70);
                    return;
                }
            }
        }
        panic!("the exchange did not end within 1000 actions");
    }

    fn tree(entries: &[(u8, u8)]) -> MerkleTree {
        MerkleTree::from_entries(
            entries
                .iter()
                .map(|&(k, v)| (KeyHash::of_key(&[k]), ObjectHash::of_encoded(&[v]))),
        )
    }

    /// The one-byte keys behind `hashes`.
    fn one_byte_keys(hashes: &[KeyHash]) -> Vec<Option<Vec<u8>>> {
        hashes
            .iter()
            .map(|h| {
                (0..=255u8)
                    .find(|&k| KeyHash::of_key(&[k]) == *h)
                    .map(|k| vec![k])
            })
            .collect()
    }

    /// Runs an exchange between `ours` and `theirs` to the end; every key repair is answered
    /// with an empty object (nothing stored), so only the actions are checked.
    fn run(ours: &MerkleTree, theirs: &MerkleTree) -> Vec<Action> {
        let mut ex = Exchange::new(2);
        let mut responders = Responders::new(4, Duration::from_secs(60));
        let now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..100 {
            let action = ex.poll().expect("the driver answers every action");
            seen.push(action.clone());
            match action {
                Action::Turn => ex.turn(ours).unwrap(),
                Action::LocalKeys(hashes) => {
                    let keys = one_byte_keys(&hashes);
                    assert!(ex.handle_local_keys(keys).unwrap().is_empty());
                }
                Action::PeerKeys(hashes) => {
                    let keys = one_byte_keys(&hashes);
                    assert_eq!(ex.handle_peer_keys(keys).unwrap(), 0);
                }
                Action::Repair(batch) => {
                    assert!(batch.len() <= 2);
                    ex.handle_repaired(batch.len() as u64);
                }
                Action::Send(message) => {
                    let answer = responders
                        .respond(NodeId(1), 0, 7, message.as_deref(), theirs, now)
                        .unwrap();
                    ex.handle_answer(answer).unwrap();
                }
                Action::Done { .. } => return seen,
            }
        }
        panic!("the exchange did not end: {seen:?}");
    }

    #[test]
    fn equal_trees_end_after_one_round_trip() {
        let t = tree(&[(1, 1), (2, 2)]);
        let seen = run(&t, &t);
        assert!(
            seen.iter().all(|a| !matches!(a, Action::Repair(_))),
            "{seen:?}"
        );
        assert_eq!(seen.last(), Some(&Action::Done { repaired: 0 }));
    }

    #[test]
    fn every_difference_is_repaired_in_its_direction() {
        let ours = tree(&[(1, 1), (2, 2), (3, 3), (5, 5)]);
        let theirs = tree(&[(1, 1), (2, 9), (4, 4), (5, 6), (6, 6)]);
        let seen = run(&ours, &theirs);
        let mut repaired: Vec<(Vec<u8>, Direction)> = seen
            .iter()
            .filter_map(|a| match a {
                Action::Repair(batch) => Some(batch.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        repaired.sort();
        assert_eq!(
            repaired,
            vec![
                (vec![2], Direction::Both),
                (vec![3], Direction::Push),
                (vec![4], Direction::Pull),
                (vec![5], Direction::Both),
                (vec![6], Direction::Pull),
            ]
        );
        assert_eq!(seen.last(), Some(&Action::Done { repaired: 5 }));
    }

    #[test]
    fn a_peer_key_with_another_hash_fails_the_exchange() {
        let ours = tree(&[]);
        let theirs = tree(&[(4, 4)]);
        let mut ex = Exchange::new(8);
        let mut responders = Responders::new(4, Duration::from_secs(60));
        let now = Instant::now();
        loop {
            match ex.poll().unwrap() {
                Action::Turn => ex.turn(&ours).unwrap(),
                Action::Send(m) => {
                    let answer = responders
                        .respond(NodeId(1), 0, 1, m.as_deref(), &theirs, now)
                        .unwrap();
                    ex.handle_answer(answer).unwrap();
                }
                Action::PeerKeys(hashes) => {
                    assert_eq!(hashes.len(), 1);
                    let err = ex.handle_peer_keys(vec![Some(vec![5])]).unwrap_err();
                    assert!(err.to_string().contains("another hash"), "{err}");
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn both_sides_waiting_is_a_protocol_fault() {
        let mut ex = Exchange::new(8);
        ex.turn(&tree(&[(1, 1)])).unwrap();
        assert!(matches!(ex.poll(), Some(Action::Send(Some(_)))));
        ex.handle_answer(None).unwrap();
        ex.turn(&tree(&[(1, 1)])).unwrap();
        // The session waits for the peer's answer to its root; asking and getting nothing again
        // is the peer breaking the protocol.
        assert_eq!(ex.poll(), Some(Action::Send(None)));
        assert!(ex.handle_answer(None).is_err());
    }

    #[test]
    fn the_responder_table_is_bounded_and_forgets_idle_sessions() {
        let t = tree(&[(1, 1)]);
        let t0 = Instant::now();
        let mut responders = Responders::new(1, Duration::from_secs(10));
        let mut ex = Exchange::new(8);
        ex.turn(&tree(&[(2, 2)])).unwrap();
        let Some(Action::Send(Some(root))) = ex.poll() else {
            panic!("a root first")
        };
        responders
            .respond(NodeId(1), 0, 1, Some(&root), &t, t0)
            .unwrap();
        assert_eq!(responders.len(), 1);
        let full = responders
            .respond(NodeId(2), 0, 1, Some(&root), &t, t0)
            .unwrap_err();
        assert!(matches!(full, ErrorReply::Overloaded { .. }), "{full:?}");
        // Idle past the limit, the first is dropped for a new one.
        let later = t0 + Duration::from_secs(11);
        responders
            .respond(NodeId(2), 0, 1, Some(&root), &t, later)
            .unwrap();
        let gone = responders
            .respond(NodeId(1), 0, 1, None, &t, later)
            .unwrap_err();
        assert!(gone.to_string().contains("expired"), "{gone}");
    }

    #[test]
    fn a_partition_out_of_range_is_refused_before_its_primaries_are_asked() {
        let asked = || -> bool { panic!("the ring was asked about a partition beyond Q") };
        let err = refusal(true, 64, 64, asked, true).unwrap_err();
        assert!(matches!(err, ErrorReply::Malformed { .. }), "{err:?}");
        let err = refusal(true, 3, 64, || false, true).unwrap_err();
        assert!(err.to_string().contains("not a primary"), "{err}");
        let err = refusal(true, 3, 64, || true, false).unwrap_err();
        assert!(err.to_string().contains("rebuilt"), "{err}");
        assert!(refusal(false, 3, 64, || true, true).is_err());
        assert!(refusal(true, 3, 64, || true, true).is_ok());
    }

    #[test]
    fn a_key_repair_sends_back_only_what_adds_to_the_peer() {
        use crate::version::{Payload, VClock};
        use cairn_proto::ActorId;
        let value = |node: u64, v: &[u8]| {
            let actor = ActorId {
                node: NodeId(node),
                epoch: 1,
            };
            Object::new()
                .update_next(&VClock::new(), actor, Payload::Value(v.to_vec()))
                .unwrap()
        };
        let a = value(1, b"a");
        let (mut r, step) = KeyRepair::start(Direction::Both);
        assert_eq!(step, RepairStep::ReadPeer);
        assert_eq!(r.handle_peer_copy(a.clone()), RepairStep::Merge(a.clone()));
        assert_eq!(r.handle_merged(a.clone()), RepairStep::Done);

        let (mut r, _) = KeyRepair::start(Direction::Pull);
        assert_eq!(r.handle_peer_copy(a.clone()), RepairStep::Merge(a.clone()));
        let b = value(2, b"b");
        assert_eq!(r.handle_merged(b), RepairStep::Done);

        let (mut r, step) = KeyRepair::start(Direction::Push);
        assert_eq!(step, RepairStep::ReadLocal);
        assert_eq!(r.handle_local(a.clone()), RepairStep::Replicate(a.clone()));

        let (mut r, _) = KeyRepair::start(Direction::Both);
        assert_eq!(r.handle_peer_copy(Object::default()), RepairStep::ReadLocal);
        assert_eq!(r.handle_local(a.clone()), RepairStep::Replicate(a));
    }
}
