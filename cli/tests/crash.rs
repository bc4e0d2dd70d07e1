//! A node killed with `kill -9` in the middle of a write load loses no acknowledged write: every
//! put that was acknowledged before the kill is read back after `cairn start` brings the node up
//! again on its data directory (redb at its last checkpoint, the commit log replayed over it).

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{alive, cairn, run_in, values, wait_for, Dev, Proc, EXIT_DEADLINE};
use rustix::process::Signal;

/// Acknowledged puts to collect before the kill.
const ACKED_BEFORE_KILL: usize = 40;
/// Writers that record their acknowledged puts.
const WRITERS: usize = 4;

#[test]
fn every_write_acknowledged_before_a_kill_9_is_there_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(dir.path(), Some(1));
    let pid = dev.node_pid("node1");

    // Background load: many concurrent writes, so group commits hold many writes each and the
    // kill lands among logged, applied-but-unsynced and checkpointed commits.
    let _bench = Proc::spawn(
        cairn()
            .args(["bench", "--clients", "32", "--read-ratio", "0", "--w", "1"])
            .args(["--duration", "120", "--keys", "100000", "--cluster"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (dir, acked, stop) = (dir.path().to_owned(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (key, value) = (format!("crash:{w}:{i}"), format!("value {w}.{i}"));
                    let run = run_in(&dir, &["put", &key, &value, "--w", "1", "--timeout", "10"]);
                    // Only an acknowledged put is a promise; a failed one (the node is gone)
                    // may or may not have been stored.
                    if run.code == Some(0) {
                        acked.lock().unwrap().push((key, value));
                    }
                }
            })
        })
        .collect();
    wait_for("acknowledged writes", Duration::from_secs(120), || {
        (acked.lock().unwrap().len() >= ACKED_BEFORE_KILL).then_some(())
    });

    common::kill(pid, Signal::KILL);
    // Writes acknowledged after this point were acknowledged by a dead node: none are.
    let acked: Vec<(String, String)> = acked.lock().unwrap().clone();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(dev.proc().wait().code(), Some(3), "dev exits with its node");
    wait_for("the killed node to be gone", EXIT_DEADLINE, || {
        (!alive(pid)).then_some(())
    });

    let _node = dev.restart_node("node1");
    let lost: Vec<&(String, String)> = acked
        .iter()
        .filter(|(key, value)| values(dir.path(), key) != [value.clone()])
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are missing or changed after kill -9: {lost:?}",
        lost.len(),
        acked.len()
    );
}
