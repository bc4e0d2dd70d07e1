//! Node processes coming and going: `kill -9` and a restart with `cairn start`, and `cairn dev`
//! stopped and run again on the same directory. Data and dots must survive both.

mod common;

use std::process::Stdio;

use common::{alive, cairn, get_json, values, wait_for, wait_for_ping, Dev, Proc, EXIT_DEADLINE};
use rustix::process::Signal;

#[test]
fn a_killed_node_restarts_with_its_data_and_never_reuses_a_dot() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path(), Some(1));
    dev.run(&["put", "k", "before"]).ok();
    let (before, _) = get_json(dir.path(), "k");
    assert_eq!(before.len(), 1);

    let pid = dev.node_pid("node1");
    common::kill(pid, Signal::KILL);
    // `cairn dev` reaps it, says so, and (its only node gone) exits.
    let status = dev.proc().wait();
    assert_eq!(status.code(), Some(3), "dev exits once every node is gone");
    wait_for("the killed node to be gone", EXIT_DEADLINE, || {
        (!alive(pid)).then_some(())
    });
    assert!(
        !dir.path().join("node1/pid").exists(),
        "dev removes the pid file of a node that exited"
    );

    let config = dir.path().join("node1/node.toml");
    let mut node = Proc::spawn(
        cairn()
            .arg("start")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    wait_for_ping(dir.path(), "node1");

    assert_eq!(
        values(dir.path(), "k"),
        ["before"],
        "the write survived kill -9"
    );
    dev.run(&["put", "k", "after"]).ok();
    let (after, _) = get_json(dir.path(), "k");
    let mut seen: Vec<&str> = after.iter().map(|(v, _)| v.as_str()).collect();
    seen.sort();
    assert_eq!(seen, ["after", "before"], "a blind write is a sibling");
    let dot_of = |value: &str| after.iter().find(|(v, _)| v == value).unwrap().1.clone();
    assert_eq!(dot_of("before"), before[0].1, "the old value keeps its dot");
    assert_ne!(dot_of("after"), dot_of("before"), "no dot is minted twice");

    // `cairn start` shuts down cleanly on SIGTERM and says where it listened.
    node.signal(Signal::TERM);
    assert_eq!(node.wait().code(), Some(0));
    let mut stdout = String::new();
    std::io::Read::read_to_string(node.child().stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.starts_with("node node1 listening on 127.0.0.1:"),
        "{stdout}"
    );
}

#[test]
fn dev_runs_again_on_the_same_directory_with_the_same_cluster_and_data() {
    let dir = tempfile::tempdir().unwrap();
    // No --nodes: a fresh directory gets three.
    let dev = Dev::start(dir.path(), None);
    let first_lines: Vec<String> = dev.stdout[..3].to_vec();
    for (k, line) in first_lines.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], format!("node{}", k + 1), "{line}");
        assert!(words[1].starts_with("127.0.0.1:"), "{line}");
        assert_eq!(words[2], "pid", "{line}");
        assert!(words[3].parse::<u32>().is_ok(), "{line}");
    }
    dev.run(&["put", "k", "kept", "--w", "3"]).ok();
    let configs: Vec<String> = (1..=3)
        .map(|k| std::fs::read_to_string(dir.path().join(format!("node{k}/node.toml"))).unwrap())
        .collect();
    let seed = first_lines[0].split_whitespace().nth(1).unwrap();
    for config in &configs {
        assert!(
            config.contains(&format!("seeds = [\"{seed}\"]")),
            "node1 is every node's seed: {config}"
        );
    }
    let pids: Vec<u32> = (1..=3).map(|k| dev.node_pid(&format!("node{k}"))).collect();

    // A second dev on a directory whose nodes run is refused; so is one with another node
    // count, and that says why.
    let run = cairn()
        .arg("dev")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    let run = cairn()
        .args(["dev", "--nodes", "5", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("holds a 3-node cluster; --nodes 5 would change it"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        values(dir.path(), "k"),
        ["kept"],
        "the running cluster is untouched"
    );

    assert_eq!(dev.stop().code(), Some(0), "SIGTERM stops dev cleanly");
    for pid in pids {
        assert!(!alive(pid), "dev waited for its nodes");
    }
    assert!(
        !dir.path().join("node1/pid").exists(),
        "pid files are removed"
    );

    let dev = Dev::start(dir.path(), Some(3));
    for (k, config) in configs.iter().enumerate() {
        assert_eq!(
            &std::fs::read_to_string(dir.path().join(format!("node{}/node.toml", k + 1))).unwrap(),
            config,
            "the config (and so the port) is reused"
        );
    }
    let addr = |line: &str| line.split_whitespace().nth(1).map(str::to_owned);
    for (k, first) in first_lines.iter().enumerate() {
        assert_eq!(addr(&dev.stdout[k]), addr(first));
    }
    // Every replica kept the write: any one of them answers it alone.
    for k in 1..=3 {
        let node = format!("node{k}");
        let run = dev.run(&["get", "k", "--r", "1", "--node", &node]);
        assert_eq!(run.stdout.lines().next(), Some("kept"), "{node}: {run:?}");
    }
    assert_eq!(dev.stop().code(), Some(0));
}
