//! The simulator's world: virtual time, the event queue ordered by (time, sequence number), the
//! one seeded RNG, the faulty network between nodes and clients, and the trace.
//!
//! Everything random goes through `World::rng`, and events at the same instant run in the order
//! they were scheduled, so one seed gives one run, bit for bit.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::msg::{Addr, Body, Envelope};

/// Index of a simulated node, `0..nodes`.
pub type NodeIx = usize;
/// Index of a simulated client.
pub type ClientIx = usize;

/// How a simulated peer request failed, as the transport sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// Nothing listens at the peer: the connection attempt failed, nothing was sent.
    NoConnection,
    /// The request went out and no answer came in time.
    NoAnswer,
}

/// Something that happens at an instant of virtual time.
#[derive(Debug)]
pub enum Event {
    /// A message arrives.
    Deliver(Envelope),
    /// The writer of node `node` (incarnation `gen`) makes its next group commit of the jobs
    /// queued for its disk.
    Disk {
        /// The node.
        node: NodeIx,
        /// Its incarnation when the commit was scheduled: a crash in between loses the jobs.
        gen: u64,
    },
    /// A local read finished (local reads skip the write queue, as in the engine).
    LocalRead {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// The coordinator's op.
        op: cairn_core::coordinator::OpId,
        /// The key.
        key: Vec<u8>,
    },
    /// The coordinator asked to be woken at this instant.
    CoordTimer {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// A peer request failed in the transport: no answer in time, or no connection.
    RequestFailed {
        /// The requesting node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// The request.
        rid: u64,
        /// What the transport saw.
        failure: TransportFailure,
    },
    /// The liveness probe loop ticks.
    ProbeTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// The hint delivery loop wakes up.
    HandoffTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Which arming of the timer this is (stale arms are ignored).
        arm: u64,
    },
    /// The tombstone reaper asked to be woken (its next round).
    ReaperTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Which arming of the timer this is (stale arms are ignored).
        arm: u64,
    },
    /// The transfer machine asked to be woken (a retry, or the byte budget refilled).
    TransferTimer {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// The node sends its layout to a random peer (as gossip spreads layout stamps).
    LayoutTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// The cleanup's timer: a sweep that had to keep keys runs again.
    Cleanup {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Which arming of the timer (older ones are stale).
        arm: u64,
    },
    /// The writer's storage check (`node/src/membership.rs::storage_watch`): a recovery
    /// attempt if one is due, and the storage state declared.
    StorageCheck {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// The gossip state machine's next round is due.
    GossipTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// The anti-entropy driver starts its next round.
    AntiEntropyTick {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
    },
    /// A forwarder waiting for its replica to be judged up again looks again.
    ForwardWait {
        /// The node.
        node: NodeIx,
        /// Its incarnation.
        gen: u64,
        /// Which wait.
        wait: u64,
    },
    /// The operator tries a layout change (`tries` more times while the cluster is not settled).
    LayoutChange {
        /// Attempts left.
        tries: u32,
    },
    /// A client starts its next operation.
    ClientNext(ClientIx),
    /// A client gives up waiting for operation `seq`.
    ClientTimeout {
        /// The client.
        client: ClientIx,
        /// The operation.
        seq: u64,
    },
    /// The fault injector acts.
    Fault,
    /// A node crashes (only while faults are enabled).
    Crash(NodeIx),
    /// A crashed node restarts.
    Restart(NodeIx),
    /// A node's disk starts (`true`) or stops failing its commits.
    DiskFails {
        /// The node.
        node: NodeIx,
        /// Whether commits fail from now on.
        failing: bool,
    },
    /// A node stops running (as SIGSTOP or a long GC pause) until `until`: its events wait,
    /// nothing is lost.
    Pause {
        /// The node.
        node: NodeIx,
        /// When it resumes.
        until: Duration,
    },
    /// The installed partition heals.
    Heal {
        /// Which partition (a later one may have replaced it).
        id: u64,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl Event {
    /// The node whose process handles this event, if one does.
    pub fn node(&self) -> Option<NodeIx> {
        match self {
            Event::Deliver(env) => match env.to {
                Addr::Node(n) => Some(n),
                Addr::Client(_) => None,
            },
            Event::Disk { node, .. }
            | Event::LocalRead { node, .. }
            | Event::CoordTimer { node, .. }
            | Event::RequestFailed { node, .. }
            | Event::ProbeTick { node, .. }
            | Event::HandoffTick { node, .. }
            | Event::ReaperTick { node, .. }
            | Event::TransferTimer { node, .. }
            | Event::LayoutTick { node, .. }
            | Event::Cleanup { node, .. }
            | Event::ForwardWait { node, .. }
            | Event::AntiEntropyTick { node, .. }
            | Event::StorageCheck { node, .. }
            | Event::GossipTick { node, .. } => Some(*node),
            _ => None,
        }
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> Ordering {
        // Reversed: `BinaryHeap` pops the largest, the queue wants the earliest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// How the network misbehaves in one run.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Usual one-way delay range, microseconds.
    pub delay_us: (u64, u64),
    /// Probability that a message is slow (reorders it behind later ones).
    pub slow: f64,
    /// Delay range of slow messages, microseconds.
    pub slow_delay_us: (u64, u64),
}

/// The world every node, client and the fault injector act on.
pub struct World {
    /// Virtual time since the start of the run.
    pub now: Duration,
    /// The instant virtual time 0 stands for (only differences matter).
    pub base: Instant,
    /// The run's only source of randomness.
    pub rng: StdRng,
    /// Network behaviour; `reliable` turns drops, duplicates and partitions off.
    pub net: NetConfig,
    /// Whether the network is reliable now (after healing).
    pub reliable: bool,
    /// Partition group of each node: nodes in different groups cannot talk.
    pub group: Vec<u32>,
    /// Messages sent and not yet delivered or lost, other than pings.
    pub in_flight: usize,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    trace: Option<Vec<String>>,
    /// Events processed.
    pub steps: u64,
}

impl World {
    /// A world for `nodes` nodes, all in one partition group.
    pub fn new(rng: StdRng, net: NetConfig, nodes: usize, trace: bool) -> World {
        World {
            now: Duration::ZERO,
            base: Instant::now(),
            rng,
            net,
            reliable: false,
            group: vec![0; nodes],
            in_flight: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            trace: trace.then(Vec::new),
            steps: 0,
        }
    }

    /// The current virtual time as an `Instant`, for the coordinator.
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Virtual time of `instant`.
    pub fn virtual_of(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.base)
    }

    /// Schedules `event` at `at` (not before now).
    pub fn at(&mut self, at: Duration, event: Event) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq,
            event,
        });
    }

    /// Schedules `event` after `delay`.
    pub fn after(&mut self, delay: Duration, event: Event) {
        self.at(self.now + delay, event);
    }

    /// The next event, advancing the clock to it.
    pub fn pop(&mut self) -> Option<Event> {
        let s = self.queue.pop()?;
        self.now = s.at;
        self.steps += 1;
        Some(s.event)
    }

    /// Time of the next event.
    pub fn peek_time(&self) -> Option<Duration> {
        self.queue.peek().map(|s| s.at)
    }

    /// A uniformly random duration in `[lo, hi]` microseconds.
    pub fn micros(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(self.rng.gen_range(lo..=hi))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }

    /// Whether a message from `a` to `b` crosses the installed partition.
    pub fn cut(&self, a: Addr, b: Addr) -> bool {
        match (a, b) {
            (Addr::Node(x), Addr::Node(y)) => !self.reliable && self.group[x] != self.group[y],
            // Clients reach every node: partitions are between nodes.
            _ => false,
        }
    }

    /// Sends a message: it may be lost (partition, drop), duplicated and delayed.
    pub fn send(&mut self, from: Addr, to: Addr, body: Body) {
        let ping = body.is_ping();
        let what = self.tracing().then(|| body.describe());
        if self.cut(from, to) {
            if let Some(what) = what {
                self.log(from, format!("send {what} -> {to}: LOST (partitioned)"));
            }
            return;
        }
        if !self.reliable && self.chance(self.net.drop) {
            if let Some(what) = what {
                self.log(from, format!("send {what} -> {to}: LOST (dropped)"));
            }
            return;
        }
        // QUIC hands a stream's request to the server once or not at all, so only answers are
        // duplicated (as a retransmission after a lost acknowledgement would look, at worst);
        // a request applied twice would be the node's bug, which rule 5 looks for.
        let duplicable = matches!(body, Body::PeerResp { .. } | Body::ClientResp { .. });
        let copies = if !self.reliable && self.chance(self.net.duplicate) && duplicable {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delay = if self.chance(self.net.slow) {
                self.micros(self.net.slow_delay_us.0, self.net.slow_delay_us.1)
            } else {
                self.micros(self.net.delay_us.0, self.net.delay_us.1)
            };
            if let Some(what) = &what {
                let dup = if copy > 0 { " (DUPLICATE)" } else { "" };
                self.log(
                    from,
                    format!(
                        "send {what} -> {to}{dup}, arrives +{:.3}ms",
                        delay.as_secs_f64() * 1e3
                    ),
                );
            }
            if !ping {
                self.in_flight += 1;
            }
            self.after(
                delay,
                Event::Deliver(Envelope {
                    from,
                    to,
                    body: body.clone(),
                }),
            );
        }
    }

    /// Whether trace lines are being kept (format them only then).
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Adds a trace line for `who`.
    pub fn log(&mut self, who: impl std::fmt::Display, line: impl Into<String>) {
        let now = self.now;
        if let Some(trace) = &mut self.trace {
            trace.push(format!(
                "{:>11.6}s {:<8} {}",
                now.as_secs_f64(),
                who.to_string(),
                line.into()
            ));
        }
    }

    /// Adds a trace line built by `line`, only when tracing.
    pub fn logf(&mut self, who: impl std::fmt::Display, line: impl FnOnce() -> String) {
        if self.tracing() {
            let line = line();
            self.log(who, line);
        }
    }

    /// The trace so far.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace.take().unwrap_or_default()
    }
}
