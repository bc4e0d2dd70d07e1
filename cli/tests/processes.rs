//! Node processes coming and going: `kill -9` and a restart with `cairn start`, and `cairn dev`
//! stopped and run again on the same directory. Data and dots must survive both.

mod common;

use std::process::Stdio;

use common::{alive, cairn, get_json, values, wait_for, wait_for_ping, Dev, Proc, EXIT_DEADLINE};
use rustix::process::Signal;

#[test]
fn a_killed_node_restarts_with_its_data_and_never_reuses_a_dot() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path());
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
fn dev_runs_again_on_the_same_directory_with_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let first_line = dev.stdout[0].clone();
    dev.run(&["put", "k", "kept"]).ok();
    let config = std::fs::read_to_string(dir.path().join("node1/node.toml")).unwrap();
    let pid = dev.node_pid("node1");

    // A second dev on a directory whose nodes run is refused.
    let run = cairn()
        .arg("dev")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(
        values(dir.path(), "k"),
        ["kept"],
        "the running cluster is untouched"
    );

    assert_eq!(dev.stop().code(), Some(0), "SIGTERM stops dev cleanly");
    assert!(!alive(pid), "dev waited for its node");
    assert!(
        !dir.path().join("node1/pid").exists(),
        "pid files are removed"
    );

    let dev = Dev::start(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("node1/node.toml")).unwrap(),
        config,
        "the config (and so the port) is reused"
    );
    let addr = |line: &str| line.split_whitespace().nth(1).map(str::to_owned);
    assert_eq!(addr(&dev.stdout[0]), addr(&first_line));
    assert_eq!(values(dir.path(), "k"), ["kept"]);
    assert_eq!(dev.stop().code(), Some(0));
}
