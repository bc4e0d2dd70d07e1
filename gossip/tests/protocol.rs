//! The protocol between a few hand-driven nodes: meeting through a seed, local writes, the prefix
//! rule on crafted deltas, exact byte budgets, configuration checks, and the codec (table-driven
//! refusals and proptest: random bytes never panic, valid messages round-trip).

use std::time::{Duration, Instant};

use cairn_gossip::limits::{
    CONFIG_DURATION_MAX, KEYS_PER_NODE, MEMBERS_MAX, MESSAGE_BYTES_MAX, MESSAGE_BYTES_MIN,
    RING_BYTES_MAX, SEEDS_MAX,
};
use cairn_gossip::Destination;
use cairn_gossip::{
    DigestEntry, Entry, Gossip, GossipConfig, GossipError, GossipMessage, Key, MembershipEvent,
    NodeDelta, NodeState, Payload, Status, Storage, Transmit, Value,
};
use cairn_proto::NodeId;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn id(name: &str) -> NodeId {
    NodeId::from_name(name)
}

fn state(name: &str) -> NodeState {
    NodeState {
        status: Status::Up,
        ..NodeState::joining(format!("{name}:7000"))
    }
}

fn config(seeds: &[&str]) -> GossipConfig {
    GossipConfig {
        seeds: seeds.iter().map(|s| s.to_string()).collect(),
        ..GossipConfig::default()
    }
}

/// A few nodes and the wire between them: delivers every queued message (SYN by seed address or
/// id, replies by id) until none is left, passing each through encode/decode.
struct Net {
    nodes: Vec<(String, Gossip)>,
    now: Instant,
    rng: StdRng,
}

impl Net {
    fn new(names: &[&str], seeds: &[&str]) -> Net {
        let now = Instant::now();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, &name)| {
                let g =
                    Gossip::new(id(name), config(seeds), state(name), 100 + i as u64, now).unwrap();
                (name.to_string(), g)
            })
            .collect();
        Net {
            nodes,
            now,
            rng: StdRng::seed_from_u64(31),
        }
    }

    fn index(&self, to: &Destination) -> usize {
        self.nodes
            .iter()
            .position(|(name, g)| match to {
                Destination::Node(n) => g.me() == *n,
                Destination::Seed(addr) => *addr == format!("{name}:7000"),
            })
            .expect("a known destination")
    }

    fn pump(&mut self) {
        loop {
            let mut sent: Vec<Transmit> = Vec::new();
            for (_, g) in &mut self.nodes {
                while let Some(t) = g.poll_transmit() {
                    sent.push(t);
                }
            }
            if sent.is_empty() {
                return;
            }
            for t in sent {
                let to = self.index(&t.to);
                let message = GossipMessage::decode(&t.message.encode()).unwrap();
                self.nodes[to].1.handle_message(self.now, message).unwrap();
            }
        }
    }

    /// Every node ticks once, one second after the last round, then messages flow.
    fn round(&mut self) {
        self.now += Duration::from_secs(1);
        for (_, g) in &mut self.nodes {
            g.handle_tick(self.now, &mut self.rng);
        }
        self.pump();
    }

    fn events(&mut self, i: usize) -> Vec<MembershipEvent> {
        std::iter::from_fn(|| self.nodes[i].1.poll_event()).collect()
    }

    fn g(&self, i: usize) -> &Gossip {
        &self.nodes[i].1
    }
}

#[test]
fn two_nodes_meet_through_a_seed() {
    let mut net = Net::new(&["a", "b"], &["a:7000"]);
    let (a, b) = (id("a"), id("b"));
    // The seed's only seed is itself, so it has nobody to talk to; b turns to the seed.
    net.now += Duration::from_secs(1);
    let now = net.now;
    net.nodes[0].1.handle_tick(now, &mut net.rng);
    assert_eq!(net.nodes[0].1.poll_transmit(), None);
    net.nodes[1].1.handle_tick(now, &mut net.rng);
    let syn = net.nodes[1].1.poll_transmit().expect("a SYN to the seed");
    assert_eq!(syn.to, Destination::Seed("a:7000".into()));
    assert!(matches!(
        syn.message.payload,
        Payload::Syn { complete: true, .. }
    ));
    net.nodes[0].1.handle_message(now, syn.message).unwrap();
    net.pump();
    // Both know each other in full after one exchange, but neither has seen the other's
    // heartbeat move yet.
    assert_eq!(
        net.events(0),
        vec![MembershipEvent::NodeJoined {
            node: b,
            generation: 101
        }]
    );
    assert_eq!(
        net.events(1),
        vec![MembershipEvent::NodeJoined {
            node: a,
            generation: 100
        }]
    );
    assert!(!net.g(0).is_alive(b) && !net.g(1).is_alive(a));
    net.round();
    assert_eq!(net.events(0), vec![MembershipEvent::NodeUp { node: b }]);
    assert_eq!(net.events(1), vec![MembershipEvent::NodeUp { node: a }]);
    for i in 0..2 {
        let members: Vec<NodeId> = net.g(i).members().map(|(id, _)| id).collect();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(members, want);
    }
    let view = net.g(0).node(b).unwrap();
    assert_eq!(view.state(), &state("b"));
    assert_eq!(view.generation(), 101);
    assert!(view.heartbeat_age(net.now).unwrap() < Duration::from_secs(1));
    assert!(view.phi(net.now) < 1.0);
    assert_eq!(net.g(0).poll_timeout(), net.now + Duration::from_secs(1));
}

#[test]
fn a_node_alone_joins_through_a_seed_added_later() {
    // Neither node has a seed: both are alone and send nothing.
    let mut net = Net::new(&["a", "b"], &[]);
    net.round();
    assert_eq!(net.g(1).members().count(), 1);
    // `cairn join a:7000` at b: its next round contacts a, and both learn each other.
    net.nodes[1].1.add_seed("a:7000".into()).unwrap();
    net.nodes[1].1.add_seed("a:7000".into()).unwrap();
    assert_eq!(net.g(1).config().seeds, vec!["a:7000".to_string()]);
    net.round();
    for i in 0..2 {
        assert_eq!(net.g(i).members().count(), 2, "node {i} knows both");
    }
    // A seed list cannot grow past its limit.
    let mut g = Gossip::new(id("c"), config(&[]), state("c"), 1, net.now).unwrap();
    for i in 0..SEEDS_MAX {
        g.add_seed(format!("s{i}:1")).unwrap();
    }
    assert_eq!(
        g.add_seed("one-too-many:1".into()),
        Err(GossipError::TooManySeeds {
            count: SEEDS_MAX + 1,
            max: SEEDS_MAX,
        })
    );
}

#[test]
fn local_writes_get_new_versions_and_reach_peers() {
    let mut net = Net::new(&["a", "b"], &["a:7000"]);
    net.round();
    net.round();
    net.events(0);
    let b = id("b");
    let before = net.g(1).node(b).unwrap().max_version();
    net.nodes[1].1.set_local(Value::Load(5)).unwrap();
    assert_eq!(net.g(1).node(b).unwrap().max_version(), before + 1);
    assert_eq!(net.g(1).node(b).unwrap().version(Key::Load), before + 1);
    // Writing the same value again writes nothing.
    net.nodes[1].1.set_local(Value::Load(5)).unwrap();
    assert_eq!(net.g(1).node(b).unwrap().max_version(), before + 1);
    assert_eq!(
        net.nodes[1].1.set_local(Value::Heartbeat(9)),
        Err(GossipError::HeartbeatNotSettable)
    );
    assert_eq!(
        net.nodes[1]
            .1
            .set_local(Value::Ring(vec![0; RING_BYTES_MAX + 1])),
        Err(GossipError::ValueTooLong {
            key: Key::Ring,
            len: RING_BYTES_MAX + 1,
            max: RING_BYTES_MAX
        })
    );
    net.round();
    assert_eq!(
        net.events(0),
        vec![MembershipEvent::StateChanged {
            node: b,
            key: Key::Load
        }]
    );
    assert_eq!(net.g(0).node(b).unwrap().state().load, 5);
}

/// A node's storage state is one more key: declared degraded, then ok again, and every peer
/// sees each in turn.
#[test]
fn a_degraded_storage_reaches_peers_and_so_does_its_recovery() {
    let mut net = Net::new(&["a", "b"], &["a:7000"]);
    net.round();
    net.round();
    net.events(0);
    let b = id("b");
    assert_eq!(net.g(0).node(b).unwrap().state().storage, Storage::Ok);
    let full = Storage::Degraded { disk_full: true };
    net.nodes[1].1.set_local(Value::Storage(full)).unwrap();
    net.round();
    assert_eq!(
        net.events(0),
        vec![MembershipEvent::StateChanged {
            node: b,
            key: Key::Storage
        }]
    );
    assert_eq!(net.g(0).node(b).unwrap().state().storage, full);
    assert!(full.is_degraded());
    net.nodes[1]
        .1
        .set_local(Value::Storage(Storage::Ok))
        .unwrap();
    net.round();
    assert_eq!(net.g(0).node(b).unwrap().state().storage, Storage::Ok);
}

/// A node's own id with a higher generation elsewhere means its generation was not persisted.
#[test]
fn a_higher_generation_of_this_node_is_reported() {
    let now = Instant::now();
    let me = id("me");
    let mut g = Gossip::new(me, config(&[]), state("me"), 7, now).unwrap();
    let syn = GossipMessage {
        from: id("peer"),
        payload: Payload::Syn {
            digest: vec![DigestEntry {
                node: me,
                generation: 9,
                max_version: 3,
            }],
            complete: false,
        },
    };
    g.handle_message(now, syn).unwrap();
    assert_eq!(
        g.poll_event(),
        Some(MembershipEvent::SelfSuperseded { generation: 9 })
    );
    assert_eq!(g.generation(), 7);
}

fn full_delta(node: NodeId, generation: u64) -> NodeDelta {
    NodeDelta {
        node,
        generation,
        from_version: 0,
        entries: vec![
            Entry {
                version: 1,
                value: Value::Address("r:7000".into()),
            },
            Entry {
                version: 2,
                value: Value::Status(Status::Up),
            },
            Entry {
                version: 3,
                value: Value::Zone(None),
            },
            Entry {
                version: 4,
                value: Value::Ring(vec![]),
            },
            Entry {
                version: 5,
                value: Value::Load(0),
            },
            Entry {
                version: 6,
                value: Value::Storage(Storage::Ok),
            },
            Entry {
                version: 7,
                value: Value::Heartbeat(0),
            },
        ],
    }
}

fn ack2(deltas: Vec<NodeDelta>) -> GossipMessage {
    GossipMessage {
        from: id("peer"),
        payload: Payload::Ack2 { deltas },
    }
}

/// The prefix rule on crafted deltas about node r, held at generation 5 up to version 7: a delta
/// applies only if it continues what is held (same generation, starting at or below the held max
/// version) or replaces it whole (a higher generation, from version 0).
#[test]
fn deltas_apply_only_without_gaps() {
    let r = id("r");
    #[track_caller]
    fn check(delta: NodeDelta, expected: (u64, u64), load: u64) {
        let now = Instant::now();
        let r = id("r");
        let mut g = Gossip::new(id("me"), config(&[]), state("me"), 1, now).unwrap();
        g.handle_message(now, ack2(vec![full_delta(r, 5)])).unwrap();
        g.handle_message(now, ack2(vec![delta])).unwrap();
        let view = g.node(r).unwrap();
        assert_eq!((view.generation(), view.max_version()), expected);
        assert_eq!(view.state().load, load);
    }
    let load = |generation, from_version, version| NodeDelta {
        node: r,
        generation,
        from_version,
        entries: vec![Entry {
            version,
            value: Value::Load(9),
        }],
    };
    // Continues from the held max version: applied.
    check(load(5, 7, 8), (5, 8), 9);
    // Starts below the held max: the held part is skipped, the rest applied.
    check(load(5, 3, 9), (5, 9), 9);
    // Starts above the held max: versions 8..=9 are missing, so nothing applies.
    check(load(5, 9, 10), (5, 7), 0);
    // An older generation: ignored.
    check(load(4, 0, 9), (5, 7), 0);
    // A newer generation not from the start: its earlier writes are missing.
    check(load(6, 2, 9), (5, 7), 0);
    // A newer generation from the start replaces everything, even if cut short.
    check(load(6, 0, 3), (6, 3), 9);
    // Already held: nothing changes.
    check(load(5, 0, 5), (5, 7), 0);
}

/// A new generation replaces the state whole; the driver hears `NodeRestarted` once it is
/// complete, and until then the node is not listed.
#[test]
fn a_new_generation_is_announced_when_complete() {
    let now = Instant::now();
    let r = id("r");
    let mut g = Gossip::new(id("me"), config(&[]), state("me"), 1, now).unwrap();
    g.handle_message(now, ack2(vec![full_delta(r, 5)])).unwrap();
    assert_eq!(
        g.poll_event(),
        Some(MembershipEvent::NodeJoined {
            node: r,
            generation: 5
        })
    );
    let mut next = full_delta(r, 6);
    let tail = next.entries.split_off(3);
    g.handle_message(now, ack2(vec![next])).unwrap();
    assert_eq!(g.poll_event(), None);
    assert!(
        g.members().all(|(id, _)| id != r),
        "an incomplete node is not listed"
    );
    let rest = NodeDelta {
        node: r,
        generation: 6,
        from_version: 3,
        entries: tail,
    };
    g.handle_message(now, ack2(vec![rest])).unwrap();
    assert_eq!(
        g.poll_event(),
        Some(MembershipEvent::NodeRestarted {
            node: r,
            generation: 6
        })
    );
    assert!(g.members().any(|(id, _)| id == r));
}

/// Fills a node's view with `count` other nodes, each with a long address, so its messages have
/// more to say than a small budget holds.
fn crowded(budget: usize, count: usize) -> Gossip {
    let now = Instant::now();
    let mut g = Gossip::new(
        id("me"),
        GossipConfig {
            message_bytes_max: budget,
            ..config(&[])
        },
        state("me"),
        1_700_000_000,
        now,
    )
    .unwrap();
    let deltas: Vec<NodeDelta> = (0..count)
        .map(|i| {
            let mut d = full_delta(id(&format!("n{i}")), 1_700_000_000 + i as u64);
            d.entries[0].value = Value::Address(format!("node-{i}.example.internal:7000"));
            d
        })
        .collect();
    g.handle_message(now, ack2(deltas)).unwrap();
    g
}

/// Messages are cut to the budget exactly: never over, and never short by more than one item.
#[test]
fn messages_fill_the_budget_and_never_exceed_it() {
    for budget in [MESSAGE_BYTES_MIN, 2048, 4096] {
        let mut g = crowded(budget, 300);
        let mut rng = StdRng::seed_from_u64(budget as u64);
        let now = Instant::now() + Duration::from_secs(1);
        // A SYN: own entry first, then a random subset of the 300 others.
        let stranger = id("stranger");
        g.handle_message(
            now,
            GossipMessage {
                from: stranger,
                payload: Payload::Syn {
                    digest: vec![DigestEntry {
                        node: stranger,
                        generation: 1,
                        max_version: KEYS_PER_NODE as u64,
                    }],
                    complete: true,
                },
            },
        )
        .unwrap();
        let ack = g.poll_transmit().expect("an ACK").message;
        let len = ack.encode().len();
        assert_eq!(len, ack.encoded_len());
        assert!(
            len <= budget && len + 64 > budget,
            "ACK of {len} bytes for {budget}"
        );
        let Payload::Ack { deltas, request } = &ack.payload else {
            panic!("{ack:?}")
        };
        assert_eq!(request.len(), 1, "it asks the stranger for its state");
        assert!(deltas.len() < 300, "the budget cuts the deltas");

        g.handle_tick(now, &mut rng);
        // Nobody is alive yet: the SYN goes to a "down" node.
        let syn = g.poll_transmit().expect("a SYN").message;
        let len = syn.encode().len();
        assert!(
            len <= budget && len + 31 > budget,
            "SYN of {len} bytes for {budget}"
        );
        let Payload::Syn { digest, complete } = &syn.payload else {
            panic!("{syn:?}")
        };
        assert!(!complete);
        assert_eq!(digest[0].node, id("me"));

        // An ACK asking for everyone gets an ACK2 cut to the budget.
        let request: Vec<DigestEntry> = (0..300)
            .map(|i| DigestEntry {
                node: id(&format!("n{i}")),
                generation: 1_700_000_000 + i as u64,
                max_version: 0,
            })
            .collect();
        g.handle_message(
            now,
            GossipMessage {
                from: stranger,
                payload: Payload::Ack {
                    deltas: vec![],
                    request,
                },
            },
        )
        .unwrap();
        let ack2 = std::iter::from_fn(|| g.poll_transmit())
            .find(|t| matches!(t.message.payload, Payload::Ack2 { .. }))
            .expect("an ACK2")
            .message;
        let len = ack2.encode().len();
        assert!(
            len <= budget && len + 64 > budget,
            "ACK2 of {len} bytes for {budget}"
        );
    }
}

#[test]
fn configurations_are_checked() {
    #[track_caller]
    fn check(change: impl FnOnce(&mut GossipConfig), expected: GossipError) {
        let mut c = GossipConfig::default();
        change(&mut c);
        assert_eq!(c.validate(), Err(expected.clone()));
        let made = Gossip::new(id("me"), c, state("me"), 1, Instant::now());
        assert_eq!(made.err(), Some(expected));
    }
    assert_eq!(GossipConfig::default().validate(), Ok(()));
    check(
        |c| c.message_bytes_max = MESSAGE_BYTES_MIN - 1,
        GossipError::BudgetOutOfRange {
            budget: MESSAGE_BYTES_MIN - 1,
            min: MESSAGE_BYTES_MIN,
            max: MESSAGE_BYTES_MAX,
        },
    );
    check(
        |c| c.message_bytes_max = MESSAGE_BYTES_MAX + 1,
        GossipError::BudgetOutOfRange {
            budget: MESSAGE_BYTES_MAX + 1,
            min: MESSAGE_BYTES_MIN,
            max: MESSAGE_BYTES_MAX,
        },
    );
    check(
        |c| c.phi_threshold = 0.0,
        GossipError::PhiThresholdInvalid { threshold: 0.0 },
    );
    check(
        |c| c.phi_threshold = f64::INFINITY,
        GossipError::PhiThresholdInvalid {
            threshold: f64::INFINITY,
        },
    );
    check(
        |c| c.gossip_interval = Duration::ZERO,
        GossipError::ZeroDuration {
            field: "gossip_interval",
        },
    );
    check(
        |c| c.local_pause_max = Duration::ZERO,
        GossipError::ZeroDuration {
            field: "local_pause_max",
        },
    );
    check(
        |c| c.tombstone_retention = CONFIG_DURATION_MAX * 2,
        GossipError::DurationTooLong {
            field: "tombstone_retention",
            value: CONFIG_DURATION_MAX * 2,
            max: CONFIG_DURATION_MAX,
        },
    );
    check(
        |c| c.seeds = vec!["s:1".into(); SEEDS_MAX + 1],
        GossipError::TooManySeeds {
            count: SEEDS_MAX + 1,
            max: SEEDS_MAX,
        },
    );
    check(
        |c| c.seeds = vec!["s".repeat(300)],
        GossipError::ValueTooLong {
            key: Key::Address,
            len: 300,
            max: 256,
        },
    );
    let long_zone = NodeState {
        zone: Some("z".repeat(65)),
        ..state("me")
    };
    assert_eq!(
        Gossip::new(id("me"), config(&[]), long_zone, 1, Instant::now()).err(),
        Some(GossipError::ValueTooLong {
            key: Key::Zone,
            len: 65,
            max: 64
        })
    );
}

/// Malformed messages are refused with the error that names the problem, and a refused message
/// changes nothing.
#[test]
fn malformed_messages_are_refused() {
    let r = id("r");
    #[track_caller]
    fn check(message: GossipMessage, expected: GossipError) {
        assert_eq!(
            GossipMessage::decode(&message.encode()).err(),
            Some(expected.clone())
        );
        let now = Instant::now();
        let mut g = Gossip::new(id("me"), config(&[]), state("me"), 1, now).unwrap();
        assert_eq!(g.handle_message(now, message).err(), Some(expected));
        assert_eq!(g.members().count(), 1, "a refused message changed nothing");
        assert_eq!(g.poll_transmit(), None);
    }
    let with_entries = |entries: Vec<Entry>| {
        // A valid delta for another node first: refusal must not apply it either.
        ack2(vec![
            full_delta(id("other"), 1),
            NodeDelta {
                node: r,
                generation: 1,
                from_version: 2,
                entries,
            },
        ])
    };
    let e = |version, value| Entry { version, value };
    check(
        with_entries(vec![e(4, Value::Load(1)), e(3, Value::Heartbeat(1))]),
        GossipError::EntryOutOfOrder {
            node: r,
            version: 3,
            after: 4,
        },
    );
    check(
        with_entries(vec![e(2, Value::Load(1))]),
        GossipError::EntryOutOfOrder {
            node: r,
            version: 2,
            after: 2,
        },
    );
    check(
        with_entries(vec![e(3, Value::Load(1)), e(4, Value::Load(2))]),
        GossipError::DuplicateKey {
            node: r,
            key: Key::Load,
        },
    );
    check(
        with_entries(
            (3..3 + KEYS_PER_NODE as u64 + 1)
                .map(|v| e(v, Value::Load(v)))
                .collect(),
        ),
        GossipError::TooManyEntries {
            node: r,
            count: KEYS_PER_NODE + 1,
            max: KEYS_PER_NODE,
        },
    );
    check(
        with_entries(vec![e(3, Value::Ring(vec![1; RING_BYTES_MAX + 1]))]),
        GossipError::ValueTooLong {
            key: Key::Ring,
            len: RING_BYTES_MAX + 1,
            max: RING_BYTES_MAX,
        },
    );
    check(
        ack2(vec![full_delta(r, 1), full_delta(r, 2)]),
        GossipError::DuplicateNode { node: r },
    );
    let entry = |i: usize| DigestEntry {
        node: NodeId(i as u64),
        generation: 1,
        max_version: 1,
    };
    check(
        GossipMessage {
            from: r,
            payload: Payload::Syn {
                digest: (0..=MEMBERS_MAX).map(entry).collect(),
                complete: true,
            },
        },
        GossipError::TooManyDigestEntries {
            count: MEMBERS_MAX + 1,
            max: MEMBERS_MAX,
        },
    );
    check(
        GossipMessage {
            from: r,
            payload: Payload::Ack {
                deltas: vec![],
                request: vec![entry(1), entry(1)],
            },
        },
        GossipError::DuplicateNode { node: NodeId(1) },
    );

    assert_eq!(
        GossipMessage::decode(&vec![0; MESSAGE_BYTES_MAX + 1]).err(),
        Some(GossipError::MessageTooLarge {
            len: MESSAGE_BYTES_MAX + 1,
            max: MESSAGE_BYTES_MAX
        })
    );
    let mut bytes = ack2(vec![]).encode();
    let len = bytes.len();
    bytes.extend([0, 0]);
    assert_eq!(
        GossipMessage::decode(&bytes).err(),
        Some(GossipError::TrailingBytes {
            len: len + 2,
            trailing: 2
        })
    );
    assert!(matches!(
        GossipMessage::decode(&[]),
        Err(GossipError::Decode { .. })
    ));
    // Variant 3 of the payload does not exist.
    assert!(matches!(
        GossipMessage::decode(&[1, 3]),
        Err(GossipError::Decode { .. })
    ));
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9.:]{0,40}".prop_map(Value::Address),
        prop_oneof![
            Just(Status::Joining),
            Just(Status::Up),
            Just(Status::Leaving),
            Just(Status::Left)
        ]
        .prop_map(Value::Status),
        proptest::option::of("[a-z0-9-]{0,20}").prop_map(Value::Zone),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Ring),
        any::<u64>().prop_map(Value::Load),
        any::<u64>().prop_map(Value::Heartbeat),
    ]
}

fn arb_delta() -> impl Strategy<Value = NodeDelta> {
    (
        any::<u64>(),
        any::<u64>(),
        0..1000u64,
        proptest::collection::btree_map(
            0..KEYS_PER_NODE,
            (1..100u64, arb_value()),
            0..=KEYS_PER_NODE,
        ),
    )
        .prop_map(|(node, generation, from_version, raw)| {
            // One entry per key, versions strictly increasing above `from_version`.
            let mut version = from_version;
            let mut entries: Vec<Entry> = Vec::new();
            let mut keys = [false; KEYS_PER_NODE];
            for (_, (step, value)) in raw {
                if std::mem::replace(&mut keys[value.key() as usize], true) {
                    continue;
                }
                version += step;
                entries.push(Entry { version, value });
            }
            NodeDelta {
                node: NodeId(node),
                generation,
                from_version,
                entries,
            }
        })
}

fn arb_digest() -> impl Strategy<Value = Vec<DigestEntry>> {
    proptest::collection::btree_map(any::<u64>(), (any::<u64>(), any::<u64>()), 0..20).prop_map(
        |m| {
            m.into_iter()
                .map(|(node, (generation, max_version))| DigestEntry {
                    node: NodeId(node),
                    generation,
                    max_version,
                })
                .collect()
        },
    )
}

fn arb_deltas() -> impl Strategy<Value = Vec<NodeDelta>> {
    proptest::collection::vec(arb_delta(), 0..8).prop_map(|mut v| {
        v.sort_by_key(|d| d.node);
        v.dedup_by_key(|d| d.node);
        v
    })
}

fn arb_message() -> impl Strategy<Value = GossipMessage> {
    let payload = prop_oneof![
        (arb_digest(), any::<bool>())
            .prop_map(|(digest, complete)| Payload::Syn { digest, complete }),
        (arb_deltas(), arb_digest()).prop_map(|(deltas, request)| Payload::Ack { deltas, request }),
        arb_deltas().prop_map(|deltas| Payload::Ack2 { deltas }),
    ];
    (any::<u64>(), payload).prop_map(|(from, payload)| GossipMessage {
        from: NodeId(from),
        payload,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random bytes never panic the decoder; they decode to a valid message or an error.
    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = GossipMessage::decode(&bytes) {
            prop_assert_eq!(message.validate(), Ok(()));
        }
    }

    /// Valid messages round-trip, and `encoded_len` is the encoding's length.
    #[test]
    fn valid_messages_round_trip(message in arb_message()) {
        prop_assert_eq!(message.validate(), Ok(()));
        let bytes = message.encode();
        prop_assert_eq!(bytes.len(), message.encoded_len());
        prop_assert_eq!(GossipMessage::decode(&bytes), Ok(message));
    }

    /// Corrupting bytes of a valid message (flips, truncation) never panics the decoder.
    #[test]
    fn corrupted_messages_never_panic(
        message in arb_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = message.encode();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte;
        }
        let _ = GossipMessage::decode(&bytes);
        let _ = GossipMessage::decode(&bytes[..cut.index(bytes.len() + 1)]);
    }
}
