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
