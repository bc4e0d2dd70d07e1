//! The coordinator during a layout change: a write needs its quorum in the replica set of every
//! live version (each set with its own fallbacks), a read asks the set of the read version, and a
//! partition the change does not move behaves exactly as with the bare ring.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cairn_core::coordinator::{
    ClientWrite, Coordinator, CoordinatorError, Outcome, ReplicaOp, ReplicaResult, RequestId,
    Transmit,
};
use cairn_core::version::{Dot, Object, Payload, VClock};
use cairn_layout::{Change, Layout, LayoutVersion};
use cairn_proto::{ActorId, ErrorReply, NodeId, ReadOptions, WriteOptions};
use cairn_ring::{Member, RingConfig};
use proptest::prelude::*;

fn node(i: usize) -> NodeId {
    NodeId::from_name(&format!("node{i}"))
}

/// Version 1 over node1..=node`members`, then `change` applied (not yet transferred).
fn layout(members: usize, change: impl Fn() -> Change) -> Layout {
    let config = RingConfig {
        partitions: 16,
        replicas: 3,
    };
    let first: Vec<(Member, String)> = (1..=members)
        .map(|i| (Member::new(node(i)), format!("node{i}")))
        .collect();
    let mut l = Layout::new(LayoutVersion::initial(config, &first).unwrap());
    let plan = l.plan(&change()).unwrap();
    l.apply(plan).unwrap();
    l
}

fn join6() -> Layout {
    layout(5, || Change::Join {
        node: node(6),
        name: "node6".into(),
        zone: None,
    })
}

fn leave6() -> Layout {
    layout(6, || Change::Leave { node: node(6) })
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i}").into_bytes()
}

/// A key whose partition moves, with its two write sets.
fn moved_key(l: &Layout) -> (Vec<u8>, Vec<NodeId>, Vec<NodeId>) {
    (0..10_000)
        .map(key)
        .find_map(|k| {
            let sets = l.write_sets(l.current().ring().partition_of(&k));
            (sets.len() == 2).then(|| (k, sets[0].clone(), sets[1].clone()))
        })
        .expect("some partition moves")
}

fn value(name: &str) -> Object {
    let actor = ActorId {
        node: NodeId::from_name(name),
        epoch: 1,
    };
    Object::new()
        .update(
            &VClock::new(),
            Dot::new(actor, 1),
            Payload::Value(name.as_bytes().to_vec()),
        )
        .unwrap()
}

/// What one write did: every transmit, the outcome.
struct Run {
    sent: Vec<Transmit>,
    outcome: Result<Outcome, CoordinatorError>,
}

/// Runs one write at `me`: the local update succeeds, every other replica acks unless `fails`
/// holds it, then the deadline passes if the write has no answer yet.
fn put(
    coord: &mut Coordinator,
    me: NodeId,
    key: &[u8],
    opts: WriteOptions,
    down: &BTreeSet<NodeId>,
    fails: &BTreeSet<NodeId>,
) -> Run {
    let now = Instant::now();
    let is_up = |n: NodeId| !down.contains(&n);
    let write = ClientWrite {
        key: key.to_vec(),
        ctx: VClock::new(),
        payload: Payload::Value(b"v".to_vec()),
        opts,
    };
    coord.handle_put(now, RequestId(1), write, &is_up);
    let mut sent = Vec::new();
    let mut outcome = None;
    loop {
        while let Some((_, o)) = coord.poll_outcome() {
            outcome.get_or_insert(o);
        }
        let Some(t) = coord.poll_transmit() else {
            break;
        };
        let op = t.op.expect("writes wait for answers");
        let result = match &t.msg {
            ReplicaOp::Update { .. } => {
                assert_eq!(t.to, me);
                Ok(ReplicaResult::Object(value("v")))
            }
            ReplicaOp::Replicate { .. } if fails.contains(&t.to) => Err(ErrorReply::Storage {
                reason: "scripted failure".into(),
            }),
            ReplicaOp::Replicate { .. } => Ok(ReplicaResult::Ack),
            ReplicaOp::Read { .. } => panic!("a write sent a read"),
        };
        sent.push(t);
        coord.handle_result(op, result);
    }
    if outcome.is_none() {
        coord.handle_timeout(now + Duration::from_secs(120));
        outcome = coord.poll_outcome().map(|(_, o)| o);
    }
    Run {
        sent,
        outcome: outcome.expect("a write ends by its deadline"),
    }
}

fn w(w: u8) -> WriteOptions {
    WriteOptions {
        w: Some(w),
        ..WriteOptions::default()
    }
}

fn coordinator(me: NodeId, l: &Layout) -> Coordinator {
    let mut c = Coordinator::new(me, l.current().ring().clone());
    c.set_layout(l);
    c
}

fn replicated_to(run: &Run) -> BTreeSet<NodeId> {
    run.sent
        .iter()
        .filter(|t| matches!(t.msg, ReplicaOp::Replicate { .. }))
        .map(|t| t.to)
        .collect()
}

fn short_versions(run: &Run) -> Vec<(u64, &'static str, u8, u8)> {
    match &run.outcome {
        Err(CoordinatorError::SetsShort { short, .. }) => short
            .iter()
            .map(|s| (s.version, s.kind, s.needed, s.got))
            .collect(),
        other => panic!("expected a set shortfall, got {other:?}"),
    }
}

#[test]
fn a_write_in_transition_goes_to_the_union_of_both_sets() {
    for l in [join6(), leave6()] {
        let (k, old, new) = moved_key(&l);
        let me = *old.iter().find(|n| new.contains(n)).expect("sets overlap");
        let run = put(
            &mut coordinator(me, &l),
            me,
            &k,
            w(2),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        let union: BTreeSet<NodeId> = old.iter().chain(&new).copied().collect();
        let mut expect = union.clone();
        expect.remove(&me);
        assert_eq!(replicated_to(&run), expect);
        assert!(matches!(run.outcome, Ok(Outcome::Written(_))));
    }
}

#[test]
fn each_set_needs_its_own_w() {
    let l = join6();
    let (k, old, new) = moved_key(&l);
    let me = *old.iter().find(|n| new.contains(n)).unwrap();
    let only_old: Vec<NodeId> = old.iter().filter(|n| !new.contains(n)).copied().collect();
    let only_new: Vec<NodeId> = new.iter().filter(|n| !old.contains(n)).copied().collect();
    let shared: Vec<NodeId> = old
        .iter()
        .filter(|n| new.contains(n) && **n != me)
        .copied()
        .collect();
    assert_eq!(
        (only_old.len(), only_new.len()),
        (1, 1),
        "a join moves one replica"
    );
    let none = BTreeSet::new();

    // W=2: the coordinator plus the shared replica is 2 in both sets.
    let fails: BTreeSet<NodeId> = only_old.iter().chain(&only_new).copied().collect();
    let run = put(&mut coordinator(me, &l), me, &k, w(2), &none, &fails);
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);

    // W=2 with the shared replica failing: the old set has me + its own, the new set only me
    // if the gaining node fails too.
    let fails: BTreeSet<NodeId> = shared.iter().chain(&only_new).copied().collect();
    let run = put(&mut coordinator(me, &l), me, &k, w(2), &none, &fails);
    assert_eq!(short_versions(&run), vec![(2, "acks", 2, 1)]);

    // ... and the other way round the old version is the one short.
    let fails: BTreeSet<NodeId> = shared.iter().chain(&only_old).copied().collect();
    let run = put(&mut coordinator(me, &l), me, &k, w(2), &none, &fails);
    assert_eq!(short_versions(&run), vec![(1, "acks", 2, 1)]);

    // W=3 needs all four: one failing replica that only one set has leaves that set short.
    let fails: BTreeSet<NodeId> = only_new.iter().copied().collect();
    let run = put(&mut coordinator(me, &l), me, &k, w(3), &none, &fails);
    assert_eq!(short_versions(&run), vec![(2, "acks", 3, 2)]);
    let run = put(&mut coordinator(me, &l), me, &k, w(3), &none, &none);
    assert!(run.outcome.is_ok());

    // A failing shared replica leaves both short, and both are named.
    let fails: BTreeSet<NodeId> = shared.iter().copied().collect();
    let run = put(&mut coordinator(me, &l), me, &k, w(3), &none, &fails);
    assert_eq!(
        short_versions(&run),
        vec![(1, "acks", 3, 2), (2, "acks", 3, 2)]
    );
}

#[test]
fn pw_counts_primaries_of_each_set_separately() {
    let l = join6();
    let (k, old, new) = moved_key(&l);
    let me = *old.iter().find(|n| new.contains(n)).unwrap();
    let only_new = *new.iter().find(|n| !old.contains(n)).unwrap();
    let shared = *old.iter().find(|n| new.contains(n) && **n != me).unwrap();
    // The gaining node is down: the new set gets a fallback, which counts for W but not PW.
    let down = BTreeSet::from([only_new]);
    let fails = BTreeSet::from([shared]);
    let opts = WriteOptions {
        w: Some(2),
        pw: Some(2),
        ..WriteOptions::default()
    };
    let run = put(&mut coordinator(me, &l), me, &k, opts, &down, &fails);
    let short = short_versions(&run);
    assert!(
        short.contains(&(2, "primary acks", 2, 1)),
        "new set: me is its only primary to ack: {short:?}"
    );
    // The down primary of the new set has a stand-in holding its hint.
    assert!(run.sent.iter().any(|t| matches!(
        t.msg,
        ReplicaOp::Replicate { hint_for: Some(h), .. } if h == only_new
    )));
}

#[test]
fn reads_ask_the_read_versions_set() {
    let mut l = join6();
    let (k, old, new) = moved_key(&l);
    let me = node(1);
    let read = |l: &Layout| {
        let mut c = coordinator(me, l);
        c.handle_get(
            Instant::now(),
            RequestId(1),
            k.clone(),
            &ReadOptions::default(),
            &|_| true,
        );
        let mut to = BTreeSet::new();
        while let Some(t) = c.poll_transmit() {
            assert!(matches!(t.msg, ReplicaOp::Read { .. }));
            to.insert(t.to);
        }
        to
    };
    assert_eq!(read(&l), old.iter().copied().collect());
    for i in 1..=6 {
        l.ack(node(i));
    }
    for i in 1..=5 {
        l.record_pushed(node(i));
    }
    assert!(!l.is_settled(), "pushed, not yet retired");
    assert_eq!(read(&l), new.iter().copied().collect());
}

/// The coordinator's transcript of one write: every transmit and the outcome, as text.
fn transcript(run: &Run) -> Vec<String> {
    let mut lines: Vec<String> = run
        .sent
        .iter()
        .map(|t| match &t.msg {
            ReplicaOp::Replicate { hint_for, .. } => format!("{} {hint_for:?}", t.to),
            other => format!("{} {other:?}", t.to),
        })
        .collect();
    lines.push(format!("{:?}", run.outcome));
    lines
}

fn nodes_of(mask: u8) -> BTreeSet<NodeId> {
    (1..=6).filter(|i| mask & (1 << i) != 0).map(node).collect()
}

proptest! {
    /// A partition the change does not move: the same transmits, in the same order, and the
    /// same outcome as a coordinator over the bare newest ring.
    #[test]
    fn an_unmoved_partition_behaves_as_the_bare_ring(
        join in any::<bool>(), k in 0usize..500, down in any::<u8>(), fails in any::<u8>(),
        wq in 1u8..=3, pw in 0u8..=3, me_pick in 0usize..3,
    ) {
        let l = if join { join6() } else { leave6() };
        let k = key(k);
        let p = l.current().ring().partition_of(&k);
        prop_assume!(l.write_sets(p).len() == 1);
        let set = &l.write_sets(p)[0];
        let me = set[me_pick % set.len()];
        let mut down = nodes_of(down);
        down.remove(&me);
        let fails = nodes_of(fails);
        let opts = WriteOptions { w: Some(wq), pw: Some(pw.min(wq)), ..WriteOptions::default() };
        let with_layout = put(&mut coordinator(me, &l), me, &k, opts.clone(), &down, &fails);
        let mut bare = Coordinator::new(me, l.current().ring().clone());
        let with_ring = put(&mut bare, me, &k, opts, &down, &fails);
        prop_assert_eq!(transcript(&with_layout), transcript(&with_ring));
    }

    /// A moved partition: every up primary of every set is written to once, stand-ins only
    /// for down primaries, and success means each set reached W (counting each down primary's
    /// stand-ins once); a failure names only sets that are short.
    #[test]
    fn a_moved_partition_needs_w_in_every_set(
        join in any::<bool>(), k in 0usize..500, down in any::<u8>(), fails in any::<u8>(),
        wq in 1u8..=3,
    ) {
        let l = if join { join6() } else { leave6() };
        let k = key(k);
        let p = l.current().ring().partition_of(&k);
        let sets = l.write_sets(p);
        prop_assume!(sets.len() == 2);
        let mut down = nodes_of(down);
        let me = *sets[0].iter().find(|n| sets[1].contains(n)).unwrap();
        down.remove(&me);
        let fails = nodes_of(fails);
        let run = put(&mut coordinator(me, &l), me, &k, w(wq), &down, &fails);

        let mut seen = BTreeSet::new();
        let mut hint_of = BTreeMap::new();
        for t in &run.sent {
            prop_assert!(seen.insert(t.to), "{} written to twice", t.to);
            prop_assert!(!down.contains(&t.to), "{} is down", t.to);
            if let ReplicaOp::Replicate { hint_for: Some(h), .. } = t.msg {
                prop_assert!(down.contains(&h) && sets.iter().any(|s| s.contains(&h)));
                hint_of.insert(t.to, h);
            }
        }
        for s in &sets {
            for n in s {
                prop_assert!(down.contains(n) || seen.contains(n), "up primary {} skipped", n);
            }
        }
        let acked = |n: &NodeId| *n == me || !fails.contains(n);
        let most = |s: &Vec<NodeId>| {
            let primaries = s.iter().filter(|n| seen.contains(n) && acked(n)).count();
            let stand_ins: BTreeSet<NodeId> = hint_of
                .iter()
                .filter(|(f, h)| s.contains(h) && acked(f))
                .map(|(_, h)| *h)
                .collect();
            primaries + stand_ins.len()
        };
        match &run.outcome {
            Ok(_) => {
                for s in &sets {
                    prop_assert!(most(s) >= usize::from(wq), "acked without W in {:?}", s);
                }
            }
            Err(CoordinatorError::SetsShort { short, .. }) => {
                prop_assert!(!short.is_empty());
                for sh in short {
                    prop_assert!(sh.got < sh.needed);
                    let s = sets.iter().find(|s| **s == sh.replicas).expect("a live set");
                    prop_assert!(usize::from(sh.got) <= most(s));
                }
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        if down.is_empty() && fails.is_empty() {
            prop_assert!(run.outcome.is_ok());
        }
    }
}

#[test]
fn writes_routed_under_an_older_layout_hold_the_fence_until_answered() {
    let l = join6();
    let (k, old, new) = moved_key(&l);
    let me = *old.iter().find(|n| new.contains(n)).unwrap();
    let mut c = Coordinator::new(me, l.versions()[0].ring().clone());
    let now = Instant::now();
    let write = |req| {
        (
            RequestId(req),
            ClientWrite {
                key: k.clone(),
                ctx: VClock::new(),
                payload: Payload::Value(b"v".to_vec()),
                opts: w(2),
            },
        )
    };
    let (req, old_write) = write(1);
    c.handle_put(now, req, old_write, &|_| true);
    let update = c.poll_transmit().unwrap();
    c.set_layout(&l);
    assert_eq!(c.unanswered_writes_before(2), 1);
    // A write started under the new layout does not hold its own fence.
    let (req, new_write) = write(2);
    c.handle_put(now, req, new_write, &|_| true);
    assert_eq!(c.unanswered_writes_before(2), 1);
    // The old write answered releases the fence.
    c.handle_result(update.op.unwrap(), Ok(ReplicaResult::Object(value("v"))));
    while let Some(t) = c.poll_transmit() {
        if let (Some(op), true) = (t.op, t.to != me) {
            c.handle_result(op, Ok(ReplicaResult::Ack));
        }
    }
    let answered: Vec<RequestId> = std::iter::from_fn(|| c.poll_outcome())
        .map(|(r, o)| {
            assert!(o.is_ok());
            r
        })
        .collect();
    assert_eq!(answered, vec![RequestId(1)]);
    assert_eq!(c.unanswered_writes_before(2), 0);
    // So does a deadline.
    let (req, old_write) = write(3);
    c.set_ring(l.versions()[0].ring().clone());
    c.handle_put(now, req, old_write, &|_| true);
    c.set_layout(&l);
    assert_eq!(c.unanswered_writes_before(2), 1);
    c.handle_timeout(now + Duration::from_secs(120));
    assert_eq!(c.unanswered_writes_before(2), 0);
}
