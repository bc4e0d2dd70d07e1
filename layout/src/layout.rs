//! The layout history: the live versions (one settled, or an old and a new one while a change is
//! transferred), the progress of the transfer, and how histories merge.

use std::collections::BTreeSet;

use cairn_proto::NodeId;
use cairn_ring::{PartitionId, Ring};
use serde::{Deserialize, Serialize};

use crate::limits::LIVE_VERSIONS_MAX;
use crate::version::{moves, Digest, LayoutVersion, PartitionMove, Plan};
use crate::LayoutError;

/// The layout history a node holds, with the progress of the change in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LayoutParts", into = "LayoutParts")]
pub struct Layout {
    /// Live versions, oldest first, numbered consecutively and chained by parent digests.
    versions: Vec<LayoutVersion>,
    /// Progress of the change into the newest version (empty when settled).
    progress: Progress,
    /// The partitions whose replica sets differ between the two live versions (derived).
    moves: Vec<PartitionMove>,
}

/// Grow-only sets about the newest version, keyed by its digest so that progress made toward a
/// version that lost a conflict never counts for the winner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    digest: Option<Digest>,
    /// Members that hold the newest version and coordinate no write under an older belief.
    acked: BTreeSet<NodeId>,
    /// Old replicas that pushed every key of their changed partitions to the new replicas.
    pushed: BTreeSet<NodeId>,
    /// Nodes the operator said not to wait for (the transfer may lose what only they held).
    forced: BTreeSet<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct LayoutParts {
    versions: Vec<LayoutVersion>,
    progress: Progress,
}

impl From<Layout> for LayoutParts {
    fn from(l: Layout) -> LayoutParts {
        LayoutParts {
            versions: l.versions,
            progress: l.progress,
        }
    }
}

impl TryFrom<LayoutParts> for Layout {
    type Error = LayoutError;

    fn try_from(p: LayoutParts) -> Result<Layout, LayoutError> {
        let invalid = |reason: String| LayoutError::Invalid { reason };
        if p.versions.is_empty() || p.versions.len() > LIVE_VERSIONS_MAX {
            return Err(invalid(format!(
                "{} live versions (1..={LIVE_VERSIONS_MAX} allowed)",
                p.versions.len()
            )));
        }
        for pair in p.versions.windows(2) {
            let (old, new) = (&pair[0], &pair[1]);
            if new.version() != old.version() + 1 || new.parent() != Some(old.digest()) {
                return Err(invalid(format!(
                    "version {} does not follow version {}",
                    new.version(),
                    old.version()
                )));
            }
            if new.ring().config() != old.ring().config() {
                return Err(invalid("live versions differ in Q or N".into()));
            }
            if let Some(d) = new.departed().iter().find(|d| !old.is_member(**d)) {
                return Err(invalid(format!(
                    "version {} departs {d}, which was not a member",
                    new.version()
                )));
            }
        }
        let mut layout = Layout {
            versions: p.versions,
            progress: Progress::default(),
            moves: Vec::new(),
        };
        layout.derive();
        // Progress about another version than the newest says nothing about this history.
        if layout.progress.digest == p.progress.digest {
            layout.progress = p.progress;
        }
        Ok(layout)
    }
}

/// What [`Layout::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Nothing new.
    Unchanged,
    /// Same versions; new progress or the old version's retirement.
    Progressed,
    /// The other history was newer and replaced this one.
    Adopted {
        /// The newest version before.
        from: u64,
        /// The newest version now.
        to: u64,
    },
}

/// Keys a node must push: every key of `partition` it holds, to each of `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The partition.
    pub partition: PartitionId,
    /// The replicas it gains in the new version.
    pub to: Vec<NodeId>,
}

/// The old version retired by [`Layout::poll_retire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// The retired version.
    pub version: u64,
}

/// Where one changed partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The move.
    pub movement: PartitionMove,
    /// Sources that pushed.
    pub pushed: Vec<NodeId>,
    /// Whether reads use the new version.
    pub reads_switched: bool,
}

/// Where the change in flight stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionStatus {
    /// The version being replaced.
    pub from: u64,
    /// The version being transferred to.
    pub to: u64,
    /// Members that have not yet acknowledged the new version (no data moves before all have).
    pub waiting_acks: Vec<NodeId>,
    /// Sources that have not pushed yet (the old version retires when this is empty).
    pub waiting_pushes: Vec<NodeId>,
    /// Nodes the operator said not to wait for.
    pub forced: Vec<NodeId>,
    /// Every changed partition.
    pub partitions: Vec<PartitionProgress>,
}

impl Layout {
    /// A history of one version.
    pub fn new(first: LayoutVersion) -> Layout {
        let mut layout = Layout {
            versions: vec![first],
            progress: Progress::default(),
            moves: Vec::new(),
        };
        layout.derive();
        layout
    }

    /// Recomputes what follows from the versions: the moves and the digest progress is about.
    fn derive(&mut self) {
        match self.versions.as_slice() {
            [_] => {
                self.moves.clear();
                self.progress = Progress::default();
            }
            [old, new] => {
                self.moves = moves(old, new);
                if self.progress.digest != Some(new.digest()) {
                    self.progress = Progress {
                        digest: Some(new.digest()),
                        ..Progress::default()
                    };
                }
            }
            _ => unreachable!("1..=LIVE_VERSIONS_MAX versions, checked where layouts are made"),
        }
    }

    /// The newest version: what routing of new writes and the plan of the next change start from.
    pub fn current(&self) -> &LayoutVersion {
        self.versions.last().expect("a layout has a version")
    }

    /// The version being replaced while a change is in flight.
    pub fn previous(&self) -> Option<&LayoutVersion> {
        (self.versions.len() == 2).then(|| &self.versions[0])
    }

    /// Every live version, oldest first.
    pub fn versions(&self) -> &[LayoutVersion] {
        &self.versions
    }

    /// Whether `ours` (a version this node applied) survived the merges since: a live version
    /// is it, or the history went past its number (its successor can only have been planned by
    /// someone holding it or its rival; a change's confirmation runs long before that). False
    /// when a rival change against the same version won the merge.
    pub fn kept(&self, ours: &crate::LayoutVersion) -> bool {
        self.current().version() > ours.version()
            || self.versions.iter().any(|v| v.digest() == ours.digest())
    }

    /// Whether no change is in flight.
    pub fn is_settled(&self) -> bool {
        self.versions.len() == 1
    }

    /// The plan for `change`, refused while another change is in flight.
    pub fn plan(&self, change: &crate::Change) -> Result<Plan, LayoutError> {
        if let Some(old) = self.previous() {
            return Err(LayoutError::ChangeInFlight {
                version: self.current().version(),
                from: old.version(),
            });
        }
        self.current().plan(change)
    }

    /// Starts the change `plan` describes.
    pub fn apply(&mut self, plan: Plan) -> Result<(), LayoutError> {
        if let Some(old) = self.previous() {
            return Err(LayoutError::ChangeInFlight {
                version: self.current().version(),
                from: old.version(),
            });
        }
        let current = self.current();
        if plan.from != current.version() || plan.next.parent() != Some(current.digest()) {
            return Err(LayoutError::StalePlan {
                planned: plan.from,
                current: current.version(),
            });
        }
        self.versions.push(plan.next);
        self.derive();
        Ok(())
    }

    /// Merges another node's history into this one (see the crate docs for the rule).
    pub fn merge(&mut self, other: &Layout) -> MergeOutcome {
        let key = |l: &Layout| (l.current().version(), l.current().digest());
        let (mine, theirs) = (key(self), key(other));
        if theirs < mine {
            return MergeOutcome::Unchanged;
        }
        if theirs > mine {
            let from = mine.0;
            let kept = std::mem::take(&mut self.progress);
            *self = other.clone();
            self.union_progress(&kept);
            return MergeOutcome::Adopted { from, to: theirs.0 };
        }
        let mut changed = false;
        if other.versions.len() < self.versions.len() {
            // The other node saw the transfer finish: retirement only follows grow-only
            // progress, so this node would reach it too.
            self.versions.remove(0);
            self.derive();
            changed = true;
        }
        if self.versions.len() == other.versions.len() {
            changed |= self.union_progress(&other.progress);
        }
        if changed {
            MergeOutcome::Progressed
        } else {
            MergeOutcome::Unchanged
        }
    }

    fn union_progress(&mut self, other: &Progress) -> bool {
        if self.progress.digest.is_none() || self.progress.digest != other.digest {
            return false;
        }
        let before = (
            self.progress.acked.len(),
            self.progress.pushed.len(),
            self.progress.forced.len(),
        );
        let involved = self.involved();
        let sources = self.sources();
        self.progress
            .acked
            .extend(other.acked.iter().filter(|n| involved.contains(n)));
        self.progress
            .pushed
            .extend(other.pushed.iter().filter(|n| sources.contains(n)));
        self.progress
            .forced
            .extend(other.forced.iter().filter(|n| involved.contains(n)));
        before
            != (
                self.progress.acked.len(),
                self.progress.pushed.len(),
                self.progress.forced.len(),
            )
    }

    /// Members of either live version that the change waits for (departed nodes excluded).
    pub fn involved(&self) -> BTreeSet<NodeId> {
        let departed = self.current().departed();
        self.versions
            .iter()
            .flat_map(|v| v.names().keys().copied())
            .filter(|n| !departed.contains(n))
            .collect()
    }

    /// Old replicas that must push some partition.
    fn sources(&self) -> BTreeSet<NodeId> {
        self.moves
            .iter()
            .flat_map(|m| m.sources.iter().copied())
            .collect()
    }

    fn waiting_acks(&self) -> Vec<NodeId> {
        if self.is_settled() {
            return Vec::new();
        }
        self.involved()
            .into_iter()
            .filter(|n| !self.progress.acked.contains(n) && !self.progress.forced.contains(n))
            .collect()
    }

    fn waiting_pushes(&self) -> Vec<NodeId> {
        self.sources()
            .into_iter()
            .filter(|n| !self.progress.pushed.contains(n) && !self.progress.forced.contains(n))
            .collect()
    }

    /// `node` holds the newest version and coordinates no write under an older one. Returns
    /// whether this is news.
    pub fn ack(&mut self, node: NodeId) -> bool {
        !self.is_settled() && self.involved().contains(&node) && self.progress.acked.insert(node)
    }

    /// Whether `node` has acknowledged the newest version (always true when settled).
    pub fn has_acked(&self, node: NodeId) -> bool {
        self.is_settled() || self.progress.acked.contains(&node)
    }

    /// Whether every member has acknowledged the newest version, so data may move.
    pub fn transfers_started(&self) -> bool {
        !self.is_settled() && self.waiting_acks().is_empty()
    }

    /// What `node` must push now: nothing until every member acknowledged the newest version,
    /// nothing once it pushed.
    pub fn transfers(&self, node: NodeId) -> Vec<Transfer> {
        if !self.transfers_started() || self.progress.pushed.contains(&node) {
            return Vec::new();
        }
        self.moves
            .iter()
            .filter(|m| m.sources.contains(&node))
            .map(|m| Transfer {
                partition: m.partition,
                to: m.gaining.clone(),
            })
            .collect()
    }

    /// `node` pushed every key of every partition [`Layout::transfers`] gave it and the new
    /// replicas acknowledged them durably. Returns whether this is news.
    pub fn record_pushed(&mut self, node: NodeId) -> bool {
        self.transfers_started()
            && self.sources().contains(&node)
            && self.progress.pushed.insert(node)
    }

    /// The operator's override: stop waiting for `node` (dead in the middle of a transfer). What
    /// only it held may be lost, which is why this is never automatic.
    pub fn force(&mut self, node: NodeId) -> Result<(), LayoutError> {
        if self.is_settled() {
            return Err(LayoutError::Settled {
                version: self.current().version(),
            });
        }
        let waiting = self.waiting_acks().contains(&node) || self.waiting_pushes().contains(&node);
        if !waiting {
            return Err(LayoutError::NotWaitingFor {
                node,
                version: self.current().version(),
            });
        }
        self.progress.forced.insert(node);
        Ok(())
    }

    /// The replica sets a write of partition `p` needs W acknowledgements in: one per live
    /// version, without repeats.
    pub fn write_sets(&self, p: PartitionId) -> Vec<Vec<NodeId>> {
        let mut sets: Vec<Vec<NodeId>> = Vec::with_capacity(self.versions.len());
        for v in &self.versions {
            let set = v.primaries(p);
            if !sets.iter().any(|s| same_set(s, &set)) {
                sets.push(set);
            }
        }
        sets
    }

    fn reads_switched(&self, m: &PartitionMove) -> bool {
        if !self.transfers_started() {
            return false;
        }
        let pushed = m
            .from
            .iter()
            .filter(|n| self.progress.pushed.contains(n))
            .count();
        pushed > m.from.len() / 2
    }

    /// The version whose replicas serve reads of partition `p`: the new one once a quorum of
    /// the partition's old replicas pushed it, else the old one.
    pub fn read_version(&self, p: PartitionId) -> &LayoutVersion {
        match self.moves.iter().find(|m| m.partition == p) {
            Some(m) if !self.reads_switched(m) => &self.versions[0],
            _ => self.current(),
        }
    }

    /// The ring requests are routed (forwarded) by: the oldest live version's while any
    /// partition still reads from it ([`Layout::read_version`]), the newest once every moved
    /// partition has switched. (The coordinator itself routes by the whole layout: writes to
    /// every live version's replica set, reads to the partition's read version.)
    pub fn routing_ring(&self) -> &Ring {
        match self.previous() {
            Some(old)
                if (0..old.ring().config().partitions)
                    .any(|p| self.read_version(p).version() == old.version()) =>
            {
                old.ring()
            }
            _ => self.current().ring(),
        }
    }

    /// Whether node `me`, holding this layout, should acknowledge the newest version now: it is
    /// a member of some live version, has not acknowledged it yet, and its coordinator's write
    /// fence (the newest version it routes by with no unanswered write routed under an older
    /// one) has reached it.
    pub fn should_ack(&self, me: NodeId, write_fence: u64) -> bool {
        self.is_member(me) && !self.has_acked(me) && write_fence >= self.current().version()
    }

    /// Whether `node` replicates partition `p` in some live version, so it must keep its copy.
    pub fn replicates(&self, node: NodeId, p: PartitionId) -> bool {
        self.versions.iter().any(|v| v.primaries(p).contains(&node))
    }

    /// Whether partition `p` is untouched by a transfer, so its tombstones may be reaped.
    pub fn is_stable(&self, p: PartitionId) -> bool {
        !self.moves.iter().any(|m| m.partition == p)
    }

    /// Retires the old version once every source pushed (or was overridden).
    pub fn poll_retire(&mut self) -> Option<Retired> {
        if !self.transfers_started() || !self.waiting_pushes().is_empty() {
            return None;
        }
        let old = self.versions.remove(0);
        self.derive();
        Some(Retired {
            version: old.version(),
        })
    }

    /// Where the change in flight stands, if there is one.
    pub fn transition(&self) -> Option<TransitionStatus> {
        let old = self.previous()?;
        Some(TransitionStatus {
            from: old.version(),
            to: self.current().version(),
            waiting_acks: self.waiting_acks(),
            waiting_pushes: self.waiting_pushes(),
            forced: self.progress.forced.iter().copied().collect(),
            partitions: self
                .moves
                .iter()
                .map(|m| PartitionProgress {
                    movement: m.clone(),
                    pushed: m
                        .sources
                        .iter()
                        .filter(|n| self.progress.pushed.contains(n))
                        .copied()
                        .collect(),
                    reads_switched: self.reads_switched(m),
                })
                .collect(),
        })
    }

    /// The name of `node` in the newest version that has it.
    pub fn name(&self, node: NodeId) -> Option<&str> {
        self.versions.iter().rev().find_map(|v| v.name(node))
    }

    /// Whether `node` is a member of some live version.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.versions.iter().any(|v| v.is_member(node))
    }

    /// Whether `node` is on its way out: a member of an older live version but not of the
    /// newest. Status shows this from the layout itself, so every node that holds the new
    /// version says so at once instead of waiting for the leaver's own gossip.
    pub fn is_leaving(&self, node: NodeId) -> bool {
        self.is_member(node) && !self.current().is_member(node)
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_layout_has_no_progress_to_decode() {
        let v = LayoutVersion::initial(
            cairn_ring::RingConfig {
                partitions: 8,
                replicas: 3,
            },
            &[(cairn_ring::Member::new(NodeId(1)), "n1".into())],
        )
        .unwrap();
        let l = Layout::new(v);
        assert!(l.is_settled());
        assert_eq!(l.progress, Progress::default());
    }
}
