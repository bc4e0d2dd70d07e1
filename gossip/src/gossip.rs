//! `Gossip`: one node's membership state machine. Ticks and peers' messages go in (`handle_*`),
//! messages to send and membership events come out (`poll_*`).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use cairn_proto::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::limits::{EVENTS_QUEUED_MAX, MEMBERS_MAX, TOMBSTONES_MAX, TRANSMITS_QUEUED_MAX};
use crate::message::{encoded_len, varint_len, Fill};
use crate::{
    DigestEntry, GossipConfig, GossipError, GossipMessage, Key, NodeDelta, NodeState, NodeView,
    Payload, Status, Value,
};

/// Where a message should go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A node this node knows; its address is in its [`NodeView`]'s state. Replies (ACK, ACK2)
    /// go to the sender of the message they answer, which a driver should reach over the stream
    /// that message arrived on.
    Node(NodeId),
    /// A seed, by configured address (its id is not known until it answers).
    Seed(String),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: Destination,
    /// What.
    pub message: GossipMessage,
}

/// A change in membership, for the driver (ring, routing, hinted handoff).
///
/// Events are only about nodes whose whole state has arrived; the first one about a node is
/// `NodeJoined`. None is about the local node except `SelfSuperseded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node is known for the first time (or again, after its tombstone). It is not yet judged
    /// alive: `NodeUp` follows when its heartbeat is seen moving.
    NodeJoined {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// A node started again: a higher generation replaced its whole state. Re-read it.
    NodeRestarted {
        /// The node.
        node: NodeId,
        /// Its new generation.
        generation: u64,
    },
    /// A node is judged reachable: its heartbeat moved.
    NodeUp {
        /// The node.
        node: NodeId,
    },
    /// A node is judged down: phi crossed the threshold.
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// A node wrote a new value for a key (heartbeats excepted).
    StateChanged {
        /// The node.
        node: NodeId,
        /// The key.
        key: Key,
    },
    /// A node declared status `Left`; it no longer takes part, and no `NodeDown` will follow.
    NodeLeft {
        /// The node.
        node: NodeId,
    },
    /// A node that left was dropped after `left_retention`; a tombstone refuses its old state.
    NodeRemoved {
        /// The node.
        node: NodeId,
    },
    /// Some node holds this node's id with a higher generation than it runs: the generation was
    /// not persisted (or another process uses this id). Peers will ignore this node's state until
    /// it starts again with a generation above `generation`.
    SelfSuperseded {
        /// The higher generation seen.
        generation: u64,
    },
    /// The event queue was full (the driver did not poll) and this many events were dropped; the
    /// driver should re-read [`Gossip::members`].
    EventsLost {
        /// Events dropped.
        count: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Tombstone {
    generation: u64,
    until: Instant,
}

/// One node's gossip: its own state, its view of every other node, and the exchanges between
/// them (see the crate documentation for the protocol).
#[derive(Debug)]
pub struct Gossip {
    me: NodeId,
    config: GossipConfig,
    /// Every known node, the local one included; at most `MEMBERS_MAX`.
    nodes: BTreeMap<NodeId, NodeView>,
    tombstones: BTreeMap<NodeId, Tombstone>,
    last_tick: Instant,
    /// Breaks ties between equally stale nodes when a budget cannot fit them all; drawn afresh
    /// every tick from the injected RNG, so no node is always last.
    tie_salt: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    events_lost: u64,
    superseded_seen: u64,
}

impl Gossip {
    /// The gossip of node `me`, started (by its owner) in `generation` with state `state`.
    ///
    /// `generation` must be higher than that of every earlier start of this node (the driver
    /// persists it), or peers keep the older state and ignore this one.
    pub fn new(
        me: NodeId,
        config: GossipConfig,
        state: NodeState,
        generation: u64,
        now: Instant,
    ) -> Result<Gossip, GossipError> {
        config.validate()?;
        state.validate()?;
        let mut own = NodeView::empty(generation, config.arrival_interval_max);
        // A new generation writes every key, in `Key::ALL` order, at versions 1 to `KEYS_PER_NODE`.
        for (version, value) in (1..).zip(state.values()) {
            own.set(value, version);
        }
        own.set(Value::Heartbeat(0), own.max_version() + 1);
        own.set_alive(true);
        own.told_generation = Some(generation);
        own.told_alive = true;
        Ok(Gossip {
            me,
            config,
            nodes: BTreeMap::from([(me, own)]),
            tombstones: BTreeMap::new(),
            last_tick: now,
            tie_salt: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            events_lost: 0,
            superseded_seen: generation,
        })
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's generation.
    pub fn generation(&self) -> u64 {
        self.own().generation()
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Writes one of this node's keys (any but the heartbeat) at a new version; unchanged values
    /// write nothing.
    pub fn set_local(&mut self, value: Value) -> Result<(), GossipError> {
        if value.key() == Key::Heartbeat {
            return Err(GossipError::HeartbeatNotSettable);
        }
        value.validate()?;
        let me = self.me;
        let own = self
            .nodes
            .get_mut(&me)
            .expect("the local node is always known");
        if own.value(value.key()) != value {
            let version = own.max_version() + 1;
            own.set(value, version);
        }
        Ok(())
    }

    /// Adds `seed` to the seed addresses (`cairn join`): a node with no live peer contacts a seed
    /// every round, so a node alone joins the seed's cluster on its next tick. Already listed
    /// seeds are not added twice.
    pub fn add_seed(&mut self, seed: String) -> Result<(), GossipError> {
        if self.config.seeds.contains(&seed) {
            return Ok(());
        }
        let mut config = self.config.clone();
        config.seeds.push(seed);
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// One gossip round, due every `gossip_interval` ([`Gossip::poll_timeout`]).
    ///
    /// 1. If the previous tick was more than `local_pause_max` ago, this node was paused: every
    ///    detector forgives the silence and nobody is convicted this round (Cassandra's guard;
    ///    otherwise a node waking from a long GC pause would declare the whole cluster dead).
    /// 2. Bumps this node's heartbeat.
    /// 3. Convicts every live node whose phi exceeds the threshold.
    /// 4. Drops nodes that left more than `left_retention` ago (leaving tombstones) and expired
    ///    tombstones.
    /// 5. Sends a SYN to a random live node; with probability `down / (live + 1)` to a random down
    ///    node too (Cassandra's rule, so a healed node is noticed); and to a random seed if no
    ///    node is live, or else with probability `seeds / (live + down)` unless the live node
    ///    picked is a seed and at least as many nodes are live as there are seeds (so each seed
    ///    hears from about one node per round, which is what merges views split by a partition
    ///    or by a whole cluster restarting at once).
    pub fn handle_tick<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        let paused = now.saturating_duration_since(self.last_tick) > self.config.local_pause_max;
        self.last_tick = self.last_tick.max(now);
        self.tie_salt = rng.gen();
        let me = self.me;
        let own = self
            .nodes
            .get_mut(&me)
            .expect("the local node is always known");
        let beat = own.heartbeat() + 1;
        let version = own.max_version() + 1;
        own.set(Value::Heartbeat(beat), version);

        let threshold = self.config.phi_threshold;
        let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|&id| id != me).collect();
        for id in ids {
            let view = self.nodes.get_mut(&id).expect("listed just now");
            if paused {
                view.detector_mut().forgive(now);
            } else if view.is_complete()
                && view.is_alive()
                && view.status() != Status::Left
                && view.phi(now) > threshold
            {
                view.set_alive(false);
            }
            self.announce(id, &[]);
        }
        self.expire(now);
        self.send_syns(rng);
    }

    /// Handles a message from a peer: applies its state, and answers a SYN with an ACK and an
    /// ACK with an ACK2 (when the peer asked for anything).
    ///
    /// The message is checked whole first ([`GossipMessage::validate`]); a refused message
    /// changes nothing. Messages from this node's own id are ignored (a seed list naming this
    /// node's address under another spelling).
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: GossipMessage,
    ) -> Result<(), GossipError> {
        message.validate()?;
        let from = message.from;
        if from == self.me {
            return Ok(());
        }
        match message.payload {
            Payload::Syn { digest, complete } => self.on_syn(from, &digest, complete),
            Payload::Ack { deltas, request } => {
                for delta in &deltas {
                    self.apply(now, delta);
                }
                self.on_request(from, &request);
            }
            Payload::Ack2 { deltas } => {
                for delta in &deltas {
                    self.apply(now, delta);
                }
            }
        }
        Ok(())
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next membership event.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if self.events_lost > 0 {
            let count = std::mem::take(&mut self.events_lost);
            return Some(MembershipEvent::EventsLost { count });
        }
        None
    }

    /// When the next tick is due.
    pub fn poll_timeout(&self) -> Instant {
        self.last_tick + self.config.gossip_interval
    }

    /// Every node whose whole state has arrived, this one included, by id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &NodeView)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, view)| view.is_complete())
            .map(|(&id, view)| (id, view))
    }

    /// What this node holds about `node`, complete or not (for inspection and tests).
    pub fn node(&self, node: NodeId) -> Option<&NodeView> {
        self.nodes.get(&node)
    }

    /// Whether this node judges `node` reachable (always true for itself).
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|view| view.is_complete() && view.is_alive())
    }

    /// The generation up to which `node`'s state is refused, if it was removed and its tombstone
    /// has not expired.
    pub fn tombstone(&self, node: NodeId) -> Option<u64> {
        self.tombstones.get(&node).map(|t| t.generation)
    }

    fn own(&self) -> &NodeView {
        self.nodes
            .get(&self.me)
            .expect("the local node is always known")
    }

    /// The SYN of this round: this node's digest entry first, then the others, in random order
    /// and cut to the budget if they do not all fit.
    fn syn<R: Rng + ?Sized>(&self, rng: &mut R) -> GossipMessage {
        let mut digest: Vec<DigestEntry> = self
            .nodes
            .iter()
            .filter(|(&id, _)| id != self.me)
            .map(|(&id, view)| view.digest_entry(id))
            .collect();
        let mut message = GossipMessage {
            from: self.me,
            payload: Payload::Syn {
                digest: vec![self.own().digest_entry(self.me)],
                complete: true,
            },
        };
        let room = self.config.message_bytes_max - message.encoded_len();
        let mut fill = Fill {
            left: room,
            count: 1,
        };
        let Payload::Syn {
            digest: out,
            complete,
        } = &mut message.payload
        else {
            unreachable!("built as a SYN above")
        };
        let sizes: Vec<usize> = digest.iter().map(DigestEntry::encoded_len).collect();
        let all: usize = sizes.iter().sum::<usize>() + varint_len(1 + sizes.len()) - varint_len(1);
        if all <= fill.left {
            out.append(&mut digest);
        } else {
            *complete = false;
            let mut order: Vec<usize> = (0..digest.len()).collect();
            order.shuffle(rng);
            out.extend(
                order
                    .into_iter()
                    .filter(|&i| fill.take(sizes[i]))
                    .map(|i| digest[i]),
            );
        }
        message
    }

    fn send_syns<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let me = self.me;
        let peers: Vec<(NodeId, &NodeView)> = self
            .nodes
            .iter()
            .filter(|(&id, view)| id != me && view.is_complete() && view.status() != Status::Left)
            .map(|(&id, view)| (id, view))
            .collect();
        let live: Vec<NodeId> = peers
            .iter()
            .filter(|(_, v)| v.is_alive())
            .map(|(id, _)| *id)
            .collect();
        let down: Vec<NodeId> = peers
            .iter()
            .filter(|(_, v)| !v.is_alive())
            .map(|(id, _)| *id)
            .collect();
        let own_address = self.own().state().address.as_str();
        let seeds: Vec<&String> = self
            .config
            .seeds
            .iter()
            .filter(|s| s.as_str() != own_address)
            .collect();
        let address = |id: NodeId| self.nodes[&id].state().address.as_str();

        let mut targets: Vec<NodeId> = Vec::new();
        let mut live_is_seed = false;
        if let Some(&peer) = live.choose(rng) {
            targets.push(peer);
            live_is_seed = seeds.iter().any(|s| s.as_str() == address(peer));
        }
        if !down.is_empty() {
            let p = down.len() as f64 / (live.len() + 1) as f64;
            if rng.gen_bool(p.min(1.0)) {
                targets.push(*down.choose(rng).expect("not empty"));
            }
        }
        let mut seed = None;
        if !seeds.is_empty() {
            let p = if live.is_empty() {
                1.0
            } else if live_is_seed && live.len() >= seeds.len() {
                // The seed picked hears from this node anyway. While fewer nodes are live
                // than there are seeds, though, this node may sit in an island that knows
                // nothing of the rest (Cassandra's `live < seeds` rule): after a whole
                // cluster restarts, every peer is a seed, and two nodes that met first would
                // otherwise only ever talk to each other.
                0.0
            } else {
                seeds.len() as f64 / (live.len() + down.len()) as f64
            };
            if rng.gen_bool(p.min(1.0)) {
                let pick = *seeds.choose(rng).expect("not empty");
                // A seed already picked by id needs no second SYN.
                if !targets.iter().any(|&id| address(id) == pick.as_str()) {
                    seed = Some(pick.clone());
                }
            }
        }
        if targets.is_empty() && seed.is_none() {
            return;
        }
        let syn = self.syn(rng);
        let destinations = targets
            .into_iter()
            .map(Destination::Node)
            .chain(seed.map(Destination::Seed));
        for to in destinations {
            self.queue(Transmit {
                to,
                message: syn.clone(),
            });
        }
    }

    /// Answers a SYN: deltas the peer lacks, and requests for what it has newer.
    fn on_syn(&mut self, from: NodeId, digest: &[DigestEntry], complete: bool) {
        // (node, version the peer holds): deltas to send.
        let mut wanted: Vec<(NodeId, u64)> = Vec::new();
        // (request, how far behind this node is): what to ask for.
        let mut requests: Vec<(DigestEntry, u64)> = Vec::new();
        for entry in digest {
            if entry.node == self.me {
                // Only this node writes its state: send what the peer lacks, never ask for it.
                self.check_superseded(entry.generation);
                let own = self.own();
                if own.generation() > entry.generation {
                    wanted.push((self.me, 0));
                } else if own.generation() == entry.generation
                    && own.max_version() > entry.max_version
                {
                    wanted.push((self.me, entry.max_version));
                }
                continue;
            }
            if self.refused(entry.node, entry.generation) {
                continue;
            }
            let request = |max_version, behind| {
                let entry = DigestEntry {
                    node: entry.node,
                    generation: entry.generation,
                    max_version,
                };
                (entry, behind)
            };
            match self.nodes.get(&entry.node) {
                None if entry.max_version > 0 => requests.push(request(0, entry.max_version)),
                None => {}
                Some(view) if view.generation() < entry.generation => {
                    requests.push(request(0, entry.max_version))
                }
                Some(view) if view.generation() > entry.generation => wanted.push((entry.node, 0)),
                Some(view) if view.max_version() < entry.max_version => {
                    let behind = entry.max_version - view.max_version();
                    requests.push(request(view.max_version(), behind));
                }
                Some(view) if view.max_version() > entry.max_version => {
                    wanted.push((entry.node, entry.max_version))
                }
                Some(_) => {}
            }
        }
        if complete {
            let mut listed: Vec<NodeId> = digest.iter().map(|e| e.node).collect();
            listed.sort_unstable();
            wanted.extend(
                self.nodes
                    .keys()
                    .filter(|id| listed.binary_search(id).is_err())
                    .map(|&id| (id, 0)),
            );
        }

        let budget = self.config.message_bytes_max;
        let empty = GossipMessage {
            from: self.me,
            payload: Payload::Ack {
                deltas: Vec::new(),
                request: Vec::new(),
            },
        }
        .encoded_len();
        // Requests take at most half the budget, most-behind first; the deltas get the rest.
        let salt = self.tie_salt;
        requests.sort_by_key(|(e, behind)| (std::cmp::Reverse(*behind), tie(e.node, salt)));
        let half = (budget / 2).saturating_sub(empty);
        let mut fill = Fill {
            left: half,
            count: 0,
        };
        let request: Vec<DigestEntry> = requests
            .into_iter()
            .filter(|(e, _)| fill.take(e.encoded_len()))
            .map(|(e, _)| e)
            .collect();
        let used = half - fill.left;
        let deltas = self.deltas(wanted, budget - empty - used);
        self.queue(Transmit {
            to: Destination::Node(from),
            message: GossipMessage {
                from: self.me,
                payload: Payload::Ack { deltas, request },
            },
        });
    }

    /// Answers an ACK's requests with an ACK2.
    fn on_request(&mut self, from: NodeId, request: &[DigestEntry]) {
        let wanted: Vec<(NodeId, u64)> = request
            .iter()
            .filter_map(|r| {
                let view = self.nodes.get(&r.node)?;
                if view.generation() > r.generation {
                    Some((r.node, 0))
                } else if view.generation() == r.generation && view.max_version() > r.max_version {
                    Some((r.node, r.max_version))
                } else {
                    None
                }
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let empty = GossipMessage {
            from: self.me,
            payload: Payload::Ack2 { deltas: Vec::new() },
        }
        .encoded_len();
        let deltas = self.deltas(wanted, self.config.message_bytes_max - empty);
        self.queue(Transmit {
            to: Destination::Node(from),
            message: GossipMessage {
                from: self.me,
                payload: Payload::Ack2 { deltas },
            },
        });
    }

    /// Deltas for `wanted` (node, version the peer holds) within `room` bytes (the list's length
    /// prefix included), in scuttle-depth order: the nodes the peer is furthest behind on (most
    /// entries to send) first, ties broken by this round's salt. Each node's entries go in
    /// version order and a node that does not fit whole gets the longest prefix that fits.
    fn deltas(&self, wanted: Vec<(NodeId, u64)>, room: usize) -> Vec<NodeDelta> {
        let salt = self.tie_salt;
        // (entries to send, node, view, from): counted without building them, since a tight
        // budget takes only a few.
        let mut candidates: Vec<(usize, NodeId, &NodeView, u64)> = wanted
            .into_iter()
            .filter_map(|(node, from)| {
                let view = self.nodes.get(&node)?;
                let count = Key::ALL.iter().filter(|&&k| view.version(k) > from).count();
                (count > 0).then_some((count, node, view, from))
            })
            .collect();
        candidates.sort_by_key(|&(count, node, _, _)| (std::cmp::Reverse(count), tie(node, salt)));
        let mut fill = Fill {
            left: room,
            count: 0,
        };
        let mut out = Vec::new();
        for (_, node, view, from) in candidates {
            if fill.left <= DELTA_BYTES_MIN {
                break;
            }
            let mut delta = NodeDelta {
                node,
                generation: view.generation(),
                from_version: from,
                entries: Vec::new(),
            };
            // Entry counts stay below 128, so the entries' length prefix is one byte throughout.
            let header = encoded_len(&delta);
            let entries = view.entries_after(from);
            let sizes: Vec<usize> = entries.iter().map(encoded_len).collect();
            if !fill.take(header + sizes[0]) {
                continue;
            }
            let mut fit = 1;
            while fit < sizes.len() && sizes[fit] <= fill.left {
                fill.left -= sizes[fit];
                fit += 1;
            }
            delta.entries = entries;
            delta.entries.truncate(fit);
            out.push(delta);
        }
        out
    }

    /// Applies one node's delta if it continues what this node holds (the prefix rule), and
    /// reports what changed.
    fn apply(&mut self, now: Instant, delta: &NodeDelta) {
        let node = delta.node;
        if node == self.me {
            self.check_superseded(delta.generation);
            return;
        }
        if delta.entries.is_empty() || self.refused(node, delta.generation) {
            return;
        }
        let known = self.nodes.contains_key(&node);
        if !known && (delta.from_version != 0 || self.nodes.len() >= MEMBERS_MAX) {
            return;
        }
        self.tombstones.remove(&node);
        let interval_max = self.config.arrival_interval_max;
        let view = self
            .nodes
            .entry(node)
            .or_insert_with(|| NodeView::empty(delta.generation, interval_max));
        if delta.generation < view.generation() {
            return;
        }
        if delta.generation > view.generation() {
            if delta.from_version != 0 {
                return;
            }
            view.restart(delta.generation);
        } else if delta.from_version > view.max_version() {
            // A gap: this node lacks writes between its max version and the delta's start.
            return;
        }
        // Changes are reported only for a generation the driver already knows in full.
        let told = view.told_generation == Some(view.generation()) && view.is_complete();
        let mut changed: Vec<Key> = Vec::new();
        let mut beat = None;
        for entry in &delta.entries {
            let key = entry.value.key();
            let held = view.version(key);
            if entry.version <= held {
                continue;
            }
            if key == Key::Heartbeat {
                beat = Some(held);
            } else if told && view.value(key) != entry.value {
                changed.push(key);
            }
            view.set(entry.value.clone(), entry.version);
        }
        if let Some(last) = delta.entries.last() {
            view.advance(last.version);
        }
        if let Some(held) = beat {
            view.detector_mut().report(now);
            // The first heartbeat of a generation may be old news relayed by others; only a
            // heartbeat seen moving proves the node runs.
            if held > 0 && view.version(Key::Status) > 0 && view.status() != Status::Left {
                view.set_alive(true);
            }
        }
        if view.version(Key::Status) > 0 && view.status() == Status::Left {
            if view.left_since().is_none() {
                view.set_left_since(Some(now));
            }
            view.set_alive(false);
        } else {
            view.set_left_since(None);
        }
        self.announce(node, &changed);
    }

    /// Tells the driver whatever it has not been told about `node`: joined or restarted, changed
    /// keys, left, up or down. Nothing is said about a node before its whole state arrived.
    fn announce(&mut self, node: NodeId, changed: &[Key]) {
        let Some(view) = self.nodes.get_mut(&node) else {
            return;
        };
        if !view.is_complete() {
            return;
        }
        let mut events = Vec::new();
        match view.told_generation {
            None => events.push(MembershipEvent::NodeJoined {
                node,
                generation: view.generation(),
            }),
            Some(g) if g != view.generation() => events.push(MembershipEvent::NodeRestarted {
                node,
                generation: view.generation(),
            }),
            Some(_) => events.extend(
                changed
                    .iter()
                    .map(|&key| MembershipEvent::StateChanged { node, key }),
            ),
        }
        view.told_generation = Some(view.generation());
        let left = view.status() == Status::Left;
        if left && !view.told_left {
            events.push(MembershipEvent::NodeLeft { node });
            // Leaving is not failing: no NodeDown follows.
            view.told_alive = false;
        }
        view.told_left = left;
        if view.is_alive() != view.told_alive {
            view.told_alive = view.is_alive();
            events.push(if view.is_alive() {
                MembershipEvent::NodeUp { node }
            } else {
                MembershipEvent::NodeDown { node }
            });
        }
        for event in events {
            self.event(event);
        }
    }

    /// Drops nodes that left long enough ago, and expired tombstones.
    fn expire(&mut self, now: Instant) {
        self.tombstones.retain(|_, t| t.until > now);
        let retention = self.config.left_retention;
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(&id, view)| {
                id != self.me
                    && view
                        .left_since()
                        .is_some_and(|at| now.saturating_duration_since(at) >= retention)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            let view = self.nodes.remove(&id).expect("listed just now");
            if self.tombstones.len() >= TOMBSTONES_MAX {
                let soonest = self
                    .tombstones
                    .iter()
                    .min_by_key(|(_, t)| t.until)
                    .map(|(&id, _)| id)
                    .expect("a full table");
                self.tombstones.remove(&soonest);
            }
            self.tombstones.insert(
                id,
                Tombstone {
                    generation: view.generation(),
                    until: now + self.config.tombstone_retention,
                },
            );
            if view.told_generation.is_some() {
                self.event(MembershipEvent::NodeRemoved { node: id });
            }
        }
    }

    /// Whether state of `node` in `generation` is refused by a tombstone.
    fn refused(&self, node: NodeId, generation: u64) -> bool {
        self.tombstones
            .get(&node)
            .is_some_and(|t| generation <= t.generation)
    }

    fn check_superseded(&mut self, generation: u64) {
        if generation > self.superseded_seen {
            self.superseded_seen = generation;
            self.event(MembershipEvent::SelfSuperseded { generation });
        }
    }

    fn queue(&mut self, transmit: Transmit) {
        if self.transmits.len() == TRANSMITS_QUEUED_MAX {
            self.transmits.pop_front();
        }
        self.transmits.push_back(transmit);
    }

    fn event(&mut self, event: MembershipEvent) {
        if self.events.len() == EVENTS_QUEUED_MAX {
            self.events_lost += 1;
        } else {
            self.events.push_back(event);
        }
    }
}

/// Fewer bytes than any delta takes (node, generation, from version, count, one entry of at
/// least version, tag and one byte); below this, filling stops.
const DELTA_BYTES_MIN: usize = 7;

/// A per-round pseudo-random rank for `node` (splitmix64 of the id and the round's salt), so ties
/// between equally stale nodes fall differently every round.
fn tie(node: NodeId, salt: u64) -> u64 {
    let mut z = node.0 ^ salt;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
