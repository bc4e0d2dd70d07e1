//! Peer liveness alone: gossip's judgement and exchange outcomes make a peer up or down, stale
//! failures are ignored, and probes go to the right peers with doubling backoff.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use cairn_core::liveness::{
    Liveness, Transition, PROBE_BACKOFF_MAX, PROBE_INTERVAL, SUSPECT_PROBE_INTERVAL,
};
use cairn_proto::NodeId;

fn node(n: &str) -> NodeId {
    NodeId::from_name(n)
}

fn transitions(l: &mut Liveness) -> Vec<Transition> {
    std::iter::from_fn(|| l.poll_transition()).collect()
}

#[test]
fn a_peer_is_up_when_gossip_says_alive_and_down_at_once_when_an_exchange_fails() {
    let (me, p) = (node("node1"), node("node2"));
    let mut l = Liveness::new(me);
    let t0 = Instant::now();
    assert!(l.is_up(me), "this node is always up");
    assert!(!l.is_up(p), "unknown peers are not");
    l.handle_gossip(t0, me, false, false);
    assert!(l.is_up(me), "gossip about this node changes nothing");

    l.handle_gossip(t0, p, true, false);
    assert!(l.is_up(p));
    assert_eq!(transitions(&mut l), [Transition::Up(p)]);
    l.handle_gossip(t0, p, true, false);
    assert!(transitions(&mut l).is_empty(), "no news, no transition");

    l.handle_exchange(p, t0, Err("no answer within 1s".into()));
    assert!(!l.is_up(p));
    assert_eq!(
        transitions(&mut l),
        [Transition::Down {
            node: p,
            reason: "no answer within 1s".into()
        }]
    );
    l.handle_exchange(p, t0 + Duration::from_millis(1), Ok(()));
    assert!(l.is_up(p));
    assert_eq!(transitions(&mut l), [Transition::Up(p)]);
}

#[test]
fn a_failure_of_an_exchange_older_than_the_last_success_is_ignored() {
    let (me, p) = (node("node1"), node("node2"));
    let mut l = Liveness::new(me);
    let t0 = Instant::now();
    l.handle_gossip(t0, p, true, false);
    l.handle_exchange(p, t0 + Duration::from_secs(2), Ok(()));
    // A ping sent before the peer was listening fails late.
    l.handle_exchange(p, t0 + Duration::from_secs(1), Err("refused".into()));
    assert!(l.is_up(p));
    l.handle_exchange(p, t0 + Duration::from_secs(3), Err("reset".into()));
    assert!(!l.is_up(p), "a newer failure counts");
}

#[test]
fn a_peer_marked_down_by_a_failure_is_probed_with_doubling_backoff_until_it_answers() {
    let (me, p) = (node("node1"), node("node2"));
    let mut l = Liveness::new(me);
    let mut now = Instant::now();
    l.handle_gossip(now, p, true, false);
    assert!(l.poll_probes(now).is_empty(), "an up peer is not probed");
    l.handle_exchange(p, now, Err("timed out".into()));
    let mut waits = Vec::new();
    for _ in 0..5 {
        assert_eq!(l.poll_probes(now), [p]);
        l.handle_exchange(p, now, Err("timed out".into()));
        l.handle_probe(now, p, false);
        let next = (1..=10_000)
            .map(|ms| now + Duration::from_millis(ms))
            .find(|t| !l.poll_probes(*t).is_empty())
            .expect("probed again within 10 s");
        waits.push(next - now);
        assert!(l.poll_probes(next - Duration::from_millis(1)).is_empty());
        now = next;
    }
    // The backoff starts at PROBE_INTERVAL and doubles on every failed probe, up to the cap.
    let expected: Vec<Duration> = [2, 4, 8, 16, 32]
        .iter()
        .map(|k| (PROBE_INTERVAL * *k).min(PROBE_BACKOFF_MAX))
        .collect();
    assert_eq!(waits, expected);
    l.handle_exchange(p, now, Ok(()));
    l.handle_probe(now, p, true);
    assert!(l.is_up(p));
    assert!(l.poll_probes(now + PROBE_BACKOFF_MAX).is_empty());
}

#[test]
fn suspects_are_pinged_and_peers_gossip_judges_dead_are_left_to_gossip() {
    let (me, p, q) = (node("node1"), node("node2"), node("node3"));
    let mut l = Liveness::new(me);
    let now = Instant::now();
    l.handle_gossip(now, p, true, true);
    l.handle_gossip(now, q, false, true);
    assert_eq!(
        l.poll_probes(now),
        [p],
        "a dead node is no suspect: gossip has it"
    );
    l.handle_exchange(p, now, Ok(()));
    l.handle_probe(now, p, true);
    assert!(l
        .poll_probes(now + SUSPECT_PROBE_INTERVAL - Duration::from_millis(1))
        .is_empty());
    assert_eq!(l.poll_probes(now + SUSPECT_PROBE_INTERVAL), [p]);

    // Gossip hears from q again: it is tried at once, whatever failed before.
    l.handle_exchange(q, now, Err("refused".into()));
    assert!(!l.is_up(q));
    transitions(&mut l);
    l.handle_gossip(now, q, true, false);
    assert!(l.is_up(q));
    assert_eq!(transitions(&mut l), [Transition::Up(q)]);
}

#[test]
fn a_new_address_forgets_exchange_history_but_keeps_gossips_judgement() {
    let (me, p) = (node("node1"), node("node2"));
    let mut l = Liveness::new(me);
    let now = Instant::now();
    l.handle_gossip(now, p, true, false);
    l.handle_exchange(p, now, Err("refused".into()));
    assert!(!l.is_up(p));
    l.handle_new_address(now, p);
    assert!(
        l.is_up(p),
        "reachable until an exchange with the new address fails"
    );
    l.remove(p);
    assert!(!l.is_up(p));
    assert!(l.poll_probes(now).is_empty());
}

#[test]
fn a_peer_that_declares_its_storage_degraded_is_down_until_it_declares_it_ok_again() {
    let (me, p) = (node("node1"), node("node2"));
    let mut l = Liveness::new(me);
    let t0 = Instant::now();
    l.handle_gossip(t0, p, true, false);
    assert_eq!(transitions(&mut l), [Transition::Up(p)]);

    l.handle_storage(t0, p, true);
    assert!(!l.is_up(p), "a degraded peer is routed around");
    assert_eq!(
        transitions(&mut l),
        [Transition::Down {
            node: p,
            reason: "its storage is degraded (commits fail)".into()
        }]
    );
    // It still answers: neither a successful exchange, nor gossip, nor a new address bring it
    // back while it declares its storage degraded.
    l.handle_exchange(p, t0 + Duration::from_millis(1), Ok(()));
    l.handle_gossip(t0, p, true, false);
    l.handle_new_address(t0, p);
    assert!(!l.is_up(p));
    assert!(transitions(&mut l).is_empty());
    // This node's own degraded storage keeps it out of its own routing, and nothing else
    // (gossip or exchanges about it) changes that.
    l.handle_storage(t0, me, true);
    assert!(!l.is_up(me), "a degraded node routes around itself");
    l.handle_gossip(t0, me, true, false);
    assert!(!l.is_up(me));
    assert!(
        transitions(&mut l).is_empty(),
        "no transitions for this node"
    );
    l.handle_storage(t0, me, false);
    assert!(l.is_up(me));

    l.handle_storage(t0, p, false);
    assert!(l.is_up(p));
    assert_eq!(transitions(&mut l), [Transition::Up(p)]);

    // Degraded and unreachable: clearing one leaves it down for the other.
    l.handle_storage(t0, p, true);
    l.handle_exchange(p, t0 + Duration::from_millis(2), Err("reset".into()));
    l.handle_storage(t0, p, false);
    assert!(!l.is_up(p));
    transitions(&mut l);
    l.handle_exchange(p, t0 + Duration::from_millis(3), Ok(()));
    assert!(l.is_up(p));
    assert_eq!(transitions(&mut l), [Transition::Up(p)]);
}
