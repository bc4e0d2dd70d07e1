//! Peer liveness as a sans-I/O state machine: whether each peer is *up* for routing, from
//! gossip's judgement and the outcome of exchanges with it, and which peers the probe loop
//! should ping now. The node's `peers` module (and the simulator) feed it gossip updates,
//! exchange outcomes and probe results, with the time passed in, and act on its transitions.
//!
//! A peer is up when gossip's failure detector judges it alive *and* the last exchange with it
//! did not fail: gossip convicts a silent node within seconds, a failed request marks a peer
//! down at once, and probes ping peers marked down that way (with doubling backoff) until they
//! answer, and reachable peers whose heartbeat is late (suspects), so a dead one is found by a
//! failed ping long before gossip convicts it.
//!
//! A peer that declares its storage degraded (its last commit failed) is not up either: it
//! refuses writes, so coordinators choose fallbacks in its place and writes keep their W. Reads
//! route around it too — one liveness decision for both, and its data is still on its disk for
//! hints and anti-entropy once it recovers. A successful exchange does not bring it back (it
//! answers pings while its disk fails); only its own gossip saying its commits succeed again
//! does.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use cairn_proto::NodeId;

/// How often the probe loop looks for peers to ping; also the first backoff of a down peer.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between probes of a down peer (the backoff doubles up to this).
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// How long connecting to a peer may take: a request to a node with nothing listening fails
/// after this, not after its own timeout.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ping may take before the peer counts as down.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Time between pings of a suspect peer that keeps answering.
pub const SUSPECT_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A peer became up or down for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// It is up (hint delivery may start).
    Up(NodeId),
    /// It is down; `reason` is the failure that said so.
    Down {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct PeerState {
    /// Transport view: false after an exchange failed, until one succeeds.
    reachable: bool,
    /// Gossip's view: the failure detector judges the node alive.
    alive: bool,
    /// Its heartbeat is late: probes ping it directly.
    suspect: bool,
    /// It declares its storage degraded (commits fail), in gossip.
    degraded: bool,
    /// When the last successful exchange started; failures of exchanges that started earlier
    /// are stale (e.g. a ping sent before the peer was listening) and ignored.
    last_success: Option<Instant>,
    backoff: Duration,
    next_probe: Instant,
}

impl PeerState {
    fn is_up(&self) -> bool {
        self.alive && self.reachable && !self.degraded
    }
}

/// The liveness view of one node over its peers.
#[derive(Debug)]
pub struct Liveness {
    me: NodeId,
    /// This node's own storage is degraded: it does not route requests to itself.
    me_degraded: bool,
    peers: BTreeMap<NodeId, PeerState>,
    transitions: VecDeque<Transition>,
}

impl Liveness {
    /// No peers yet; `me` is up (until its own storage is degraded).
    pub fn new(me: NodeId) -> Liveness {
        Liveness {
            me,
            me_degraded: false,
            peers: BTreeMap::new(),
            transitions: VecDeque::new(),
        }
    }

    /// Gossip's judgement of `id`: `alive` from its failure detector, `suspect` when its
    /// heartbeat is late. A peer not known yet is added, reachable until an exchange fails.
    pub fn handle_gossip(&mut self, now: Instant, id: NodeId, alive: bool, suspect: bool) {
        if id == self.me {
            return;
        }
        let s = self.peers.entry(id).or_insert_with(|| fresh(now, false));
        let was_up = s.is_up();
        if alive && !s.alive {
            // Gossip heard from it (through any node): worth trying again at once.
            s.reachable = true;
            s.backoff = PROBE_INTERVAL;
        }
        s.alive = alive;
        s.suspect = suspect && alive;
        if !was_up && s.is_up() {
            self.transitions.push_back(Transition::Up(id));
        }
    }

    /// What `id` declares in gossip about its storage: `degraded` while its commits fail. A
    /// degraded peer is down for routing until it declares otherwise.
    /// For this node itself, `degraded` comes from its own engine: while it is, this node is
    /// not up for its own routing either, so a client request it receives is forwarded to a
    /// replica that can write rather than coordinated here (a coordinator writes its own copy
    /// first, and that would fail).
    pub fn handle_storage(&mut self, now: Instant, id: NodeId, degraded: bool) {
        if id == self.me {
            self.me_degraded = degraded;
            return;
        }
        let s = self.peers.entry(id).or_insert_with(|| fresh(now, false));
        let was_up = s.is_up();
        s.degraded = degraded;
        match (was_up, s.is_up()) {
            (false, true) => self.transitions.push_back(Transition::Up(id)),
            (true, false) => self.transitions.push_back(Transition::Down {
                node: id,
                reason: "its storage is degraded (commits fail)".into(),
            }),
            _ => {}
        }
    }

    /// `id` moved to a new address: what exchanges said about the old one no longer holds.
    /// Gossip's judgement is kept.
    pub fn handle_new_address(&mut self, now: Instant, id: NodeId) {
        if id == self.me {
            return;
        }
        let old = self.peers.get(&id);
        let alive = old.is_some_and(|s| s.alive);
        let degraded = old.is_some_and(|s| s.degraded);
        let mut s = fresh(now, alive);
        s.degraded = degraded;
        self.peers.insert(id, s);
    }

    /// Forgets `id` (it was removed from the cluster).
    pub fn remove(&mut self, id: NodeId) {
        self.peers.remove(&id);
    }

    /// Whether `id` is up for routing (this node is unless its own storage is degraded).
    pub fn is_up(&self, id: NodeId) -> bool {
        if id == self.me {
            return !self.me_degraded;
        }
        self.peers.get(&id).is_some_and(PeerState::is_up)
    }

    /// An exchange with `id` that started at `started` succeeded (`Ok`) or failed at the
    /// transport (`Err(why)`). A failure older than the last success is ignored.
    pub fn handle_exchange(&mut self, id: NodeId, started: Instant, outcome: Result<(), String>) {
        let Some(s) = self.peers.get_mut(&id) else {
            return;
        };
        if outcome.is_err() && s.last_success.is_some_and(|t| t > started) {
            // A newer exchange already succeeded: this failure says nothing current.
            return;
        }
        let was_up = s.is_up();
        s.reachable = outcome.is_ok();
        if s.reachable {
            s.backoff = PROBE_INTERVAL;
            s.last_success = Some(s.last_success.map_or(started, |t| t.max(started)));
        }
        match (was_up, s.is_up(), outcome) {
            (false, true, _) => self.transitions.push_back(Transition::Up(id)),
            (true, false, Err(reason)) => self
                .transitions
                .push_back(Transition::Down { node: id, reason }),
            _ => {}
        }
    }

    /// The peers to ping now: those gossip judges alive whose last exchange failed (to bring
    /// them back), and reachable suspects (to find a dead one). Peers gossip judges dead are
    /// left to gossip.
    pub fn poll_probes(&self, now: Instant) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, s)| {
                let retry = s.alive && !s.reachable;
                let check = s.suspect && s.reachable;
                (retry || check) && s.next_probe <= now
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// A probe of `id` ended at `now` (`ok`: it answered); its exchange outcome was already
    /// given to `handle_exchange`. Schedules the next probe.
    pub fn handle_probe(&mut self, now: Instant, id: NodeId, ok: bool) {
        let Some(s) = self.peers.get_mut(&id) else {
            return;
        };
        if !ok {
            s.backoff = (s.backoff * 2).min(PROBE_BACKOFF_MAX);
        }
        s.next_probe = now
            + match (ok, s.suspect) {
                // Reachable but its heartbeat is late (a slow gossip path in a large
                // cluster): check again, not in a tight loop.
                (true, true) => SUSPECT_PROBE_INTERVAL,
                (true, false) => PROBE_INTERVAL,
                (false, _) => s.backoff,
            };
    }

    /// The next up/down transition.
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.transitions.pop_front()
    }
}

/// A peer nothing is known of from exchanges: reachable until one fails.
fn fresh(now: Instant, alive: bool) -> PeerState {
    PeerState {
        reachable: true,
        alive,
        suspect: false,
        degraded: false,
        last_success: None,
        backoff: PROBE_INTERVAL,
        next_probe: now,
    }
}
