//! `cairn dev`: a local cluster in one directory — CA, certificates, node configs and data made
//! on first use and reused afterwards — with each node a child process, supervised until Ctrl-C.

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use cairn_client::Client;
use cairn_net::{ClusterCa, Identity};
use cairn_node::{NodeConfig, TlsPaths};
use clap::Args;
use rustix::process::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cert;
use crate::cluster::{self, dial_addr, DEFAULT_DIR};
use crate::limits::{
    LOG_SCAN_BYTES_MAX, LOG_TAIL_BYTES_MAX, READY_ATTEMPT_TIMEOUT, READY_BACKOFF_MAX,
    READY_BACKOFF_MIN, READY_TIMEOUT, STOP_TIMEOUT,
};
use crate::signals::{self, StopSignals};
use crate::start::LISTENING;
use crate::Outcome;

/// `cairn dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes. Must be 1 until replication is built.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: usize,
    /// Cluster directory: created if missing; if it exists, its CA, certificates, configs (and
    /// so ports) and data are reused.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
}

/// The cluster name recorded in a dev CA.
const DEV_CLUSTER_NAME: &str = "dev";

/// One node of the dev cluster, as laid out on disk.
#[derive(Debug, Clone)]
struct DevNode {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    addr: std::net::SocketAddr,
}

impl DevNode {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

/// Runs the dev cluster until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<Outcome> {
    if args.nodes != 1 {
        crate::usage_error("dev", "replication is not built yet; --nodes must be 1");
    }
    // Caught first: a Ctrl-C while nodes start still stops them.
    let mut signals = StopSignals::catch()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    // Absolute, so the children find their configs whatever their working directory.
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let nodes = prepare(&dir, args.nodes)?;
    for node in &nodes {
        if let Some(pid) = running_pid(&node.pid_file()) {
            bail!(
                "{} is already running as pid {pid} (a previous `cairn dev` on {}?); stop it first, or use another --dir",
                node.name,
                dir.display()
            );
        }
    }
    let identity = Identity::load(
        &cluster::ca_cert(&dir),
        &cluster::client_cert(&dir),
        &cluster::client_key(&dir),
    )
    .context("loading the dev client identity")?;

    let mut children = Children::new(nodes.clone());
    let started = async {
        for (i, node) in nodes.iter().enumerate() {
            children.spawn(i, node)?;
        }
        wait_ready(&mut children, &identity).await
    };
    let started = tokio::select! {
        biased;
        signal = signals.recv() => Err(anyhow!("{signal} while the nodes were starting")),
        r = started => r,
    };
    if let Err(e) = started {
        children.stop().await;
        return Err(e);
    }

    for (node, pid) in nodes.iter().zip(&children.pids) {
        println!(
            "{}  {}  pid {}  log {}",
            node.name,
            node.addr,
            pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            node.log_file().display()
        );
    }
    let cluster_flag = if args.dir == Path::new(DEFAULT_DIR) {
        String::new()
    } else {
        format!(" --cluster {}", args.dir.display())
    };
    println!(
        "ready: {} node{} in {}; Ctrl-C stops {}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        dir.display(),
        if nodes.len() == 1 { "it" } else { "them" },
    );
    println!("  cairn put k v{cluster_flag}");
    println!("  cairn get k{cluster_flag}");

    let stopped_by = loop {
        tokio::select! {
            biased;
            signal = signals.recv() => break signal,
            Some((i, status)) = children.exits.recv() => {
                eprintln!("{}", children.exited(i, status, false));
                if children.running() == 0 {
                    bail!("every node has exited; their logs are in {}", dir.display());
                }
            }
        }
    };
    println!("{stopped_by}: stopping the nodes");
    children.stop().await;
    println!("stopped");
    Ok(Outcome::Done)
}

/// Makes (or reuses) the CA, the client identity and each node's directory, certificate and
/// config.
fn prepare(dir: &Path, count: usize) -> anyhow::Result<Vec<DevNode>> {
    let ca = cert::load_or_create_ca(dir, DEV_CLUSTER_NAME)?;
    let client_dir = cluster::client_dir(dir);
    ensure_issued(&client_dir, "client", || ca.issue_client("dev"))?;
    (1..=count)
        .map(|k| prepare_node(dir, &ca, &cluster::node_name(k)))
        .collect()
}

/// Writes `OUT/STEM.pem` and `.key` unless both exist; one without the other is an error.
fn ensure_issued(
    out: &Path,
    stem: &str,
    issue: impl FnOnce() -> Result<cairn_net::Issued, cairn_net::NetError>,
) -> anyhow::Result<()> {
    let cert = out.join(format!("{stem}.pem"));
    let key = out.join(format!("{stem}.key"));
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(()),
        (false, false) => {
            let issued = issue().with_context(|| format!("signing {}", cert.display()))?;
            cert::write_issued(out, stem, &issued).map(|_| ())
        }
        _ => bail!(
            "{} holds only one of {stem}.pem and {stem}.key; restore the missing file or remove both",
            out.display()
        ),
    }
}

fn prepare_node(dir: &Path, ca: &ClusterCa, name: &str) -> anyhow::Result<DevNode> {
    let node_dir = dir.join(name);
    let data = node_dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    ensure_issued(&node_dir, "node", || ca.issue_node(name, &[]))?;
    let config_path = node_dir.join(cluster::NODE_CONFIG);
    if !config_path.exists() {
        let config = NodeConfig {
            name: name.to_owned(),
            listen: (std::net::Ipv4Addr::LOCALHOST, free_udp_port()?).into(),
            data_dir: "data".into(),
            tls: TlsPaths {
                ca: "../ca.pem".into(),
                cert: "node.pem".into(),
                key: "node.key".into(),
            },
            cluster: None,
        };
        write_atomically(&config_path, &config.to_toml())?;
    }
    let config = NodeConfig::load(&config_path)?;
    Ok(DevNode {
        name: config.name,
        dir: node_dir,
        config: config_path,
        addr: dial_addr(config.listen),
    })
}

/// A UDP port that was free a moment ago: bound on port 0, read, released.
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free UDP port")?;
    Ok(socket
        .local_addr()
        .context("cannot find a free UDP port")?
        .port())
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The pid in `pid_file` if that process still runs a cairn node.
fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !signals::exists(pid) {
        return None;
    }
    // A pid left by a dev that died can since belong to an unrelated process: where /proc says
    // what the process runs, only a `cairn start` counts.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_node = args.contains(&&b"start"[..]) && args.contains(&&b"--config"[..]);
            is_node.then_some(pid)
        }
        Err(_) => Some(pid),
    }
}

/// The last non-empty line of a node's log, to say why it died.
fn log_tail(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(
        len.saturating_sub(LOG_TAIL_BYTES_MAX as u64),
    ))
    .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// The node processes: their pids while they run, and their exits as they happen.
struct Children {
    nodes: Vec<DevNode>,
    /// `Some(pid)` while the child has not been reaped.
    pids: Vec<Option<u32>>,
    /// Where each node's log stood when it was started: what this run wrote comes after.
    log_starts: Vec<u64>,
    exits_tx: mpsc::Sender<(usize, std::io::Result<ExitStatus>)>,
    exits: mpsc::Receiver<(usize, std::io::Result<ExitStatus>)>,
}

impl Children {
    fn new(nodes: Vec<DevNode>) -> Children {
        // Each child reports exactly once, so this never fills.
        let (exits_tx, exits) = mpsc::channel(nodes.len().max(1));
        Children {
            pids: vec![None; nodes.len()],
            log_starts: vec![0; nodes.len()],
            nodes,
            exits_tx,
            exits,
        }
    }

    fn running(&self) -> usize {
        self.pids.iter().filter(|p| p.is_some()).count()
    }

    /// Starts node `i` as `cairn start --config ...`, logging to its node.log, and records its
    /// pid.
    fn spawn(&mut self, i: usize, node: &DevNode) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the cairn executable")?;
        let log_path = node.log_file();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        self.log_starts[i] = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = tokio::process::Command::new(exe)
            .arg("start")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        let pid = child.id().context("child exited before it had a pid")?;
        self.pids[i] = Some(pid);
        std::fs::write(node.pid_file(), format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", node.pid_file().display()))?;
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send((i, status)).await;
        });
        Ok(())
    }

    /// Records that child `i` has exited and describes it (quoting its log's last line when it
    /// died `while_starting`).
    fn exited(
        &mut self,
        i: usize,
        status: std::io::Result<ExitStatus>,
        while_starting: bool,
    ) -> String {
        let node = &self.nodes[i];
        let pid = self.pids[i].take();
        let _ = std::fs::remove_file(node.pid_file());
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
        let (when, why) = match while_starting {
            true => (
                " while starting",
                log_tail(&node.log_file()).map_or_else(String::new, |line| format!(": {line}")),
            ),
            false => ("", String::new()),
        };
        format!(
            "{}{pid} exited{when} ({status}){why}; log {}",
            node.name,
            node.log_file().display()
        )
    }

    /// Sends SIGTERM to every running child and waits for them; kills those still running at
    /// the deadline. Removes the pid files.
    async fn stop(&mut self) {
        for pid in self.pids.iter().flatten() {
            signals::send(*pid, Signal::TERM);
        }
        if !self.wait_all(STOP_TIMEOUT).await {
            for (node, pid) in self.nodes.iter().zip(&self.pids) {
                if let Some(pid) = pid {
                    eprintln!(
                        "{} (pid {pid}) did not stop within {STOP_TIMEOUT:?}; killing it",
                        node.name
                    );
                    signals::send(*pid, Signal::KILL);
                }
            }
            self.wait_all(STOP_TIMEOUT).await;
        }
        for node in &self.nodes {
            let _ = std::fs::remove_file(node.pid_file());
        }
    }

    /// Waits until no child runs; false if some still do after `timeout`.
    async fn wait_all(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running() > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some((i, status))) => {
                    let message = self.exited(i, status, false);
                    // A clean stop is expected; anything else is worth a line.
                    if !message.contains("(exit status: 0)") {
                        eprintln!("{message}");
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }
}

/// Waits until every node answers a ping, or one exits, or `READY_TIMEOUT` passes.
async fn wait_ready(children: &mut Children, identity: &Identity) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let nodes = children.nodes.clone();
    let log_starts = children.log_starts.clone();
    let pings = async {
        for (node, log_start) in nodes.iter().zip(log_starts) {
            ping_until_ready(node, log_start, identity, deadline).await?;
        }
        Ok(())
    };
    tokio::select! {
        r = pings => r,
        Some((i, status)) = children.exits.recv() => Err(anyhow!(children.exited(i, status, true))),
    }
}

/// Waits until `node` has said in its log (past `log_start`, where this run's output begins)
/// that it listens, then until it answers a ping. Pinging only a bound port means no handshake
/// is sent into the void and abandoned half-way.
async fn ping_until_ready(
    node: &DevNode,
    log_start: u64,
    identity: &Identity,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut backoff = READY_BACKOFF_MIN;
    let mut listening = false;
    loop {
        let error = if !listening {
            listening = log_since(&node.log_file(), log_start).contains(LISTENING);
            if listening {
                continue;
            }
            "it has not said it is listening yet".to_owned()
        } else {
            let attempt = async {
                let client = Client::connect(node.addr, identity).await?;
                let pong = client.ping().await;
                client.close().await;
                pong
            };
            match tokio::time::timeout(READY_ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {READY_ATTEMPT_TIMEOUT:?}"),
            }
        };
        if Instant::now() + backoff >= deadline {
            bail!(
                "{} is not ready after {READY_TIMEOUT:?} ({error}); see {}",
                node.name,
                node.log_file().display()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(READY_BACKOFF_MAX);
    }
}

/// What a log holds past `start` (at most `LOG_SCAN_BYTES_MAX` of it).
fn log_since(path: &Path, start: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut text = Vec::new();
        file.take(LOG_SCAN_BYTES_MAX as u64)
            .read_to_end(&mut text)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_gets_a_full_layout_and_a_rerun_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), 1).unwrap();
        let node_dir = dir.path().join("node1");
        for file in ["node.toml", "node.pem", "node.key", "data"] {
            assert!(node_dir.join(file).exists(), "{file} missing");
        }
        assert!(dir.path().join("client/client.pem").exists());
        let text = std::fs::read_to_string(node_dir.join("node.toml")).unwrap();
        assert!(text.contains("data_dir = \"data\""), "{text}");
        assert!(text.contains("ca = \"../ca.pem\""), "{text}");
        assert!(text.contains("127.0.0.1:"), "{text}");
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();

        let second = prepare(dir.path(), 1).unwrap();
        assert_eq!(first[0].addr, second[0].addr, "the port is kept");
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).unwrap(),
            ca_before,
            "the CA is kept"
        );
    }

    #[test]
    fn stale_pid_files_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        assert_eq!(running_pid(&pid_file), None);
        // This test process is alive but is not a cairn node.
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        assert_eq!(running_pid(&pid_file), None);
        std::fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(running_pid(&pid_file), None);
    }

    #[test]
    fn only_this_run_of_the_log_counts() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        std::fs::write(&log, "node node1 listening on 127.0.0.1:1\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        assert!(!log_since(&log, start).contains(LISTENING));
        std::fs::write(&log, "node node1 listening on 127.0.0.1:1\nagain\n").unwrap();
        assert_eq!(log_since(&log, start), "again\n");
        assert_eq!(log_since(&dir.path().join("missing"), 0), "");
    }

    #[test]
    fn log_tail_is_the_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        std::fs::write(&log, "first\nerror: cannot bind UDP 127.0.0.1:1\n\n").unwrap();
        assert_eq!(
            log_tail(&log).as_deref(),
            Some("error: cannot bind UDP 127.0.0.1:1")
        );
    }
}
