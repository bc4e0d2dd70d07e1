//! Hinted handoff's policy as a sans-I/O state machine: which target gets its hints next, which
//! hint to send, and what each answer means. The node's handoff loop (and the simulator) read
//! the hints, send them, delete the delivered ones and tell the machine how it went; time is
//! passed in.
//!
//! One target is handed hints one at a time, in the store's key order, a batch per round. A
//! hint the target *refuses* (its answer says this object cannot be stored, e.g. a merge beyond
//! the sibling limit) is set aside for `HANDOFF_REFUSED_RETRY` and the next hint is sent: one
//! poison hint never blocks the others. A *failure* (unreachable, overloaded, shutting down, a
//! storage error) ends the target's round: the rest would most likely fail the same way.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, NodeId};

use crate::limits::{HANDOFF_BATCH_MAX, HANDOFF_REFUSED_MAX, HANDOFF_REFUSED_RETRY};

/// How often hints are retried when no peer came up in between.
pub const HANDOFF_INTERVAL: Duration = Duration::from_secs(1);
/// How long one handed-off key may take to be acknowledged.
pub const HANDOFF_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored hint: `key` must reach the target; `seq` is the hint's renewal, so deleting it
/// after delivery can leave a hint renewed meanwhile alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintRef {
    /// The key.
    pub key: Vec<u8>,
    /// The renewal the delivery starts from.
    pub seq: u64,
}

/// How a target answered one handed-off hint.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It stored the object durably.
    Acked,
    /// It cannot store this object (the answer names why); other hints may still go.
    Refused(String),
    /// The exchange failed, or the target cannot store anything now; the round ends.
    Failed(String),
}

impl Answer {
    /// What an error reply to a handed-off object means for the others.
    pub fn from_error(e: &ErrorReply) -> Answer {
        match e {
            ErrorReply::Unreachable { .. }
            | ErrorReply::Overloaded { .. }
            | ErrorReply::ShuttingDown
            | ErrorReply::Storage { .. }
            | ErrorReply::UnsupportedVersion { .. }
            | ErrorReply::Forbidden { .. }
            | ErrorReply::NoRing { .. } => Answer::Failed(e.to_string()),
            // About this object: its size, its context, its encoding.
            _ => Answer::Refused(e.to_string()),
        }
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read up to `limit` hints for `target` from the store, then call `handle_hints` (or
    /// `handle_read_failed`).
    ReadHints {
        /// The node the hints are for.
        target: NodeId,
        /// How many to read.
        limit: usize,
    },
    /// Send the current object of `hint.key` to `target`, then call `handle_answer`.
    Send {
        /// The node.
        target: NodeId,
        /// The hint.
        hint: HintRef,
    },
    /// `target` acknowledged `hint`: delete it unless it was renewed since (`seq`).
    Delete {
        /// The node.
        target: NodeId,
        /// The hint.
        hint: HintRef,
    },
    /// A round for `target` ended; for the log.
    RoundDone {
        /// The node.
        target: NodeId,
        /// Hints it acknowledged this round.
        delivered: usize,
        /// Hints it refused this round.
        refused: usize,
        /// Why the round ended early, if it did.
        failure: Option<String>,
    },
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Reading,
    Sending {
        queue: VecDeque<HintRef>,
        current: HintRef,
    },
}

#[derive(Debug, Default)]
struct Target {
    phase: Phase,
    /// Refused hints: key → (the refused renewal, when to try it again).
    refused: BTreeMap<Vec<u8>, (u64, Instant)>,
    delivered: usize,
    refused_now: usize,
}

/// The handoff policy of one node.
#[derive(Debug, Default)]
pub struct Handoff {
    targets: BTreeMap<NodeId, Target>,
    actions: VecDeque<Action>,
}

impl Handoff {
    /// Nothing to deliver yet.
    pub fn new() -> Handoff {
        Handoff::default()
    }

    /// A delivery round: every target that holds hints, is up and is not in a round already
    /// starts one. `counts` are the hints held per target.
    pub fn handle_round(
        &mut self,
        now: Instant,
        counts: &BTreeMap<NodeId, u64>,
        is_up: &dyn Fn(NodeId) -> bool,
    ) {
        self.targets
            .retain(|id, t| counts.get(id).is_some_and(|c| *c > 0) || !t.is_idle());
        for (&target, &count) in counts {
            if count == 0 || !is_up(target) {
                continue;
            }
            let t = self.targets.entry(target).or_default();
            if !t.is_idle() {
                continue;
            }
            t.refused.retain(|_, (_, until)| *until > now);
            // Every hint set aside may come first in key order: read past them.
            let limit = HANDOFF_BATCH_MAX + t.refused.len();
            t.phase = Phase::Reading;
            t.delivered = 0;
            t.refused_now = 0;
            self.actions.push_back(Action::ReadHints { target, limit });
        }
    }

    /// The hints read for `target` (store order).
    pub fn handle_hints(&mut self, target: NodeId, hints: Vec<HintRef>) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        if !matches!(t.phase, Phase::Reading) {
            return;
        }
        let mut queue: VecDeque<HintRef> = hints
            .into_iter()
            // A hint renewed since it was refused holds a newer object: try that at once.
            .filter(|h| t.refused.get(&h.key).is_none_or(|(seq, _)| *seq != h.seq))
            .take(HANDOFF_BATCH_MAX)
            .collect();
        match queue.pop_front() {
            Some(current) => {
                self.actions.push_back(Action::Send {
                    target,
                    hint: current.clone(),
                });
                t.phase = Phase::Sending { queue, current };
            }
            None => self.end_round(target, None),
        }
    }

    /// Reading `target`'s hints failed: the round ends (the next one tries again).
    pub fn handle_read_failed(&mut self, target: NodeId, reason: String) {
        if self.targets.contains_key(&target) {
            self.end_round(target, Some(reason));
        }
    }

    /// `target` answered the hint last sent to it.
    pub fn handle_answer(&mut self, now: Instant, target: NodeId, answer: Answer) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        let Phase::Sending { queue, current } = &mut t.phase else {
            return;
        };
        match answer {
            Answer::Acked => {
                t.delivered += 1;
                t.refused.remove(&current.key);
                self.actions.push_back(Action::Delete {
                    target,
                    hint: current.clone(),
                });
            }
            Answer::Refused(_) => {
                t.refused_now += 1;
                if t.refused.len() >= HANDOFF_REFUSED_MAX {
                    // Bounded: the one set aside longest is simply tried again next round.
                    let oldest = t
                        .refused
                        .iter()
                        .min_by_key(|(_, (_, until))| *until)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        t.refused.remove(&k);
                    }
                }
                t.refused.insert(
                    current.key.clone(),
                    (current.seq, now + HANDOFF_REFUSED_RETRY),
                );
            }
            Answer::Failed(reason) => return self.end_round(target, Some(reason)),
        }
        match queue.pop_front() {
            Some(next) => {
                *current = next.clone();
                self.actions.push_back(Action::Send { target, hint: next });
            }
            None => self.end_round(target, None),
        }
    }

    fn end_round(&mut self, target: NodeId, failure: Option<String>) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        t.phase = Phase::Idle;
        self.actions.push_back(Action::RoundDone {
            target,
            delivered: std::mem::take(&mut t.delivered),
            refused: std::mem::take(&mut t.refused_now),
            failure,
        });
    }

    /// Whether no target is in a round (nothing to read, send or answer).
    pub fn is_idle(&self) -> bool {
        self.targets.values().all(Target::is_idle)
    }

    /// Hints set aside for `target` after it refused them.
    pub fn refused(&self, target: NodeId) -> usize {
        self.targets.get(&target).map_or(0, |t| t.refused.len())
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

impl Target {
    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }
}
