//! A deterministic simulator for gossip: n nodes running the real `Gossip` state machine over
//! virtual time, a seeded RNG, and a network that delays, drops and partitions; nodes crash,
//! pause and restart with a higher generation.
//!
//! Every message goes through `encode`/`decode` (so the codec is exercised and sizes are real)
//! and is checked against the sender's budget. With `check_prefix`, the prefix invariant is
//! checked at the receiver after every message: for every node r it holds, its keys equal r's
//! state as of the version it claims (every write up to its max version, none after). A run is a
//! pure function of its seed; a failing test prints the seed (`SeedGuard`), and `GOSSIP_SEED`
//! replays one.

#![allow(dead_code)] // Each test binary uses a different part of the simulator.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cairn_gossip::{
    Destination, Gossip, GossipConfig, GossipMessage, Key, MembershipEvent, NodeState, NodeView,
    Payload, Status, Storage, Value,
};
use cairn_proto::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Prints the seed of a failing test (on unwind), so it can be replayed with `GOSSIP_SEED`.
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "failing seed: {} (replay with GOSSIP_SEED={})",
                self.0, self.0
            );
        }
    }
}

/// The seed to run: `GOSSIP_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("GOSSIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// Indices of the seed nodes (their addresses go into every node's config).
    pub seeds: Vec<usize>,
    /// Gossip configuration shared by all nodes (seeds are filled in).
    pub gossip: GossipConfig,
    /// Each tick interval is `gossip_interval · (1 ± jitter)`, uniformly.
    pub jitter: f64,
    /// One-way message latency, uniform in this range.
    pub latency: (Duration, Duration),
    /// Fraction of messages dropped.
    pub drop: f64,
    /// Check the prefix invariant after every delivered message.
    pub check_prefix: bool,
}

impl SimConfig {
    /// `nodes` nodes, node 0 the only seed, default gossip, ±10% tick jitter, 1–20 ms latency,
    /// no loss, prefix checks on.
    pub fn new(nodes: usize) -> SimConfig {
        SimConfig {
            nodes,
            seeds: vec![0],
            gossip: GossipConfig::default(),
            jitter: 0.1,
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
            drop: 0.0,
            check_prefix: true,
        }
    }
}

/// Sizes of the messages sent, by kind.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Encoded sizes of every SYN, ACK and ACK2 sent.
    pub syn: Vec<usize>,
    /// ACK sizes.
    pub ack: Vec<usize>,
    /// ACK2 sizes.
    pub ack2: Vec<usize>,
    /// Messages dropped by the network (loss, partition, dead receiver).
    pub dropped: usize,
    /// Messages delivered.
    pub delivered: usize,
}

impl Stats {
    /// One line: count, median and max per kind.
    pub fn summary(&self) -> String {
        fn line(name: &str, sizes: &[usize]) -> String {
            let mut s = sizes.to_vec();
            s.sort_unstable();
            let med = s.get(s.len() / 2).copied().unwrap_or(0);
            let max = s.last().copied().unwrap_or(0);
            let mean = s.iter().sum::<usize>() / s.len().max(1);
            format!(
                "{name}: n={} median={med} B mean={mean} B max={max} B",
                s.len()
            )
        }
        format!(
            "{}; {}; {}; delivered={} dropped={}",
            line("SYN", &self.syn),
            line("ACK", &self.ack),
            line("ACK2", &self.ack2),
            self.delivered,
            self.dropped
        )
    }

    /// Largest message of any kind.
    pub fn max(&self) -> usize {
        self.syn
            .iter()
            .chain(&self.ack)
            .chain(&self.ack2)
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Forgets everything so far (to measure a steady state after warm-up).
    pub fn clear(&mut self) {
        *self = Stats::default();
    }
}

/// The writes of one node in one generation, per key, with the time each was made.
#[derive(Debug, Default)]
struct History {
    /// Per key (in `Key::ALL` order): (version, value), increasing.
    writes: [Vec<(u64, Value)>; Key::ALL.len()],
    /// Every version written, with its time, increasing.
    times: Vec<(u64, Instant)>,
}

impl History {
    /// The write of `key` current at `version`.
    fn at(&self, key: Key, version: u64) -> Option<&(u64, Value)> {
        let w = &self.writes[key as usize];
        let i = w.partition_point(|(v, _)| *v <= version);
        i.checked_sub(1).map(|i| &w[i])
    }

    /// When the first write above `version` was made.
    fn first_after(&self, version: u64) -> Option<Instant> {
        let i = self.times.partition_point(|(v, _)| *v <= version);
        self.times.get(i).map(|(_, t)| *t)
    }

    fn latest(&self, key: Key) -> Option<&(u64, Value)> {
        self.writes[key as usize].last()
    }
}

/// One simulated node.
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// Its gossip; `None` while crashed.
    pub gossip: Option<Gossip>,
    /// Paused: keeps its state but neither ticks nor receives.
    pub paused: bool,
    /// Its current (or last) generation.
    pub generation: u64,
    /// Every event it emitted, with the time.
    pub events: Vec<(Instant, MembershipEvent)>,
    /// Partition side.
    side: u8,
    /// Bumped on crash/pause so stale tick events are ignored.
    epoch: u64,
}

enum Event {
    Tick { node: usize, epoch: u64 },
    Deliver { to: usize, bytes: Vec<u8> },
}

/// The simulated cluster.
pub struct Sim {
    /// The run's seed.
    pub seed: u64,
    /// The run's RNG (network, jitter, and the nodes' injected RNG).
    pub rng: StdRng,
    /// Virtual time zero.
    pub base: Instant,
    /// Virtual now.
    pub now: Instant,
    /// The nodes.
    pub nodes: Vec<SimNode>,
    /// Message sizes.
    pub stats: Stats,
    cfg: SimConfig,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    by_id: HashMap<NodeId, usize>,
    by_address: HashMap<String, usize>,
    history: HashMap<(usize, u64), History>,
}

/// Generation of node `i`'s first start: realistic (seconds since the epoch) so varints have
/// their real length.
pub fn first_generation(i: usize) -> u64 {
    1_700_000_000 + i as u64
}

/// The state node `i` starts with.
pub fn initial_state(i: usize) -> NodeState {
    NodeState {
        address: address(i),
        status: Status::Up,
        zone: Some(format!("zone-{}", i % 3)),
        ring: vec![0xA5; 16],
        load: 1000 + i as u64,
        storage: Storage::Ok,
    }
}

/// Node `i`'s address.
pub fn address(i: usize) -> String {
    format!("10.0.{}.{}:7000", i / 256, i % 256)
}

impl Sim {
    /// A cluster of `cfg.nodes` fresh nodes, each knowing only the seeds; first ticks spread over
    /// the first interval.
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let base = Instant::now();
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            base,
            now: base,
            nodes: Vec::new(),
            stats: Stats::default(),
            cfg,
            queue: BTreeMap::new(),
            seq: 0,
            by_id: HashMap::new(),
            by_address: HashMap::new(),
            history: HashMap::new(),
        };
        for i in 0..sim.cfg.nodes {
            let id = NodeId::from_name(&format!("node-{i}"));
            sim.by_id.insert(id, i);
            sim.by_address.insert(address(i), i);
            sim.nodes.push(SimNode {
                id,
                address: address(i),
                gossip: None,
                paused: false,
                generation: first_generation(i),
                events: Vec::new(),
                side: 0,
                epoch: 0,
            });
            sim.start(i, first_generation(i), initial_state(i));
        }
        sim
    }

    /// The gossip config every node gets (seeds filled in).
    pub fn gossip_config(&self) -> GossipConfig {
        let mut g = self.cfg.gossip.clone();
        g.seeds = self.cfg.seeds.iter().map(|&i| address(i)).collect();
        g
    }

    fn start(&mut self, i: usize, generation: u64, state: NodeState) {
        let g = Gossip::new(
            self.nodes[i].id,
            self.gossip_config(),
            state,
            generation,
            self.now,
        )
        .expect("valid config and state");
        self.nodes[i].gossip = Some(g);
        self.nodes[i].generation = generation;
        self.nodes[i].paused = false;
        self.nodes[i].epoch += 1;
        self.record(i);
        let first = self.interval().mul_f64(self.rng.gen::<f64>());
        self.schedule_tick(i, first);
    }

    /// The gossip interval.
    pub fn interval(&self) -> Duration {
        self.cfg.gossip.gossip_interval
    }

    /// Virtual time elapsed.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Node `i`'s gossip (panics if crashed).
    pub fn gossip(&self, i: usize) -> &Gossip {
        self.nodes[i].gossip.as_ref().expect("node is running")
    }

    /// Index of the node with id `id`.
    pub fn index(&self, id: NodeId) -> usize {
        self.by_id[&id]
    }

    /// Whether node `i` runs (not crashed, not paused).
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].gossip.is_some() && !self.nodes[i].paused
    }

    fn schedule_tick(&mut self, node: usize, after: Duration) {
        let epoch = self.nodes[node].epoch;
        self.push(self.now + after, Event::Tick { node, epoch });
    }

    fn push(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    /// Runs every event up to `deadline`, then sets the clock to it.
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > deadline {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            match event {
                Event::Tick { node, epoch } => self.tick(node, epoch),
                Event::Deliver { to, bytes } => self.deliver(to, bytes),
            }
        }
        self.now = deadline;
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs whole rounds (gossip intervals) until `done` holds at the end of one, at most
    /// `max_rounds`; returns the rounds run, or `None` if it never held.
    pub fn run_rounds_until(
        &mut self,
        max_rounds: u32,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u32> {
        for round in 1..=max_rounds {
            self.run_for(self.interval());
            if done(self) {
                return Some(round);
            }
        }
        None
    }

    fn tick(&mut self, i: usize, epoch: u64) {
        if epoch != self.nodes[i].epoch || !self.running(i) {
            return;
        }
        let now = self.now;
        let g = self.nodes[i].gossip.as_mut().expect("running");
        g.handle_tick(now, &mut self.rng);
        self.record(i);
        self.flush(i);
        let j = self.cfg.jitter;
        let factor = if j > 0.0 {
            1.0 + self.rng.gen_range(-j..=j)
        } else {
            1.0
        };
        let next = self.interval().mul_f64(factor);
        self.schedule_tick(i, next);
    }

    fn deliver(&mut self, to: usize, bytes: Vec<u8>) {
        if !self.running(to) {
            self.stats.dropped += 1;
            return;
        }
        let message = GossipMessage::decode(&bytes).unwrap_or_else(|e| {
            panic!(
                "seed {}: a message the sim encoded does not decode: {e}",
                self.seed
            )
        });
        let from = self.by_id[&message.from];
        // Only the nodes a message carries deltas for can change at its receiver, so checking
        // those after every message checks every node after every message.
        let touched: Vec<usize> = match &message.payload {
            Payload::Syn { .. } => Vec::new(),
            Payload::Ack { deltas, .. } | Payload::Ack2 { deltas } => deltas
                .iter()
                .filter_map(|d| self.by_id.get(&d.node).copied())
                .collect(),
        };
        if self.nodes[from].side != self.nodes[to].side {
            self.stats.dropped += 1;
            return;
        }
        self.stats.delivered += 1;
        let now = self.now;
        let g = self.nodes[to].gossip.as_mut().expect("running");
        g.handle_message(now, message)
            .unwrap_or_else(|e| panic!("seed {}: valid message refused: {e}", self.seed));
        self.flush(to);
        if self.cfg.check_prefix {
            for r in touched {
                self.check_prefix_of(to, r);
            }
        }
    }

    /// Sends node `i`'s transmits into the network and collects its events.
    fn flush(&mut self, i: usize) {
        let budget = self.cfg.gossip.message_bytes_max;
        loop {
            let g = self.nodes[i].gossip.as_mut().expect("running");
            let Some(t) = g.poll_transmit() else { break };
            let bytes = t.message.encode();
            assert!(
                bytes.len() <= budget,
                "seed {}: node {i} sent {} bytes, above the budget of {budget}: {:?}",
                self.seed,
                bytes.len(),
                t.message.payload
            );
            match &t.message.payload {
                Payload::Syn { .. } => self.stats.syn.push(bytes.len()),
                Payload::Ack { .. } => self.stats.ack.push(bytes.len()),
                Payload::Ack2 { .. } => self.stats.ack2.push(bytes.len()),
            }
            let to = match &t.to {
                Destination::Node(id) => self.by_id.get(id).copied(),
                Destination::Seed(addr) => self.by_address.get(addr).copied(),
            };
            let Some(to) = to else {
                self.stats.dropped += 1;
                continue;
            };
            if self.nodes[i].side != self.nodes[to].side || self.rng.gen_bool(self.cfg.drop) {
                self.stats.dropped += 1;
                continue;
            }
            let (lo, hi) = self.cfg.latency;
            let latency = lo + (hi - lo).mul_f64(self.rng.gen::<f64>());
            self.push(self.now + latency, Event::Deliver { to, bytes });
        }
        let now = self.now;
        let node = &mut self.nodes[i];
        let g = node.gossip.as_mut().expect("running");
        while let Some(e) = g.poll_event() {
            node.events.push((now, e));
        }
    }

    /// Records node `i`'s own new writes into its history.
    fn record(&mut self, i: usize) {
        let now = self.now;
        let id = self.nodes[i].id;
        let g = self.nodes[i].gossip.as_ref().expect("running");
        let own = g.node(id).expect("knows itself");
        let h = self.history.entry((i, own.generation())).or_default();
        let mut new: Vec<u64> = Vec::new();
        for key in Key::ALL {
            let v = own.version(key);
            if h.latest(key).is_none_or(|(last, _)| *last < v) {
                h.writes[key as usize].push((v, own.value(key)));
                new.push(v);
            }
        }
        new.sort_unstable();
        for v in new {
            assert!(h.times.last().is_none_or(|(last, _)| *last < v));
            h.times.push((v, now));
        }
    }

    /// Writes `value` at node `i`.
    pub fn set_local(&mut self, i: usize, value: Value) {
        let g = self.nodes[i].gossip.as_mut().expect("running");
        g.set_local(value).expect("a valid value");
        self.record(i);
    }

    /// The prefix invariant at node `q`: for every node r it holds, generation g, max version m,
    /// its keys are exactly r's writes of generation g current at version m.
    pub fn check_prefix(&self, q: usize) {
        for r in 0..self.nodes.len() {
            self.check_prefix_of(q, r);
        }
    }

    /// The prefix invariant at node `q` about node `r`.
    pub fn check_prefix_of(&self, q: usize, r: usize) {
        let g = self.gossip(q);
        {
            let Some(view) = g.node(self.nodes[r].id) else {
                return;
            };
            let h = self
                .history
                .get(&(r, view.generation()))
                .unwrap_or_else(|| {
                    panic!(
                        "seed {}: node {q} holds node {r} at generation {}, which never ran",
                        self.seed,
                        view.generation()
                    )
                });
            for key in Key::ALL {
                let want = h.at(key, view.max_version());
                let ok = match want {
                    None => view.version(key) == 0,
                    Some((version, value)) => view.version(key) == *version && holds(view, value),
                };
                if !ok {
                    let got = (view.version(key) > 0).then(|| (view.version(key), view.value(key)));
                    panic!(
                        "seed {}: prefix invariant broken at node {q} about node {r}, {key:?}: \
                         holds max version {} of generation {}: got {got:?}, want {want:?}",
                        self.seed,
                        view.max_version(),
                        view.generation()
                    );
                }
            }
        }
    }

    /// How long node p's view of node r has been behind r's latest write (zero if current).
    pub fn staleness(&self, p: usize, r: usize) -> Duration {
        let rn = &self.nodes[r];
        let h = &self.history[&(r, rn.generation)];
        let behind_since = match self.gossip(p).node(rn.id) {
            Some(v) if v.generation() == rn.generation => h.first_after(v.max_version()),
            _ => h.times.first().map(|(_, t)| *t),
        };
        behind_since.map_or(Duration::ZERO, |t| self.now.saturating_duration_since(t))
    }

    /// The largest staleness over all pairs of running nodes, with the pair.
    pub fn max_staleness(&self) -> (Duration, usize, usize) {
        let mut worst = (Duration::ZERO, 0, 0);
        for p in (0..self.nodes.len()).filter(|&p| self.running(p)) {
            for r in (0..self.nodes.len()).filter(|&r| self.running(r)) {
                let s = self.staleness(p, r);
                if s > worst.0 {
                    worst = (s, p, r);
                }
            }
        }
        worst
    }

    /// Whether every running node holds every running node's current generation in full, with
    /// every key but the heartbeat at its latest version.
    pub fn converged(&self) -> bool {
        self.converged_among(&(0..self.nodes.len()).collect::<Vec<_>>())
    }

    /// `converged` restricted to the nodes `among`.
    pub fn converged_among(&self, among: &[usize]) -> bool {
        among.iter().filter(|&&p| self.running(p)).all(|&p| {
            let g = self.gossip(p);
            among.iter().filter(|&&r| self.running(r)).all(|&r| {
                let rn = &self.nodes[r];
                let h = &self.history[&(r, rn.generation)];
                g.node(rn.id).is_some_and(|v| {
                    v.is_complete()
                        && v.generation() == rn.generation
                        && Key::ALL
                            .iter()
                            .filter(|&&k| k != Key::Heartbeat)
                            .all(|&k| h.latest(k).is_some_and(|(ver, _)| *ver == v.version(k)))
                })
            })
        })
    }

    /// Whether every running node judges every other running node alive.
    pub fn all_alive(&self) -> bool {
        (0..self.nodes.len()).filter(|&p| self.running(p)).all(|p| {
            (0..self.nodes.len())
                .filter(|&r| self.running(r))
                .all(|r| self.gossip(p).is_alive(self.nodes[r].id))
        })
    }

    /// Crashes node `i`: its state is gone; it neither ticks nor receives.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].gossip = None;
        self.nodes[i].epoch += 1;
    }

    /// Starts node `i` again with a higher generation and `state`, knowing only the seeds.
    pub fn restart(&mut self, i: usize, state: NodeState) {
        let generation = self.nodes[i].generation + 1;
        self.start(i, generation, state);
    }

    /// Pauses node `i` (a stopped process): it keeps its state but neither ticks nor receives.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].paused = true;
        self.nodes[i].epoch += 1;
    }

    /// Resumes a paused node: it ticks at once.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].paused = false;
        self.nodes[i].epoch += 1;
        self.schedule_tick(i, Duration::ZERO);
    }

    /// Splits the network: messages between nodes of different sides are lost.
    pub fn partition(&mut self, side: impl Fn(usize) -> u8) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.side = side(i);
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.partition(|_| 0);
    }

    /// Sets the fraction of messages dropped.
    pub fn set_drop(&mut self, drop: f64) {
        self.cfg.drop = drop;
    }

    /// Events node `i` emitted at or after `since`.
    pub fn events_since(&self, i: usize, since: Instant) -> Vec<MembershipEvent> {
        self.nodes[i]
            .events
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// Whether `view` holds `value` for its key (compared in place: the check runs after every
/// message).
fn holds(view: &NodeView, value: &Value) -> bool {
    let s = view.state();
    match value {
        Value::Address(a) => s.address == *a,
        Value::Status(x) => s.status == *x,
        Value::Zone(z) => s.zone == *z,
        Value::Ring(r) => s.ring == *r,
        Value::Load(l) => s.load == *l,
        Value::Storage(st) => s.storage == *st,
        Value::Heartbeat(h) => view.heartbeat() == *h,
    }
}

/// log2(n) rounded up... as a float, for the convergence bound 3·log2(n) + 5.
pub fn convergence_bound(n: usize) -> u32 {
    (3.0 * (n as f64).log2() + 5.0).floor() as u32
}
