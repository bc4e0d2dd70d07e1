//! Gossip membership in a simulated node: the gossip crate's state machine (scuttlebutt
//! exchanges, heartbeats, phi accrual, generations) and the core's `PeerJudge`, feeding the
//! liveness policy as `node/src/membership.rs` feeds it: every tick and every message is
//! followed by the judge's verdict on each member (`Liveness::handle_gossip`, `handle_storage`),
//! so a crashed, paused or cut-off node is convicted by its silence and a restarted one comes
//! back under its new generation.
//!
//! What differs from the node: a node's address is its name, a seed is every other node of the
//! run (the node's seeds are its configured ones and the peers it remembers), every node
//! declares itself `Up` at once (no joining rounds). A failing disk is declared in gossip as
//! the node declares it (`declare_storage`, from the writer's storage health). Layout stamps
//! are gossiped and read as the node does (`RingInfo`), and start layout exchanges through the
//! same `layout_exchange_partners`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_core::limits::{GOSSIP_EXCHANGE_TIMEOUT, LAYOUT_EXCHANGE_TIMEOUT};
use cairn_core::liveness::Transition;
use cairn_core::membership::{
    layout_exchange_partners, receive_gossip, LayoutPeer, PeerJudge, RingInfo,
};
use cairn_gossip::{
    Destination, Gossip, GossipConfig, GossipMessage, MembershipEvent, NodeState, Status, Storage,
    Transmit, Value,
};
use cairn_layout::held::{Held, Stamp};
use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse};

use super::{Ctx, Outgoing, SimNode};
use crate::fmt::{node, node_name};
use crate::world::{Event, NodeIx};

/// The simulated nodes' gossip interval (the node's default).
pub const SIM_GOSSIP_INTERVAL: Duration = cairn_gossip::limits::GOSSIP_INTERVAL_DEFAULT;

/// A node's gossip and the judge of its peers (lost on a crash; the generation is not).
#[derive(Debug)]
pub struct SimGossip {
    gossip: Gossip,
    judge: PeerJudge,
    /// The layout stamp this node gossips, and the `layout_seq` it was computed at.
    advertised: Option<(u64, Option<Stamp>)>,
    /// Peers a layout exchange runs with (the node's `layout_exchanges`).
    pub(super) exchanging: BTreeSet<NodeId>,
}

impl SimGossip {
    /// Declares this node's storage state (`Membership::set_storage`).
    pub fn declare_storage(&mut self, storage: Storage) {
        if let Err(e) = self.gossip.set_local(Value::Storage(storage)) {
            unreachable!("a storage state is within gossip's limits: {e}");
        }
    }

    /// The gossip of node `ix` (one of `ids`) in `generation`, with every other node as a seed.
    pub fn new(ix: NodeIx, ids: &[NodeId], generation: u64, now: Instant) -> SimGossip {
        let seeds = (0..ids.len()).filter(|&i| i != ix).map(node_name).collect();
        let config = GossipConfig {
            seeds,
            ..GossipConfig::with_interval(SIM_GOSSIP_INTERVAL)
        };
        let state = NodeState {
            status: Status::Up,
            storage: Storage::Ok,
            ..NodeState::joining(node_name(ix))
        };
        let gossip = Gossip::new(ids[ix], config, state, generation, now)
            .expect("a simulated node's gossip state is within its limits");
        SimGossip {
            gossip,
            judge: PeerJudge::new(SIM_GOSSIP_INTERVAL),
            advertised: None,
            exchanging: BTreeSet::new(),
        }
    }
}

impl SimNode {
    fn gossip_state(&mut self) -> &mut SimGossip {
        self.run().gossip.as_mut().expect("gossip runs here")
    }

    /// Schedules the next gossip tick when its state machine asks for it.
    pub(super) fn arm_gossip(&mut self, cx: &mut Ctx) {
        let due = cx.w.virtual_of(self.gossip_state().gossip.poll_timeout());
        let delay = due.saturating_sub(cx.w.now);
        let gen = self.gen;
        cx.w.after(delay, Event::GossipTick { node: self.ix, gen });
    }

    /// A gossip round: heartbeat, convictions, SYNs.
    pub fn on_gossip_tick(&mut self, cx: &mut Ctx) {
        let now = cx.w.instant();
        let run = self.run.as_mut().expect("running");
        let g = run.gossip.as_mut().expect("gossip runs here");
        g.gossip.handle_tick(now, &mut cx.w.rng);
        let transmits: Vec<Transmit> = std::iter::from_fn(|| g.gossip.poll_transmit()).collect();
        for t in transmits {
            self.gossip_send(cx, t);
        }
        self.gossip_refresh(cx);
        if cx.layout_changes {
            self.start_layout_exchanges(cx);
        }
        self.arm_gossip(cx);
    }

    /// Sends one message (a seed is the node of that name).
    fn gossip_send(&mut self, cx: &mut Ctx, t: Transmit) {
        let to = match &t.to {
            Destination::Node(id) => cx.ids.iter().position(|i| i == id),
            Destination::Seed(name) => (0..cx.ids.len()).find(|&i| node_name(i) == *name),
        };
        let Some(to) = to.filter(|&to| to != self.ix) else {
            return;
        };
        let req = PeerRequest::Gossip(t.message.encode());
        self.request(cx, to, req, Outgoing::Gossip, GOSSIP_EXCHANGE_TIMEOUT);
    }

    /// Takes a message from `from`; returns the reply that answers it (an ACK for a SYN, an
    /// ACK2 for an ACK), as `Membership::receive` does. A message claiming another sender is
    /// refused.
    fn gossip_take(
        &mut self,
        cx: &mut Ctx,
        from: NodeId,
        bytes: &[u8],
    ) -> Result<Option<GossipMessage>, ErrorReply> {
        let now = cx.w.instant();
        let g = self.gossip_state();
        let received = receive_gossip(&mut g.gossip, now, bytes, from)?;
        for t in received.others {
            self.gossip_send(cx, t);
        }
        let reply = received.reply;
        self.gossip_refresh(cx);
        Ok(reply)
    }

    /// Answers `PeerRequest::Gossip` from `from`.
    pub(super) fn gossip_receive(
        &mut self,
        cx: &mut Ctx,
        from: NodeIx,
        message: &[u8],
    ) -> Result<PeerResponse, ErrorReply> {
        let from = cx.ids[from];
        let reply = self.gossip_take(cx, from, message)?;
        Ok(PeerResponse::Gossip(reply.map(|m| m.encode())))
    }

    /// The answer to a gossip message this node sent: its reply is taken, and the reply to
    /// that sent on, until the exchange ends (as `Membership::exchange` carries it).
    pub(super) fn gossip_answer(&mut self, cx: &mut Ctx, peer: NodeId, answer: PeerResponse) {
        let PeerResponse::Gossip(Some(reply)) = answer else {
            return;
        };
        match self.gossip_take(cx, peer, &reply) {
            Ok(Some(next)) => {
                let to = cx.ix(peer);
                let req = PeerRequest::Gossip(next.encode());
                self.request(cx, to, req, Outgoing::Gossip, GOSSIP_EXCHANGE_TIMEOUT);
            }
            Ok(None) => {}
            Err(e) => {
                cx.w.logf(self.me(), || format!("gossip from {}: {e}", node(peer)))
            }
        }
    }

    /// Gossip's events and views to the judge, the judge's verdicts to the liveness policy.
    fn gossip_refresh(&mut self, cx: &mut Ctx) {
        let now = cx.w.instant();
        let me = self.id;
        let run = self.run.as_mut().expect("running");
        let g = run.gossip.as_mut().expect("gossip runs here");
        let mut events = Vec::new();
        while let Some(event) = g.gossip.poll_event() {
            g.judge.handle_event(&event);
            events.push(event);
        }
        for (id, view) in g.gossip.members() {
            if id == me {
                continue;
            }
            let j = g.judge.judge(now, id, view);
            run.liveness.handle_gossip(now, id, j.alive, j.late);
            run.liveness.handle_storage(now, id, j.degraded);
        }
        let transitions: Vec<Transition> =
            std::iter::from_fn(|| run.liveness.poll_transition()).collect();
        let up = transitions.iter().any(|t| matches!(t, Transition::Up(_)));
        for e in events {
            cx.w.logf(self.me(), || match e {
                MembershipEvent::NodeDown { node: p } => {
                    format!("gossip: {} CONVICTED by the failure detector", node(p))
                }
                MembershipEvent::NodeRestarted {
                    node: p,
                    generation,
                } => format!("gossip: {} RESTARTED in generation {generation}", node(p)),
                other => format!("gossip: {other:?}"),
            });
        }
        for t in transitions {
            cx.w.logf(self.me(), || match &t {
                Transition::Up(p) => format!("view: {} is UP (gossip)", node(*p)),
                Transition::Down { node: p, reason } => {
                    format!("view: {} is DOWN ({reason})", node(*p))
                }
            });
        }
        if up {
            self.handoff_up_event(cx);
        }
        if cx.layout_changes {
            self.advertise_stamp(cx);
        }
    }

    /// Gossips this node's layout stamp in its ring field when it changed, as
    /// `Membership::refresh` does.
    fn advertise_stamp(&mut self, cx: &mut Ctx) {
        let seq = self.layout_seq;
        let stale = self
            .run()
            .gossip
            .as_ref()
            .is_none_or(|g| g.advertised.is_none_or(|(at, _)| at != seq));
        if stale {
            let stamp = self.layout.as_ref().map(|layout| {
                Stamp::of(&Held {
                    cluster: cx.cluster,
                    layout: layout.clone(),
                })
            });
            let info = RingInfo {
                name: node_name(self.ix),
                partitions: cx.config.partitions,
                replicas: cx.config.replicas as u8,
                layout: stamp,
            };
            let g = self.gossip_state();
            if let Err(e) = g.gossip.set_local(Value::Ring(info.encode())) {
                unreachable!("a simulated ring field is within gossip's limits: {e}");
            }
            g.advertised = Some((seq, stamp));
        }
    }

    /// Starts a layout exchange with every peer that gossips another stamp
    /// (`layout_exchange_partners`), as `Membership::start_layout_exchanges` does after each
    /// gossip round.
    fn start_layout_exchanges(&mut self, cx: &mut Ctx) {
        let me = self.id;
        let run = self.run.as_mut().expect("running");
        let g = run.gossip.as_ref().expect("gossip runs here");
        let mine = g.advertised.and_then(|(_, s)| s);
        let peers: Vec<LayoutPeer> = g
            .gossip
            .members()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, v)| {
                let info = RingInfo::read(id, &v.state().ring).ok()?;
                Some(LayoutPeer {
                    id,
                    compatible: info.compatible(cx.config),
                    layout: info.layout,
                    up: run.liveness.is_up(id),
                })
            })
            .collect();
        let partners = layout_exchange_partners(me, mine, peers, &g.exchanging, usize::MAX);
        for peer in partners {
            self.gossip_state().exchanging.insert(peer);
            let to = cx.ix(peer);
            let mine = PeerRequest::Layout(self.encoded_layout(cx));
            self.request(cx, to, mine, Outgoing::Layout, LAYOUT_EXCHANGE_TIMEOUT);
        }
    }

    /// A layout exchange with `peer` ended (answered or not).
    pub(super) fn layout_exchange_done(&mut self, peer: NodeId) {
        if let Some(g) = self.run.as_mut().and_then(|r| r.gossip.as_mut()) {
            g.exchanging.remove(&peer);
        }
    }
}
