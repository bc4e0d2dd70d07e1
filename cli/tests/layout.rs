//! The layout on real processes: ownership does not follow liveness. A node killed with SIGKILL
//! and started again at once keeps its partitions at every node: `cairn ring --json` is the same
//! before, while it is down, and after it is back.

mod common;

use std::time::Duration;

use common::{kill, wait_for, Dev};
use rustix::process::Signal;

/// How long the restarted node may take to be up again at every node.
const UP_DEADLINE: Duration = Duration::from_secs(30);

fn ring(dev: &Dev, node: &str) -> serde_json::Value {
    let run = dev.run(&["ring", "--json", "--node", node]);
    assert_eq!(run.code, Some(0), "ring at {node} failed: {run:?}");
    run.json()
}

fn all_up(dev: &Dev, node: &str) -> bool {
    let status = dev.status(node);
    status["members"]
        .as_array()
        .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["status"] == "up"))
}

#[test]
fn a_restart_changes_no_nodes_ring() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);
    let nodes = ["node1", "node2", "node3"];
    let before = ring(&dev, "node1");
    let partitions = before["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 64, "{before}");
    assert!(
        partitions
            .iter()
            .any(|p| p["primaries"].to_string().contains("node3")),
        "node3 owns partitions: {before}"
    );
    for node in nodes {
        assert_eq!(ring(&dev, node), before, "{node} before the restart");
    }

    kill(dev.node_pid("node3"), Signal::KILL);
    // While node3 is down (and being judged down), the others keep its partitions.
    for _ in 0..5 {
        for node in ["node1", "node2"] {
            assert_eq!(ring(&dev, node), before, "{node} with node3 down");
        }
    }
    let _node3 = dev.restart_node("node3");
    for node in nodes {
        assert_eq!(ring(&dev, node), before, "{node} right after the restart");
    }
    wait_for("every node to see all three up", UP_DEADLINE, || {
        nodes.iter().all(|n| all_up(&dev, n)).then_some(())
    });
    for node in nodes {
        assert_eq!(ring(&dev, node), before, "{node} once node3 is up again");
    }
}
