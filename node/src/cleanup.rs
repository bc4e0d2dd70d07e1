//! Dropping the copies this node no longer needs: after a layout change settles (the old
//! version retired), the keys of partitions this node replicates in no live layout version are
//! removed from its store, each by compare-and-delete ([`Write::DropIfUnchanged`] with the object
//! as the sweep read it), so a write or merge that reached the key meanwhile is never removed,
//! and a copy that backs a hint stays (the writer checks).
//!
//! Rule (issue 11): an old owner deletes only when no live version needs it. Retirement waits
//! until every old replica pushed its partitions to the new ones, and [`Layout::replicates`]
//! counts every live version, so while a transfer is in flight the old owners keep everything.
//!
//! A sweep runs when the layout changes, and again after `CLEANUP_RETRY_INTERVAL` if it had to
//! keep a key it does not replicate (changed since it was read, or hinted). It reads pages of at
//! most `CLEANUP_PAGE_MAX` keys (a snapshot scan, as the transfer's pages), and stops at once if
//! the layout changes under it: the next sweep starts from the new layout.

use std::sync::Arc;

use cairn_core::transfer::{unreplicated_page, TransferEntry};
use cairn_layout::Layout;
use cairn_proto::NodeId;
use cairn_ring::RingConfig;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::{Engine, Write};
use crate::limits::{CLEANUP_PAGE_MAX, CLEANUP_RETRY_INTERVAL};
use crate::version::Object;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys removed.
    pub dropped: u64,
    /// Keys this node does not replicate that were kept (changed since read, hinted, or a
    /// failed write); the sweep is retried for them.
    pub kept: u64,
    /// The layout changed during the sweep, which stopped.
    pub interrupted: bool,
}

/// Sweeps forever: after every layout change, and again while a sweep left keys behind.
pub async fn run(
    me: NodeId,
    engine: Arc<Engine>,
    config: RingConfig,
    mut layouts: watch::Receiver<Option<Arc<Layout>>>,
) {
    loop {
        let layout = layouts.borrow_and_update().clone();
        let mut retry = false;
        if let Some(layout) = layout {
            let report = sweep(me, &engine, config, &layout, &layouts).await;
            if report.dropped > 0 || report.kept > 0 {
                info!(
                    dropped = report.dropped,
                    kept = report.kept,
                    interrupted = report.interrupted,
                    "dropped copies of partitions this node no longer replicates"
                );
            }
            retry = report.kept > 0;
        }
        if retry {
            tokio::select! {
                changed = layouts.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(CLEANUP_RETRY_INTERVAL) => {}
            }
        } else if layouts.changed().await.is_err() {
            // The layout's sender is gone: the node is shutting down.
            return;
        }
    }
}

/// One pass over the store under `layout`.
pub async fn sweep(
    me: NodeId,
    engine: &Arc<Engine>,
    config: RingConfig,
    layout: &Arc<Layout>,
    layouts: &watch::Receiver<Option<Arc<Layout>>>,
) -> SweepReport {
    let mut report = SweepReport::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        if layouts.has_changed().unwrap_or(true) {
            report.interrupted = true;
            return report;
        }
        let store = engine.store();
        let page_layout = layout.clone();
        let from = after.clone();
        let page = tokio::task::spawn_blocking(move || {
            unreplicated_page(
                &*store,
                config,
                &page_layout,
                me,
                from.as_deref(),
                CLEANUP_PAGE_MAX,
            )
        })
        .await;
        let (entries, last) = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                warn!("cleanup: reading the store failed: {e}");
                report.kept += 1;
                return report;
            }
            Err(e) => {
                warn!("cleanup: the read task failed: {e}");
                report.kept += 1;
                return report;
            }
        };
        after = entries.last().map(|e| e.key.clone());
        // All of a page at once, so the writer's group commit folds them into few commits.
        let mut drops = tokio::task::JoinSet::new();
        for TransferEntry { key, object } in entries {
            let expected = match Object::decode(&object) {
                Ok(o) => o,
                Err(e) => {
                    // Not ours to judge here: a corrupt object is kept for an operator to see.
                    warn!(key = %String::from_utf8_lossy(&key), "cleanup: stored object does not decode: {e}");
                    report.kept += 1;
                    continue;
                }
            };
            let engine = engine.clone();
            drops
                .spawn(async move { engine.apply(key, Write::DropIfUnchanged { expected }).await });
        }
        while let Some(done) = drops.join_next().await {
            match done {
                Ok(Ok(left)) if left.is_empty() => {
                    report.dropped += 1;
                    crate::metrics::record_copy_dropped();
                }
                Ok(Ok(_)) => report.kept += 1,
                Ok(Err(e)) => {
                    debug!("cleanup: a drop failed: {e}");
                    report.kept += 1;
                }
                Err(e) => {
                    debug!("cleanup: a drop task failed: {e}");
                    report.kept += 1;
                }
            }
        }
        if last {
            return report;
        }
    }
}
