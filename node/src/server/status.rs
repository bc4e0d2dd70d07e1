//! The `status` and `ring` answers, read from what the node shares.

use cairn_proto::{NodeId, PartitionEntry, RingReply, StatusReply};

use super::Shared;
use crate::replies::{layout_status, transfer_progress};

pub(super) fn status(shared: &Shared) -> StatusReply {
    // Writes a replica has not acknowledged yet count as pending hints: they are hints to be.
    let hints: u64 = shared.engine.hint_counts().values().sum::<u64>()
        + shared.coordinator.replicas_outstanding();
    let view = shared.membership.view();
    StatusReply {
        node: shared.name.clone(),
        replicas: view
            .ring
            .as_ref()
            .map_or(0, |r| crate::coordinator::replicas(r) as u8),
        partitions: view.ring.as_ref().map_or(0, |r| r.config().partitions),
        members: shared.membership.status(hints),
        anti_entropy: shared.anti_entropy.status(),
        layout: view.layout.as_deref().map(|l| Box::new(layout_status(l))),
        transfer: transfer_progress(&shared.transfer.borrow(), &shared.peers),
        tombstones: match &shared.reaper {
            Some(r) => crate::reaper::status(true, &r.borrow(), &shared.peers),
            None => cairn_proto::TombstoneStatus::default(),
        },
    }
}

pub(super) fn ring_reply(shared: &Shared) -> RingReply {
    let view = shared.membership.view();
    let Some(ring) = &view.ring else {
        return RingReply {
            replicas: 0,
            partitions: Vec::new(),
        };
    };
    // Gossip's name, else the layout's (a node that just restarted holds the layout before it
    // has heard its peers' gossip), else the id.
    let name = |id: &NodeId| match view.members.get(id) {
        Some(m) => m.name.clone(),
        None => view
            .layout
            .as_deref()
            .and_then(|l| l.name(*id))
            .map_or_else(|| id.to_string(), str::to_owned),
    };
    RingReply {
        replicas: crate::coordinator::replicas(ring) as u8,
        partitions: (0..ring.config().partitions)
            .map(|p| {
                let pl = ring.preference_list(p);
                PartitionEntry {
                    partition: p,
                    primaries: pl.primaries.iter().map(name).collect(),
                    fallbacks: pl.fallbacks.iter().map(name).collect(),
                }
            })
            .collect(),
    }
}
