//! Dropping the copies this node no longer needs: the task that drives the core's cleanup
//! machine (`cairn_core::cleanup`, which decides what a sweep drops and when it runs again, and
//! which the simulator runs too). It reads the pages the machine asks for on a blocking thread
//! (a snapshot scan, as the transfer's pages), drops each key by compare-and-delete
//! ([`Write::DropIfUnchanged`] with the object as the page read it, so a write or merge that
//! reached the key meanwhile is never removed, and a copy that backs a hint stays), and feeds
//! it the layout, the outcomes and the time.

use std::sync::Arc;
use std::time::Instant;

use cairn_core::cleanup::{Action, Cleanup, CleanupConfig};
use cairn_core::transfer::{unreplicated_page, TransferEntry};
use cairn_layout::Layout;
use cairn_proto::NodeId;
use cairn_ring::RingConfig;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::engine::{Engine, Write};
use crate::limits::{CLEANUP_PAGE_MAX, CLEANUP_RETRY_INTERVAL};
use crate::tasks::sleep_until;

pub use cairn_core::cleanup::SweepReport;

/// What a page read or a drop reports back to the cleanup task.
enum Answer {
    Page(Result<(Vec<TransferEntry>, bool), String>),
    Dropped(Vec<u8>, Result<bool, String>),
}

/// Sweeps forever: after every layout change, and again while a sweep left keys behind.
pub async fn run(
    me: NodeId,
    engine: Arc<Engine>,
    config: RingConfig,
    mut layouts: watch::Receiver<Option<Arc<Layout>>>,
) {
    let mut cleanup = Cleanup::new(CleanupConfig {
        page_max: CLEANUP_PAGE_MAX,
        retry_interval: CLEANUP_RETRY_INTERVAL,
    });
    cleanup.handle_layout(Instant::now(), layouts.borrow_and_update().clone());
    // At most one page read or one page's drops are out at once.
    let (answers_tx, mut answers) = mpsc::channel(CLEANUP_PAGE_MAX + 1);
    // Ends with this task, so nothing it started outlives the node.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        while let Some(action) = cleanup.poll_action(now) {
            let engine = engine.clone();
            let answers = answers_tx.clone();
            match action {
                Action::Scan {
                    layout,
                    after,
                    keys_max,
                } => {
                    tasks.spawn(async move {
                        let store = engine.store();
                        let page = tokio::task::spawn_blocking(move || {
                            unreplicated_page(
                                &*store,
                                config,
                                &layout,
                                me,
                                after.as_deref(),
                                keys_max,
                            )
                        })
                        .await;
                        let page = match page {
                            Ok(Ok(page)) => Ok(page),
                            Ok(Err(e)) => Err(format!("reading the store failed: {e}")),
                            Err(e) => Err(format!("the read task failed: {e}")),
                        };
                        if let Err(e) = &page {
                            warn!("cleanup: {e}");
                        }
                        let _ = answers.send(Answer::Page(page)).await;
                    });
                }
                Action::Drop { key, expected } => {
                    tasks.spawn(async move {
                        let outcome = match engine
                            .apply(key.clone(), Write::DropIfUnchanged { expected })
                            .await
                        {
                            Ok(left) => {
                                let dropped = left.is_empty();
                                if dropped {
                                    crate::metrics::record_copy_dropped();
                                }
                                Ok(dropped)
                            }
                            Err(e) => {
                                debug!("cleanup: a drop failed: {e}");
                                Err(e.to_string())
                            }
                        };
                        let _ = answers.send(Answer::Dropped(key, outcome)).await;
                    });
                }
            }
        }
        if let Some(report) = cleanup.poll_report() {
            if report.dropped > 0 || report.kept > 0 {
                info!(
                    dropped = report.dropped,
                    kept = report.kept,
                    interrupted = report.interrupted,
                    "dropped copies of partitions this node no longer replicates"
                );
            }
        }
        while tasks.try_join_next().is_some() {}
        let retry = cleanup.poll_timeout();
        tokio::select! {
            changed = layouts.changed() => {
                if changed.is_err() {
                    // The layout's sender is gone: the node is shutting down.
                    return;
                }
                let layout = layouts.borrow_and_update().clone();
                cleanup.handle_layout(Instant::now(), layout);
            }
            Some(answer) = answers.recv() => match answer {
                Answer::Page(page) => cleanup.handle_page(Instant::now(), page),
                Answer::Dropped(key, outcome) => {
                    cleanup.handle_dropped(Instant::now(), &key, outcome);
                }
            },
            _ = sleep_until(retry) => {}
        }
    }
}
