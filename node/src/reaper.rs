//! The reaper task: runs the pure tombstone reaper (`cairn_core::reaper`) against this node's
//! store and peers — pages of the store read on a blocking thread, `PeerRequest::Tombstones`
//! sent to every other member of every live layout version, confirmed tombstones removed by the
//! engine's compare-and-delete (which also takes them out of the Merkle trees) — and publishes
//! where it stands for `cairn status`. Also answers the peers' `Tombstones` requests.

use std::sync::Arc;

use cairn_core::reaper::{self, Action, Reaper, ReaperConfig, ReaperStatus};
use cairn_layout::Layout;
use cairn_proto::{
    ErrorReply, NodeId, PeerRequest, PeerResponse, TombstoneHolding, TombstoneProbe,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::engine::{Engine, Write};
use crate::limits::{TOMBSTONE_ANSWERS_QUEUE_MAX, TOMBSTONE_REQUEST_TIMEOUT};
use crate::peers::Peers;
use crate::tasks::{sleep_until, Tasks};

/// What the reaper task needs.
pub struct ReaperContext {
    /// This node.
    pub me: NodeId,
    /// The store and the writer's compare-and-delete.
    pub engine: Arc<Engine>,
    /// The members asked.
    pub peers: Arc<Peers>,
    /// The layout this node routes by.
    pub layouts: watch::Receiver<Option<Arc<Layout>>>,
    /// Grace period, interval and rate.
    pub config: ReaperConfig,
}

enum Answer {
    Page(Result<reaper::ScanPage, String>),
    Checked(NodeId, Result<Vec<TombstoneHolding>, String>),
    Dropped(Vec<u8>, Result<bool, String>),
}

/// Starts the reaper task among `tasks`; the watch carries its status.
pub(crate) fn spawn(ctx: ReaperContext, tasks: &Tasks) -> watch::Receiver<ReaperStatus> {
    let (tx, rx) = watch::channel(ReaperStatus::default());
    tasks.spawn("reaper", run(ctx, tx));
    rx
}

async fn run(mut ctx: ReaperContext, status: watch::Sender<ReaperStatus>) {
    let mut machine = Reaper::new(Instant::now().into_std(), ctx.me, ctx.config);
    let (answers_tx, mut answers) = mpsc::channel(TOMBSTONE_ANSWERS_QUEUE_MAX);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now().into_std();
        let layout = ctx.layouts.borrow_and_update().clone();
        machine.handle_layout(now, layout);
        while let Some(action) = machine.poll_action(now) {
            let tx = answers_tx.clone();
            match action {
                Action::Scan {
                    after,
                    tombstones_max,
                } => {
                    let store = ctx.engine.store();
                    tasks.spawn(async move {
                        let page = tokio::task::spawn_blocking(move || {
                            reaper::read_page(&*store, after.as_deref(), tombstones_max)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("page read task: {e}")));
                        let _ = tx.send(Answer::Page(page)).await;
                    });
                }
                Action::Check { peer, probes } => {
                    let peers = ctx.peers.clone();
                    tasks.spawn(async move {
                        // A member judged down cannot answer: no need to wait for a timeout.
                        if !peers.is_up(peer) {
                            let down = Err(format!("{} is judged down", peers.name(peer)));
                            let _ = tx.send(Answer::Checked(peer, down)).await;
                            return;
                        }
                        let req = PeerRequest::Tombstones {
                            probes: probes.to_vec(),
                        };
                        let answer = peers
                            .call_for(
                                peer,
                                "tombstone check",
                                req,
                                TOMBSTONE_REQUEST_TIMEOUT,
                                |answer| match answer {
                                    PeerResponse::Tombstones(holdings) => Ok(holdings),
                                    other => Err(other),
                                },
                            )
                            .await
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Answer::Checked(peer, answer)).await;
                    });
                }
                Action::Drop { key, expected } => {
                    let engine = ctx.engine.clone();
                    tasks.spawn(async move {
                        let outcome = engine
                            .apply(key.clone(), Write::DropIfUnchanged { expected })
                            .await
                            .map(|left| left.is_empty())
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Answer::Dropped(key, outcome)).await;
                    });
                }
            }
        }
        let before = status.borrow().reaped;
        status.send_replace(machine.status().clone());
        let reaped = machine.status().reaped - before;
        if reaped > 0 {
            info!(reaped, "reaped tombstones every member holds");
        }
        while tasks.try_join_next().is_some() {}
        let deadline = machine.poll_timeout().map(Instant::from_std);
        tokio::select! {
            changed = ctx.layouts.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(answer) = answers.recv() => {
                let now = Instant::now().into_std();
                match answer {
                    Answer::Page(page) => {
                        if let Err(e) = &page {
                            debug!("reaper: reading the store failed: {e}");
                        }
                        machine.handle_page(now, page);
                    }
                    Answer::Checked(peer, answer) => machine.handle_checked(now, peer, answer),
                    Answer::Dropped(key, outcome) => machine.handle_dropped(now, &key, outcome),
                }
            }
            _ = sleep_until(deadline) => {}
        }
    }
}

/// The answer to a peer's `PeerRequest::Tombstones`: what this node holds of each key, read on
/// a blocking thread (point reads of the store).
pub async fn answer(
    engine: &Engine,
    probes: Vec<TombstoneProbe>,
) -> Result<PeerResponse, ErrorReply> {
    let store = engine.store();
    tokio::task::spawn_blocking(move || reaper::holdings(&*store, &probes))
        .await
        .map_err(|e| ErrorReply::Storage {
            reason: format!("tombstone check task: {e}"),
        })?
        .map(PeerResponse::Tombstones)
        .map_err(|e| ErrorReply::Storage {
            reason: e.to_string(),
        })
}

/// The reaper's part of `status`, with member names.
pub fn status(enabled: bool, s: &ReaperStatus, peers: &Peers) -> cairn_proto::TombstoneStatus {
    let b = &s.blocked;
    cairn_proto::TombstoneStatus {
        enabled,
        held: s.held,
        reaped: s.reaped,
        blocked: b.unanswered + b.hinted + b.other_copy + b.changed,
        waiting_on: s.waiting_on.iter().map(|n| peers.name(*n)).collect(),
    }
}
