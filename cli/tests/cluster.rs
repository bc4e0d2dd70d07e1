//! A three-node `cairn dev` cluster (real processes, real QUIC on loopback): what `status` and
//! `ring` show, quorum options, siblings made through two coordinators, a node killed with
//! SIGKILL whose missed writes reach it as hints when it restarts, and `bench`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{cairn, kill, wait_for, Dev, Run};
use rustix::process::Signal;
use serde_json::Value;

/// How long the nodes may take to notice that a killed node is gone: a peer whose heartbeat is
/// three gossip rounds late is pinged, and a failed ping (1 s) marks it down.
const DOWN_DEADLINE: Duration = Duration::from_secs(15);
/// How long a restarted node may take to get every hint held for it: the others re-probe a down
/// peer with backoff up to 4 s and deliver hints as soon as it answers.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(20);

/// `get KEY --json ARGS` (exit 0 or 1): the values, sorted, and the context.
fn get(dev: &Dev, key: &str, args: &[&str]) -> (Vec<String>, String) {
    let mut argv = vec!["get", key, "--json"];
    argv.extend_from_slice(args);
    let run = dev.run(&argv);
    assert!(matches!(run.code, Some(0 | 1)), "get failed: {run:?}");
    let json = run.json();
    let mut values: Vec<String> = json["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["value"].as_str().expect("a text value").to_owned())
        .collect();
    values.sort();
    (
        values,
        json["context"].as_str().expect("context").to_owned(),
    )
}

/// A member of a `status --json` reply.
fn member<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name} in {status}"))
}

fn node_pid(dir: &Path, node: &str) -> u32 {
    let text = std::fs::read_to_string(dir.join(node).join("pid")).expect("pid file");
    text.trim().parse().expect("a pid")
}

#[test]
fn three_nodes_share_the_ring_and_options_above_n_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);
    assert!(
        dev.stdout.iter().any(|l| l.starts_with("ready: 3 nodes")),
        "{:?}",
        dev.stdout
    );

    let status = dev.status("node1");
    assert_eq!(status["node"], "node1");
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["partitions"], 64);
    // Every node of a new dev cluster is an initial member of layout version 1.
    assert_eq!(status["layout"]["version"], 1, "{status}");
    assert_eq!(
        status["layout"]["members"],
        serde_json::json!(["node1", "node2", "node3"]),
        "{status}"
    );
    assert!(status["layout"]["transition"].is_null(), "{status}");
    let members = status["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"]);
    for m in members {
        assert_eq!(m["status"], "up", "{m}");
        assert_eq!(m["hints_pending"], 0, "each member answers for itself: {m}");
        assert!(m["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
        let keys: BTreeSet<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "name",
                "addr",
                "status",
                "generation",
                "phi",
                "heartbeat_age_ms",
                "zone",
                "this_node",
                "partitions",
                "hints_pending",
                "anti_entropy",
                "transfer",
                "tombstones"
            ])
        );
        // No change is in flight: nobody pushes.
        assert!(m["transfer"].is_null(), "{m}");
        // Each member answers for its own tombstones: it reaps, and holds none yet.
        assert_eq!(m["tombstones"]["enabled"], true, "{m}");
        assert_eq!(m["tombstones"]["held"], 0, "{m}");
        // Each member answers for its own anti-entropy too; nothing differs in a new cluster.
        let ae = &m["anti_entropy"];
        assert_eq!(ae["enabled"], true, "{m}");
        assert_eq!(ae["keys_repaired"], 0, "{m}");
    }
    let owned: u64 = members
        .iter()
        .map(|m| m["partitions"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 64, "{status}");

    let text = dev.run(&["status"]).ok();
    assert!(
        text.starts_with("3 of 3 members up, as node1 sees them"),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("NAME") && l.ends_with("HINTS")),
        "{text}"
    );
    // The member table, a blank line, the anti-entropy table, a blank line, the tombstones
    // table, a blank line and the layout.
    assert_eq!(text.lines().count(), 17, "{text}");
    assert_eq!(
        text.lines().last(),
        Some("layout version 1, settled: node1, node2, node3"),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(6)
            .is_some_and(|l| l.starts_with("NAME") && l.contains("ANTI-ENTROPY")),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(11)
            .is_some_and(|l| l.starts_with("NAME") && l.contains("TOMBSTONES")),
        "{text}"
    );

    let ring = dev.run(&["ring", "--json", "--node", "node2"]).json();
    assert_eq!(ring["replicas"], 3);
    let partitions = ring["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 64);
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i as u64);
        let primaries: BTreeSet<&str> = p["primaries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(
            primaries,
            BTreeSet::from(["node1", "node2", "node3"]),
            "{p}"
        );
    }
    let text = dev.run(&["ring"]).ok();
    assert_eq!(text.lines().count(), 2 + 64, "{text}");

    // R or W above N = 3 is refused by the node, as a one-line usage error.
    for args in [
        &["get", "k", "--r", "4"][..],
        &["put", "k", "v", "--w", "4"],
        &["put", "k", "v", "--pw", "4"],
        &["delete", "k", "--context", "", "--w", "4"],
    ] {
        let run = dev.run(args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(run.stderr.contains("N=3"), "{run:?}");
    }
    assert_eq!(get(&dev, "k", &["--r", "3"]).0, Vec::<String>::new());

    // Every quorum flag reaches the node.
    dev.run(&["put", "k", "v", "--w", "3", "--pw", "3", "--timeout", "5"])
        .ok();
    let run = dev.run(&[
        "get",
        "k",
        "--r",
        "3",
        "--pr",
        "3",
        "--notfound-ok",
        "false",
        "--basic-quorum",
        "true",
        "--timeout",
        "5",
    ]);
    assert_eq!(run.stdout.lines().next(), Some("v"), "{run:?}");
    let run = dev.run(&[
        "get",
        "nothing",
        "--notfound-ok",
        "false",
        "--basic-quorum",
        "true",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");

    // The benchmark, over all three nodes.
    let run = dev.run(&[
        "bench",
        "--ops",
        "200",
        "--clients",
        "4",
        "--json",
        "--seed",
        "7",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report = run.json();
    assert_eq!(report["ok"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3, "{report}");
    assert!(
        report["throughput_ops_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    for kind in ["read", "write", "all"] {
        let l = &report["latency_us"][kind];
        for p in ["p50", "p90", "p99", "p99.9", "max"] {
            assert!(
                l["count"] == 0 || l[p].as_u64().is_some_and(|us| us > 0),
                "{kind} {p}: {report}"
            );
        }
    }
    let all = &report["latency_us"]["all"];
    assert_eq!(all["count"], 200, "{report}");
    assert!(all["p50"].as_u64() <= all["p99"].as_u64(), "{report}");
    assert!(all["p99"].as_u64() <= all["max"].as_u64(), "{report}");
    let run = dev.run(&["bench", "--ops", "10", "--read-ratio", "2"]);
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[test]
fn blind_writes_through_two_coordinators_are_siblings_on_every_node_until_a_write_resolves_them() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);

    // Two writers at once, each through its own coordinator, neither with a context.
    let spawn = |value: &str, node: &str| {
        cairn()
            .args(["put", "cart", value, "--node", node, "--cluster"])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cairn put")
    };
    let writers = [spawn("apple", "node1"), spawn("pear", "node2")];
    for writer in writers {
        let out = writer.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    // Each write is on a majority and each read asks a majority: every node shows both.
    let mut context = String::new();
    for node in ["node1", "node2", "node3"] {
        let (values, ctx) = get(&dev, "cart", &["--node", node]);
        assert_eq!(values, ["apple", "pear"], "via {node}");
        context = ctx;
    }

    let out = dev
        .run(&[
            "put",
            "cart",
            "apple+pear",
            "--context",
            &context,
            "--node",
            "node3",
        ])
        .ok();
    assert!(out.starts_with("ok\n"), "{out}");
    for node in ["node1", "node2", "node3"] {
        let (values, _) = get(&dev, "cart", &["--node", node, "--r", "3"]);
        assert_eq!(values, ["apple+pear"], "via {node}");
    }
}

#[test]
fn a_killed_node_misses_writes_that_reach_it_as_hints_when_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), None);
    kill(node_pid(dir.path(), "node3"), Signal::KILL);
    wait_for("node1 to see node3 down", DOWN_DEADLINE, || {
        (member(&dev.status("node1"), "node3")["status"] == "down").then_some(())
    });

    // Two of three replicas are enough for W=2; all three are not, and the error says who failed.
    dev.run(&["put", "k", "v", "--w", "2", "--node", "node1"])
        .ok();
    dev.run(&["put", "unread", "u", "--node", "node1"]).ok();
    let run = dev.run(&["put", "other", "x", "--w", "3", "--node", "node1"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("3 acks needed, 2 received"), "{run:?}");
    assert!(run.stderr.contains("node3"), "{run:?}");

    // The writes node3 missed are kept as hints for it.
    wait_for("a hint for node3", DOWN_DEADLINE, || {
        let status = dev.status("node1");
        let held = ["node1", "node2"]
            .iter()
            .map(|n| member(&status, n)["hints_pending"].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert!(
            member(&status, "node3")["hints_pending"].is_null(),
            "{status}"
        );
        (held > 0).then_some(())
    });

    let _node3 = dev.restart_node("node3");
    let restarted = std::time::Instant::now();
    wait_for("every hint to be delivered", HANDOFF_DEADLINE, || {
        let status = dev.status("node1");
        let members = status["members"].as_array().unwrap();
        members
            .iter()
            .all(|m| m["status"] == "up" && m["hints_pending"] == 0)
            .then_some(())
    });
    eprintln!(
        "node3's hints were delivered {:.1} s after it restarted",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(get(&dev, "k", &["--r", "3"]).0, ["v"]);
    assert_eq!(get(&dev, "k", &["--r", "3", "--node", "node3"]).0, ["v"]);

    // node3's own copies came by handoff, not by a read: with the other two nodes gone it
    // answers R=1 from its own store.
    for node in ["node1", "node2"] {
        kill(node_pid(dir.path(), node), Signal::KILL);
    }
    for (key, value) in [("unread", "u"), ("other", "x")] {
        let run: Run = dev.run(&["get", key, "--r", "1", "--node", "node3", "--json"]);
        assert_eq!(run.code, Some(0), "{key} on node3 alone: {run:?}");
        assert_eq!(run.json()["siblings"][0]["value"], value, "{run:?}");
    }
}
