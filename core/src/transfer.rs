//! The transfer machine: during a layout change, pushes every key of the partitions this node
//! must hand on ([`cairn_layout::Layout::transfers`]) to their new replicas, a page at a time,
//! within a byte rate, retrying failed sends with backoff, and says when every new replica has
//! confirmed every partition, so the driver can record the push in the layout.
//!
//! Sans-I/O like the coordinator: the driver reads pages of a partition's keys from its store
//! when asked ([`Action::Scan`], answered by [`TransferMachine::handle_page`]), merges each
//! batch into a target ([`Action::Send`], answered by [`TransferMachine::handle_sent`]) and
//! passes `now` in. A page is read only after the previous one reached every target, so at most
//! `partitions_concurrent` batches are held at once.
//!
//! Keys written after a page was read need no transfer: once every member acknowledged the new
//! version (before `transfers` hands out anything), writes reach the new replicas themselves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_layout::{Layout, Transfer};
use cairn_proto::limits::PEER_BATCH_ITEMS_MAX;
use cairn_proto::{BatchAnswer, BatchItem, ErrorReply, NodeId, PeerRequest};
use cairn_ring::{PartitionId, RingConfig};

use crate::bucket::TokenBucket;
use crate::store::{Store, StoreError};

use crate::limits::{
    PEER_BATCH_BYTES_MAX, TRANSFER_ATTEMPTS_MAX, TRANSFER_BATCH_BYTES_DEFAULT,
    TRANSFER_BATCH_BYTES_MAX, TRANSFER_BATCH_KEYS_DEFAULT, TRANSFER_BATCH_KEYS_MAX,
    TRANSFER_BYTES_PER_SEC_DEFAULT, TRANSFER_PARTITIONS_CONCURRENT_DEFAULT,
    TRANSFER_PARTITIONS_CONCURRENT_MAX, TRANSFER_RETRY_BASE, TRANSFER_RETRY_MAX,
};

/// How fast and how wide a node pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConfig {
    /// Keys per batch (1..=`TRANSFER_BATCH_KEYS_MAX`).
    pub batch_keys: usize,
    /// Bytes per batch (1..=`TRANSFER_BATCH_BYTES_MAX`).
    pub batch_bytes: u64,
    /// Partitions pushed at once (1..=`TRANSFER_PARTITIONS_CONCURRENT_MAX`).
    pub partitions_concurrent: usize,
    /// Bytes per second over all targets (at least 1).
    pub bytes_per_sec: u64,
}

impl Default for TransferConfig {
    fn default() -> TransferConfig {
        TransferConfig {
            batch_keys: TRANSFER_BATCH_KEYS_DEFAULT,
            batch_bytes: TRANSFER_BATCH_BYTES_DEFAULT,
            partitions_concurrent: TRANSFER_PARTITIONS_CONCURRENT_DEFAULT,
            bytes_per_sec: TRANSFER_BYTES_PER_SEC_DEFAULT,
        }
    }
}

/// A transfer setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transfer {setting} = {value} is out of range 1..={max}")]
pub struct TransferConfigError {
    /// The setting.
    pub setting: &'static str,
    /// Its value.
    pub value: u64,
    /// Its largest allowed value.
    pub max: u64,
}

impl TransferConfig {
    /// Checks every setting against its limit.
    pub fn validate(&self) -> Result<(), TransferConfigError> {
        let check = |setting, value: u64, max: u64| {
            if value == 0 || value > max {
                Err(TransferConfigError {
                    setting,
                    value,
                    max,
                })
            } else {
                Ok(())
            }
        };
        check(
            "batch_keys",
            self.batch_keys as u64,
            TRANSFER_BATCH_KEYS_MAX as u64,
        )?;
        check("batch_bytes", self.batch_bytes, TRANSFER_BATCH_BYTES_MAX)?;
        check(
            "partitions_concurrent",
            self.partitions_concurrent as u64,
            TRANSFER_PARTITIONS_CONCURRENT_MAX as u64,
        )?;
        check("bytes_per_sec", self.bytes_per_sec, u64::MAX)
    }
}

/// One stored key and its encoded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The encoded object, merged (`sync`) into the target's copy.
    pub object: Vec<u8>,
}

impl TransferEntry {
    fn bytes(&self) -> u64 {
        (self.key.len() + self.object.len()) as u64
    }
}

/// The driver's name for one batch sent to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SendId(u64);

/// A page of a partition's keys, read by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys after the asked-for cursor, in the store's partition order, within the asked-for limits (a single
    /// entry may exceed the byte limit). Empty: the partition has no more keys.
    pub entries: Vec<TransferEntry>,
    /// Whether the store has no key after the last entry.
    pub last: bool,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the next page of `partition`: keys after `after` (from the start if `None`), at
    /// most `keys_max` of them and about `bytes_max` bytes; answer with `handle_page`.
    Scan {
        /// The partition.
        partition: PartitionId,
        /// The last key already sent.
        after: Option<Vec<u8>>,
        /// At most this many keys.
        keys_max: usize,
        /// Stop after the entry that reaches this many bytes.
        bytes_max: u64,
    },
    /// Merge every entry into `to`'s copy durably (without a hint); answer with `handle_sent`.
    Send {
        /// Names this send in `handle_sent`.
        id: SendId,
        /// The partition the keys belong to.
        partition: PartitionId,
        /// The new replica.
        to: NodeId,
        /// The keys and objects.
        entries: Arc<[TransferEntry]>,
    },
    /// Every new replica of `partition` holds every key this node had for it.
    PartitionPushed(PartitionId),
    /// Every partition of `version`'s transfer is pushed: record it in the layout
    /// (`Layout::record_pushed` for this node).
    AllPushed {
        /// The layout version the transfer was for.
        version: u64,
    },
}

/// A target (or a page read) that failed `TRANSFER_ATTEMPTS_MAX` times in a row; the transfer
/// waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The partition.
    pub partition: PartitionId,
    /// The target, or `None` when this node's own page read fails.
    pub target: Option<NodeId>,
    /// Failures in a row.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
}

/// Where the transfer stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferStatus {
    /// The layout version being pushed for, if any.
    pub version: Option<u64>,
    /// Partitions this node must push.
    pub partitions_total: usize,
    /// Of those, pushed to every new replica.
    pub partitions_pushed: usize,
    /// Being pushed now.
    pub partitions_active: usize,
    /// Keys delivered, counted once per target.
    pub keys_moved: u64,
    /// Bytes (keys and objects) delivered, counted once per target.
    pub bytes_moved: u64,
    /// Keys still to deliver, from the driver's per-partition estimate, if it gave one.
    pub keys_left_estimate: Option<u64>,
    /// Bytes per second delivered since the transfer started.
    pub bytes_per_sec: f64,
    /// Seconds left at the rate so far, when an estimate and a rate exist.
    pub seconds_left_estimate: Option<f64>,
    /// Targets or reads the transfer is waiting on.
    pub stalled: Vec<Stalled>,
}

/// Failures in a row of one page read (`target` `None`) or one target's sends.
#[derive(Debug)]
struct Failures {
    attempts: u32,
    reason: String,
    retry_at: Instant,
}

#[derive(Debug)]
enum TargetState {
    /// To be sent (once its retry time, if it failed, has come).
    Ready,
    InFlight(SendId),
    Acked,
}

#[derive(Debug)]
enum Phase {
    /// The next page is to be asked for (once its retry time, if a read failed, has come).
    NeedScan,
    Scanning,
    Sending {
        entries: Arc<[TransferEntry]>,
        bytes: u64,
        last: bool,
        targets: BTreeMap<NodeId, TargetState>,
    },
}

#[derive(Debug)]
struct Active {
    transfer: Transfer,
    after: Option<Vec<u8>>,
    phase: Phase,
}

/// `entries` cut into peer batches (`PeerRequest::Batch`), in order: a batch ends at `PEER_BATCH_ITEMS_MAX` entries or
/// at the entry that would take it past `PEER_BATCH_BYTES_MAX` bytes.
pub fn batches(entries: &[TransferEntry]) -> Vec<&[TransferEntry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let size = e.key.len() + e.object.len();
        if i > start && (i - start == PEER_BATCH_ITEMS_MAX || bytes + size > PEER_BATCH_BYTES_MAX) {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// A batch's request: each entry merged at the target without a hint.
pub fn batch_request(batch: &[TransferEntry]) -> PeerRequest {
    PeerRequest::Batch(
        batch
            .iter()
            .map(|e| BatchItem::Replicate {
                key: e.key.clone(),
                object: e.object.clone(),
                hint_for: None,
            })
            .collect(),
    )
}

/// Reads the answers to [`batch_request`]`(batch)`: every entry acknowledged, or why not (the
/// first refused key named).
pub fn batch_answered(
    batch: &[TransferEntry],
    answers: Vec<Result<BatchAnswer, ErrorReply>>,
) -> Result<(), String> {
    if answers.len() != batch.len() {
        return Err(format!(
            "a transfer batch of {} keys was answered with {} answers",
            batch.len(),
            answers.len()
        ));
    }
    for (e, answer) in batch.iter().zip(answers) {
        let why = match answer {
            Ok(BatchAnswer::Ack) => continue,
            Ok(other) => format!("answered {other:?}"),
            Err(e) => format!("was refused: {e}"),
        };
        let key = String::from_utf8_lossy(&e.key);
        return Err(format!("transferred key {key:?} {why}"));
    }
    Ok(())
}

/// A deliberate bug in the transfer (the simulator's tests only), to show that its checker
/// catches a transfer that does not move every key.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferSabotage {
    /// The transfer as it should be.
    #[default]
    None,
    /// The first key of every partition is never sent (the page is read, its cursor moves past
    /// the key, but the batch leaves it out).
    SkipFirstKey,
}

/// What the layout asks of the driver after [`TransferMachine::follow`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Follow {
    /// A transfer started: (layout version, partitions to push).
    pub started: Option<(u64, usize)>,
    /// Everything of this version is pushed, but the layout does not show this node's push
    /// (a record whose layout write failed): record it (again) with `Layout::record_pushed`.
    pub record_push: Option<u64>,
    /// Every member acknowledged and every source pushed (or was overridden): retire the old
    /// version with `Layout::poll_retire`.
    pub retire: bool,
}

/// Pushes one node's partitions for one layout version.
#[derive(Debug)]
pub struct TransferMachine {
    config: TransferConfig,
    version: Option<u64>,
    started: Option<Instant>,
    waiting: VecDeque<Transfer>,
    active: BTreeMap<PartitionId, Active>,
    events: VecDeque<Action>,
    sends: BTreeMap<SendId, (PartitionId, NodeId)>,
    next_send: u64,
    bucket: TokenBucket,
    total: usize,
    pushed: usize,
    keys_moved: u64,
    bytes_moved: u64,
    /// Estimated keys to deliver (per partition estimate times its targets), if given.
    keys_estimate: Option<u64>,
    /// Failures in a row, by partition and target (`None`: the page read).
    failures: BTreeMap<(PartitionId, Option<NodeId>), Failures>,
    #[cfg(feature = "sabotage")]
    sabotage: TransferSabotage,
}

fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (TRANSFER_RETRY_BASE * 2u32.pow(doublings)).min(TRANSFER_RETRY_MAX)
}

impl TransferMachine {
    /// A machine with nothing to push. `config` must be valid ([`TransferConfig::validate`]).
    pub fn new(now: Instant, config: TransferConfig) -> TransferMachine {
        assert!(config.validate().is_ok(), "invalid {config:?}");
        TransferMachine {
            config,
            version: None,
            started: None,
            waiting: VecDeque::new(),
            active: BTreeMap::new(),
            events: VecDeque::new(),
            sends: BTreeMap::new(),
            next_send: 0,
            bucket: TokenBucket::new(
                now,
                config.bytes_per_sec,
                config.bytes_per_sec.max(config.batch_bytes),
            ),
            total: 0,
            pushed: 0,
            keys_moved: 0,
            bytes_moved: 0,
            keys_estimate: None,
            failures: BTreeMap::new(),
            #[cfg(feature = "sabotage")]
            sabotage: TransferSabotage::None,
        }
    }

    /// Puts `sabotage` into this machine (kept across [`TransferMachine::clear`]).
    #[cfg(feature = "sabotage")]
    pub fn set_sabotage(&mut self, sabotage: TransferSabotage) {
        self.sabotage = sabotage;
    }

    /// Brings the machine in line with `layout`, as node `me` holds it: once every member
    /// acknowledged the newest version and `me` is a source that has not pushed, the transfer
    /// `Layout::transfers(me)` gives (with `estimate` of each partition's keys); nothing once
    /// the layout settled. Says what the driver must change in the layout: record this node's
    /// push again, or retire the old version.
    pub fn follow(
        &mut self,
        now: Instant,
        me: NodeId,
        layout: &Layout,
        estimate: &dyn Fn(PartitionId) -> Option<u64>,
    ) -> Follow {
        let mut out = Follow::default();
        let transition = layout.transition();
        let owes = transition
            .as_ref()
            .is_some_and(|t| t.waiting_acks.is_empty() && t.waiting_pushes.contains(&me));
        if owes {
            let version = layout.current().version();
            if self.handle_plan(now, version, layout.transfers(me), estimate) {
                out.started = Some((version, self.total));
            } else if self.is_done() {
                out.record_push = Some(version);
            }
        } else if layout.is_settled() && self.version.is_some() {
            self.clear();
        }
        out.retire =
            transition.is_some_and(|t| t.waiting_acks.is_empty() && t.waiting_pushes.is_empty());
        out
    }

    /// The layout version being pushed for.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// What to push for `version` (this node's `Layout::transfers`), with the driver's estimate
    /// of each partition's keys if it has one. The same version again changes nothing (returns
    /// false); another version drops the old work, and answers to it are ignored.
    pub fn handle_plan(
        &mut self,
        now: Instant,
        version: u64,
        transfers: Vec<Transfer>,
        estimate: &dyn Fn(PartitionId) -> Option<u64>,
    ) -> bool {
        if self.version == Some(version) {
            return false;
        }
        self.version = Some(version);
        self.started = Some(now);
        self.active.clear();
        self.sends.clear();
        self.events.clear();
        self.failures.clear();
        self.pushed = 0;
        self.keys_moved = 0;
        self.bytes_moved = 0;
        self.total = transfers.len();
        self.keys_estimate = transfers
            .iter()
            .map(|t| estimate(t.partition).map(|k| k * t.to.len() as u64))
            .sum();
        self.waiting = transfers.into();
        if self.total == 0 {
            self.events.push_back(Action::AllPushed { version });
        }
        true
    }

    /// Forgets the transfer (the change retired, or this node has nothing to push).
    pub fn clear(&mut self) {
        #[cfg(feature = "sabotage")]
        let sabotage = self.sabotage;
        *self = TransferMachine::new(self.bucket.ready_at(), self.config);
        #[cfg(feature = "sabotage")]
        self.set_sabotage(sabotage);
    }

    /// The driver read a page of `partition` (or failed to).
    pub fn handle_page(
        &mut self,
        now: Instant,
        partition: PartitionId,
        page: Result<Page, String>,
    ) {
        let Some(a) = self.active.get_mut(&partition) else {
            return;
        };
        if !matches!(a.phase, Phase::Scanning) {
            return;
        }
        match page {
            Err(reason) => {
                a.phase = Phase::NeedScan;
                self.fail(now, partition, None, reason);
            }
            Ok(page) if page.entries.is_empty() => {
                self.failures.remove(&(partition, None));
                self.partition_done(partition);
            }
            Ok(page) => {
                self.failures.remove(&(partition, None));
                #[cfg(feature = "sabotage")]
                let first_page = a.after.is_none();
                a.after = page.entries.last().map(|e| e.key.clone());
                #[cfg(feature = "sabotage")]
                let page = {
                    let mut page = page;
                    if first_page && self.sabotage == TransferSabotage::SkipFirstKey {
                        page.entries.remove(0);
                    }
                    page
                };
                let bytes = page.entries.iter().map(TransferEntry::bytes).sum();
                a.phase = Phase::Sending {
                    entries: page.entries.into(),
                    bytes,
                    last: page.last,
                    targets: a
                        .transfer
                        .to
                        .iter()
                        .map(|t| (*t, TargetState::Ready))
                        .collect(),
                };
            }
        }
    }

    /// A target answered a send (or failed to).
    pub fn handle_sent(&mut self, now: Instant, id: SendId, result: Result<(), String>) {
        let Some((partition, to)) = self.sends.remove(&id) else {
            return;
        };
        let Some(a) = self.active.get_mut(&partition) else {
            return;
        };
        let Phase::Sending {
            entries,
            bytes,
            last,
            targets,
        } = &mut a.phase
        else {
            return;
        };
        let Some(state) = targets.get_mut(&to) else {
            return;
        };
        if !matches!(state, TargetState::InFlight(i) if *i == id) {
            return;
        }
        match result {
            Ok(()) => {
                *state = TargetState::Acked;
                self.keys_moved += entries.len() as u64;
                self.bytes_moved += *bytes;
                self.failures.remove(&(partition, Some(to)));
            }
            Err(reason) => {
                *state = TargetState::Ready;
                self.fail(now, partition, Some(to), reason);
                return;
            }
        }
        if targets.values().all(|s| matches!(s, TargetState::Acked)) {
            if *last {
                self.partition_done(partition);
            } else {
                a.phase = Phase::NeedScan;
            }
        }
    }

    /// Counts one more failure in a row and sets when to try again.
    fn fail(
        &mut self,
        now: Instant,
        partition: PartitionId,
        target: Option<NodeId>,
        reason: String,
    ) {
        let f = self
            .failures
            .entry((partition, target))
            .or_insert(Failures {
                attempts: 0,
                reason: String::new(),
                retry_at: now,
            });
        f.attempts = f.attempts.saturating_add(1);
        f.reason = reason;
        f.retry_at = now + backoff(f.attempts);
    }

    fn due(&self, now: Instant, partition: PartitionId, target: Option<NodeId>) -> bool {
        self.failures
            .get(&(partition, target))
            .is_none_or(|f| f.retry_at <= now)
    }

    fn partition_done(&mut self, partition: PartitionId) {
        self.active.remove(&partition);
        self.pushed += 1;
        self.events.push_back(Action::PartitionPushed(partition));
        if self.pushed == self.total {
            if let Some(version) = self.version {
                self.events.push_back(Action::AllPushed { version });
            }
        }
    }

    /// The next thing to do at `now`, if any: events first, then page reads, then sends within
    /// the byte rate.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        while self.active.len() < self.config.partitions_concurrent {
            let Some(t) = self.waiting.pop_front() else {
                break;
            };
            let partition = t.partition;
            let nothing_to_send = t.to.is_empty();
            self.active.insert(
                partition,
                Active {
                    transfer: t,
                    after: None,
                    phase: Phase::NeedScan,
                },
            );
            if nothing_to_send {
                self.partition_done(partition);
            }
        }
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let scan = self
            .active
            .iter()
            .find(|(p, a)| matches!(a.phase, Phase::NeedScan) && self.due(now, **p, None))
            .map(|(p, _)| *p);
        if let Some(p) = scan {
            let a = self.active.get_mut(&p).expect("found above");
            a.phase = Phase::Scanning;
            return Some(Action::Scan {
                partition: p,
                after: a.after.clone(),
                keys_max: self.config.batch_keys,
                bytes_max: self.config.batch_bytes,
            });
        }
        let send = self.active.iter().find_map(|(p, a)| match &a.phase {
            Phase::Sending { targets, bytes, .. } => targets
                .iter()
                .find(|(to, s)| matches!(s, TargetState::Ready) && self.due(now, *p, Some(**to)))
                .map(|(to, _)| (*p, *to, *bytes)),
            _ => None,
        });
        let (p, to, bytes) = send?;
        if !self.bucket.try_take(now, bytes) {
            return None;
        }
        let id = SendId(self.next_send);
        self.next_send += 1;
        self.sends.insert(id, (p, to));
        let a = self.active.get_mut(&p).expect("found above");
        let Phase::Sending {
            entries, targets, ..
        } = &mut a.phase
        else {
            unreachable!("found sending above")
        };
        targets.insert(to, TargetState::InFlight(id));
        Some(Action::Send {
            id,
            partition: p,
            to,
            entries: entries.clone(),
        })
    }

    /// When `poll_action` may next have something without a new input: the earliest retry of
    /// a page read or send that waits for it, or the byte budget's refill when a send waits for
    /// it. A failure whose retry is already in flight (or whose partition moved on) sets no
    /// time: a time in the past would wake the driver again at once, in a loop, until the
    /// answer came.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let budget = self.bucket.in_debt().then(|| self.bucket.ready_at());
        let retry =
            |p: PartitionId, t: Option<NodeId>| self.failures.get(&(p, t)).map(|f| f.retry_at);
        let mut next: Option<Instant> = None;
        for (p, a) in &self.active {
            let mut wake = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
            match &a.phase {
                Phase::NeedScan => {
                    if let Some(at) = retry(*p, None) {
                        wake(at);
                    }
                }
                Phase::Sending { targets, .. } => {
                    for (t, s) in targets {
                        if !matches!(s, TargetState::Ready) {
                            continue;
                        }
                        // Both must have come: its retry time and the byte budget.
                        match (retry(*p, Some(*t)), budget) {
                            (Some(r), Some(b)) => wake(r.max(b)),
                            (Some(at), None) | (None, Some(at)) => wake(at),
                            (None, None) => {}
                        }
                    }
                }
                Phase::Scanning => {}
            }
        }
        next
    }

    /// Where the transfer stands at `now`.
    pub fn status(&self, now: Instant) -> TransferStatus {
        let elapsed = self
            .started
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        let rate = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let keys_left = self
            .keys_estimate
            .map(|e| e.saturating_sub(self.keys_moved));
        let keys_rate = rate(self.keys_moved);
        TransferStatus {
            version: self.version,
            partitions_total: self.total,
            partitions_pushed: self.pushed,
            partitions_active: self.active.len(),
            keys_moved: self.keys_moved,
            bytes_moved: self.bytes_moved,
            keys_left_estimate: keys_left,
            bytes_per_sec: rate(self.bytes_moved),
            seconds_left_estimate: keys_left
                .filter(|_| keys_rate > 0.0)
                .map(|k| k as f64 / keys_rate),
            stalled: self
                .failures
                .iter()
                .filter(|(_, f)| f.attempts >= TRANSFER_ATTEMPTS_MAX)
                .map(|((partition, target), f)| Stalled {
                    partition: *partition,
                    target: *target,
                    attempts: f.attempts,
                    reason: f.reason.clone(),
                })
                .collect(),
        }
    }

    /// Whether every partition of the current version is pushed.
    pub fn is_done(&self) -> bool {
        self.version.is_some() && self.pushed == self.total
    }
}

/// Reads the next page of `partition` from `store`: its keys after `after`, in the store's
/// partition order ([`Store::scan_partition`]), up to `keys_max` keys or the entry that reaches
/// `bytes_max` bytes (one snapshot scan that starts after `after`, so a partition's pages
/// together walk it once). The node and the simulator answer [`Action::Scan`] with it.
pub fn read_page(
    store: &dyn Store,
    config: RingConfig,
    partition: PartitionId,
    after: Option<&[u8]>,
    keys_max: usize,
    bytes_max: u64,
) -> Result<Page, StoreError> {
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    let mut more = false;
    store.scan_partition(config, partition, after, &mut |key, object| {
        if entries.len() >= keys_max || bytes >= bytes_max {
            more = true;
            return false;
        }
        bytes += (key.len() + object.len()) as u64;
        entries.push(TransferEntry {
            key: key.to_vec(),
            object: object.to_vec(),
        });
        true
    })?;
    Ok(Page {
        entries,
        last: !more,
    })
}

/// A page of the copies node `me` may drop: up to `keys_max` stored keys after `after`, in key
/// order, whose partition `me` replicates in no live version of `layout`
/// ([`Layout::replicates`]), and whether it is the last page. While a transfer is in flight
/// the old version is live, so the old owners keep everything; once it retired they drop. The
/// caller drops each by compare-and-delete (`Write::DropIfUnchanged` with the object read
/// here), so a write or merge that arrived since, or a hinted key, stays.
pub fn unreplicated_page(
    store: &dyn Store,
    config: RingConfig,
    layout: &Layout,
    me: NodeId,
    after: Option<&[u8]>,
    keys_max: usize,
) -> Result<(Vec<TransferEntry>, bool), StoreError> {
    let mut entries = Vec::new();
    let mut more = false;
    store.scan_objects(after, &mut |key, object| {
        if layout.replicates(me, config.partition_of(key)) {
            return true;
        }
        if entries.len() >= keys_max {
            more = true;
            return false;
        }
        entries.push(TransferEntry {
            key: key.to_vec(),
            object: object.to_vec(),
        });
        true
    })?;
    Ok((entries, !more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PEER_BATCH_BYTES_MAX;
    use cairn_proto::limits::PEER_BATCH_ITEMS_MAX;

    fn entry(i: usize, bytes: usize) -> TransferEntry {
        TransferEntry {
            key: format!("{i:04}").into_bytes(),
            object: vec![0; bytes - 4],
        }
    }

    #[test]
    fn batches_keep_order_and_limits_and_a_large_entry_goes_alone() {
        let sizes = [
            PEER_BATCH_BYTES_MAX / 2,
            PEER_BATCH_BYTES_MAX / 2,
            1000,
            PEER_BATCH_BYTES_MAX * 3,
            10,
        ];
        let mut entries: Vec<TransferEntry> = sizes
            .iter()
            .enumerate()
            .map(|(i, b)| entry(i, *b))
            .collect();
        entries.extend((5..5 + PEER_BATCH_ITEMS_MAX + 1).map(|i| entry(i, 100)));
        let got = batches(&entries);
        let lens: Vec<usize> = got.iter().map(|b| b.len()).collect();
        // Two halves fill a batch; the next entry starts one; the large one is alone; the
        // small entries after it fill a batch to the item limit.
        assert_eq!(lens, [2, 1, 1, PEER_BATCH_ITEMS_MAX, 2]);
        let flat: Vec<&TransferEntry> = got.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(flat, entries.iter().collect::<Vec<_>>());
        assert!(batches(&[]).is_empty());
    }
}
