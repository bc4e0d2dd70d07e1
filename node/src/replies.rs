//! Wire replies built from the node's state: a layout's status and a transfer's progress (a
//! key operation's reply is the core's `cairn_core::reply`).

use cairn_proto::NodeId;

use crate::peers::Peers;

/// This node's push, as `status` reports it (`None` when it has none).
pub fn transfer_progress(
    t: &cairn_core::transfer::TransferStatus,
    peers: &Peers,
) -> Option<cairn_proto::TransferProgress> {
    let version = t.version?;
    Some(cairn_proto::TransferProgress {
        version,
        partitions_total: t.partitions_total as u32,
        partitions_pushed: t.partitions_pushed as u32,
        partitions_active: t.partitions_active as u32,
        keys_moved: t.keys_moved,
        bytes_moved: t.bytes_moved,
        bytes_per_sec: t.bytes_per_sec as u64,
        keys_left_estimate: t.keys_left_estimate,
        seconds_left_estimate: t.seconds_left_estimate.map(|s| s.ceil() as u64),
        stalled: t
            .stalled
            .iter()
            .map(|s| cairn_proto::TransferStalled {
                partition: s.partition,
                target: s.target.map(|n| peers.name(n)),
                attempts: s.attempts,
                reason: s.reason.clone(),
            })
            .collect(),
    })
}

/// The layout part of `status`: versions, members, and the change in flight with each node's
/// partitions to send and receive.
pub fn layout_status(layout: &cairn_layout::Layout) -> cairn_proto::LayoutStatus {
    use std::collections::BTreeMap;
    let name = |id: &NodeId| {
        layout
            .name(*id)
            .map_or_else(|| id.to_string(), str::to_owned)
    };
    let names = |ids: &[NodeId]| ids.iter().map(name).collect::<Vec<_>>();
    let transition = layout.transition().map(|t| {
        let mut nodes: BTreeMap<NodeId, (u32, u32)> = BTreeMap::new();
        for p in &t.partitions {
            for source in &p.movement.sources {
                if !p.pushed.contains(source) {
                    nodes.entry(*source).or_default().0 += 1;
                }
            }
            for gaining in &p.movement.gaining {
                nodes.entry(*gaining).or_default().1 += 1;
            }
        }
        cairn_proto::TransitionStatusReply {
            from: t.from,
            to: t.to,
            waiting_acks: names(&t.waiting_acks),
            waiting_pushes: names(&t.waiting_pushes),
            forced: names(&t.forced),
            nodes: nodes
                .iter()
                .map(|(id, &(to_send, to_receive))| cairn_proto::NodeTransfers {
                    node: name(id),
                    to_send,
                    to_receive,
                })
                .collect(),
            partitions: t
                .partitions
                .iter()
                .map(|p| cairn_proto::PartitionProgressReply {
                    partition: p.movement.partition,
                    from: names(&p.movement.from),
                    to: names(&p.movement.to),
                    pushed: names(&p.pushed),
                    reads_switched: p.reads_switched,
                })
                .collect(),
        }
    });
    cairn_proto::LayoutStatus {
        version: layout.current().version(),
        versions: layout.versions().iter().map(|v| v.version()).collect(),
        members: {
            let mut names: Vec<String> = layout.current().names().values().cloned().collect();
            names.sort();
            names
        },
        transition,
    }
}
