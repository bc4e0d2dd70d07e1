//! The cleanup's policy, without I/O: after a layout change settles, which copies this node
//! drops (the keys of partitions it replicates in no live layout version), a page at a time,
//! each by compare-and-delete, and when it sweeps again. The node's cleanup task
//! (`node/src/cleanup.rs`) and the simulator both drive this machine: they read the pages it
//! asks for ([`unreplicated_page`](crate::transfer::unreplicated_page)), carry out its drops
//! (`Write::DropIfUnchanged`) and feed it the outcomes and the layout.
//!
//! Rule (issue 11): an old owner deletes only when no live version needs it. Retirement waits
//! until every old replica pushed its partitions to the new ones, and `Layout::replicates`
//! counts every live version, so while a transfer is in flight the old owners keep everything.
//!
//! A sweep starts when the machine is made and whenever the layout changes; one in progress
//! stops at once (the next starts over under the new layout). A sweep that had to keep a key it
//! does not replicate (changed since it was read, hinted, a failed write or read) runs again
//! `retry_interval` after it ended.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_layout::Layout;

use crate::transfer::TransferEntry;
use crate::version::Object;

/// The cleanup's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupConfig {
    /// Keys per page read (the node's `CLEANUP_PAGE_MAX`).
    pub page_max: usize,
    /// How long after a sweep that kept keys the next one starts (the node's
    /// `CLEANUP_RETRY_INTERVAL`).
    pub retry_interval: Duration,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys removed.
    pub dropped: u64,
    /// Keys this node does not replicate that were kept (changed since read, hinted, corrupt,
    /// or a failed write or read); the sweep is retried for them.
    pub kept: u64,
    /// The layout changed during the sweep, which stopped.
    pub interrupted: bool,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the page of keys after `after` that this node replicates in no live version of
    /// `layout` (`transfer::unreplicated_page` with `keys_max`), and answer with
    /// [`Cleanup::handle_page`].
    Scan {
        /// The layout the sweep runs under.
        layout: Arc<Layout>,
        /// The last key of the previous page (`None`: from the start).
        after: Option<Vec<u8>>,
        /// At most this many keys.
        keys_max: usize,
    },
    /// Compare-and-delete this node's copy of `key` (`Write::DropIfUnchanged { expected }`)
    /// and answer with [`Cleanup::handle_dropped`].
    Drop {
        /// The key.
        key: Vec<u8>,
        /// The object as the page read it.
        expected: Object,
    },
}

#[derive(Debug)]
enum Phase {
    /// No sweep: one starts when `due`, or at `retry_at`.
    Idle {
        due: bool,
        retry_at: Option<Instant>,
    },
    /// A page is to be read (`scan_out` once asked for).
    Scanning {
        after: Option<Vec<u8>>,
        scan_out: bool,
    },
    /// The page's drops are handed out and answered.
    Dropping {
        after: Option<Vec<u8>>,
        last: bool,
        to_drop: VecDeque<(Vec<u8>, Object)>,
        waiting: BTreeSet<Vec<u8>>,
    },
}

/// The cleanup of one node.
#[derive(Debug)]
pub struct Cleanup {
    config: CleanupConfig,
    layout: Option<Arc<Layout>>,
    phase: Phase,
    /// The sweep in progress.
    sweep: SweepReport,
    /// The last sweep that ended, until [`Cleanup::poll_report`] takes it.
    ended: Option<SweepReport>,
}

impl Cleanup {
    /// A cleanup whose first sweep starts as soon as it has a layout.
    pub fn new(config: CleanupConfig) -> Cleanup {
        Cleanup {
            config,
            layout: None,
            phase: Phase::Idle {
                due: true,
                retry_at: None,
            },
            sweep: SweepReport::default(),
            ended: None,
        }
    }

    /// The layout this node holds. A new one stops the sweep in progress and starts another.
    pub fn handle_layout(&mut self, now: Instant, layout: Option<Arc<Layout>>) {
        let same = match (&self.layout, &layout) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.layout = layout;
        if !matches!(self.phase, Phase::Idle { .. }) {
            self.sweep.interrupted = true;
            self.end_sweep(now);
        }
        self.phase = Phase::Idle {
            due: true,
            retry_at: None,
        };
    }

    /// The next thing the driver must do, if any. Every drop of a page is handed out before
    /// any is answered, so the writer's group commit can fold them together.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        let layout = self.layout.clone()?;
        if let Phase::Idle { due, retry_at } = &self.phase {
            if !*due && !retry_at.is_some_and(|at| now >= at) {
                return None;
            }
            self.sweep = SweepReport::default();
            self.phase = Phase::Scanning {
                after: None,
                scan_out: false,
            };
        }
        match &mut self.phase {
            Phase::Idle { .. } => None,
            Phase::Scanning { after, scan_out } => {
                if *scan_out {
                    return None;
                }
                *scan_out = true;
                Some(Action::Scan {
                    layout,
                    after: after.clone(),
                    keys_max: self.config.page_max,
                })
            }
            Phase::Dropping {
                to_drop, waiting, ..
            } => {
                let (key, expected) = to_drop.pop_front()?;
                waiting.insert(key.clone());
                Some(Action::Drop { key, expected })
            }
        }
    }

    /// When the machine next needs `poll_action` without an answer arriving: a retry's time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle {
                due: false,
                retry_at,
            } if self.layout.is_some() => *retry_at,
            _ => None,
        }
    }

    /// The report of the last sweep that ended, once.
    pub fn poll_report(&mut self) -> Option<SweepReport> {
        self.ended.take()
    }

    /// The page asked for by [`Action::Scan`] (its entries and whether it is the store's
    /// last), or why it could not be read: the sweep then ends and is retried.
    pub fn handle_page(&mut self, now: Instant, page: Result<(Vec<TransferEntry>, bool), String>) {
        let Phase::Scanning {
            scan_out: true,
            after,
        } = &self.phase
        else {
            return;
        };
        let (entries, last) = match page {
            Ok(page) => page,
            Err(_) => {
                self.sweep.kept += 1;
                self.end_sweep(now);
                return;
            }
        };
        let after = entries.last().map(|e| e.key.clone()).or(after.clone());
        let mut to_drop = VecDeque::with_capacity(entries.len());
        for TransferEntry { key, object } in entries {
            match Object::decode(&object) {
                Ok(expected) => to_drop.push_back((key, expected)),
                // Not ours to judge: a corrupt object is kept for an operator to see.
                Err(_) => self.sweep.kept += 1,
            }
        }
        self.phase = Phase::Dropping {
            after,
            last,
            to_drop,
            waiting: BTreeSet::new(),
        };
        self.maybe_page_done(now);
    }

    /// The outcome of [`Action::Drop`]: whether the copy was removed (false: the
    /// compare-and-delete kept it, changed or hinted), or why the write failed.
    pub fn handle_dropped(&mut self, now: Instant, key: &[u8], outcome: Result<bool, String>) {
        let Phase::Dropping { waiting, .. } = &mut self.phase else {
            return;
        };
        if !waiting.remove(key) {
            return;
        }
        match outcome {
            Ok(true) => self.sweep.dropped += 1,
            Ok(false) | Err(_) => self.sweep.kept += 1,
        }
        self.maybe_page_done(now);
    }

    /// Once a page's drops are all answered: the next page, or the sweep's end.
    fn maybe_page_done(&mut self, now: Instant) {
        let Phase::Dropping {
            after,
            last,
            to_drop,
            waiting,
        } = &mut self.phase
        else {
            return;
        };
        if !to_drop.is_empty() || !waiting.is_empty() {
            return;
        }
        if *last {
            self.end_sweep(now);
        } else {
            self.phase = Phase::Scanning {
                after: after.take(),
                scan_out: false,
            };
        }
    }

    fn end_sweep(&mut self, now: Instant) {
        let report = std::mem::take(&mut self.sweep);
        self.ended = Some(report);
        self.phase = Phase::Idle {
            due: false,
            retry_at: (report.kept > 0).then(|| now + self.config.retry_interval),
        };
    }
}
