//! `GossipConfig`: seeds, the message budget and the failure detector's knobs.

use std::time::Duration;

use crate::limits::{
    ADDRESS_BYTES_MAX, CONFIG_DURATION_MAX, GOSSIP_INTERVAL_DEFAULT, LEFT_RETENTION_DEFAULT,
    LOCAL_PAUSE_DEFAULT, MESSAGE_BYTES_DEFAULT, MESSAGE_BYTES_MAX, MESSAGE_BYTES_MIN,
    PHI_THRESHOLD_DEFAULT, SEEDS_MAX, TOMBSTONE_RETENTION_DEFAULT,
};
use crate::{GossipError, Key};

/// How one node gossips. Every node of a cluster should use the same values.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Addresses of seed nodes: where a node with no live peer turns, and where every node turns
    /// now and then so that views split by a partition merge again. May include this node's own
    /// address (it is skipped).
    pub seeds: Vec<String>,
    /// Time between the driver's ticks. Gossip does not time itself; this sets
    /// [`Gossip::poll_timeout`](crate::Gossip::poll_timeout) and the detector's defaults.
    pub gossip_interval: Duration,
    /// Most bytes one encoded message may take (SYN, ACK or ACK2).
    ///
    /// Every node's heartbeat changes every round, and a node takes in about one and a half
    /// budgets of deltas per round (half an ACK, one ACK2) at about 24 bytes per heartbeat, so
    /// the budget should be at least 16 bytes per node; below that heartbeats queue up and
    /// healthy nodes get convicted (seen in simulation: 200 nodes under 2 KiB). The default
    /// carries far more than `MEMBERS_MAX` nodes.
    pub message_bytes_max: usize,
    /// Phi above which a node is convicted (judged down).
    pub phi_threshold: f64,
    /// Longest heartbeat interval the detector records; longer ones are downtime, not rhythm
    /// (Cassandra's `MAX_INTERVAL`, twice the gossip interval).
    pub arrival_interval_max: Duration,
    /// Longest gap between two ticks that is not a local pause. After a longer gap this node was
    /// not listening (a stopped process, a GC pause, a suspended VM), so silence during it
    /// convicts no one.
    pub local_pause_max: Duration,
    /// How long the state of a node that left keeps being gossiped before it is dropped.
    pub left_retention: Duration,
    /// How long a dropped node's tombstone refuses its old generations.
    pub tombstone_retention: Duration,
}

impl Default for GossipConfig {
    fn default() -> GossipConfig {
        GossipConfig::with_interval(GOSSIP_INTERVAL_DEFAULT)
    }
}

impl GossipConfig {
    /// The defaults for a tick every `gossip_interval`: the detector ignores intervals above
    /// twice that, as Cassandra does.
    pub fn with_interval(gossip_interval: Duration) -> GossipConfig {
        GossipConfig {
            seeds: Vec::new(),
            gossip_interval,
            message_bytes_max: MESSAGE_BYTES_DEFAULT,
            phi_threshold: PHI_THRESHOLD_DEFAULT,
            arrival_interval_max: gossip_interval * 2,
            local_pause_max: LOCAL_PAUSE_DEFAULT,
            left_retention: LEFT_RETENTION_DEFAULT,
            tombstone_retention: TOMBSTONE_RETENTION_DEFAULT,
        }
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), GossipError> {
        if self.seeds.len() > SEEDS_MAX {
            return Err(GossipError::TooManySeeds {
                count: self.seeds.len(),
                max: SEEDS_MAX,
            });
        }
        if let Some(seed) = self.seeds.iter().find(|s| s.len() > ADDRESS_BYTES_MAX) {
            return Err(GossipError::ValueTooLong {
                key: Key::Address,
                len: seed.len(),
                max: ADDRESS_BYTES_MAX,
            });
        }
        if !(MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX).contains(&self.message_bytes_max) {
            return Err(GossipError::BudgetOutOfRange {
                budget: self.message_bytes_max,
                min: MESSAGE_BYTES_MIN,
                max: MESSAGE_BYTES_MAX,
            });
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(GossipError::PhiThresholdInvalid {
                threshold: self.phi_threshold,
            });
        }
        let positive = [
            ("gossip_interval", self.gossip_interval),
            ("arrival_interval_max", self.arrival_interval_max),
            ("local_pause_max", self.local_pause_max),
        ];
        if let Some(&(field, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(GossipError::ZeroDuration { field });
        }
        let retention = [
            ("left_retention", self.left_retention),
            ("tombstone_retention", self.tombstone_retention),
        ];
        if let Some(&(field, value)) = positive
            .iter()
            .chain(&retention)
            .find(|(_, value)| *value > CONFIG_DURATION_MAX)
        {
            return Err(GossipError::DurationTooLong {
                field,
                value,
                max: CONFIG_DURATION_MAX,
            });
        }
        Ok(())
    }
}
