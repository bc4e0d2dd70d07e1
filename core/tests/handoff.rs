//! The handoff policy alone: rounds, refused hints set aside without blocking the others,
//! failures ending a round, retries of refused hints.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_core::handoff::{Action, Answer, Handoff, HintRef};
use cairn_core::limits::{HANDOFF_BATCH_MAX, HANDOFF_REFUSED_RETRY};
use cairn_proto::{ErrorReply, LimitError, NodeId};

fn node(n: &str) -> NodeId {
    NodeId::from_name(n)
}

fn hint(key: &str, seq: u64) -> HintRef {
    HintRef {
        key: key.as_bytes().to_vec(),
        seq,
    }
}

fn counts(target: NodeId, n: u64) -> BTreeMap<NodeId, u64> {
    BTreeMap::from([(target, n)])
}

fn actions(h: &mut Handoff) -> Vec<Action> {
    std::iter::from_fn(|| h.poll_action()).collect()
}

/// Runs one round for `target` over `stored`, answering each send with `answer(key)`; returns
/// the keys sent, the keys deleted and the round's end.
fn round(
    h: &mut Handoff,
    now: Instant,
    target: NodeId,
    stored: &[HintRef],
    answer: impl Fn(&str) -> Answer,
) -> (Vec<String>, Vec<String>, Option<Action>) {
    h.handle_round(now, &counts(target, stored.len() as u64), &|_| true);
    let (mut sent, mut deleted, mut done) = (Vec::new(), Vec::new(), None);
    let mut queue = actions(h);
    while let Some(a) = queue.first().cloned() {
        queue.remove(0);
        match &a {
            Action::ReadHints { limit, .. } => {
                h.handle_hints(target, stored.iter().take(*limit).cloned().collect())
            }
            Action::Send { hint, .. } => {
                let key = String::from_utf8(hint.key.clone()).unwrap();
                sent.push(key.clone());
                h.handle_answer(now, target, answer(&key));
            }
            Action::Delete { hint, .. } => {
                deleted.push(String::from_utf8(hint.key.clone()).unwrap())
            }
            Action::RoundDone { .. } => done = Some(a.clone()),
            Action::Redirect { .. } => panic!("no layout, no redirect: {a:?}"),
        }
        queue.extend(actions(h));
    }
    (sent, deleted, done)
}

fn refused() -> Answer {
    Answer::from_error(&ErrorReply::Limit(LimitError::TooManySiblings {
        count: 65,
        max: 64,
    }))
}

#[test]
fn a_refused_hint_does_not_block_the_ones_after_it() {
    let t = node("node3");
    let mut h = Handoff::new();
    let stored = [hint("a", 1), hint("b", 2), hint("c", 3)];
    let now = Instant::now();
    let (sent, deleted, done) = round(&mut h, now, t, &stored, |k| {
        if k == "b" {
            refused()
        } else {
            Answer::Acked
        }
    });
    assert_eq!(sent, ["a", "b", "c"]);
    assert_eq!(
        deleted,
        ["a", "c"],
        "b is kept: it was refused, not delivered"
    );
    assert_eq!(
        done,
        Some(Action::RoundDone {
            target: t,
            delivered: 2,
            refused: 1,
            redirected: 0,
            failure: None
        })
    );
    assert_eq!(h.refused(t), 1);

    // Next round, b alone is left and set aside: nothing is sent until its retry is due.
    let left = [hint("b", 2)];
    let (sent, _, _) = round(&mut h, now + Duration::from_secs(1), t, &left, |_| {
        Answer::Acked
    });
    assert!(sent.is_empty(), "{sent:?}");
    // A renewed hint (new seq: the object changed) is offered at once.
    let renewed = [hint("b", 9)];
    let (sent, deleted, _) = round(&mut h, now + Duration::from_secs(2), t, &renewed, |_| {
        Answer::Acked
    });
    assert_eq!(
        (sent, deleted),
        (vec!["b".to_owned()], vec!["b".to_owned()])
    );
    assert_eq!(h.refused(t), 0);
}

#[test]
fn a_refused_hint_is_offered_again_after_the_retry_interval() {
    let t = node("node3");
    let mut h = Handoff::new();
    let now = Instant::now();
    let stored = [hint("a", 1), hint("b", 2)];
    round(&mut h, now, t, &stored, |k| {
        if k == "a" {
            refused()
        } else {
            Answer::Acked
        }
    });
    let left = [hint("a", 1)];
    let early = now + HANDOFF_REFUSED_RETRY - Duration::from_millis(1);
    assert!(round(&mut h, early, t, &left, |_| Answer::Acked)
        .0
        .is_empty());
    let due = now + HANDOFF_REFUSED_RETRY + Duration::from_millis(1);
    let (sent, deleted, _) = round(&mut h, due, t, &left, |_| Answer::Acked);
    assert_eq!(
        (sent, deleted),
        (vec!["a".to_owned()], vec!["a".to_owned()])
    );
}

#[test]
fn a_failure_ends_the_round_and_the_next_round_starts_over() {
    let t = node("node3");
    let mut h = Handoff::new();
    let now = Instant::now();
    let stored = [hint("a", 1), hint("b", 2), hint("c", 3)];
    let unreachable = |k: &str| {
        if k == "b" {
            Answer::from_error(&ErrorReply::Unreachable {
                node: "node3".into(),
                reason: "no answer within 5s".into(),
            })
        } else {
            Answer::Acked
        }
    };
    let (sent, deleted, done) = round(&mut h, now, t, &stored, unreachable);
    assert_eq!(
        sent,
        ["a", "b"],
        "c is not tried against a node that just failed"
    );
    assert_eq!(deleted, ["a"]);
    assert!(
        matches!(done, Some(Action::RoundDone { delivered: 1, refused: 0, failure: Some(ref why), .. }) if why.contains("no answer")),
        "{done:?}"
    );
    assert_eq!(h.refused(t), 0, "a failure sets nothing aside");
    let left = [hint("b", 2), hint("c", 3)];
    let (sent, deleted, _) = round(&mut h, now, t, &left, |_| Answer::Acked);
    assert_eq!(sent, ["b", "c"]);
    assert_eq!(deleted, ["b", "c"]);
}

#[test]
fn only_targets_that_are_up_and_hold_hints_get_a_round_and_one_at_a_time() {
    let (up, down, empty) = (node("node2"), node("node3"), node("node4"));
    let mut h = Handoff::new();
    let now = Instant::now();
    let held = BTreeMap::from([(up, 2), (down, 5), (empty, 0)]);
    h.handle_round(now, &held, &|n| n != down);
    assert_eq!(
        actions(&mut h),
        [Action::ReadHints {
            target: up,
            limit: HANDOFF_BATCH_MAX
        }]
    );
    // A round in progress is not started again.
    h.handle_round(now, &held, &|n| n != down);
    assert!(actions(&mut h).is_empty());
    h.handle_hints(up, vec![hint("a", 1), hint("b", 2)]);
    assert_eq!(
        actions(&mut h),
        [Action::Send {
            target: up,
            hint: hint("a", 1)
        }],
        "one hint at a time"
    );
}

#[test]
fn a_round_reads_past_the_hints_set_aside_and_sends_at_most_a_batch() {
    let t = node("node3");
    let mut h = Handoff::new();
    let now = Instant::now();
    let stored: Vec<HintRef> = (0..HANDOFF_BATCH_MAX as u64 + 10)
        .map(|i| hint(&format!("k{i:04}"), i))
        .collect();
    let (sent, _, _) = round(&mut h, now, t, &stored[..3], |k| {
        if k == "k0000" {
            refused()
        } else {
            Answer::Acked
        }
    });
    assert_eq!(sent.len(), 3);
    h.handle_round(now, &counts(t, stored.len() as u64), &|_| true);
    assert_eq!(
        actions(&mut h),
        [Action::ReadHints {
            target: t,
            limit: HANDOFF_BATCH_MAX + 1
        }]
    );
    // The store still lists k0000 first (it holds every hint, delivered ones gone).
    let remaining: Vec<HintRef> = std::iter::once(stored[0].clone())
        .chain(stored[3..].iter().cloned())
        .take(HANDOFF_BATCH_MAX + 1)
        .collect();
    h.handle_hints(t, remaining);
    let mut sends = 0;
    while let Some(a) = h.poll_action() {
        if let Action::Send { hint, .. } = a {
            assert_ne!(hint.key, b"k0000", "the refused hint is set aside");
            sends += 1;
            h.handle_answer(now, t, Answer::Acked);
        }
    }
    assert_eq!(
        sends, HANDOFF_BATCH_MAX,
        "a full batch besides the one set aside"
    );
}

// ---- Hints follow ownership (issue 11 item 4) ----

use std::sync::Arc;

use cairn_core::handoff::{route_hint, Route};
use cairn_core::limits::HANDOFF_SWEEP_HINTS_MAX;
use cairn_layout::{Change, Layout, LayoutVersion};
use cairn_ring::{Member, RingConfig};

fn n(i: usize) -> NodeId {
    node(&format!("node{i}"))
}

/// Version 1 over node1..=node`members`, then `change` applied; retired too if `settle`
/// (every member acknowledged, every source pushed).
fn layout(members: usize, change: Change, settle: bool) -> Layout {
    let config = RingConfig {
        partitions: 16,
        replicas: 3,
    };
    let first: Vec<(Member, String)> = (1..=members)
        .map(|i| (Member::new(n(i)), format!("node{i}")))
        .collect();
    let mut l = Layout::new(LayoutVersion::initial(config, &first).unwrap());
    let plan = l.plan(&change).unwrap();
    l.apply(plan).unwrap();
    if settle {
        for i in 1..=members + 1 {
            l.ack(n(i));
        }
        for i in 1..=members + 1 {
            l.record_pushed(n(i));
        }
        l.poll_retire()
            .expect("every source pushed: the old version retires");
        assert!(l.is_settled());
    }
    l
}

fn leave4(settle: bool) -> Layout {
    layout(4, Change::Leave { node: n(4) }, settle)
}

fn owners(l: &Layout, key: &[u8]) -> Vec<NodeId> {
    l.current().primaries(l.current().ring().partition_of(key))
}

/// The first keys (of `k0`, `k1`, ...) that `pick` accepts.
fn keys_where(count: usize, pick: impl Fn(&[u8]) -> bool) -> Vec<String> {
    (0..100_000)
        .map(|i| format!("k{i:05}"))
        .filter(|k| pick(k.as_bytes()))
        .take(count)
        .collect()
}

#[test]
fn a_hint_goes_to_its_target_while_it_replicates_and_to_the_new_owners_once_it_does_not() {
    let (me, gone) = (n(1), n(4));
    // Before the change (one version): every hint goes to its target.
    let before = layout(4, Change::Leave { node: n(4) }, false);
    let previous_owners = |key: &[u8]| {
        let v = before.previous().unwrap();
        v.primaries(v.ring().partition_of(key))
    };
    let moved = keys_where(1, |k| previous_owners(k).contains(&gone))[0].clone();
    let new_owners = owners(&before, moved.as_bytes());
    assert!(!new_owners.contains(&gone));
    let expected: Vec<NodeId> = new_owners.iter().copied().filter(|o| *o != me).collect();
    // In flight: node4 replicates in the old version still, so it keeps its hint and the new
    // owners get one too.
    assert_eq!(
        route_hint(&before, me, gone, moved.as_bytes()),
        Route::TargetAndOwners(expected.clone())
    );
    // Retired: node4 replicates nothing; the hint is the new owners' alone.
    let after = leave4(true);
    assert_eq!(
        route_hint(&after, me, gone, moved.as_bytes()),
        Route::Owners(expected)
    );
    // A target that is still an owner gets its own hints.
    let owner = owners(&after, moved.as_bytes())[0];
    assert_eq!(
        route_hint(&after, n(9), owner, moved.as_bytes()),
        Route::Target
    );
}

#[test]
fn a_node_that_gives_partitions_to_a_joiner_keeps_only_its_remaining_hints() {
    let l = Arc::new(layout(
        5,
        Change::Join {
            node: n(6),
            name: "node6".into(),
            zone: None,
        },
        true,
    ));
    // node1 lost some partitions to node6; its hints for those go to the new owners, the
    // others to node1.
    let (me, target) = (n(2), n(1));
    let lost = keys_where(2, |k| !owners(&l, k).contains(&target));
    let kept = keys_where(2, |k| owners(&l, k).contains(&target));
    let stored: Vec<HintRef> = [&lost[0], &kept[0], &lost[1], &kept[1]]
        .iter()
        .enumerate()
        .map(|(i, k)| hint(k, i as u64))
        .collect();
    let mut h = Handoff::new();
    h.handle_layout(me, l.clone());
    let now = Instant::now();
    h.handle_round(now, &counts(target, 4), &|_| true);
    assert!(matches!(actions(&mut h)[..], [Action::ReadHints { .. }]));
    h.handle_hints(target, stored.clone());
    let mut redirected = Vec::new();
    let mut sent = Vec::new();
    while let Some(a) = h.poll_action() {
        match a {
            Action::Redirect { hint, to, keep, .. } => {
                assert!(!keep);
                let key = String::from_utf8(hint.key).unwrap();
                let expected: Vec<NodeId> = owners(&l, key.as_bytes())
                    .into_iter()
                    .filter(|o| *o != me)
                    .collect();
                assert_eq!(to, expected, "{key}: to every new owner but the holder");
                redirected.push(key);
            }
            Action::Send { hint, .. } => {
                sent.push(String::from_utf8(hint.key).unwrap());
                h.handle_answer(now, target, Answer::Acked);
            }
            Action::Delete { .. } => {}
            Action::RoundDone {
                redirected: r,
                delivered,
                ..
            } => {
                assert_eq!((r, delivered), (2, 2))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(redirected, lost);
    assert_eq!(sent, kept);
}

#[test]
fn a_target_that_is_down_is_swept_once_per_layout_and_its_moved_hints_redirected() {
    let (me, gone) = (n(1), n(4));
    let stored: Vec<HintRef> = (0..5).map(|i| hint(&format!("s{i}"), i)).collect();
    let mut h = Handoff::new();
    let now = Instant::now();
    let down = |t: NodeId| t != gone;
    // Without a layout a down target is left alone, as before.
    h.handle_round(now, &counts(gone, 5), &down);
    assert!(actions(&mut h).is_empty());

    // node4 left and the old version retired: every hint of node4 moves.
    h.handle_layout(me, Arc::new(leave4(true)));
    h.handle_round(now, &counts(gone, 5), &down);
    assert_eq!(
        actions(&mut h),
        [Action::ReadHints {
            target: gone,
            limit: HANDOFF_SWEEP_HINTS_MAX
        }]
    );
    h.handle_hints(gone, stored.clone());
    let got = actions(&mut h);
    let redirects = got
        .iter()
        .filter(|a| matches!(a, Action::Redirect { keep: false, target, .. } if *target == gone))
        .count();
    assert_eq!(redirects, 5, "{got:?}");
    assert!(
        !got.iter().any(|a| matches!(a, Action::Send { .. })),
        "nothing is sent to a node that is down"
    );
    assert!(matches!(
        got.last(),
        Some(Action::RoundDone {
            redirected: 5,
            delivered: 0,
            ..
        })
    ));
    // Swept under this layout: not again (say the redirects failed and the hints stayed)...
    h.handle_round(now, &counts(gone, 5), &down);
    assert!(actions(&mut h).is_empty());
    // ... until the next layout.
    h.handle_layout(me, Arc::new(leave4(true)));
    h.handle_round(now, &counts(gone, 5), &down);
    assert!(matches!(actions(&mut h)[..], [Action::ReadHints { .. }]));
}

#[test]
fn a_sweep_in_flight_copies_to_the_new_owners_and_keeps_the_target_hint() {
    let (me, gone) = (n(1), n(4));
    let l = leave4(false);
    let old = l.previous().unwrap().clone();
    let in_old = keys_where(3, |k| {
        old.primaries(old.ring().partition_of(k)).contains(&gone)
    });
    let stored: Vec<HintRef> = in_old.iter().map(|k| hint(k, 1)).collect();
    let mut h = Handoff::new();
    h.handle_layout(me, Arc::new(l));
    let now = Instant::now();
    h.handle_round(now, &counts(gone, 3), &|t| t != gone);
    actions(&mut h);
    h.handle_hints(gone, stored);
    let got = actions(&mut h);
    let copies = got
        .iter()
        .filter(|a| matches!(a, Action::Redirect { keep: true, .. }))
        .count();
    assert_eq!(copies, 3, "{got:?}");
    // Copies move nothing out of the front of the key order: no second sweep.
    h.handle_round(now, &counts(gone, 3), &|t| t != gone);
    assert!(actions(&mut h).is_empty());
}

#[test]
fn a_full_sweep_that_moved_hints_runs_again() {
    let (me, gone) = (n(1), n(4));
    let stored: Vec<HintRef> = (0..HANDOFF_SWEEP_HINTS_MAX as u64)
        .map(|i| hint(&format!("f{i:05}"), i))
        .collect();
    let mut h = Handoff::new();
    h.handle_layout(me, Arc::new(leave4(true)));
    let now = Instant::now();
    let held = counts(gone, 2 * HANDOFF_SWEEP_HINTS_MAX as u64);
    h.handle_round(now, &held, &|t| t != gone);
    actions(&mut h);
    h.handle_hints(gone, stored);
    actions(&mut h);
    // It read its limit and moved them: more may lie behind.
    h.handle_round(now, &held, &|t| t != gone);
    assert!(matches!(actions(&mut h)[..], [Action::ReadHints { .. }]));
}

#[test]
fn an_acknowledgement_after_the_partition_moved_redirects_instead_of_deleting() {
    let (me, target) = (n(1), n(4));
    let mut h = Handoff::new();
    // Some partitions stay with node4 when node5 joins: a hint for one of them goes to node4.
    let settled = layout(
        4,
        Change::Join {
            node: n(5),
            name: "node5".into(),
            zone: None,
        },
        true,
    );
    // Then node4 leaves, retired while the hint is on its way.
    let key = keys_where(1, |k| owners(&settled, k).contains(&target))[0].clone();
    h.handle_layout(me, Arc::new(settled));
    let now = Instant::now();
    h.handle_round(now, &counts(target, 1), &|_| true);
    actions(&mut h);
    h.handle_hints(target, vec![hint(&key, 7)]);
    assert!(matches!(actions(&mut h)[..], [Action::Send { .. }]));
    let left = leave4(true);
    assert!(!owners(&left, key.as_bytes()).contains(&target));
    h.handle_layout(me, Arc::new(left));
    h.handle_answer(now, target, Answer::Acked);
    let got = actions(&mut h);
    assert!(
        matches!(&got[0], Action::Redirect { keep: false, hint, .. } if hint.seq == 7),
        "{got:?}"
    );
    assert!(!got.iter().any(|a| matches!(a, Action::Delete { .. })));
}
