//! Membership over real processes and real QUIC: five `cairn dev` nodes that know only node1
//! find each other by gossip and agree on the ring; a node killed with SIGKILL is seen down by
//! every survivor within 20 s and comes back up with a higher generation; `leave` is a planned
//! layout change that spreads to every node and moves no ownership before its data.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{kill, run_in, wait_for, Dev};
use rustix::process::Signal;
use serde_json::Value;

/// The bound: every survivor shows a killed node down within this.
const DOWN_DEADLINE: Duration = Duration::from_secs(20);
/// How long a restarted node may take to be up again everywhere (it joins through its seed and
/// its remembered peers in a round or two; then its heartbeat must be seen moving).
const UP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a membership change (leave, join) may take to reach every node's ring.
const RING_DEADLINE: Duration = Duration::from_secs(20);

fn members(status: &Value) -> BTreeMap<String, Value> {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

fn ring(dev: &Dev, node: &str) -> Value {
    let run = dev.run(&["ring", "--json", "--node", node]);
    assert_eq!(run.code, Some(0), "{run:?}");
    run.json()
}

/// Whether `name` is a primary or fallback anywhere in `ring`.
fn in_ring(ring: &Value, name: &str) -> bool {
    ring["partitions"].as_array().unwrap().iter().any(|p| {
        p["primaries"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p["fallbacks"].as_array().unwrap())
            .any(|n| n == name)
    })
}

#[test]
fn five_nodes_meet_through_node1_and_a_killed_node_is_seen_down_then_up_again() {
    let dir = tempfile::tempdir().unwrap();
    // `cairn dev` is ready only once every node sees every node up.
    let dev = Dev::start(dir.path(), Some(5));
    let names: Vec<String> = (1..=5).map(|k| format!("node{k}")).collect();
    for name in &names {
        let status = dev.status(name);
        let seen = members(&status);
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), names, "{status}");
        for (member, m) in &seen {
            assert_eq!(m["status"], "up", "{name} sees {m}");
            assert!(m["generation"].as_u64().unwrap() > 0, "{m}");
            assert!(m["phi"].as_f64().unwrap() >= 0.0, "{m}");
            assert_eq!(m["this_node"], member == name, "{m}");
            assert_eq!(m["heartbeat_age_ms"].is_null(), member == name, "{m}");
        }
        let owned: u64 = seen
            .values()
            .map(|m| m["partitions"].as_u64().unwrap())
            .sum();
        assert_eq!(owned, 64, "{status}");
    }
    // Every node computes the same ring from the same membership.
    let first = ring(&dev, "node1");
    for name in &names[1..] {
        assert_eq!(
            ring(&dev, name),
            first,
            "{name}'s ring differs from node1's"
        );
    }

    let generation = |status: &Value| members(status)["node4"]["generation"].as_u64().unwrap();
    let old_generation = generation(&dev.status("node1"));
    kill(dev.node_pid("node4"), Signal::KILL);
    let killed = Instant::now();
    let survivors = ["node1", "node2", "node3", "node5"];
    // Each survivor is watched by its own thread, so one slow `status` does not delay the
    // others' readings: when did it first show node4 down?
    let down_at: Vec<(&str, Duration)> = std::thread::scope(|scope| {
        let watchers: Vec<_> = survivors
            .iter()
            .map(|&name| {
                let dir = dev.dir();
                scope.spawn(move || {
                    let at = wait_for(&format!("{name} to see node4 down"), DOWN_DEADLINE, || {
                        let run = run_in(dir, &["status", "--json", "--node", name]);
                        assert_eq!(run.code, Some(0), "{run:?}");
                        let seen = members(&run.json());
                        // The failure detector raises no alarm about the survivors meanwhile.
                        for other in survivors {
                            let phi = seen[other]["phi"].as_f64().unwrap();
                            assert!(phi < 8.0, "{name} suspects {other}: {seen:?}");
                        }
                        (seen["node4"]["status"] == "down").then(|| killed.elapsed())
                    });
                    (name, at)
                })
            })
            .collect();
        watchers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    eprintln!("node4 killed; shown down after (per survivor): {down_at:?}");

    let _node4 = dev.restart_node("node4");
    let restarted = Instant::now();
    wait_for("every node to see node4 up again", UP_DEADLINE, || {
        names
            .iter()
            .all(|name| {
                let status = dev.status(name);
                let node4 = &members(&status)["node4"];
                node4["status"] == "up" && generation(&status) > old_generation
            })
            .then_some(())
    });
    eprintln!(
        "node4 restarted; up everywhere with a higher generation after {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
}

/// A transfer of one byte per second in batches of one key.
const SLOW_TRANSFER: &str = "
[transfer]
batch_keys = 1
batch_bytes = 1
bytes_per_sec = 1
";

fn layout(dev: &Dev, node: &str) -> Value {
    dev.status(node)["layout"].clone()
}

#[test]
fn a_leave_is_a_planned_layout_change_that_spreads_and_moves_nothing_before_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["node1", "node2", "node3", "node4"];
    // The transfer is throttled to a crawl (a key a minute), and there are keys to move, so the
    // change stays in transition for the whole test.
    Dev::start(dir.path(), Some(4)).stop();
    for name in names {
        let path = dir.path().join(name).join("node.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(SLOW_TRANSFER);
        std::fs::write(&path, config).unwrap();
    }
    let dev = Dev::start(dir.path(), Some(4));
    const KEYS: usize = 32;
    for i in 0..KEYS {
        dev.run(&["put", &format!("key{i}"), "v", "--w", "3"]).ok();
    }

    // Membership commands name their node: a default would pick node1.
    let run = dev.run(&["leave"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--node"), "{run:?}");

    // A dry run prints the plan and changes nothing.
    let run = dev.run(&["leave", "--node", "node4", "--dry-run", "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let plan = run.json();
    assert_eq!(plan["applied"], false, "{plan}");
    assert_eq!(
        (plan["from_version"].as_u64(), plan["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    let moves = plan["moves"].as_array().unwrap();
    assert!(!moves.is_empty(), "{plan}");
    for m in moves {
        let (from, to) = (m["from"].to_string(), m["to"].to_string());
        assert!(from.contains("node4") && !to.contains("node4"), "{m}");
    }
    // The plan counts what moves (issue 11 item 2): each moving partition holds exactly the
    // written keys whose partition it is, and the totals are those times the new replicas.
    let q = ring(&dev, "node1")["partitions"].as_array().unwrap().len() as u32;
    let config = cairn_ring::RingConfig {
        partitions: q,
        replicas: 3,
    };
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..KEYS {
        *expected
            .entry(u64::from(config.partition_of(format!("key{i}").as_bytes())))
            .or_default() += 1;
    }
    let counted = wait_for("the plan to count every written key", RING_DEADLINE, || {
        let run = dev.run(&["leave", "--node", "node4", "--dry-run", "--json"]);
        let plan = run.json();
        let all = plan["moves"].as_array().unwrap().iter().all(|m| {
            let p = m["partition"].as_u64().unwrap();
            m["keys"].as_u64() == Some(expected.get(&p).copied().unwrap_or(0))
        });
        all.then_some(plan)
    });
    let (mut keys, mut bytes) = (0, 0);
    for m in counted["moves"].as_array().unwrap() {
        let from = m["from"].as_array().unwrap();
        let gaining = m["to"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| !from.contains(n))
            .count() as u64;
        let (k, b) = (m["keys"].as_u64().unwrap(), m["bytes"].as_u64().unwrap());
        // Each key weighs at least its name and its one-byte value.
        assert!(b >= k * 5, "{m}");
        keys += k * gaining;
        bytes += b * gaining;
    }
    assert!(
        keys > 0,
        "node4 replicates some of the {KEYS} keys: {counted}"
    );
    assert_eq!(counted["keys"].as_u64(), Some(keys), "{counted}");
    assert_eq!(counted["bytes"].as_u64(), Some(bytes), "{counted}");
    let text = dev.run(&["leave", "--node", "node4", "--dry-run"]).ok();
    assert!(
        text.contains("dry run, not applied") && text.contains(" -> "),
        "{text}"
    );
    assert!(
        text.contains(&format!("to transfer: {keys} keys, {bytes} bytes")),
        "{text}"
    );
    for name in names {
        let l = layout(&dev, name);
        assert_eq!(l["version"], 1, "{name}: {l}");
        assert!(l["transition"].is_null(), "{name}: {l}");
    }

    let before = ring(&dev, "node1");
    let run = dev.run(&["leave", "--node", "node4", "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json()["applied"], true, "{run:?}");
    assert_eq!(
        run.json()["moves"],
        plan["moves"],
        "the plan applied is the one shown"
    );
    // The new version reaches every node by gossip; while its transfer runs, ownership stays
    // where the data is.
    wait_for("layout version 2 at every node", RING_DEADLINE, || {
        names
            .iter()
            .all(|name| {
                let l = layout(&dev, name);
                l["version"] == 2 && l["transition"]["from"] == 1
            })
            .then_some(())
    });
    for name in names {
        assert_eq!(
            ring(&dev, name),
            before,
            "{name}: the ring moved before the data"
        );
        assert!(in_ring(&ring(&dev, name), "node4"));
        let seen = members(&dev.status(name));
        assert_eq!(seen["node4"]["status"], "leaving", "{name}: {seen:?}");
    }
    let text = dev.run(&["status", "--node", "node2"]).ok();
    assert!(
        text.contains("layout version 2 in transition from 1") && text.contains("TO RECEIVE"),
        "{text}"
    );

    // Only one change at a time: the next waits for this one's transfer.
    let run = dev.run(&["leave", "--node", "node3"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("still being transferred"), "{run:?}");
    // A node that is up cannot be removed as if dead.
    let run = dev.run(&["remove", "node3", "--dry-run", "--node", "node1"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("is up"), "{run:?}");

    // A join needs the seed's layout: an address nobody answers at is a clear error.
    let run = dev.run(&["join", "nowhere:1", "--node", "node4", "--wait", "0"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains("cannot get the layout from nowhere:1"),
        "{run:?}"
    );
}

#[test]
fn a_data_certificate_cannot_leave_and_the_error_names_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    let cert = dir.path().join("client/client.pem");
    let key = dir.path().join("client/client.key");
    let run = dev.run(&[
        "leave",
        "--node",
        "node1",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(
        run.stderr.contains(
            "leave needs an admin certificate; this connection presented a data certificate"
        ),
        "{run:?}"
    );
    assert!(run.stderr.contains("--role admin"), "{run:?}");
    let members = members(&dev.status("node1"));
    assert_ne!(members["node1"]["status"], "leaving", "{members:?}");

    // A certificate made with `cairn cert client --role admin` may.
    let out = dir.path().join("ops");
    let ca_dir = dir.path().to_str().unwrap();
    let made = common::cairn()
        .args([
            "cert", "client", "--ca-dir", ca_dir, "--name", "ops", "--role", "admin",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let run = dev.run(&[
        "leave",
        "--node",
        "node1",
        "--json",
        "--cert",
        out.join("client.pem").to_str().unwrap(),
        "--key",
        out.join("client.key").to_str().unwrap(),
    ]);
    // Past the role check, the layout refuses: a cluster cannot lose its last node.
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("last member"), "{run:?}");
    assert!(!run.stderr.contains("certificate"), "{run:?}");
}
