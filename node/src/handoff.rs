//! Hinted handoff's I/O: keys this node holds hints for are handed to the node that missed them
//! once it is reachable again; a hint is deleted only after the target acknowledged durable
//! storage. What to send when, and what an answer means, is the pure policy in
//! `cairn_core::handoff`; this loop reads the store, talks to peers and keeps the time.
//!
//! A fallback drops its own copy of a delivered key, by compare-and-delete
//! ([`Write::DropIfUnchanged`] with the object the target acknowledged), when it replicates the
//! key's partition in no live layout version: the copy existed only to be handed off. A write or
//! merge that reached the copy after it was sent makes the object differ and keeps it, and the
//! writer also keeps a copy that still backs a hint to another target.
//!
//! Hints follow ownership: the loop hands the policy every layout it publishes, and carries out
//! its redirects ([`Action::Redirect`]) by adding hints for the key's current replicas before
//! deleting the one for a node that no longer replicates it.

use std::sync::Arc;
use std::time::Instant;

use cairn_core::handoff::{redirect_writes, Action, Answer, Handoff, HintRef};
use cairn_core::peer::{ack, PeerError};
use cairn_core::version::Object;
use cairn_proto::{NodeId, PeerRequest};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::engine::{Engine, Write};
use crate::layout::NodeLayout;
use crate::peers::Peers;

/// Defined by the pure handoff policy, which the simulator drives too.
pub use cairn_core::handoff::{HANDOFF_INTERVAL, HANDOFF_REQUEST_TIMEOUT};

/// What the handoff loop works with.
struct Context {
    me: NodeId,
    engine: Arc<Engine>,
    peers: Arc<Peers>,
    layout: Arc<NodeLayout>,
    /// The object last acknowledged by a target: (target, key, object). The policy sends one
    /// hint at a time and asks for its deletion right after the acknowledgement, so one slot
    /// is enough.
    acked: Option<(NodeId, Vec<u8>, Object)>,
}

/// Delivers hints forever: on every peer up-transition and every `HANDOFF_INTERVAL`.
pub async fn run(
    me: NodeId,
    engine: Arc<Engine>,
    peers: Arc<Peers>,
    layout: Arc<NodeLayout>,
    mut up_events: mpsc::Receiver<NodeId>,
) {
    let mut policy = Handoff::new();
    let mut layouts = layout.subscribe();
    let mut cx = Context {
        me,
        engine,
        peers,
        layout,
        acked: None,
    };
    let mut routed: Option<Arc<cairn_layout::Layout>> = None;
    loop {
        tokio::select! {
            _ = up_events.recv() => {}
            // A new layout may have moved hinted partitions: redirect at once.
            Ok(()) = layouts.changed() => {}
            _ = tokio::time::sleep(HANDOFF_INTERVAL) => {}
        }
        if let Some(layout) = cx.layout.get() {
            if !routed.as_ref().is_some_and(|r| Arc::ptr_eq(r, &layout)) {
                policy.handle_layout(cx.me, layout.clone());
                routed = Some(layout);
            }
        }
        policy.handle_round(Instant::now(), &cx.engine.hint_counts(), &|t| {
            cx.peers.is_up(t)
        });
        while let Some(action) = policy.poll_action() {
            carry_out(action, &mut policy, &mut cx).await;
        }
    }
}

impl Context {
    /// Whether this node must keep its copy of `key`: it replicates the key's partition in some
    /// live layout version, or it holds no layout to tell (then nothing is dropped).
    fn keeps(&self, key: &[u8]) -> bool {
        match self.layout.get() {
            Some(layout) => {
                let p = self.layout.ring_config().partition_of(key);
                layout.replicates(self.me, p)
            }
            None => true,
        }
    }
}

async fn carry_out(action: Action, policy: &mut Handoff, cx: &mut Context) {
    let (engine, peers) = (&cx.engine.clone(), &cx.peers.clone());
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
            let (answer, sent) = send(engine, peers, target, hint.key.clone()).await;
            cx.acked = match (&answer, sent) {
                (Answer::Acked, Some(object)) => Some((target, hint.key, object)),
                _ => None,
            };
            policy.handle_answer(Instant::now(), target, answer);
        }
        Action::Delete { target, hint } => {
            let done = Write::HintDelivered {
                target,
                seq: hint.seq,
            };
            match engine.apply(hint.key.clone(), done).await {
                Ok(_) => crate::metrics::record_hint_delivered(),
                // The hint stays and is delivered again: a merge is idempotent.
                Err(e) => {
                    debug!("deleting a delivered hint failed: {e}");
                    return;
                }
            }
            let acked = match cx.acked.take() {
                Some((t, key, object)) if t == target && key == hint.key => object,
                _ => return,
            };
            if cx.keeps(&hint.key) {
                return;
            }
            let drop = Write::DropIfUnchanged { expected: acked };
            match engine.apply(hint.key, drop).await {
                Ok(left) if left.is_empty() => crate::metrics::record_copy_dropped(),
                // Changed since it was sent, or it backs another hint: kept.
                Ok(_) => {}
                // The copy stays; a later delivery or the layout cleanup may drop it.
                Err(e) => debug!("dropping a handed-off copy failed: {e}"),
            }
        }
        Action::Redirect {
            target,
            hint,
            to,
            keep,
        } => redirect(engine, peers, target, hint, to, keep).await,
        Action::RoundDone {
            target,
            delivered,
            refused,
            redirected,
            failure,
        } => {
            let peer = peers.name(target);
            if delivered > 0 || refused > 0 || redirected > 0 {
                info!(%peer, delivered, refused, redirected, "hints handed off");
            }
            if let Some(why) = failure {
                debug!("handoff to {peer} stopped: {why}");
            }
        }
    }
}

/// Carries out a redirect: the core's `redirect_writes`, applied in order, stopping at the
/// first that fails (the old hint stays; the next round or sweep tries again).
async fn redirect(
    engine: &Arc<Engine>,
    peers: &Peers,
    target: NodeId,
    hint: HintRef,
    to: Vec<NodeId>,
    keep: bool,
) {
    for write in redirect_writes(target, &hint, &to, keep) {
        if let Err(e) = engine.apply(hint.key.clone(), write).await {
            debug!("redirecting a hint for {}: {e}", peers.name(target));
            return;
        }
    }
}

/// Sends the current object of `key` to `target`; returns the answer and the object sent.
async fn send(
    engine: &Arc<Engine>,
    peers: &Peers,
    target: NodeId,
    key: Vec<u8>,
) -> (Answer, Option<Object>) {
    let object = match engine.read(key.clone()).await {
        Ok(object) => object,
        Err(e) => return (Answer::Failed(format!("reading the object: {e}")), None),
    };
    let req = PeerRequest::Replicate {
        key,
        object: object.encode(),
        hint_for: None,
    };
    let answer = match peers
        .call_for(target, "hint delivery", req, HANDOFF_REQUEST_TIMEOUT, ack)
        .await
    {
        Ok(()) => Answer::Acked,
        // The target's own refusal says whether the others may still go.
        Err(PeerError::Refused { reply, .. }) => Answer::from_error(&reply),
        Err(e @ PeerError::Mismatch { .. }) => Answer::Refused(e.to_string()),
        // No answer at all: the others would most likely get none either.
        Err(e) => Answer::Failed(e.to_string()),
    };
    (answer, Some(object))
}
