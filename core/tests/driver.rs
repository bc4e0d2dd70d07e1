//! The request driver's reply rule: an acknowledgement waits for the hints issued before it,
//! and a fallback that could not keep such a hint does not acknowledge (seed 106), even when the
//! hint failed before the last acknowledgement came (seed 8025).

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use cairn_core::coordinator::{CoordinatorError, Outcome, ReplicaResult};
use cairn_core::driver::{Job, LocalOp, Output, RequestDriver};
use cairn_core::version::{Dot, Object, Payload, VClock};
use cairn_core::writer::Write;
use cairn_proto::{ActorId, Context, NodeId, PeerResponse, WriteOptions};
use cairn_ring::{Member, Ring, RingConfig};

/// Four nodes, N = 3; `me` and a key it is *not* a primary of.
fn setup() -> (NodeId, Ring, Vec<u8>) {
    let ids: Vec<NodeId> = (1..=4)
        .map(|i| NodeId::from_name(&format!("n{i}")))
        .collect();
    let ring = Ring::new(
        RingConfig {
            partitions: 16,
            replicas: 3,
        },
        &ids.iter().map(|&id| Member::new(id)).collect::<Vec<_>>(),
    )
    .unwrap();
    let me = ids[0];
    let key = (0..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| {
            !ring
                .preference_list(ring.partition_of(k))
                .primaries
                .contains(&me)
        })
        .unwrap();
    (me, ring, key)
}

/// A blind put of `v` to `key` with write quorum `w`.
fn put(key: &[u8], w: u8) -> Job {
    Job::Put {
        key: key.to_vec(),
        context: Context::default(),
        payload: Payload::Value(b"v".to_vec()),
        opts: WriteOptions {
            w: Some(w),
            ..WriteOptions::default()
        },
    }
}

/// A W = 1 put at `me` with every other node down: `me` stands in for the primaries.
fn put_alone(driver: &mut RequestDriver<&'static str>, me: NodeId, key: &[u8]) -> Vec<u64> {
    driver.handle_client(Instant::now(), put(key, 1), "client", &|id| id == me);
    apply_update(driver, me);
    let mut hints = Vec::new();
    while let Some(out) = driver.poll_output() {
        match out {
            Output::Hint { seq, .. } => hints.push(seq),
            Output::Reply { .. } => panic!("replied before its hints were durable"),
            _ => {}
        }
    }
    assert!(!hints.is_empty(), "the down primaries get hints");
    hints
}

/// Applies the local update the driver asked for, as this node's writer would.
fn apply_update(driver: &mut RequestDriver<&'static str>, me: NodeId) {
    let mut update = None;
    while let Some(out) = driver.poll_output() {
        if let Output::Local {
            op: Some(op),
            work: LocalOp::Write(Write::Update { .. }),
            ..
        } = out
        {
            update = Some(op);
        }
    }
    let op = update.expect("the update is applied here");
    let stored = Object::new()
        .update(
            &VClock::default(),
            Dot::new(ActorId { node: me, epoch: 1 }, 1),
            Payload::Value(b"v".to_vec()),
        )
        .unwrap();
    driver.handle_local(op, Ok(ReplicaResult::Object(stored)));
}

fn reply(driver: &mut RequestDriver<&'static str>) -> Result<Outcome, CoordinatorError> {
    let mut replies = Vec::new();
    while let Some(out) = driver.poll_output() {
        if let Output::Reply { result, .. } = out {
            replies.push(result);
        }
    }
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.pop().unwrap()
}

#[test]
fn an_ack_waits_for_the_hints_issued_before_it() {
    let (me, ring, key) = setup();
    let mut driver = RequestDriver::new(me, ring, true);
    let hints = put_alone(&mut driver, me, &key);
    let last = *hints.last().unwrap();
    driver.handle_hints_done(last - 1);
    assert!(
        driver.poll_output().is_none(),
        "one hint is still not durable"
    );
    driver.handle_hints_done(last);
    assert!(matches!(reply(&mut driver), Ok(Outcome::Written(_))));
}

#[test]
fn a_fallback_does_not_ack_a_write_whose_hint_was_not_kept() {
    let (me, ring, key) = setup();
    let mut driver = RequestDriver::new(me, ring, true);
    let hints = put_alone(&mut driver, me, &key);
    driver.handle_hint_failed(hints[0], key.clone(), "hint store full".into());
    driver.handle_hints_done(*hints.last().unwrap());
    match reply(&mut driver) {
        Err(CoordinatorError::Local(e)) => {
            assert!(e.to_string().contains("hint store full"), "{e}")
        }
        other => panic!("acknowledged anyway: {other:?}"),
    }
}

#[test]
fn a_hint_that_failed_before_the_last_ack_still_fails_the_write() {
    let (me, ring, key) = setup();
    let primaries = ring.preference_list(ring.partition_of(&key)).primaries;
    let up = primaries[0];
    let mut driver: RequestDriver<&'static str> = RequestDriver::new(me, ring, true);
    // W = 2 with one primary up: this fallback's copy and that primary's make the quorum.
    driver.handle_client(Instant::now(), put(&key, 2), "client", &|id| {
        id == me || id == up
    });
    apply_update(&mut driver, me);
    let (mut hints, mut sent) = (Vec::new(), None);
    while let Some(out) = driver.poll_output() {
        match out {
            Output::Hint { seq, .. } => hints.push(seq),
            Output::SendPeer {
                op: Some(op), to, ..
            } if to == up => sent = Some(op),
            Output::Reply { .. } => panic!("replied before the quorum"),
            _ => {}
        }
    }
    // Every hint is done (one failed) while the primary's acknowledgement is still on its way.
    driver.handle_hint_failed(hints[0], key.clone(), "hint store full".into());
    driver.handle_hints_done(*hints.last().unwrap());
    assert!(driver.poll_output().is_none(), "the quorum is not met yet");
    driver.handle_peer_reply(
        sent.expect("the primary is sent the write"),
        Ok(PeerResponse::Ack),
    );
    match reply(&mut driver) {
        Err(CoordinatorError::Local(e)) => {
            assert!(e.to_string().contains("hint store full"), "{e}")
        }
        other => panic!("acknowledged anyway: {other:?}"),
    }
}
