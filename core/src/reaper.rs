//! The tombstone reaper, sans I/O: decides which of this node's tombstones (keys whose every
//! sibling is a delete) may be removed from its store, and when.
//!
//! A node reaps only its own copy, and only when (REFERENCE.md §6, rule 6):
//! - it has held this tombstone (the same siblings: [`tombstone_hash`]) for the grace period,
//!   measured by its own clock from the first scan that saw it (a restart starts the wait again: safe);
//! - it replicates the key in a live layout version and no transfer involves the key's
//!   partition ([`Layout::is_stable`]);
//! - every other member of every live layout version answered this round, none holds a hint
//!   for the key (a hint holder hands its copy on: Riak's KV679 fallback), and each stores
//!   either the same tombstone or nothing (a replica that already reaped it, or never held the
//!   key); a member holding any other copy (the value the delete superseded, missed while it
//!   was down) blocks until hints, read repair or anti-entropy give it the tombstone;
//! - and then only by compare-and-delete ([`crate::writer::Write::DropIfUnchanged`] with the
//!   object the scan read): a write or merge that reached the key since, or a hint this node
//!   holds for it, keeps it.
//!
//! Why a reap never lets an old write come back or a new one vanish: a stale copy can return
//! only from a member (asked), a hint (asked) or a message in flight (the grace period). And a
//! write after the reap gets a dot no old copy has seen, because dots come from the writer's
//! node-wide counter under a persisted lease, never from the key's own history (which the reap
//! erased): an old tombstone that comes back is concurrent with the new write, not newer
//! (`core/tests/reap.rs`, the KV679 scenario).
//!
//! A round: scan the store in pages ([`Action::Scan`], answered by [`Reaper::handle_page`]),
//! refreshing the first sightings; ask every other member about the tombstones that are due
//! ([`Action::Check`], [`Reaper::handle_checked`]); compare-and-delete the confirmed ones
//! ([`Action::Drop`], [`Reaper::handle_dropped`]); wait `interval`. At most `keys_per_round`
//! tombstones are checked per round, taken in key order after the last round's, so blocked
//! keys do not starve the rest. A layout change abandons the round in progress.
//!
//! Replicas reap one by one, so a replica that has not reaped yet may hand the tombstone back
//! to one that has (anti-entropy sees a key only it holds). The same tombstone coming back
//! within `TOMBSTONE_REAPED_REMEMBER` (or four intervals, if longer) of its reap is due again at once, with every other rule
//! checked again: it was held for the grace period already, and without this memory each
//! return would restart the wait, so replicas could hand it round forever.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_antientropy::{KeyHash, ObjectHash};
use cairn_layout::Layout;
use cairn_proto::{CopyHeld, NodeId, TombstoneHolding, TombstoneProbe};

use crate::limits::{
    TOMBSTONES_TRACKED_MAX, TOMBSTONE_GRACE_DEFAULT, TOMBSTONE_KEYS_PER_ROUND_DEFAULT,
    TOMBSTONE_KEYS_PER_ROUND_MAX, TOMBSTONE_REAPED_REMEMBER, TOMBSTONE_ROUND_INTERVAL_DEFAULT,
    TOMBSTONE_ROUND_INTERVAL_MIN, TOMBSTONE_SCAN_PAGE_MAX,
};
use crate::store::{Store, StoreError};
use crate::version::Object;

/// When and how much a node reaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaperConfig {
    /// How long a tombstone must have been held unchanged before it may be reaped.
    pub grace: Duration,
    /// Time between rounds (at least `TOMBSTONE_ROUND_INTERVAL_MIN`).
    pub interval: Duration,
    /// Tombstones checked per round (1..=`TOMBSTONE_KEYS_PER_ROUND_MAX`).
    pub keys_per_round: usize,
}

impl Default for ReaperConfig {
    fn default() -> ReaperConfig {
        ReaperConfig {
            grace: TOMBSTONE_GRACE_DEFAULT,
            interval: TOMBSTONE_ROUND_INTERVAL_DEFAULT,
            keys_per_round: TOMBSTONE_KEYS_PER_ROUND_DEFAULT,
        }
    }
}

/// A reaper setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaperConfigError {
    /// `keys_per_round` is 0 or above its maximum.
    #[error("tombstones keys_per_round = {value} is out of range 1..={max}")]
    KeysPerRound {
        /// Its value.
        value: usize,
        /// `TOMBSTONE_KEYS_PER_ROUND_MAX`.
        max: usize,
    },
    /// `interval` is below its minimum.
    #[error("tombstones interval of {value:?} is below the minimum of {min:?}")]
    Interval {
        /// Its value.
        value: Duration,
        /// `TOMBSTONE_ROUND_INTERVAL_MIN`.
        min: Duration,
    },
}

impl ReaperConfig {
    /// Checks every setting against its limit.
    pub fn validate(&self) -> Result<(), ReaperConfigError> {
        if self.keys_per_round == 0 || self.keys_per_round > TOMBSTONE_KEYS_PER_ROUND_MAX {
            return Err(ReaperConfigError::KeysPerRound {
                value: self.keys_per_round,
                max: TOMBSTONE_KEYS_PER_ROUND_MAX,
            });
        }
        if self.interval < TOMBSTONE_ROUND_INTERVAL_MIN {
            return Err(ReaperConfigError::Interval {
                value: self.interval,
                min: TOMBSTONE_ROUND_INTERVAL_MIN,
            });
        }
        Ok(())
    }
}

/// How the reaper identifies a tombstone, at this node and in its probes: the hash of its
/// siblings and their actors' counters ([`Object::siblings_only`]). Copies that differ only by
/// the history-only entries writers record on merges are the same tombstone: the one this node
/// reaped, handed back by a replica that had not reaped it yet, comes back with such an entry.
pub fn tombstone_hash(tombstone: &Object) -> ObjectHash {
    ObjectHash::of_encoded(&tombstone.siblings_only().encode())
}

/// The stored object `encoded`, if it is a tombstone: it decodes, is not empty, and every
/// sibling is a delete. (An object that does not decode is not the reaper's to judge.)
pub fn tombstone_of(encoded: &[u8]) -> Option<Object> {
    let object = Object::decode(encoded).ok()?;
    (!object.is_empty() && object.live().is_empty()).then_some(object)
}

/// A page of the store read for the reaper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The tombstones among the page's objects, in key order.
    pub tombstones: Vec<(Vec<u8>, Object)>,
    /// The last key the page visited (tombstone or not); the next page starts after it.
    pub last_key: Option<Vec<u8>>,
    /// Whether the store has no key after the page.
    pub last: bool,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the stored objects after `after` (from the start if `None`) in key order until
    /// `tombstones_max` tombstones ([`tombstone_of`]) are found or the store ends, and answer
    /// with [`Reaper::handle_page`] ([`read_page`] does it).
    Scan {
        /// The last key already visited.
        after: Option<Vec<u8>>,
        /// At most this many tombstones in the page.
        tombstones_max: usize,
    },
    /// Ask `peer` about these tombstones (`PeerRequest::Tombstones`) and answer with
    /// [`Reaper::handle_checked`].
    Check {
        /// A member of a live layout version.
        peer: NodeId,
        /// The tombstones.
        probes: Arc<[TombstoneProbe]>,
    },
    /// Compare-and-delete this node's copy of `key` (`Write::DropIfUnchanged { expected }`) and
    /// answer with [`Reaper::handle_dropped`].
    Drop {
        /// The key.
        key: Vec<u8>,
        /// The tombstone as the scan read it.
        expected: Object,
    },
}

/// A deliberate bug in the reaper (the simulator's tests only), to show that its checker
/// catches a reap that lets a deleted value come back.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReaperSabotage {
    /// The reaper as it should be.
    #[default]
    None,
    /// A member holding another copy of the key (the value the delete superseded, missed
    /// while it was down) does not block the reap.
    IgnoreOtherCopies,
}

/// Why a due tombstone was not reaped in the last round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocked {
    /// A member did not answer (each such tombstone counts once).
    pub unanswered: u64,
    /// A member holds a hint for the key.
    pub hinted: u64,
    /// A member stores another copy of the key.
    pub other_copy: u64,
    /// The compare-and-delete kept it (the key changed, or this node holds a hint for it).
    pub changed: u64,
}

/// Where the reaper stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaperStatus {
    /// Tombstones stored at the last complete scan.
    pub held: u64,
    /// Tombstones reaped since the start.
    pub reaped: u64,
    /// Rounds completed.
    pub rounds: u64,
    /// Why the last round's due tombstones were kept.
    pub blocked: Blocked,
    /// Members that did not answer the last round.
    pub waiting_on: Vec<NodeId>,
}

/// A tombstone and since when it has been held unchanged.
#[derive(Debug, Clone, Copy)]
struct Held {
    object: ObjectHash,
    since: Instant,
    /// When this node reaped it, if it did: remembered for `TOMBSTONE_REAPED_REMEMBER`, so the
    /// same tombstone brought back by another replica that had not reaped it yet (anti-entropy,
    /// read repair) is due at once instead of after a new grace period.
    reaped_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Candidate {
    key: Vec<u8>,
    object: Object,
    hash: ObjectHash,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the next round.
    Idle { next: Instant },
    /// Reading pages; `scan_out` while one is asked for.
    Scanning {
        after: Option<Vec<u8>>,
        scan_out: bool,
        seen: HashMap<KeyHash, Held>,
        held: u64,
        candidates: Vec<Candidate>,
    },
    /// Asking the members.
    Checking {
        candidates: Vec<Candidate>,
        probes: Arc<[TombstoneProbe]>,
        to_ask: VecDeque<NodeId>,
        waiting: BTreeSet<NodeId>,
        /// Per candidate, the first reason it may not be reaped.
        blocked: Vec<Option<Block>>,
        unanswered: Vec<NodeId>,
    },
    /// Compare-and-deleting the confirmed ones.
    Dropping {
        to_drop: VecDeque<Candidate>,
        waiting: BTreeSet<Vec<u8>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Unanswered,
    Hinted,
    OtherCopy,
}

/// The reaper of one node.
#[derive(Debug)]
pub struct Reaper {
    me: NodeId,
    config: ReaperConfig,
    layout: Option<Arc<Layout>>,
    /// First sightings, by key hash, from the last complete scan.
    held: HashMap<KeyHash, Held>,
    /// Candidates of the next round are taken after this key (wrapping to the start).
    cursor: Option<Vec<u8>>,
    phase: Phase,
    status: ReaperStatus,
    #[cfg(feature = "sabotage")]
    sabotage: ReaperSabotage,
}

impl Reaper {
    /// A reaper for node `me`; its first round starts one `interval` after `now`.
    pub fn new(now: Instant, me: NodeId, config: ReaperConfig) -> Reaper {
        Reaper {
            me,
            config,
            layout: None,
            held: HashMap::new(),
            cursor: None,
            phase: Phase::Idle {
                next: now + config.interval,
            },
            status: ReaperStatus::default(),
            #[cfg(feature = "sabotage")]
            sabotage: ReaperSabotage::None,
        }
    }

    /// Puts `sabotage` into this reaper.
    #[cfg(feature = "sabotage")]
    pub fn set_sabotage(&mut self, sabotage: ReaperSabotage) {
        self.sabotage = sabotage;
    }

    /// The layout this node routes by. A change abandons the round in progress (its answers
    /// were about another set of members and transfers) and starts a new one at once.
    pub fn handle_layout(&mut self, now: Instant, layout: Option<Arc<Layout>>) {
        let same = match (&self.layout, &layout) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.layout = layout;
        if !matches!(self.phase, Phase::Idle { .. } | Phase::Dropping { .. }) {
            self.phase = Phase::Idle { next: now };
        }
    }

    /// Where the reaper stands.
    pub fn status(&self) -> &ReaperStatus {
        &self.status
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        match &mut self.phase {
            Phase::Idle { next } => {
                if now < *next || self.layout.is_none() {
                    return None;
                }
                self.phase = Phase::Scanning {
                    after: None,
                    scan_out: true,
                    seen: HashMap::new(),
                    held: 0,
                    candidates: Vec::new(),
                };
                Some(Action::Scan {
                    after: None,
                    tombstones_max: TOMBSTONE_SCAN_PAGE_MAX,
                })
            }
            Phase::Scanning {
                after, scan_out, ..
            } => {
                if *scan_out {
                    return None;
                }
                *scan_out = true;
                Some(Action::Scan {
                    after: after.clone(),
                    tombstones_max: TOMBSTONE_SCAN_PAGE_MAX,
                })
            }
            Phase::Checking {
                to_ask,
                waiting,
                probes,
                ..
            } => {
                let peer = to_ask.pop_front()?;
                waiting.insert(peer);
                Some(Action::Check {
                    peer,
                    probes: probes.clone(),
                })
            }
            Phase::Dropping { to_drop, waiting } => {
                let c = to_drop.pop_front()?;
                waiting.insert(c.key.clone());
                Some(Action::Drop {
                    key: c.key,
                    expected: c.object,
                })
            }
        }
    }

    /// When the reaper next needs `poll_action` without an answer arriving. Without a layout
    /// nothing is due until `handle_layout` brings one: a round that came due meanwhile must
    /// not be reported as a deadline already past, which a driver would wake for at once,
    /// again and again (the simulator's seed 10 spun at one virtual instant this way, and the
    /// node's reaper task spun a core while it waited to join).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle { next } if self.layout.is_some() => Some(*next),
            _ => None,
        }
    }

    /// A page asked for by [`Action::Scan`]; a failed read ends the round (the sightings
    /// stay as they were).
    pub fn handle_page(&mut self, now: Instant, page: Result<ScanPage, String>) {
        if !matches!(self.phase, Phase::Scanning { .. }) {
            return;
        }
        let Phase::Scanning {
            seen: mut tracked,
            held: mut count,
            mut candidates,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle { next: now })
        else {
            unreachable!("matched above");
        };
        let Ok(page) = page else {
            self.end_round(now);
            return;
        };
        for (key, object) in page.tombstones {
            count += 1;
            let key_hash = KeyHash::of_key(&key);
            let hash = tombstone_hash(&object);
            let since = match self.held.get(&key_hash) {
                Some(h) if h.object == hash => h.since,
                _ => now,
            };
            if tracked.len() >= TOMBSTONES_TRACKED_MAX {
                continue;
            }
            tracked.insert(
                key_hash,
                Held {
                    object: hash,
                    since,
                    reaped_at: None,
                },
            );
            let due = now.saturating_duration_since(since) >= self.config.grace;
            let after_cursor = self.cursor.as_ref().is_none_or(|c| key > *c);
            if due
                && after_cursor
                && candidates.len() < self.config.keys_per_round
                && self.may_reap(&key)
            {
                candidates.push(Candidate { key, object, hash });
            }
        }
        if !page.last {
            self.phase = Phase::Scanning {
                after: page.last_key,
                scan_out: false,
                seen: tracked,
                held: count,
                candidates,
            };
            return;
        }
        // Tombstones reaped lately stay remembered while they are absent.
        for (key_hash, h) in &self.held {
            let recent = h.reaped_at.is_some_and(|t| {
                now.saturating_duration_since(t)
                    < TOMBSTONE_REAPED_REMEMBER.max(4 * self.config.interval)
            });
            if recent && tracked.len() < TOMBSTONES_TRACKED_MAX {
                tracked.entry(*key_hash).or_insert(*h);
            }
        }
        self.held = tracked;
        self.status.held = count;
        // A full round continues after its last key; a short one wraps to the start.
        self.cursor = if candidates.len() >= self.config.keys_per_round {
            candidates.last().map(|c| c.key.clone())
        } else {
            None
        };
        self.status.blocked = Blocked::default();
        self.status.waiting_on.clear();
        if candidates.is_empty() {
            self.end_round(now);
            return;
        }
        let peers = self.peers();
        let probes: Arc<[TombstoneProbe]> = candidates
            .iter()
            .map(|c| TombstoneProbe {
                key: c.key.clone(),
                object_hash: c.hash.0,
            })
            .collect();
        self.phase = Phase::Checking {
            blocked: vec![None; candidates.len()],
            candidates,
            probes,
            to_ask: peers.into_iter().collect(),
            waiting: BTreeSet::new(),
            unanswered: Vec::new(),
        };
        self.maybe_checked(now);
    }

    /// `peer`'s answer to [`Action::Check`]: one holding per probe, in order, or why it did not
    /// answer (which blocks every tombstone of the round).
    pub fn handle_checked(
        &mut self,
        now: Instant,
        peer: NodeId,
        answer: Result<Vec<TombstoneHolding>, String>,
    ) {
        let ignore_other_copies = self.ignores_other_copies();
        let Phase::Checking {
            waiting,
            blocked,
            unanswered,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if !waiting.remove(&peer) {
            return;
        }
        match answer {
            Ok(holdings) if holdings.len() == blocked.len() => {
                for (b, h) in blocked.iter_mut().zip(holdings) {
                    let reason = if h.hinted {
                        Some(Block::Hinted)
                    } else if h.copy == CopyHeld::Other && !ignore_other_copies {
                        Some(Block::OtherCopy)
                    } else {
                        None
                    };
                    if b.is_none() {
                        *b = reason;
                    }
                }
            }
            // An answer of the wrong length is no answer.
            _ => {
                unanswered.push(peer);
                for b in blocked.iter_mut() {
                    b.get_or_insert(Block::Unanswered);
                }
            }
        }
        self.maybe_checked(now);
    }

    /// The outcome of [`Action::Drop`]: whether the copy was removed (false: the
    /// compare-and-delete kept it), or why the write failed.
    pub fn handle_dropped(&mut self, now: Instant, key: &[u8], outcome: Result<bool, String>) {
        let Phase::Dropping { waiting, to_drop } = &mut self.phase else {
            return;
        };
        if !waiting.remove(key) {
            return;
        }
        if outcome == Ok(true) {
            self.status.reaped += 1;
            self.status.held = self.status.held.saturating_sub(1);
            if let Some(h) = self.held.get_mut(&KeyHash::of_key(key)) {
                h.reaped_at = Some(now);
            }
        } else {
            self.status.blocked.changed += 1;
        }
        if waiting.is_empty() && to_drop.is_empty() {
            self.end_round(now);
        }
    }

    fn ignores_other_copies(&self) -> bool {
        #[cfg(feature = "sabotage")]
        return self.sabotage == ReaperSabotage::IgnoreOtherCopies;
        #[cfg(not(feature = "sabotage"))]
        false
    }

    /// Whether this node may reap its copy of `key` under the current layout: it replicates the
    /// key and no transfer involves its partition.
    fn may_reap(&self, key: &[u8]) -> bool {
        let Some(layout) = &self.layout else {
            return false;
        };
        let p = layout.current().ring().config().partition_of(key);
        layout.replicates(self.me, p) && layout.is_stable(p)
    }

    /// Every other member of every live layout version: any of them may be a replica or hold a
    /// hint.
    fn peers(&self) -> BTreeSet<NodeId> {
        let Some(layout) = &self.layout else {
            return BTreeSet::new();
        };
        layout
            .versions()
            .iter()
            .flat_map(|v| v.names().keys().copied())
            .filter(|n| *n != self.me)
            .collect()
    }

    /// Once every member answered: the confirmed tombstones go to be dropped.
    fn maybe_checked(&mut self, now: Instant) {
        let Phase::Checking {
            candidates,
            to_ask,
            waiting,
            blocked,
            unanswered,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if !to_ask.is_empty() || !waiting.is_empty() {
            return;
        }
        let mut confirmed = VecDeque::new();
        for (c, b) in std::mem::take(candidates).into_iter().zip(blocked.iter()) {
            match b {
                None => confirmed.push_back(c),
                Some(Block::Unanswered) => self.status.blocked.unanswered += 1,
                Some(Block::Hinted) => self.status.blocked.hinted += 1,
                Some(Block::OtherCopy) => self.status.blocked.other_copy += 1,
            }
        }
        self.status.waiting_on = std::mem::take(unanswered);
        if confirmed.is_empty() {
            self.end_round(now);
        } else {
            self.phase = Phase::Dropping {
                to_drop: confirmed,
                waiting: BTreeSet::new(),
            };
        }
    }

    fn end_round(&mut self, now: Instant) {
        self.status.rounds += 1;
        self.phase = Phase::Idle {
            next: now + self.config.interval,
        };
    }
}

/// Reads the reaper's page from `store`: the stored objects after `after`, in key order, until
/// `tombstones_max` tombstones ([`tombstone_of`]) are found. One snapshot scan per page that
/// starts after `after`, so a round's pages together cost one pass over the store (each object
/// decoded once), however many tombstones it holds.
pub fn read_page(
    store: &dyn Store,
    after: Option<&[u8]>,
    tombstones_max: usize,
) -> Result<ScanPage, StoreError> {
    let mut page = ScanPage {
        last: true,
        ..ScanPage::default()
    };
    store.scan_objects(after, &mut |key, object| {
        page.last_key = Some(key.to_vec());
        if let Some(t) = tombstone_of(object) {
            page.tombstones.push((key.to_vec(), t));
            if page.tombstones.len() >= tombstones_max {
                page.last = false;
                return false;
            }
        }
        true
    })?;
    Ok(page)
}

/// What this node answers to a `PeerRequest::Tombstones`: [`holding`] for each probe, in order
/// (the node's peer handler and the simulator's both answer with this).
pub fn holdings(
    store: &dyn Store,
    probes: &[TombstoneProbe],
) -> Result<Vec<TombstoneHolding>, StoreError> {
    probes.iter().map(|p| holding(store, p)).collect()
}

/// What this node answers about one probed tombstone (`PeerRequest::Tombstones`): whether it
/// stores the same object, another one or none, and whether it holds a hint for the key to any
/// target. One point read, plus one per target it holds hints for.
pub fn holding(store: &dyn Store, probe: &TombstoneProbe) -> Result<TombstoneHolding, StoreError> {
    let copy = match store.get(&probe.key)? {
        None => CopyHeld::Absent,
        Some(bytes) => match tombstone_of(&bytes) {
            Some(t) if tombstone_hash(&t).0 == probe.object_hash => CopyHeld::Same,
            _ => CopyHeld::Other,
        },
    };
    let mut hinted = false;
    for target in store.hint_counts()?.keys() {
        if store.hint(*target, &probe.key)?.is_some() {
            hinted = true;
            break;
        }
    }
    Ok(TombstoneHolding { copy, hinted })
}
