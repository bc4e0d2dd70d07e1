//! `NodeView`: what one node holds about another (or itself): its versioned keys, generation and
//! failure detector, plus what the driver has been told about it.

use std::time::{Duration, Instant};

use crate::detector::ArrivalWindow;
use crate::limits::KEYS_PER_NODE;
use crate::message::{DigestEntry, Entry};
use crate::{Key, NodeState, Status, Value};

/// One node as this node sees it.
///
/// Keys arrive in version order and a node is only listed by
/// [`Gossip::members`](crate::Gossip::members) once all of its keys for its current generation
/// have arrived ([`NodeView::is_complete`]), so the state of a listed node is never a placeholder.
#[derive(Debug, Clone)]
pub struct NodeView {
    generation: u64,
    /// By the prefix rule, this node holds every write of `generation` up to this version.
    max_version: u64,
    state: NodeState,
    heartbeat: u64,
    /// Version of each key in [`Key::ALL`] order; 0 when it has not arrived.
    versions: [u64; KEYS_PER_NODE],
    detector: ArrivalWindow,
    /// This node's judgement: the heartbeat has been seen moving and phi has stayed below the
    /// threshold since. Always true for the local node.
    alive: bool,
    /// When this node first saw it with status `Left`.
    left_since: Option<Instant>,
    /// The generation the driver was last told about (`NodeJoined` / `NodeRestarted`).
    pub(crate) told_generation: Option<u64>,
    /// What the driver was last told about liveness (`NodeUp` / `NodeDown`).
    pub(crate) told_alive: bool,
    /// Whether the driver was told the node left (`NodeLeft`).
    pub(crate) told_left: bool,
}

impl NodeView {
    /// A node of `generation` of which nothing has arrived yet.
    pub(crate) fn empty(generation: u64, interval_max: Duration) -> NodeView {
        NodeView {
            generation,
            max_version: 0,
            state: NodeState::default(),
            heartbeat: 0,
            versions: [0; KEYS_PER_NODE],
            detector: ArrivalWindow::new(interval_max),
            alive: false,
            left_since: None,
            told_generation: None,
            told_alive: false,
            told_left: false,
        }
    }

    /// Forgets every key for a new generation; keeps the detector (the network path to the node
    /// did not change), liveness and what the driver was told.
    pub(crate) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.max_version = 0;
        self.state = NodeState::default();
        self.heartbeat = 0;
        self.versions = [0; KEYS_PER_NODE];
        self.left_since = None;
    }

    /// The node's generation (incarnation) as this node knows it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The highest version of this generation held; every earlier write is held too.
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    /// The node's state (address, status, zone, ring, load, storage).
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The node's declared status.
    pub fn status(&self) -> Status {
        self.state.status
    }

    /// The node's heartbeat counter.
    pub fn heartbeat(&self) -> u64 {
        self.heartbeat
    }

    /// The version `key` was written at; 0 if it has not arrived.
    pub fn version(&self, key: Key) -> u64 {
        self.versions[key.index()]
    }

    /// The current value of `key` (a placeholder if it has not arrived).
    pub fn value(&self, key: Key) -> Value {
        match key {
            Key::Address => Value::Address(self.state.address.clone()),
            Key::Status => Value::Status(self.state.status),
            Key::Zone => Value::Zone(self.state.zone.clone()),
            Key::Ring => Value::Ring(self.state.ring.clone()),
            Key::Load => Value::Load(self.state.load),
            Key::Storage => Value::Storage(self.state.storage),
            Key::Heartbeat => Value::Heartbeat(self.heartbeat),
        }
    }

    /// Whether every key of the current generation has arrived.
    pub fn is_complete(&self) -> bool {
        self.versions.iter().all(|&v| v > 0)
    }

    /// Whether this node judges it reachable: its heartbeat was seen moving and it has not been
    /// convicted since. Never true for a node that left.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Suspicion that the node is down at `now` (0 for the local node).
    pub fn phi(&self, now: Instant) -> f64 {
        self.detector.phi(now)
    }

    /// Time since its heartbeat last moved; `None` before it has, and for the local node.
    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.detector
            .last_arrival()
            .map(|at| now.saturating_duration_since(at))
    }

    /// The failure detector's window.
    pub fn detector(&self) -> &ArrivalWindow {
        &self.detector
    }

    /// When this node first saw it with status `Left`, if it has that status.
    pub fn left_since(&self) -> Option<Instant> {
        self.left_since
    }

    pub(crate) fn digest_entry(&self, node: cairn_proto::NodeId) -> DigestEntry {
        DigestEntry {
            node,
            generation: self.generation,
            max_version: self.max_version,
        }
    }

    /// Stores `value` at `version` (the caller checked it is newer than the key's).
    pub(crate) fn set(&mut self, value: Value, version: u64) {
        let key = value.key();
        match value {
            Value::Address(a) => self.state.address = a,
            Value::Status(s) => self.state.status = s,
            Value::Zone(z) => self.state.zone = z,
            Value::Ring(r) => self.state.ring = r,
            Value::Load(l) => self.state.load = l,
            Value::Storage(st) => self.state.storage = st,
            Value::Heartbeat(h) => self.heartbeat = h,
        }
        self.versions[key.index()] = version;
        self.max_version = self.max_version.max(version);
    }

    /// The held writes above `from`, oldest first: a delta's entries.
    pub(crate) fn entries_after(&self, from: u64) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Key::ALL
            .iter()
            .filter(|&&k| self.version(k) > from)
            .map(|&k| Entry {
                version: self.version(k),
                value: self.value(k),
            })
            .collect();
        entries.sort_by_key(|e| e.version);
        entries
    }

    /// Moves the max version to the end of an applied delta: by the prefix rule every write up to
    /// it is now held, even those since overwritten.
    pub(crate) fn advance(&mut self, version: u64) {
        self.max_version = self.max_version.max(version);
    }

    pub(crate) fn detector_mut(&mut self) -> &mut ArrivalWindow {
        &mut self.detector
    }

    pub(crate) fn set_alive(&mut self, alive: bool) {
        self.alive = alive;
    }

    pub(crate) fn set_left_since(&mut self, at: Option<Instant>) {
        self.left_since = at;
    }
}
