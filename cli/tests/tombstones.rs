//! Tombstone reaping on real processes (`cairn dev`, SIGKILL, `cairn start`): a delete while
//! one replica is down keeps its tombstone on the others past the grace period until that
//! replica is back and has it; then every node reaps it, and the deleted value never comes
//! back (not by hints, read repair or anti-entropy), while a new write of the key works.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_node::NodeConfig;
use common::{get_json, kill, run_in, wait_for, Dev};
use rustix::process::Signal;

const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// The grace period the test's nodes use (the default is an hour).
const GRACE_SECS: u64 = 2;
/// Their reaper's round interval and anti-entropy's exchange interval, short so that a value
/// anything still held would come back within the test.
const REAP_INTERVAL_MS: u64 = 300;
const AE_INTERVAL_MS: u64 = 500;
/// Generous on a loaded machine: a round waits for peers' answers, hints wait for the re-probe
/// backoff (up to 4 s) of a peer that was down.
const DEADLINE: Duration = Duration::from_secs(60);

/// What `node` stores for `key`: `None` for nothing, `Some(values)` otherwise (empty values: a
/// tombstone, which the local read shows as no sibling under a non-empty context).
fn stored(dir: &Path, node: &str, key: &str) -> Option<Vec<String>> {
    let run = run_in(dir, &["get", key, "--local", "--node", node, "--json"]);
    assert!(
        matches!(run.code, Some(0) | Some(1)),
        "get --local at {node}: {run:?}"
    );
    let json = run.json();
    let context = json["context"].as_str().expect("a context string");
    let values: Vec<String> = json["siblings"]
        .as_array()
        .expect("a siblings array")
        .iter()
        .map(|s| s["value"].as_str().unwrap_or("?").to_owned())
        .collect();
    (!context.is_empty() || !values.is_empty()).then_some(values)
}

/// This member's own tombstone status from `cairn status --node NODE --json`.
fn tombstones(dev: &Dev, node: &str) -> serde_json::Value {
    let status = dev.status(node);
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["this_node"] == true))
        .map(|m| m["tombstones"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Rewrites every node's config with a short grace period and fast rounds.
fn configure_fast_reaping(dir: &Path) {
    for node in NODES {
        let path = dir.join(node).join("node.toml");
        let mut config = NodeConfig::load(&path).unwrap();
        config.tombstones.grace_secs = GRACE_SECS;
        config.tombstones.interval_ms = REAP_INTERVAL_MS;
        config.anti_entropy.interval_ms = AE_INTERVAL_MS;
        std::fs::write(&path, config.to_toml()).unwrap();
    }
}

#[test]
fn a_delete_while_a_replica_is_down_is_reaped_once_it_has_the_tombstone_and_stays_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A first start writes the cluster directory; the second runs it with the test's settings.
    let status = Dev::start(dir, None).stop();
    assert!(status.success(), "cairn dev stopped with {status}");
    configure_fast_reaping(dir);
    let dev = Dev::start(dir, None);

    dev.run(&["put", "doomed", "v1", "--w", "3", "--node", "node1"])
        .ok();
    kill(dev.node_pid("node3"), Signal::KILL);
    dev.wait_member("node1", "node3", "down", DEADLINE);
    let (_, context) = get_json(dir, "doomed");
    dev.run(&[
        "delete",
        "doomed",
        "--context",
        &context,
        "--w",
        "2",
        "--node",
        "node1",
    ])
    .ok();

    // A round past the grace period ran on node2, waited for node3, and reaped nothing.
    let blocked = wait_for("node2's reaper to wait for node3", DEADLINE, || {
        let t = tombstones(&dev, "node2");
        let waited = t["waiting_on"] == serde_json::json!(["node3"]);
        let round_over = t["blocked"].as_u64() >= Some(1) || t["reaped"].as_u64() >= Some(1);
        (waited && round_over).then_some(t)
    });
    assert_eq!(
        blocked["reaped"], 0,
        "node2 reaped while node3 was down: {blocked}"
    );
    for node in ["node1", "node2"] {
        assert_eq!(
            stored(dir, node, "doomed"),
            Some(vec![]),
            "{node} should hold the tombstone while node3, which holds v1, is down"
        );
    }

    // node3 comes back holding v1; its hint gives it the tombstone, then every node reaps it.
    let _node3 = dev.restart_node("node3");
    wait_for("every node to reap the tombstone", DEADLINE, || {
        NODES
            .iter()
            .all(|n| stored(dir, n, "doomed").is_none())
            .then_some(())
    });
    for node in NODES {
        let t = tombstones(&dev, node);
        assert!(t["reaped"].as_u64() >= Some(1), "{node}: {t}");
        assert_eq!(t["held"], 0, "{node}: {t}");
    }

    // It stays gone: wait until every node has run anti-entropy exchanges since, reading the
    // key through every node (read repair) meanwhile.
    let exchanges = |node: &str| {
        let status = dev.status(node);
        status["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["this_node"] == true))
            .and_then(|m| m["anti_entropy"]["exchanges"].as_u64())
    };
    let before: Vec<u64> = NODES.iter().map(|n| exchanges(n).unwrap_or(0)).collect();
    wait_for(
        "two more anti-entropy exchanges at every node",
        DEADLINE,
        || {
            for node in NODES {
                let run = run_in(dir, &["get", "doomed", "--r", "3", "--node", node]);
                assert_eq!(
                    run.code,
                    Some(1),
                    "the deleted value came back at {node}: {run:?}"
                );
            }
            NODES
                .iter()
                .zip(&before)
                .all(|(n, b)| exchanges(n).is_some_and(|e| e >= b + 2))
                .then_some(())
        },
    );
    for node in NODES {
        assert_eq!(
            stored(dir, node, "doomed"),
            None,
            "{node} holds the key again"
        );
    }

    // The key can be written again, and every node reads the new value.
    dev.run(&["put", "doomed", "v2", "--w", "3", "--node", "node3"])
        .ok();
    for node in NODES {
        let out = dev.run(&["get", "doomed", "--r", "3", "--node", node]).ok();
        assert_eq!(out.lines().next(), Some("v2"), "{node}: {out}");
    }
}
