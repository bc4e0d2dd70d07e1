//! Hinted handoff: keys this node holds hints for are handed to the node that missed them once
//! it is reachable again; a hint is deleted only after the target acknowledged durable storage.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::{NodeId, PeerRequest, PeerResponse};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::engine::{Engine, Write};
use crate::limits::HANDOFF_BATCH_MAX;
use crate::peers::Peers;

/// How often hints are retried when no peer came up in between.
pub const HANDOFF_INTERVAL: Duration = Duration::from_secs(1);
/// How long one handed-off key may take to be acknowledged.
pub const HANDOFF_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivers hints forever: on every peer up-transition and every `HANDOFF_INTERVAL`.
pub async fn run(engine: Arc<Engine>, peers: Arc<Peers>, mut up_events: mpsc::Receiver<NodeId>) {
    loop {
        tokio::select! {
            _ = up_events.recv() => {}
            _ = tokio::time::sleep(HANDOFF_INTERVAL) => {}
        }
        for (target, count) in engine.hint_counts() {
            if count > 0 && peers.is_up(target) {
                deliver(&engine, &peers, target).await;
            }
        }
    }
}

/// Hands over up to `HANDOFF_BATCH_MAX` keys to `target`, stopping at the first failure.
async fn deliver(engine: &Arc<Engine>, peers: &Peers, target: NodeId) {
    let hints = {
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || engine.hints(target, HANDOFF_BATCH_MAX)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return debug!("reading hints failed: {e}"),
            Err(e) => return debug!("reading hints failed: {e}"),
        }
    };
    let mut delivered = 0usize;
    for hint in hints {
        let Ok(object) = engine.read(hint.key.clone()).await else {
            return;
        };
        let req = PeerRequest::Replicate {
            key: hint.key.clone(),
            object: object.encode(),
            hint_for: None,
        };
        match peers.request(target, req, HANDOFF_REQUEST_TIMEOUT).await {
            Ok(PeerResponse::Ack) => {
                let done = Write::HintDelivered {
                    target,
                    seq: hint.seq,
                };
                if engine.apply(hint.key, done).await.is_err() {
                    return;
                }
                delivered += 1;
                crate::metrics::record_hint_delivered();
            }
            Ok(other) => return debug!("handoff to {} got {other:?}", peers.name(target)),
            Err(e) => return debug!("handoff to {} failed: {e}", peers.name(target)),
        }
    }
    if delivered > 0 {
        info!(peer = %peers.name(target), delivered, "hints handed off");
    }
}
