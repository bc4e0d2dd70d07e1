//! The transfer task: runs the pure transfer machine (`cairn_core::transfer`) against this
//! node's store and peers while a layout change is in flight, records the push in the layout
//! when every new replica confirmed every partition, retires the old version once the layout
//! allows it, gives this node's acknowledgement of a new version once the coordinator's write
//! fence reaches it, and publishes where the transfer stands for `cairn status`. Every layout
//! change goes through `Membership::change_layout`: persisted, then routed by, then gossiped.
//!
//! Pages are read from the store a partition at a time (`Store::scan_partition`, a snapshot scan
//! that starts after the last key sent), and their keys go to the new replica in peer batches of
//! the ordinary replicate without a hint: the receiver merges each with `sync`, so nothing it
//! holds is overwritten and sending twice is harmless.

use std::sync::Arc;

use cairn_core::transfer::{
    batch_answered, batch_request, batches, read_page, Action, Page, SendId, TransferConfig,
    TransferEntry, TransferMachine, TransferStatus,
};
use cairn_layout::Layout;
use cairn_proto::NodeId;
use cairn_ring::PartitionId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::limits::{
    TRANSFER_BATCHES_IN_FLIGHT_MAX, TRANSFER_REQUEST_TIMEOUT, TRANSFER_RESULTS_QUEUE_MAX,
    TRANSFER_RETRY_MAX,
};
use crate::membership::Membership;
use crate::peers::Peers;
use crate::store::Store;
use crate::tasks::{sleep_until, Tasks};

/// What the transfer task needs.
pub struct TransferContext {
    /// This node.
    pub me: NodeId,
    /// The layout (followed, and changed to record the push and retire the old version).
    pub membership: Arc<Membership>,
    /// The coordinator's write fence (`DriverContext::write_fence`).
    pub write_fence: watch::Receiver<u64>,
    /// The store pages are read from.
    pub store: Arc<dyn Store>,
    /// Peers the keys go to.
    pub peers: Arc<Peers>,
    /// Rate and width.
    pub config: TransferConfig,
    /// The Merkle trees, for each partition's key count (the estimate of keys left), when
    /// anti-entropy keeps them.
    pub trees: Option<Arc<crate::trees::Trees>>,
}

enum Answer {
    Page(PartitionId, Result<Page, String>),
    Sent(SendId, Result<(), String>),
}

/// Starts the transfer task among `tasks`; the watch carries its status.
pub(crate) fn spawn(ctx: TransferContext, tasks: &Tasks) -> watch::Receiver<TransferStatus> {
    let (tx, rx) = watch::channel(TransferStatus::default());
    tasks.spawn("transfer", run(ctx, tx));
    rx
}

async fn run(ctx: TransferContext, status: watch::Sender<TransferStatus>) {
    let ctx = Arc::new(ctx);
    let mut layouts = ctx.membership.layout().subscribe();
    let mut fence = ctx.write_fence.clone();
    let mut machine = TransferMachine::new(Instant::now().into_std(), ctx.config);
    let (answers_tx, mut answers) = mpsc::channel(TRANSFER_RESULTS_QUEUE_MAX);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let layout = layouts.borrow_and_update().clone();
        if let Some(layout) = layout.as_deref() {
            plan(&ctx, layout, &mut machine).await;
        }
        let now = Instant::now().into_std();
        while let Some(action) = machine.poll_action(now) {
            match action {
                Action::Scan {
                    partition,
                    after,
                    keys_max,
                    bytes_max,
                } => {
                    let (store, tx) = (ctx.store.clone(), answers_tx.clone());
                    let config = layout
                        .as_deref()
                        .map(|l| l.current().ring().config())
                        .expect("a transfer has a layout");
                    tasks.spawn(async move {
                        let page = tokio::task::spawn_blocking(move || {
                            read_page(
                                &*store,
                                config,
                                partition,
                                after.as_deref(),
                                keys_max,
                                bytes_max,
                            )
                            .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("page read task: {e}")));
                        let _ = tx.send(Answer::Page(partition, page)).await;
                    });
                }
                Action::Send {
                    id, to, entries, ..
                } => {
                    let (peers, tx) = (ctx.peers.clone(), answers_tx.clone());
                    tasks.spawn(async move {
                        let result = send(&peers, to, &entries).await;
                        let _ = tx.send(Answer::Sent(id, result)).await;
                    });
                }
                Action::PartitionPushed(p) => {
                    info!(partition = p, "partition pushed to its new replicas")
                }
                Action::AllPushed { version } => record_pushed(&ctx, version).await,
            }
        }
        status.send_replace(machine.status(now));
        while tasks.try_join_next().is_some() {}
        // At the latest every TRANSFER_RETRY_MAX: a push record or a retirement whose layout
        // write failed is tried again even when nothing else happens.
        let recheck = Instant::now() + TRANSFER_RETRY_MAX;
        let deadline = Some(
            machine
                .poll_timeout()
                .map_or(recheck, |t| Instant::from_std(t).min(recheck)),
        );
        tokio::select! {
            changed = layouts.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = fence.changed() => {
                if changed.is_err() {
                    return;
                }
                fence.borrow_and_update();
                // The coordinator now routes by a newer version with nothing older unanswered:
                // the acknowledgement membership held back may be given.
                if let Err(e) = ctx.membership.layout_changed().await {
                    warn!("could not acknowledge the layout: {e}");
                }
            }
            Some(answer) = answers.recv() => {
                let now = Instant::now().into_std();
                match answer {
                    Answer::Page(p, page) => machine.handle_page(now, p, page),
                    Answer::Sent(id, result) => machine.handle_sent(now, id, result),
                }
            }
            _ = sleep_until(deadline) => {}
        }
    }
}

/// Brings the machine in line with `layout` (`TransferMachine::follow`: the transfer this node
/// owes once every member acknowledged the new version, nothing otherwise) and carries out what
/// it asks: record the push again, retire the old version once it may.
async fn plan(ctx: &TransferContext, layout: &Layout, machine: &mut TransferMachine) {
    let trees = ctx.trees.as_ref().filter(|t| t.is_ready());
    let estimate = |p| trees.map(|t| t.with_tree(p, |tree| tree.len() as u64));
    let step = machine.follow(Instant::now().into_std(), ctx.me, layout, &estimate);
    if let Some((version, partitions)) = step.started {
        info!(
            version,
            partitions, "pushing partitions to their new replicas"
        );
    }
    if let Some(version) = step.record_push {
        // Pushed, but the record did not make it into the layout (its write failed): again.
        record_pushed(ctx, version).await;
    }
    if step.retire {
        let retired = ctx.membership.change_layout(|l| Ok(l.poll_retire())).await;
        match retired {
            Ok(Some(r)) => info!(version = r.version, "old layout version retired"),
            Ok(None) => {}
            Err(e) => warn!("could not retire the old layout version: {e}"),
        }
    }
}

/// Records in the layout that this node pushed every partition of `version`'s transfer.
async fn record_pushed(ctx: &TransferContext, version: u64) {
    let me = ctx.me;
    let recorded = ctx
        .membership
        .change_layout(|l| Ok(l.current().version() == version && l.record_pushed(me)))
        .await;
    match recorded {
        Ok(true) => info!(version, "every partition pushed; recorded in the layout"),
        Ok(false) => {}
        Err(e) => warn!(
            version,
            "could not record the push (tried again on the next change): {e}"
        ),
    }
}

/// Merges every entry into `to` in peer batches: `PeerRequest::Batch` of replicates without a
/// hint, at most `PEER_BATCH_ITEMS_MAX` entries and about `PEER_BATCH_BYTES_MAX` bytes each (an
/// entry larger than that goes alone), `TRANSFER_BATCHES_IN_FLIGHT_MAX` at a time. A batch is one
/// frame on one stream and one group commit at the target, where a request per key cost a
/// stream, a task and a writer round on both sides. The first failure fails the whole send
/// (the machine sends it again; merging twice is harmless).
async fn send(peers: &Arc<Peers>, to: NodeId, entries: &[TransferEntry]) -> Result<(), String> {
    let batches = batches(entries);
    for group in batches.chunks(TRANSFER_BATCHES_IN_FLIGHT_MAX) {
        let mut set = tokio::task::JoinSet::new();
        for (b, batch) in group.iter().enumerate() {
            let peers = peers.clone();
            let request = batch_request(batch);
            // Returns the batch's index with its answers; they are read below, against the
            // batch this task does not hold.
            set.spawn(async move {
                let answers = peers
                    .call_for(
                        to,
                        "transfer",
                        request,
                        TRANSFER_REQUEST_TIMEOUT,
                        cairn_core::peer::batch_answers,
                    )
                    .await;
                (b, answers)
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok((b, Ok(answers))) => batch_answered(group[b], answers)?,
                Ok((_, Err(e))) => return Err(e.to_string()),
                Err(e) => return Err(format!("send task: {e}")),
            }
        }
    }
    Ok(())
}
