//! Helpers for the multi-process tests: run the real `cairn` binary, a `cairn dev` cluster in a
//! temporary directory, and processes that are killed (with their whole process group) when the
//! test ends, however it ends.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a cluster may take to say it is ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a process may take to exit after it was told to stop.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(20);
/// Longest pause between two polls of a condition.
const POLL_MAX: Duration = Duration::from_millis(100);

/// The `cairn` binary under test.
pub fn cairn() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

/// Polls `condition` with a growing pause until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// A child process in its own process group; dropping it kills the group.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` as the leader of a new process group (its own children join it).
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt as _;
        let child = cmd.process_group(0).spawn().expect("spawn cairn");
        Proc { child }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (not the group).
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal);
    }

    /// Waits for it to exit, failing the test after `EXIT_DEADLINE`.
    pub fn wait(&mut self) -> ExitStatus {
        let child = &mut self.child;
        wait_for("a process to exit", EXIT_DEADLINE, || {
            child.try_wait().expect("try_wait")
        })
    }

    /// The child, e.g. to take its stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pgid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(pid as i32).expect("a valid pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    let pid = Pid::from_raw(pid as i32).expect("a valid pid");
    rustix::process::test_kill_process(pid).is_ok()
}

/// A `cairn dev` cluster in a temporary directory.
pub struct Dev {
    dir: PathBuf,
    proc: Proc,
    /// Lines `cairn dev` printed on stdout so far (for failure messages).
    pub stdout: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Dev {
    /// Starts `cairn dev --dir DIR [--nodes N]` and waits until it says it is ready.
    pub fn start(dir: &Path, nodes: Option<usize>) -> Dev {
        let mut cmd = cairn();
        cmd.arg("dev").arg("--dir").arg(dir);
        if let Some(n) = nodes {
            cmd.arg("--nodes").arg(n.to_string());
        }
        let mut proc = Proc::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = proc.child().stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            dir: dir.to_owned(),
            proc,
            stdout: Vec::new(),
            lines,
        };
        dev.wait_for_line("ready", READY_DEADLINE);
        dev
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                // Dropping `self` while this panics prints every node's log.
                Err(e) => panic!(
                    "no line with {needle:?} from cairn dev ({e}); it printed {:?}",
                    self.stdout
                ),
            }
        }
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid `cairn dev` recorded for `node`.
    pub fn node_pid(&self, node: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir.join(node).join("pid")).expect("pid file");
        text.trim().parse().expect("a pid")
    }

    /// The `cairn dev` process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Runs a client command against this cluster.
    pub fn run(&self, args: &[&str]) -> Run {
        run_in(&self.dir, args)
    }

    /// `status --json --node NODE`, which must succeed.
    pub fn status(&self, node: &str) -> serde_json::Value {
        let run = self.run(&["status", "--json", "--node", node]);
        assert_eq!(run.code, Some(0), "status failed: {run:?}");
        run.json()
    }

    /// Waits until `observer`'s `cairn status` shows member `member` as `status` (e.g. "down").
    pub fn wait_member(&self, observer: &str, member: &str, status: &str, deadline: Duration) {
        let what = format!("{observer} to see {member} {status}");
        wait_for(&what, deadline, || {
            let reply = self.status(observer);
            reply["members"]
                .as_array()
                .expect("members")
                .iter()
                .any(|m| m["name"] == member && m["status"] == status)
                .then_some(())
        });
    }

    /// Starts `node` again with `cairn start --config DIR/NODE/node.toml` (its output appended
    /// to its node.log) and waits until it answers a ping.
    pub fn restart_node(&self, node: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join(node).join("node.log"))
            .expect("open node.log");
        let proc = Proc::spawn(
            cairn()
                .arg("start")
                .arg("--config")
                .arg(self.dir.join(node).join("node.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log),
        );
        wait_for_ping(&self.dir, node);
        proc
    }

    /// Stops `cairn dev` with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.proc.signal(Signal::TERM);
        self.proc.wait()
    }
}

/// How much of the end of each node's log a failure message shows.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// The end of every `nodeN/node.log` under `dir`, for a failure message: a cluster that is not
/// ready is explained by its nodes' logs, and the temporary directory is gone after the test.
pub fn node_logs(dir: &Path) -> String {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("node.log")))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    let mut out = String::new();
    for log in nodes {
        let text = std::fs::read(&log).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(LOG_TAIL_BYTES)..];
        out.push_str(&format!(
            "---- {} (last {} of {} bytes) ----\n{}\n",
            log.display(),
            tail.len(),
            text.len(),
            String::from_utf8_lossy(tail)
        ));
    }
    out
}

/// A test that fails while its cluster runs shows every node's log (its directory is removed
/// when the test ends).
impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the test failed; its nodes' logs:\n{}",
                node_logs(&self.dir)
            );
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Run {
    fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "command failed: {self:?}");
        self.stdout
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs `cairn ARGS --cluster DIR`.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let out = cairn()
        .args(args)
        .arg("--cluster")
        .arg(dir)
        .output()
        .expect("run cairn");
    Run::from_output(out)
}

/// Runs `cairn ARGS --cluster DIR` with `input` on stdin.
pub fn run_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Run {
    let mut child = cairn()
        .args(args)
        .arg("--cluster")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write stdin");
    Run::from_output(child.wait_with_output().expect("wait for cairn"))
}

/// `get KEY --json` against the cluster in `dir`: the sibling values (as strings) and dots, and
/// the context.
pub fn get_json(dir: &Path, key: &str) -> (Vec<(String, String)>, String) {
    let run = run_in(dir, &["get", key, "--json"]);
    assert!(matches!(run.code, Some(0 | 1)), "get failed: {run:?}");
    let json = run.json();
    let siblings = json["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| {
            (
                s["value"].as_str().expect("text value").to_owned(),
                s["dot"].as_str().expect("dot").to_owned(),
            )
        })
        .collect();
    (
        siblings,
        json["context"].as_str().expect("context").to_owned(),
    )
}

/// The values of `key`, sorted.
pub fn values(dir: &Path, key: &str) -> Vec<String> {
    let mut values: Vec<String> = get_json(dir, key).0.into_iter().map(|(v, _)| v).collect();
    values.sort();
    values
}

/// Fails the test unless `python3` can import `package`, saying that `.ci/run` installs it.
pub fn require_python_package(package: &str) {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {package}")])
        .output()
        .expect("run python3");
    assert!(
        probe.status.success(),
        "the {package} Python package is missing: `.ci/run` installs it (pip install {package}): \
         {}{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// Waits until `node` of the cluster in `dir` answers a ping.
pub fn wait_for_ping(dir: &Path, node: &str) {
    wait_for("the node to answer a ping", READY_DEADLINE, || {
        let run = run_in(dir, &["ping", "--node", node, "--timeout", "1"]);
        (run.code == Some(0)).then_some(())
    });
}
