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
//!
//! Hints follow ownership ([`route_hint`]): once the driver hands the machine a layout, a hint
//! whose target replicates the key's partition in no live layout version any more (the change
//! that moved it retired the version the hint was made under, or the target was removed) is
//! not sent to that target; it is *redirected* ([`Action::Redirect`]): hints for the
//! partition's replicas in the newest version take its place. While a change is in flight and
//! the target replicates the partition only in the old version, the target still gets it, and
//! the newest version's replicas get hints too (the target may have pushed the partition
//! already). A target that is down is *swept* after every layout change, so its moved hints do
//! not wait for it to come back (a removed node never does).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_layout::Layout;
use cairn_proto::{ErrorReply, NodeId};

use crate::limits::{
    HANDOFF_BATCH_MAX, HANDOFF_REFUSED_MAX, HANDOFF_REFUSED_RETRY, HANDOFF_SWEEP_HINTS_MAX,
};
use crate::writer::Write;

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

/// Where a hint must go under the current layout ([`route_hint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To its target, which replicates the key in the newest layout version.
    Target,
    /// To its target, which replicates the key only in the older live version (a change is in
    /// flight), and to these replicas of the newest version as well.
    TargetAndOwners(Vec<NodeId>),
    /// Not to its target, which replicates the key in no live version: to these replicas of
    /// the newest version instead.
    Owners(Vec<NodeId>),
}

/// Where a hint for `target` of `key`, held by `me`, must go under `layout`. The owners named
/// are the key's replicas in the newest version except `me` (which holds the copy) and
/// `target`; every one of them gets a hint, since the version the hint was made under may be
/// gone and with it which of them took `target`'s place (a merge is idempotent, so one that
/// already holds the object loses nothing but a send).
pub fn route_hint(layout: &Layout, me: NodeId, target: NodeId, key: &[u8]) -> Route {
    let newest = layout.current();
    let p = newest.ring().partition_of(key);
    let owners = newest.primaries(p);
    if owners.contains(&target) {
        return Route::Target;
    }
    let to: Vec<NodeId> = owners
        .into_iter()
        .filter(|n| *n != me && *n != target)
        .collect();
    if layout.replicates(target, p) {
        Route::TargetAndOwners(to)
    } else {
        Route::Owners(to)
    }
}

/// The writes that carry out [`Action::Redirect`], in the order they must be applied, each
/// durable before the next: a hint of `hint`'s key for every node of `to` (admitted over the
/// per-peer limit, see [`Write::RedirectHint`]), then (unless `keep`)
/// the deletion of `target`'s hint unless it was renewed since. A driver stops at the first
/// that fails, so a failure or a crash in between leaves a hint too many (delivered twice,
/// harmlessly), never one too few. The node (`node/src/handoff.rs`) and the simulator both
/// apply exactly these.
pub fn redirect_writes(target: NodeId, hint: &HintRef, to: &[NodeId], keep: bool) -> Vec<Write> {
    let mut writes: Vec<Write> = to
        .iter()
        .map(|&owner| Write::RedirectHint { target: owner })
        .collect();
    if !keep {
        writes.push(Write::HintDelivered {
            target,
            seq: hint.seq,
        });
    }
    writes
}

/// The layout hints are routed by, and the node holding them.
#[derive(Debug)]
struct Router {
    me: NodeId,
    layout: Arc<Layout>,
}

fn route(router: &Option<Router>, target: NodeId, key: &[u8]) -> Route {
    match router {
        Some(r) => route_hint(&r.layout, r.me, target, key),
        None => Route::Target,
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
    /// The key of `hint` must reach `to` instead of (or, with `keep`, as well as) `target`:
    /// add (or renew) a hint for each of `to`, and only once those are durable, unless `keep`,
    /// delete `target`'s hint unless it was renewed since (`seq`). If adding one fails, keep
    /// `target`'s hint: a later round or sweep redirects it again.
    Redirect {
        /// The node the hint was for.
        target: NodeId,
        /// The hint.
        hint: HintRef,
        /// The nodes that get hints for the key.
        to: Vec<NodeId>,
        /// Whether `target`'s hint stays (a change is in flight and it still replicates the
        /// key in the older version).
        keep: bool,
    },
    /// A round (or a sweep) for `target` ended; for the log.
    RoundDone {
        /// The node.
        target: NodeId,
        /// Hints it acknowledged this round.
        delivered: usize,
        /// Hints it refused this round.
        refused: usize,
        /// Hints redirected to other nodes this round.
        redirected: usize,
        /// Why the round ended early, if it did.
        failure: Option<String>,
    },
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Reading,
    /// Reading the hints of a target that is down, for the ones to redirect.
    Sweeping,
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
    redirected: usize,
    /// The layout generation this target was last swept under.
    swept: u64,
}

/// The handoff policy of one node.
#[derive(Debug, Default)]
pub struct Handoff {
    targets: BTreeMap<NodeId, Target>,
    actions: VecDeque<Action>,
    router: Option<Router>,
    /// Counts the layouts handed in; a target swept under an older one is swept again.
    generation: u64,
}

impl Handoff {
    /// Nothing to deliver yet.
    pub fn new() -> Handoff {
        Handoff::default()
    }

    /// The layout hints are routed by from now on, held by `me`: every target that is down
    /// is swept again at the next round, and hints whose target replicates their key in no
    /// live version are redirected ([`route_hint`]). Without one, every hint goes to its
    /// target. The node and the simulator both hand it every layout they hold.
    pub fn handle_layout(&mut self, me: NodeId, layout: Arc<Layout>) {
        self.router = Some(Router { me, layout });
        self.generation += 1;
    }

    /// A delivery round: every target that holds hints, is up and is not in a round already
    /// starts one; one that is down is swept for hints to redirect if it was not swept under
    /// the current layout. `counts` are the hints held per target.
    pub fn handle_round(
        &mut self,
        now: Instant,
        counts: &BTreeMap<NodeId, u64>,
        is_up: &dyn Fn(NodeId) -> bool,
    ) {
        let generation = self.generation;
        let routed = self.router.is_some();
        // A target forgotten while it held no hints was swept under nothing: sweep it anew.
        self.targets
            .retain(|id, t| counts.get(id).is_some_and(|c| *c > 0) || !t.is_idle());
        for (&target, &count) in counts {
            if count == 0 {
                continue;
            }
            let up = is_up(target);
            let sweep_due = routed
                && self
                    .targets
                    .get(&target)
                    .is_none_or(|t| t.swept < generation);
            if !up && !sweep_due {
                continue;
            }
            let t = self.targets.entry(target).or_default();
            if !t.is_idle() {
                continue;
            }
            t.delivered = 0;
            t.refused_now = 0;
            t.redirected = 0;
            if up {
                t.refused.retain(|_, (_, until)| *until > now);
                // Every hint set aside may come first in key order: read past them.
                let limit = HANDOFF_BATCH_MAX + t.refused.len();
                t.phase = Phase::Reading;
                self.actions.push_back(Action::ReadHints { target, limit });
            } else {
                t.phase = Phase::Sweeping;
                self.actions.push_back(Action::ReadHints {
                    target,
                    limit: HANDOFF_SWEEP_HINTS_MAX,
                });
            }
        }
    }

    /// The hints read for `target` (store order).
    pub fn handle_hints(&mut self, target: NodeId, hints: Vec<HintRef>) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        match t.phase {
            Phase::Reading => {}
            Phase::Sweeping => {
                let read = hints.len();
                let mut moved = 0;
                for hint in hints {
                    let (to, keep) = match route(&self.router, target, &hint.key) {
                        Route::Target => continue,
                        Route::TargetAndOwners(to) => (to, true),
                        Route::Owners(to) => (to, false),
                    };
                    if !keep {
                        moved += 1;
                    }
                    t.redirected += 1;
                    self.actions.push_back(Action::Redirect {
                        target,
                        hint,
                        to,
                        keep,
                    });
                }
                // Redirected hints leave the front of the key order; kept ones stay there, so
                // reading again helps only if this sweep moved some and may have stopped short.
                if moved == 0 || read < HANDOFF_SWEEP_HINTS_MAX {
                    t.swept = self.generation;
                }
                return self.end_round(target, None);
            }
            _ => return,
        }
        let mut queue = VecDeque::new();
        // A hint renewed since it was refused holds a newer object: try that at once.
        for hint in hints
            .into_iter()
            .filter(|h| t.refused.get(&h.key).is_none_or(|(seq, _)| *seq != h.seq))
        {
            match route(&self.router, target, &hint.key) {
                Route::Owners(to) => {
                    t.redirected += 1;
                    self.actions.push_back(Action::Redirect {
                        target,
                        hint,
                        to,
                        keep: false,
                    });
                }
                // The target gets it; its acknowledgement redirects it to the owners too.
                Route::Target | Route::TargetAndOwners(_) => {
                    if queue.len() < HANDOFF_BATCH_MAX {
                        queue.push_back(hint);
                    }
                }
            }
        }
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
                // Routed again: the layout may have changed while the hint was on its way.
                let action = match route(&self.router, target, &current.key) {
                    Route::Target => Action::Delete {
                        target,
                        hint: current.clone(),
                    },
                    Route::TargetAndOwners(to) | Route::Owners(to) => {
                        t.redirected += 1;
                        Action::Redirect {
                            target,
                            hint: current.clone(),
                            to,
                            keep: false,
                        }
                    }
                };
                self.actions.push_back(action);
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
            redirected: std::mem::take(&mut t.redirected),
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
