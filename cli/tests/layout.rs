//! The layout on real processes: ownership does not follow liveness. A node killed with SIGKILL
//! and started again at once keeps its partitions at every node: `cairn ring --json` is the same
//! before, while it is down, and after it is back. A dead node is removed or replaced only by a
//! planned change, which spreads by gossip and moves no ownership before its transfer.

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

/// How long the survivors may take to judge a killed node down.
const DOWN_DEADLINE: Duration = Duration::from_secs(30);
/// How long a layout change may take to reach every node by gossip.
const SPREAD_DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn a_dead_node_is_replaced_by_a_planned_change_that_spreads_and_waits_for_its_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);
    let before = ring(&dev, "node1");
    kill(dev.node_pid("node3"), Signal::KILL);
    dev.wait_member("node1", "node3", "down", DOWN_DEADLINE);

    // remove: node3's partitions go to the survivors (a dry run changes nothing).
    let run = dev.run(&["remove", "node3", "--dry-run", "--json", "--node", "node1"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let plan = run.json();
    assert_eq!(plan["applied"], false, "{plan}");
    assert_eq!(plan["change"], "remove node3", "{plan}");
    for m in plan["moves"].as_array().unwrap() {
        assert!(m["from"].to_string().contains("node3"), "{m}");
        assert!(!m["to"].to_string().contains("node3"), "{m}");
    }
    // A name that is not a member is a clear error.
    let run = dev.run(&["remove", "node9", "--node", "node1"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr
            .contains("node9 is not a member of layout version 1"),
        "{run:?}"
    );

    // replace: node4 takes exactly node3's place.
    let run = dev.run(&["replace", "node3", "node4", "--json", "--node", "node1"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let plan = run.json();
    assert_eq!(plan["applied"], true, "{plan}");
    assert_eq!(
        (plan["from_version"].as_u64(), plan["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    let moves = plan["moves"].as_array().unwrap();
    let owned_by_node3 = before["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["primaries"].to_string().contains("\"node3\""))
        .count();
    assert_eq!(moves.len(), owned_by_node3, "{plan}");
    for m in moves {
        let swapped = m["from"].to_string().replace("node3", "node4");
        assert_eq!(swapped, m["to"].to_string(), "{m}");
    }

    // node2 learns version 2 by gossip; the change waits for node4 (never started) to
    // acknowledge it, and node4 is to receive every moved partition.
    wait_for("layout version 2 at node2", SPREAD_DEADLINE, || {
        let layout = dev.status("node2")["layout"].clone();
        (layout["version"] == 2).then_some(layout)
    });
    let layout = dev.status("node2")["layout"].clone();
    let t = &layout["transition"];
    assert_eq!(t["from"], 1, "{layout}");
    assert_eq!(t["waiting_acks"], serde_json::json!(["node4"]), "{layout}");
    let node4 = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "node4")
        .expect("node4 receives");
    assert_eq!(
        node4["to_receive"].as_u64(),
        Some(moves.len() as u64),
        "{layout}"
    );
    assert_eq!(
        t["partitions"].as_array().unwrap().len(),
        moves.len(),
        "{layout}"
    );
    // Nothing moves before the data: both survivors still route by version 1.
    for node in ["node1", "node2"] {
        assert_eq!(ring(&dev, node), before, "{node}");
    }
}
