//! Storage health: whether this node's store refuses commits, and when its writer next tries
//! to bring it back in place. A sans-I/O machine the node's writer thread and the simulator's
//! writer both run; the node gossips its fault (`cairn_gossip::Storage`), so peers route around
//! a node whose commits fail, and the node does not route to itself.

use std::time::{Duration, Instant};

use cairn_gossip::Storage;
use cairn_proto::NodeId;

use crate::store::{Batch, Store, StoreError};
use crate::writer::{WriteError, Writer, WriterConfig};

/// How often the writer's storage fault is read and gossiped: a failed commit reaches the
/// other nodes' routing within this plus a few gossip rounds.
pub const STORAGE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// The first wait before a degraded node's writer tries to recover its store in place (reopen
/// redb, replay the log) after a failed commit; each failed attempt doubles it.
pub const STORAGE_PROBE_RETRY_BASE: Duration = Duration::from_millis(200);
/// The longest wait between two recovery attempts; they go on while the fault lasts.
pub const STORAGE_PROBE_RETRY_MAX: Duration = Duration::from_secs(10);
const _: () = assert!(STORAGE_PROBE_RETRY_BASE.as_nanos() <= STORAGE_PROBE_RETRY_MAX.as_nanos());

/// What the disk did to the last commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// The disk is full (the OS said ENOSPC), as opposed to any other I/O error.
    pub disk_full: bool,
    /// What the store reported.
    pub reason: String,
}

impl StorageFault {
    /// Classifies a failed commit. The store's errors carry the OS's words, not its codes, so
    /// this reads them: ENOSPC is "No space left on device (os error 28)" on Linux.
    pub fn of(error: &StoreError) -> StorageFault {
        let reason = error.to_string();
        StorageFault {
            disk_full: reason.contains("os error 28") || reason.contains("No space left"),
            reason,
        }
    }

    /// The error a client gets for a write the fault refused.
    pub fn client_reason(&self) -> String {
        if self.disk_full {
            format!(
                "the disk of this node is full; nothing was acknowledged (free space: the node \
                 recovers by itself once it can write again): {}",
                self.reason
            )
        } else {
            format!(
                "the disk of this node failed; nothing was acknowledged: {}",
                self.reason
            )
        }
    }
}

/// A write's result after its batch's commit failed with `fault`: the store's bare commit error
/// becomes the fault's client reason (what a client is told); any other result stays.
pub fn with_fault_reason<T>(
    fault: Option<&StorageFault>,
    result: Result<T, WriteError>,
) -> Result<T, WriteError> {
    match (fault, result) {
        (Some(f), Err(WriteError::Store(StoreError::Io { op: "commit", .. }))) => {
            Err(WriteError::Store(StoreError::Io {
                op: "commit",
                reason: f.client_reason(),
            }))
        }
        (_, result) => result,
    }
}

/// The storage fault of the last commit, and the recovery attempts' backoff while it lasts.
#[derive(Debug, Default)]
pub struct StorageHealth {
    fault: Option<StorageFault>,
    /// Failed attempts since the fault.
    failures: u32,
    /// When the next attempt is due; `None` until the first is scheduled.
    next_at: Option<Instant>,
}

impl StorageHealth {
    /// The fault of the last commit, if it failed (or of the last recovery attempt).
    pub fn fault(&self) -> Option<&StorageFault> {
        self.fault.as_ref()
    }

    /// What this node declares in gossip.
    pub fn storage(&self) -> Storage {
        match &self.fault {
            None => Storage::Ok,
            Some(f) => Storage::Degraded {
                disk_full: f.disk_full,
            },
        }
    }

    /// A batch was committed (`None`) or its commit failed. A commit that succeeds clears the
    /// fault and the recovery's backoff.
    pub fn handle_commit(&mut self, fault: Option<StorageFault>) {
        if fault.is_none() {
            *self = StorageHealth::default();
        } else {
            self.fault = fault;
        }
    }

    /// While degraded: whether a recovery attempt ([`recover`]) is due at `now`. The first
    /// call after a fault schedules it `STORAGE_PROBE_RETRY_BASE` later.
    pub fn poll_probe(&mut self, now: Instant) -> bool {
        if self.fault.is_none() {
            return false;
        }
        match self.next_at {
            None => {
                self.next_at = Some(now + STORAGE_PROBE_RETRY_BASE);
                false
            }
            Some(at) => now >= at,
        }
    }

    /// When a recovery attempt is next due, while degraded and once scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.fault.as_ref().and(self.next_at)
    }

    /// The attempt's outcome ([`recover`]): recovered (the fault is cleared), nothing to
    /// recover in place (the next commit that succeeds clears it), or failed with its error.
    /// Unless recovered, the next attempt waits twice as long, up to `STORAGE_PROBE_RETRY_MAX`.
    pub fn handle_probe(&mut self, now: Instant, outcome: &Result<bool, StoreError>) {
        match outcome {
            Ok(true) => {
                *self = StorageHealth::default();
                return;
            }
            Ok(false) => {}
            Err(e) => self.fault = Some(StorageFault::of(e)),
        }
        self.failures = self.failures.saturating_add(1);
        let backoff = STORAGE_PROBE_RETRY_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(STORAGE_PROBE_RETRY_MAX);
        self.next_at = Some(now + backoff);
    }
}

/// One attempt to bring a store that refuses commits back in place: the store recovers
/// ([`Store::recover`]), a probe commit (an empty batch through the whole write path) must
/// succeed, and the writer is opened again over it (its lease and hint counts as stored: a
/// fresh lease block, so no dot repeats). `Ok(None)`: nothing to recover in place;
/// `Ok(Some(keys))`: recovered, and these keys' objects may differ from what was last seen
/// committed (logged batches whose commit reported failure), for the caller's indexes.
pub fn recover(
    store: &dyn Store,
    writer: &mut Writer,
    node: NodeId,
    config: WriterConfig,
) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let Some(touched) = store.recover()? else {
        return Ok(None);
    };
    store.commit(&Batch::default())?;
    if store.meta()?.is_none() {
        // Never after a successful open; a fresh lease here could repeat dots.
        return Err(StoreError::CorruptMeta {
            reason: "the recovered store holds no node metadata".into(),
        });
    }
    // The epoch is unused: the store holds its metadata (checked above).
    *writer =
        Writer::open(store, node, writer.actor().epoch, config).map_err(|e| StoreError::Io {
            op: "reopen the writer",
            reason: e.to_string(),
        })?;
    Ok(Some(touched))
}

#[cfg(test)]
// A test's clock starts at the real now; the core itself only takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn io(reason: &str) -> StoreError {
        StoreError::Io {
            op: "commit",
            reason: reason.into(),
        }
    }

    #[test]
    fn a_failed_commit_degrades_until_a_commit_or_a_recovery_succeeds() {
        let t0 = Instant::now();
        let mut h = StorageHealth::default();
        assert_eq!(h.storage(), Storage::Ok);
        assert!(!h.poll_probe(t0), "healthy: nothing to probe");
        h.handle_commit(Some(StorageFault::of(&io(
            "No space left on device (os error 28)",
        ))));
        assert_eq!(h.storage(), Storage::Degraded { disk_full: true });
        // The first poll schedules the attempt; it is due only after the base wait.
        assert!(!h.poll_probe(t0));
        assert_eq!(h.poll_timeout(), Some(t0 + STORAGE_PROBE_RETRY_BASE));
        assert!(!h.poll_probe(t0 + STORAGE_PROBE_RETRY_BASE / 2));
        let t1 = t0 + STORAGE_PROBE_RETRY_BASE;
        assert!(h.poll_probe(t1));
        // Nothing to recover in place: stays degraded, waits twice as long.
        h.handle_probe(t1, &Ok(false));
        assert_eq!(h.poll_timeout(), Some(t1 + STORAGE_PROBE_RETRY_BASE * 2));
        // A failed attempt names its own error.
        let t2 = t1 + STORAGE_PROBE_RETRY_BASE * 2;
        h.handle_probe(t2, &Err(io("bad sector")));
        assert_eq!(h.storage(), Storage::Degraded { disk_full: false });
        assert_eq!(h.poll_timeout(), Some(t2 + STORAGE_PROBE_RETRY_BASE * 4));
        // A commit that succeeds clears the fault and the backoff with it.
        h.handle_commit(None);
        assert_eq!(h.storage(), Storage::Ok);
        assert_eq!(h.poll_timeout(), None);
        h.handle_commit(Some(StorageFault::of(&io("again"))));
        assert!(!h.poll_probe(t2), "a new fault starts from the base wait");
        assert_eq!(h.poll_timeout(), Some(t2 + STORAGE_PROBE_RETRY_BASE));
        h.handle_probe(t2, &Ok(true));
        assert_eq!(h.fault(), None);
    }

    #[test]
    fn the_backoff_stops_at_its_maximum() {
        let t0 = Instant::now();
        let mut h = StorageHealth::default();
        h.handle_commit(Some(StorageFault::of(&io("x"))));
        for _ in 0..40 {
            h.handle_probe(t0, &Ok(false));
        }
        assert_eq!(h.poll_timeout(), Some(t0 + STORAGE_PROBE_RETRY_MAX));
    }
}
