//! The layout's rules: plans move only what must move, a change waits for every member's
//! acknowledgement before data moves, reads switch after a quorum of old replicas pushed, the old
//! version retires only when every source pushed or was overridden, and histories merge to the
//! same result in any order.

use cairn_layout::{Change, Layout, LayoutError, LayoutVersion, MergeOutcome};
use cairn_proto::NodeId;
use cairn_ring::{Member, RingConfig};
use proptest::prelude::*;

const CONFIG: RingConfig = RingConfig {
    partitions: 64,
    replicas: 3,
};

fn id(i: u64) -> NodeId {
    NodeId::from_name(&format!("node{i}"))
}

fn cluster(n: u64) -> Layout {
    let members: Vec<(Member, String)> = (1..=n)
        .map(|i| (Member::new(id(i)), format!("node{i}")))
        .collect();
    Layout::new(LayoutVersion::initial(CONFIG, &members).unwrap())
}

fn join(i: u64) -> Change {
    Change::Join {
        node: id(i),
        name: format!("node{i}"),
        zone: None,
    }
}

/// Every member of both versions acknowledges; returns the layout.
fn ack_all(layout: &mut Layout) {
    let members: Vec<NodeId> = layout
        .versions()
        .iter()
        .flat_map(|v| v.names().keys().copied().collect::<Vec<_>>())
        .collect();
    for m in members {
        layout.ack(m);
    }
}

#[test]
fn a_join_moves_only_partitions_whose_replicas_change_and_the_joiner_gains_them() {
    let layout = cluster(5);
    let plan = layout.plan(&join(6)).unwrap();
    assert_eq!(plan.from, 1);
    assert_eq!(plan.next.version(), 2);
    assert_eq!(plan.next.parent(), Some(layout.current().digest()));
    let old = layout.current();
    for p in 0..CONFIG.partitions {
        let (a, b) = (old.primaries(p), plan.next.primaries(p));
        let moved = plan.moves.iter().find(|m| m.partition == p);
        let same = a.len() == b.len() && a.iter().all(|n| b.contains(n));
        assert_eq!(moved.is_none(), same, "partition {p}");
        if let Some(m) = moved {
            // Only the joiner is new; a join never swaps two old members.
            assert_eq!(m.gaining, vec![id(6)], "partition {p}");
            assert_eq!(m.sources, a);
        }
    }
    // A balanced join takes floor(64/6) = 10 partitions; their replica sets, and those whose
    // walk passes them, change. Far fewer than all 64.
    assert_eq!(plan.next.ring().partitions_of(id(6)).len(), 10);
    assert!(
        plan.moves.len() < 40,
        "{} partitions moved",
        plan.moves.len()
    );
}

#[test]
fn a_transition_walks_through_acks_pushes_read_switch_and_retirement() {
    let mut layout = cluster(3);
    let plan = layout.plan(&join(4)).unwrap();
    let moved: Vec<u32> = plan.moves.iter().map(|m| m.partition).collect();
    layout.apply(plan).unwrap();
    assert!(!layout.is_settled());
    let p = moved[0];
    // Writes need W in both replica sets; reads stay on the old set.
    assert_eq!(layout.write_sets(p).len(), 2);
    assert_eq!(layout.read_version(p).version(), 1);
    // No data moves before every member acknowledged the new version.
    for i in 1..=3 {
        layout.ack(id(i));
        assert!(layout.transfers(id(1)).is_empty());
    }
    assert!(
        !layout.record_pushed(id(1)),
        "a push before the acks is refused"
    );
    layout.ack(id(4));
    assert!(layout.transfers_started());
    let t = layout.transfers(id(1));
    assert!(!t.is_empty() && t.iter().all(|t| t.to == vec![id(4)]));
    assert!(
        layout.transfers(id(4)).is_empty(),
        "the joiner has nothing to push"
    );
    // One of three old replicas pushed: no quorum, reads stay.
    layout.record_pushed(id(1));
    assert_eq!(layout.read_version(p).version(), 1);
    assert!(layout.poll_retire().is_none());
    layout.record_pushed(id(2));
    assert_eq!(layout.read_version(p).version(), 2, "a quorum pushed");
    assert!(layout.poll_retire().is_none(), "node3 has not pushed");
    let status = layout.transition().unwrap();
    assert_eq!(status.waiting_pushes, vec![id(3)]);
    layout.record_pushed(id(3));
    assert_eq!(layout.poll_retire().unwrap().version, 1);
    assert!(layout.is_settled());
    assert_eq!(layout.write_sets(p).len(), 1);
    assert_eq!(layout.current().version(), 2);
}

#[test]
fn a_leaver_pushes_its_own_data_and_is_no_member_after_retirement() {
    let mut layout = cluster(4);
    layout
        .apply(layout.plan(&Change::Leave { node: id(4) }).unwrap())
        .unwrap();
    assert!(layout.is_member(id(4)), "still a member of the old version");
    assert!(layout.is_leaving(id(4)));
    assert!(
        !layout.is_leaving(id(3)),
        "a node that stays is not leaving"
    );
    ack_all(&mut layout);
    assert!(!layout.transfers(id(4)).is_empty());
    for i in 1..=4 {
        layout.record_pushed(id(i));
    }
    layout.poll_retire().unwrap();
    assert!(!layout.is_member(id(4)));
    assert!(!layout.is_leaving(id(4)), "gone, no longer leaving");
    for p in 0..CONFIG.partitions {
        assert!(!layout.replicates(id(4), p));
    }
}

#[test]
fn a_removed_node_is_not_waited_for_and_a_replaced_one_hands_its_partitions_over() {
    let mut layout = cluster(4);
    let plan = layout.plan(&Change::Remove { node: id(4) }).unwrap();
    assert!(plan.moves.iter().all(|m| !m.sources.contains(&id(4))));
    layout.apply(plan).unwrap();
    for i in 1..=3 {
        layout.ack(id(i));
    }
    assert!(
        layout.transfers_started(),
        "the removed node's ack is not needed"
    );
    for i in 1..=3 {
        layout.record_pushed(id(i));
    }
    assert!(layout.poll_retire().is_some());

    let layout = cluster(4);
    let plan = layout
        .plan(&Change::Replace {
            old: id(4),
            new: id(9),
            name: "node9".into(),
            zone: None,
        })
        .unwrap();
    let old = layout.current().ring();
    for (p, (&a, &b)) in old
        .owners()
        .iter()
        .zip(plan.next.ring().owners())
        .enumerate()
    {
        assert_eq!(b, if a == id(4) { id(9) } else { a }, "partition {p}");
    }
    for m in &plan.moves {
        assert_eq!(m.gaining, vec![id(9)]);
        assert!(!m.sources.contains(&id(4)));
    }
}

#[test]
fn requests_route_by_the_old_ring_until_every_moved_partition_reads_from_the_new_one() {
    let mut layout = cluster(5);
    let old = layout.current().ring().clone();
    layout.apply(layout.plan(&join(6)).unwrap()).unwrap();
    assert_eq!(*layout.routing_ring(), old, "no read has switched");
    ack_all(&mut layout);
    let sources: Vec<NodeId> = layout.transition().unwrap().waiting_pushes;
    let (last, first) = sources.split_last().unwrap();
    for s in first {
        layout.record_pushed(*s);
    }
    // Some partition may still read from the old version while one source has not pushed.
    let some_old = (0..CONFIG.partitions).any(|p| layout.read_version(p).version() == 1);
    assert_eq!(*layout.routing_ring() == old, some_old);
    layout.record_pushed(*last);
    assert_eq!(layout.routing_ring(), layout.current().ring());
    layout.poll_retire().unwrap();
    assert_eq!(layout.routing_ring(), layout.current().ring());
}

#[test]
fn a_member_acknowledges_once_its_write_fence_reaches_the_new_version() {
    let mut layout = cluster(5);
    layout.apply(layout.plan(&join(6)).unwrap()).unwrap();
    // The fence still at version 1: writes routed under it may be unanswered.
    assert!(!layout.should_ack(id(1), 1));
    assert!(layout.should_ack(id(1), 2));
    // The joiner too; a node of neither version never.
    assert!(layout.should_ack(id(6), 2));
    assert!(!layout.should_ack(id(9), 2));
    layout.ack(id(1));
    assert!(!layout.should_ack(id(1), 2), "acknowledged once");
    ack_all(&mut layout);
    assert!(layout.versions().len() == 2 && !layout.should_ack(id(2), 2));
}

#[test]
fn one_change_at_a_time_and_plans_go_stale() {
    let mut layout = cluster(3);
    let first = layout.plan(&join(4)).unwrap();
    let second = layout.plan(&join(5)).unwrap();
    layout.apply(first).unwrap();
    assert!(matches!(
        layout.plan(&join(5)),
        Err(LayoutError::ChangeInFlight {
            version: 2,
            from: 1
        })
    ));
    ack_all(&mut layout);
    for i in 1..=3 {
        layout.record_pushed(id(i));
    }
    layout.poll_retire().unwrap();
    assert!(matches!(
        layout.apply(second),
        Err(LayoutError::StalePlan {
            planned: 1,
            current: 2
        })
    ));
    // Two changes in a row work.
    let again = layout.plan(&join(5)).unwrap();
    assert_eq!(again.next.version(), 3);
    layout.apply(again).unwrap();
    assert!(matches!(
        layout.plan(&Change::Leave { node: id(1) }),
        Err(LayoutError::ChangeInFlight { .. })
    ));
}

#[test]
fn bad_changes_are_refused_with_their_facts() {
    let layout = cluster(1);
    assert!(matches!(
        layout.plan(&join(1)),
        Err(LayoutError::AlreadyMember { version: 1, .. })
    ));
    assert!(matches!(
        layout.plan(&Change::Leave { node: id(7) }),
        Err(LayoutError::NotMember { .. })
    ));
    assert!(matches!(
        layout.plan(&Change::Leave { node: id(1) }),
        Err(LayoutError::LastMember { .. })
    ));
    assert!(matches!(
        layout.plan(&Change::Join {
            node: id(2),
            name: String::new(),
            zone: None
        }),
        Err(LayoutError::BadName { len: 0, .. })
    ));
}

#[test]
fn a_source_lost_mid_transfer_holds_retirement_until_the_operator_forces_it() {
    let mut layout = cluster(4);
    layout.apply(layout.plan(&join(5)).unwrap()).unwrap();
    assert!(matches!(
        layout.force(id(9)),
        Err(LayoutError::NotWaitingFor { .. })
    ));
    ack_all(&mut layout);
    for i in 1..=3 {
        layout.record_pushed(id(i));
    }
    // node4 died before pushing: the change waits, and says for whom.
    assert!(layout.poll_retire().is_none());
    assert_eq!(layout.transition().unwrap().waiting_pushes, vec![id(4)]);
    layout.force(id(4)).unwrap();
    assert_eq!(layout.transition().unwrap().forced, vec![id(4)]);
    assert!(layout.poll_retire().is_some());
    assert!(matches!(
        layout.force(id(4)),
        Err(LayoutError::Settled { version: 2 })
    ));
}

#[test]
fn conflicting_proposals_converge_on_one_winner_and_the_losers_progress_is_dropped() {
    let base = cluster(3);
    let (mut a, mut b) = (base.clone(), base.clone());
    a.apply(a.plan(&join(4)).unwrap()).unwrap();
    b.apply(b.plan(&join(5)).unwrap()).unwrap();
    a.ack(id(1));
    b.ack(id(2));
    let (mut a2, mut b2) = (a.clone(), b.clone());
    a2.merge(&b);
    b2.merge(&a);
    assert_eq!(a2, b2, "both orders pick the same winner");
    let winner = a2.current().digest();
    assert!(winner == a.current().digest() || winner == b.current().digest());
    // Only the winner's own ack survives.
    let acks: Vec<bool> = (1..=2).map(|i| a2.has_acked(id(i))).collect();
    assert_eq!(acks.iter().filter(|x| **x).count(), 1);
    assert_eq!(a2.merge(&b2), MergeOutcome::Unchanged, "idempotent");
    // Each proposer can tell from the merged history whether its change was kept.
    let (ours_a, ours_b) = (a.current().clone(), b.current().clone());
    assert_ne!(
        a2.kept(&ours_a),
        a2.kept(&ours_b),
        "exactly one change is kept"
    );
    assert_eq!(a2.kept(&ours_a), winner == ours_a.digest());
    assert!(
        a.kept(&ours_a) && !a.kept(&ours_b),
        "before any merge, each keeps its own"
    );
}

#[test]
fn a_node_behind_takes_a_whole_newer_history_and_retirement_spreads() {
    let old = cluster(3);
    let mut new = old.clone();
    new.apply(new.plan(&join(4)).unwrap()).unwrap();
    ack_all(&mut new);
    let mut mid = old.clone();
    assert_eq!(mid.merge(&new), MergeOutcome::Adopted { from: 1, to: 2 });
    assert!(mid.transfers_started(), "progress comes with the history");
    for i in 1..=3 {
        new.record_pushed(id(i));
    }
    new.poll_retire().unwrap();
    assert_eq!(mid.merge(&new), MergeOutcome::Progressed);
    assert!(mid.is_settled());
    assert_eq!(mid, new);
    let mut behind = old;
    behind.merge(&new);
    assert_eq!(behind, new);
}

#[test]
fn layouts_round_trip_and_broken_ones_are_refused() {
    let mut layout = cluster(3);
    layout.apply(layout.plan(&join(4)).unwrap()).unwrap();
    layout.ack(id(1));
    let bytes = postcard::to_stdvec(&layout).unwrap();
    let back: Layout = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, layout);
    // Every truncation and every single-byte corruption decodes to an error or to a layout
    // that passed validation; never a panic.
    for len in 0..bytes.len() {
        let _ = postcard::from_bytes::<Layout>(&bytes[..len]);
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x55;
        if let Ok(l) = postcard::from_bytes::<Layout>(&b) {
            assert!(l.versions().len() <= 2);
        }
    }
    // Two versions that do not chain are refused.
    let other = cluster(3);
    let mut forged = postcard::to_stdvec(&other.versions().to_vec()).unwrap();
    forged.pop();
    assert!(postcard::from_bytes::<Layout>(&forged).is_err());
}

/// One step of a random run over three nodes' copies of the layout.
#[derive(Debug, Clone)]
enum Step {
    Propose { at: usize, change: u8 },
    Ack { at: usize, node: u64 },
    Push { at: usize, node: u64 },
    Retire { at: usize },
    Merge { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..4u8).prop_map(|(at, change)| Step::Propose { at, change }),
        (0..3usize, 1..7u64).prop_map(|(at, node)| Step::Ack { at, node }),
        (0..3usize, 1..7u64).prop_map(|(at, node)| Step::Push { at, node }),
        (0..3usize).prop_map(|at| Step::Retire { at }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Merge { from, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any interleaving of proposals, acks, pushes, retirements and merges ends, after every
    /// node merged every other, with one identical history everywhere; and no layout ever
    /// switches reads or retires before every member acknowledged.
    #[test]
    fn replicas_of_the_layout_converge(steps in proptest::collection::vec(step(), 1..60)) {
        let mut nodes = vec![cluster(3), cluster(3), cluster(3)];
        for s in steps {
            match s {
                Step::Propose { at, change } => {
                    let l = &mut nodes[at];
                    let c = match change {
                        0 => join(4 + at as u64),
                        1 => Change::Leave { node: id(1 + at as u64) },
                        2 => Change::Remove { node: id(3) },
                        _ => join(6),
                    };
                    if let Ok(plan) = l.plan(&c) {
                        l.apply(plan).unwrap();
                    }
                }
                Step::Ack { at, node } => { nodes[at].ack(id(node)); }
                Step::Push { at, node } => { nodes[at].record_pushed(id(node)); }
                Step::Retire { at } => {
                    let before = nodes[at].transfers_started();
                    if nodes[at].poll_retire().is_some() {
                        prop_assert!(before);
                    }
                }
                Step::Merge { from, to } => {
                    let other = nodes[from].clone();
                    nodes[to].merge(&other);
                }
            }
            for l in &nodes {
                if !l.transfers_started() {
                    for p in 0..CONFIG.partitions {
                        let mut read = l.read_version(p).primaries(p);
                        let mut old = l.versions()[0].primaries(p);
                        read.sort();
                        old.sort();
                        prop_assert_eq!(read, old, "partition {} read from new replicas early", p);
                    }
                }
            }
        }
        for _ in 0..2 {
            for from in 0..3 {
                for to in 0..3 {
                    let other = nodes[from].clone();
                    nodes[to].merge(&other);
                }
            }
        }
        prop_assert_eq!(&nodes[0], &nodes[1]);
        prop_assert_eq!(&nodes[1], &nodes[2]);
    }
}
