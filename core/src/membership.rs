//! What gossip's state says about each peer, for routing: the judge that turns gossip's events
//! and views (failure detector, heartbeat age, declared status and storage) into the liveness
//! policy's inputs. The node's membership (`node/src/membership.rs`, after every gossip message
//! and tick) and the simulator both run it, so neither holds these rules.
//!
//! - *Alive*: gossip's failure detector judges the peer alive, or it was first seen (in this
//!   generation) less than a grace period ago and has not been convicted since: a member that
//!   just joined or restarted is routed to before its heartbeat has been seen moving, and a
//!   request that fails marks it down at once anyway. A peer that declared `Left` is not alive.
//! - *Late*: its heartbeat is older than `SUSPECT_ROUNDS` gossip intervals, so the probe loop
//!   pings it directly instead of waiting for phi to convict (about 18 rounds).
//! - *Degraded*: it declares that its commits fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cairn_gossip::{
    Destination, Gossip, GossipMessage, MembershipEvent, NodeView, Payload, Status, Transmit,
};
use cairn_layout::held::Stamp;
use cairn_proto::{ErrorReply, NodeId};
use cairn_ring::RingConfig;
use serde::{Deserialize, Serialize};

use crate::limits::LAYOUT_EXCHANGES_MAX;

/// Gossip rounds without a heartbeat after which a member is suspect and pinged directly: phi
/// takes about 18 rounds to convict, a failed ping about one second.
pub const SUSPECT_ROUNDS: u32 = 3;
/// Gossip rounds a newly seen member counts as up before its heartbeat is seen moving (unless
/// a request to it fails first).
pub const NEW_MEMBER_GRACE_ROUNDS: u32 = 5;

/// Gossip's judgement of one peer, for the liveness policy (`Liveness::handle_gossip` and
/// `handle_storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Judged alive (or new and in its grace period).
    pub alive: bool,
    /// Its heartbeat is late: ping it.
    pub late: bool,
    /// It declares its storage degraded.
    pub degraded: bool,
}

/// What one gossip message from a peer did: the message that answers it (an ACK for a SYN, an
/// ACK2 for an ACK), to send back on the same exchange, and everything else gossip wants sent.
#[derive(Debug)]
pub struct Received {
    /// The answer to the sender, if the message asked for one.
    pub reply: Option<GossipMessage>,
    /// Other messages gossip wants sent (to the sender or to others), in order.
    pub others: Vec<Transmit>,
}

/// Takes a gossip message (`bytes`, as the peer protocol carries it) from `sender` into
/// `gossip`: a message that does not decode, or that claims to come from another node than the
/// one that sent it (one node must not speak for another), is refused. The node's membership
/// and the simulator both receive gossip through it.
pub fn receive_gossip(
    gossip: &mut Gossip,
    now: Instant,
    bytes: &[u8],
    sender: NodeId,
) -> Result<Received, ErrorReply> {
    let malformed = |reason: String| ErrorReply::Malformed {
        reason: format!("gossip: {reason}"),
    };
    let message = GossipMessage::decode(bytes).map_err(|e| malformed(e.to_string()))?;
    let from = message.from;
    if from != sender {
        return Err(malformed(format!("a message from {from} sent by {sender}")));
    }
    gossip
        .handle_message(now, message)
        .map_err(|e| malformed(e.to_string()))?;
    let mut received = Received {
        reply: None,
        others: Vec::new(),
    };
    while let Some(t) = gossip.poll_transmit() {
        let answers = t.to == Destination::Node(from)
            && matches!(
                t.message.payload,
                Payload::Ack { .. } | Payload::Ack2 { .. }
            );
        if answers && received.reply.is_none() {
            received.reply = Some(t.message);
        } else {
            received.others.push(t);
        }
    }
    Ok(received)
}

/// What a node gossips in its ring field: its name (ids are hashes of names, so peers can show
/// names and check them), the ring shape it expects, and the stamp of its layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingInfo {
    /// Its configured name.
    pub name: String,
    /// The Q it expects.
    pub partitions: u32,
    /// The N it expects.
    pub replicas: u8,
    /// The stamp of the layout it holds (`None`: none yet).
    pub layout: Option<Stamp>,
}

impl RingInfo {
    /// Its bytes, as gossip's ring field carries them.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("RingInfo always serializes")
    }

    /// Peer `id`'s ring field, checked: it decodes and its name hashes to `id`.
    pub fn read(id: NodeId, bytes: &[u8]) -> Result<RingInfo, String> {
        let info: RingInfo =
            postcard::from_bytes(bytes).map_err(|e| format!("no ring information: {e}"))?;
        if NodeId::from_name(&info.name) != id {
            return Err(format!("its name {} does not match its id", info.name));
        }
        Ok(info)
    }

    /// Whether its ring shape is `config`'s: layouts are exchanged only between members that
    /// agree on Q and N.
    pub fn compatible(&self, config: RingConfig) -> bool {
        self.partitions == config.partitions && usize::from(self.replicas) == config.replicas
    }
}

/// One peer as the layout exchange sees it.
#[derive(Debug, Clone, Copy)]
pub struct LayoutPeer {
    /// The peer.
    pub id: NodeId,
    /// Its ring shape is this node's.
    pub compatible: bool,
    /// The stamp it gossips.
    pub layout: Option<Stamp>,
    /// The liveness policy judges it up.
    pub up: bool,
}

/// The peers to start a layout exchange with now: those up, of this node's ring shape, of the
/// same cluster (layouts of two clusters never merge; only `cairn join` moves a node), that
/// gossip another stamp than `mine`, and with no exchange `running` already; at most `room`
/// of them, and never more than `LAYOUT_EXCHANGES_MAX` running in all. The node's membership
/// and the simulator both choose through it.
pub fn layout_exchange_partners(
    me: NodeId,
    mine: Option<Stamp>,
    peers: impl IntoIterator<Item = LayoutPeer>,
    running: &BTreeSet<NodeId>,
    room: usize,
) -> Vec<NodeId> {
    let room = room.min(LAYOUT_EXCHANGES_MAX.saturating_sub(running.len()));
    peers
        .into_iter()
        .filter(|p| p.id != me && p.compatible && p.up && p.layout != mine)
        .filter(|p| !running.contains(&p.id))
        .filter(|p| match (mine, p.layout) {
            (Some(mine), Some(theirs)) => mine.cluster == theirs.cluster,
            _ => true,
        })
        .map(|p| p.id)
        .take(room)
        .collect()
}

/// Whether a node that declares itself `Joining` has joined: it has heard of another member,
/// so it knows the cluster it joins, and claiming partitions cannot split it.
pub fn joining_ends(gossip: &Gossip, me: NodeId) -> bool {
    gossip.node(me).map(|v| v.status()) == Some(Status::Joining)
        && gossip.members().any(|(id, _)| id != me)
}

/// The judge of one node's peers.
#[derive(Debug)]
pub struct PeerJudge {
    grace: Duration,
    suspect_after: Duration,
    /// When each peer was first seen in its current generation.
    first_seen: BTreeMap<NodeId, (u64, Instant)>,
    /// Peers the failure detector convicted (and that have not been seen up or restarted).
    convicted: BTreeSet<NodeId>,
}

impl PeerJudge {
    /// A judge for gossip rounds of `gossip_interval`.
    pub fn new(gossip_interval: Duration) -> PeerJudge {
        PeerJudge {
            grace: gossip_interval * NEW_MEMBER_GRACE_ROUNDS,
            suspect_after: gossip_interval * SUSPECT_ROUNDS,
            first_seen: BTreeMap::new(),
            convicted: BTreeSet::new(),
        }
    }

    /// One of gossip's events.
    pub fn handle_event(&mut self, event: &MembershipEvent) {
        match event {
            MembershipEvent::NodeDown { node } => {
                self.convicted.insert(*node);
            }
            MembershipEvent::NodeUp { node }
            | MembershipEvent::NodeJoined { node, .. }
            | MembershipEvent::NodeRestarted { node, .. } => {
                self.convicted.remove(node);
            }
            MembershipEvent::NodeRemoved { node } => {
                self.convicted.remove(node);
                self.first_seen.remove(node);
            }
            _ => {}
        }
    }

    /// Peer `id` as gossip holds it (`view`) at `now`.
    pub fn judge(&mut self, now: Instant, id: NodeId, view: &NodeView) -> Judgement {
        let seen = self
            .first_seen
            .entry(id)
            .or_insert((view.generation(), now));
        if seen.0 != view.generation() {
            *seen = (view.generation(), now);
        }
        let in_grace =
            !self.convicted.contains(&id) && now.saturating_duration_since(seen.1) < self.grace;
        let state = view.state();
        Judgement {
            alive: (view.is_alive() || in_grace) && state.status != Status::Left,
            late: view
                .heartbeat_age(now)
                .is_some_and(|age| age > self.suspect_after),
            degraded: state.storage.is_degraded(),
        }
    }
}

#[cfg(test)]
// A test's clock starts at the real now; the core itself only takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use cairn_gossip::{Gossip, GossipConfig, NodeState};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const ROUND: Duration = Duration::from_secs(1);

    #[test]
    fn layout_exchanges_go_to_peers_up_of_this_cluster_with_another_stamp() {
        let stamp = |cluster: u8, version: u64| Stamp {
            cluster: cairn_layout::Digest([cluster; 32]),
            version,
            digest: [version as u8; 32],
        };
        let me = NodeId::from_name("node1");
        let peer = |name: &str, compatible, layout, up| LayoutPeer {
            id: NodeId::from_name(name),
            compatible,
            layout,
            up,
        };
        let mine = Some(stamp(1, 2));
        let peers = [
            peer("node1", true, Some(stamp(1, 3)), true),  // itself
            peer("node2", true, Some(stamp(1, 2)), true),  // same stamp
            peer("node3", true, Some(stamp(1, 3)), true),  // newer: exchange
            peer("node4", true, None, true),               // none yet: exchange
            peer("node5", true, Some(stamp(2, 3)), true),  // another cluster
            peer("node6", false, Some(stamp(1, 3)), true), // another ring shape
            peer("node7", true, Some(stamp(1, 1)), false), // down
            peer("node8", true, Some(stamp(1, 1)), true),  // older: exchange
        ];
        let ids = |names: &[&str]| -> Vec<NodeId> {
            names.iter().map(|n| NodeId::from_name(n)).collect()
        };
        let none = BTreeSet::new();
        assert_eq!(
            layout_exchange_partners(me, mine, peers, &none, usize::MAX),
            ids(&["node3", "node4", "node8"])
        );
        // One exchange per peer, at most `room`, and LAYOUT_EXCHANGES_MAX in all.
        let running: BTreeSet<NodeId> = ids(&["node3"]).into_iter().collect();
        assert_eq!(
            layout_exchange_partners(me, mine, peers, &running, 1),
            ids(&["node4"])
        );
        let full: BTreeSet<NodeId> = (0..LAYOUT_EXCHANGES_MAX)
            .map(|i| NodeId::from_name(&format!("other{i}")))
            .collect();
        assert!(layout_exchange_partners(me, mine, peers, &full, usize::MAX).is_empty());
    }

    #[test]
    fn a_ring_field_is_read_only_under_the_name_of_its_id() {
        let info = RingInfo {
            name: "node2".into(),
            partitions: 64,
            replicas: 3,
            layout: None,
        };
        let id = NodeId::from_name("node2");
        assert_eq!(RingInfo::read(id, &info.encode()), Ok(info.clone()));
        let err = RingInfo::read(NodeId::from_name("node3"), &info.encode()).unwrap_err();
        assert!(err.contains("does not match its id"), "{err}");
        assert!(RingInfo::read(id, b"\xff").is_err());
        let config = |partitions, replicas| RingConfig {
            partitions,
            replicas,
        };
        assert!(info.compatible(config(64, 3)));
        assert!(!info.compatible(config(64, 5)));
        assert!(!info.compatible(config(128, 3)));
    }

    fn gossip(id: u64, name: &str, t0: Instant) -> Gossip {
        let config = GossipConfig::with_interval(ROUND);
        Gossip::new(NodeId(id), config, NodeState::joining(name), 1, t0).unwrap()
    }

    /// One round at `t`: `b` ticks and gossips with `a` (its seed), every message delivered.
    fn round(a: &mut Gossip, b: &mut Gossip, t: Instant, rng: &mut StdRng) {
        b.handle_tick(t, rng);
        let mut to_a: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        while !to_a.is_empty() {
            for m in to_a.drain(..) {
                a.handle_message(t, m.message).unwrap();
            }
            while let Some(m) = a.poll_transmit() {
                b.handle_message(t, m.message).unwrap();
            }
            to_a.extend(std::iter::from_fn(|| b.poll_transmit()));
        }
    }

    #[test]
    fn a_new_member_is_alive_in_its_grace_period_then_late_then_convicted() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let (mut a, mut b) = (gossip(1, "a", t0), gossip(2, "b", t0));
        b.add_seed("a".into()).unwrap();
        let mut judge = PeerJudge::new(ROUND);
        let mut t = t0;
        round(&mut a, &mut b, t, &mut rng);
        while let Some(e) = a.poll_event() {
            judge.handle_event(&e);
        }
        let view = |a: &Gossip| a.node(NodeId(2)).unwrap().clone();
        let j = judge.judge(t, NodeId(2), &view(&a));
        assert!(
            j.alive && !j.late && !j.degraded,
            "new, in its grace period: {j:?}"
        );
        for _ in 0..30 {
            t += ROUND;
            round(&mut a, &mut b, t, &mut rng);
            a.handle_tick(t, &mut rng);
            while a.poll_transmit().is_some() {}
        }
        while let Some(e) = a.poll_event() {
            judge.handle_event(&e);
        }
        let j = judge.judge(t, NodeId(2), &view(&a));
        assert!(j.alive && !j.late, "heard every round: {j:?}");
        // b falls silent: late after SUSPECT_ROUNDS, convicted by phi later.
        let late = t + ROUND * (SUSPECT_ROUNDS + 1);
        assert!(judge.judge(late, NodeId(2), &view(&a)).late);
        let mut convicted = false;
        for _ in 0..60 {
            t += ROUND;
            a.handle_tick(t, &mut rng);
            while a.poll_transmit().is_some() {}
            while let Some(e) = a.poll_event() {
                convicted |= matches!(e, MembershipEvent::NodeDown { .. });
                judge.handle_event(&e);
            }
        }
        assert!(convicted, "phi convicts a silent peer within a minute");
        assert!(!judge.judge(t, NodeId(2), &view(&a)).alive);
    }
}
