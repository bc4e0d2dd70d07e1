//! A node killed with SIGKILL and started again at once (no pause for the others to notice)
//! must still get every write it missed: issue 10's quick-restart defect, on real processes.
//!
//! The cause: for the seconds until node1 notices node3 is gone (a suspect's failed ping), it
//! still sends node3 every write, over a QUIC connection to the dead process that neither
//! answers nor fails. node1 acknowledges at W = 2 and hints node3 only at each write's deadline
//! (5 s), but `status` counted only durable hints: it showed 0 pending while node3 lacked every
//! write, so stopping node1 and node2 then left node3 without them. With a 10 s pause the
//! deadlines had passed and the hints existed. Now a replica that has neither acknowledged a
//! write nor a durable hint for it counts as pending, so "0 pending" means node3 has them all.

mod common;

use std::time::Duration;

use common::{kill, wait_for, Dev};
use rustix::process::Signal;

/// Writes node3 misses while it is down.
const KEYS: usize = 20;
/// How long the hints may take to reach the restarted node: the others re-probe a peer whose
/// request failed with backoff up to 4 s, and a replica silent at a write's deadline gets its
/// hint only then.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(40);

fn hints_pending(dev: &Dev, node: &str) -> Option<u64> {
    let status = dev.status(node);
    let members = status["members"].as_array()?;
    let me = members.iter().find(|m| m["this_node"] == true)?;
    let all_up = members.iter().all(|m| m["status"] == "up");
    all_up.then(|| me["hints_pending"].as_u64()).flatten()
}

#[test]
fn a_node_restarted_at_once_gets_every_write_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);
    kill(dev.node_pid("node3"), Signal::KILL);
    for k in 1..=KEYS {
        let (key, value) = (format!("h{k}"), format!("v{k}"));
        dev.run(&["put", &key, &value, "--w", "2", "--node", "node1"])
            .ok();
    }
    let _node3 = dev.restart_node("node3");

    wait_for(
        "node1 and node2 to hold no hints, with node3 up",
        HANDOFF_DEADLINE,
        || {
            let done = ["node1", "node2"]
                .iter()
                .all(|n| hints_pending(&dev, n) == Some(0));
            done.then_some(())
        },
    );

    // node3 alone must answer every write from its own store.
    for node in ["node1", "node2"] {
        kill(dev.node_pid(node), Signal::KILL);
    }
    let mut missing = Vec::new();
    for k in 1..=KEYS {
        let key = format!("h{k}");
        let run = dev.run(&["get", &key, "--r", "1", "--node", "node3", "--json"]);
        let found = run.code == Some(0)
            && run.json()["siblings"][0]["value"].as_str() == Some(format!("v{k}").as_str());
        if !found {
            missing.push((key, run.code, run.stdout, run.stderr));
        }
    }
    assert!(
        missing.is_empty(),
        "node3 lacks {} of {KEYS} writes it missed: {missing:?}\nnode1 log: {}",
        missing.len(),
        std::fs::read_to_string(dir.path().join("node1/node.log")).unwrap_or_default()
    );
}
