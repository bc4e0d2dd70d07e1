//! Hinted handoff's I/O: keys this node holds hints for are handed to the node that missed them
//! once it is reachable again; a hint is deleted only after the target acknowledged durable
//! storage. What to send when, and what an answer means, is the pure policy in
//! `cairn_core::handoff`; this loop reads the store, talks to peers and keeps the time.

use std::sync::Arc;
use std::time::Instant;

use cairn_core::handoff::{Action, Answer, Handoff, HintRef};
use cairn_proto::{NodeId, PeerRequest, PeerResponse};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::engine::{Engine, Write};
use crate::peers::Peers;

/// Defined by the pure handoff policy, which the simulator drives too.
pub use cairn_core::handoff::{HANDOFF_INTERVAL, HANDOFF_REQUEST_TIMEOUT};

/// Delivers hints forever: on every peer up-transition and every `HANDOFF_INTERVAL`.
pub async fn run(engine: Arc<Engine>, peers: Arc<Peers>, mut up_events: mpsc::Receiver<NodeId>) {
    let mut policy = Handoff::new();
    loop {
        tokio::select! {
            _ = up_events.recv() => {}
            _ = tokio::time::sleep(HANDOFF_INTERVAL) => {}
        }
        policy.handle_round(Instant::now(), &engine.hint_counts(), &|t| peers.is_up(t));
        while let Some(action) = policy.poll_action() {
            carry_out(action, &mut policy, &engine, &peers).await;
        }
    }
}

async fn carry_out(action: Action, policy: &mut Handoff, engine: &Arc<Engine>, peers: &Peers) {
    match action {
        Action::ReadHints { target, limit } => {
            let engine = engine.clone();
            match tokio::task::spawn_blocking(move || engine.hints(target, limit)).await {
                Ok(Ok(hints)) => policy.handle_hints(
                    target,
                    hints
                        .into_iter()
                        .map(|h| HintRef {
                            key: h.key,
                            seq: h.seq,
                        })
                        .collect(),
                ),
                Ok(Err(e)) => policy.handle_read_failed(target, format!("reading hints: {e}")),
                Err(e) => policy.handle_read_failed(target, format!("reading hints: {e}")),
            }
        }
        Action::Send { target, hint } => {
            let answer = send(engine, peers, target, hint.key).await;
            policy.handle_answer(Instant::now(), target, answer);
        }
        Action::Delete { target, hint } => {
            let done = Write::HintDelivered {
                target,
                seq: hint.seq,
            };
            match engine.apply(hint.key, done).await {
                Ok(_) => crate::metrics::record_hint_delivered(),
                // The hint stays and is delivered again: a merge is idempotent.
                Err(e) => debug!("deleting a delivered hint failed: {e}"),
            }
        }
        Action::RoundDone {
            target,
            delivered,
            refused,
            failure,
        } => {
            let peer = peers.name(target);
            if delivered > 0 || refused > 0 {
                info!(%peer, delivered, refused, "hints handed off");
            }
            if let Some(why) = failure {
                debug!("handoff to {peer} stopped: {why}");
            }
        }
    }
}

/// Sends the current object of `key` to `target`.
async fn send(engine: &Arc<Engine>, peers: &Peers, target: NodeId, key: Vec<u8>) -> Answer {
    let object = match engine.read(key.clone()).await {
        Ok(object) => object,
        Err(e) => return Answer::Failed(format!("reading the object: {e}")),
    };
    let req = PeerRequest::Replicate {
        key,
        object: object.encode(),
        hint_for: None,
    };
    match peers.call(target, req, HANDOFF_REQUEST_TIMEOUT).await {
        Ok(Ok(PeerResponse::Ack)) => Answer::Acked,
        Ok(Ok(other)) => Answer::Refused(format!("answered {other:?}")),
        // The target's own refusal says whether the others may still go.
        Ok(Err(reply)) => Answer::from_error(&reply),
        // No answer at all: the others would most likely get none either.
        Err(e) => Answer::Failed(e.to_string()),
    }
}
