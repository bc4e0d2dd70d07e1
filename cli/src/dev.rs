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
use cairn_node::{ClusterConfig, NodeConfig, TlsPaths};
use clap::Args;
use rustix::process::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cert;
use crate::cluster::{self, dial_addr, DEFAULT_DIR};
use crate::limits::{
    DEV_NODES_DEFAULT, DEV_NODES_MAX, DEV_PARTITIONS, DEV_PORT_ATTEMPTS_PER_PORT, DEV_PORT_MIN,
    DEV_PORT_ROOM_FACTOR, DEV_REPLICAS, LOG_SCAN_BYTES_MAX, LOG_TAIL_BYTES_MAX,
    READY_ATTEMPT_TIMEOUT, READY_BACKOFF_MAX, READY_BACKOFF_MIN, READY_TIMEOUT, STOP_TIMEOUT,
};
use crate::signals::{self, StopSignals};
use crate::start::LISTENING;
use crate::{Outcome, UsageError};

/// `cairn dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes, 1 to 16 [default: 3 for a new directory, else the nodes it holds]. An
    /// existing directory keeps its cluster: a different --nodes is refused, not applied.
    #[arg(long, value_name = "N", value_parser = parse_nodes)]
    nodes: Option<usize>,
    /// Cluster directory: created if missing; if it exists, its CA, certificates, configs (and
    /// so ports) and data are reused.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=DEV_NODES_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a node count from 1 to DEV_NODES_MAX ({DEV_NODES_MAX})"
        )),
    }
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
    /// The RESP, HTTP and metrics TLS listeners, as a client here dials them.
    resp: Option<std::net::SocketAddr>,
    http: Option<std::net::SocketAddr>,
    metrics: Option<std::net::SocketAddr>,
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
        &cluster::admin_cert(&dir),
        &cluster::admin_key(&dir),
    )
    .context("loading the dev admin identity")?;

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
        let show =
            |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        println!(
            "{}  {}  pid {}  resp {}  http {}  metrics {}  log {}",
            node.name,
            node.addr,
            pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            show(node.resp),
            show(node.http),
            show(node.metrics),
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
    println!("  cairn status{cluster_flag}");
    let tls = format!(
        "--cacert {} --cert {} --key {}",
        cluster::ca_cert(&dir).display(),
        cluster::client_cert(&dir).display(),
        cluster::client_key(&dir).display()
    );
    if let Some(resp) = nodes[0].resp {
        println!(
            "  redis-cli --tls {tls} -h {} -p {}",
            resp.ip(),
            resp.port()
        );
    }
    if let Some(http) = nodes[0].http {
        println!("  curl {tls} https://{http}/kv/k");
    }
    if let Some(metrics) = nodes[0].metrics {
        println!("  curl {tls} https://{metrics}/metrics");
    }

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
/// config. A fresh directory gets `nodes` nodes (default `DEV_NODES_DEFAULT`), every config
/// listing every member; an existing one keeps the cluster it holds, and a `nodes` that differs
/// from it is refused.
fn prepare(dir: &Path, nodes: Option<usize>) -> anyhow::Result<Vec<DevNode>> {
    let ca = cert::load_or_create_ca(dir, DEV_CLUSTER_NAME)?;
    let client_dir = cluster::client_dir(dir);
    ensure_issued(&client_dir, "client", || ca.issue_client("dev"))?;
    // `cairn dev` checks readiness with the admin identity, and `join`/`leave` use it by
    // default; an older cluster directory gets one on its next start.
    ensure_issued(&cluster::admin_dir(dir), "admin", || ca.issue_admin("dev"))?;
    let existing = existing_nodes(dir)?;
    if existing.is_empty() {
        return create_nodes(dir, &ca, nodes.unwrap_or(DEV_NODES_DEFAULT));
    }
    if let Some(n) = nodes.filter(|n| *n != existing.len()) {
        let held = existing.len();
        return Err(UsageError(format!(
            "{} holds a {held}-node cluster; --nodes {n} would change it. Run without --nodes (or with --nodes {held}) to reuse it, or pick another --dir for {n} nodes",
            dir.display()
        ))
        .into());
    }
    check_members(dir, &existing)?;
    existing
        .iter()
        .map(|name| {
            let node_dir = dir.join(name);
            ensure_issued(&node_dir, "node", || ca.issue_node(name, &[]))?;
            add_frontends(dir, name)?;
            load_node(dir, name)
        })
        .collect()
}

/// The names of the subdirectories of `dir` that hold a node config, in node order.
fn existing_nodes(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if entry.path().join(cluster::NODE_CONFIG).is_file() {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    if names.len() > DEV_NODES_MAX {
        bail!(
            "{} holds {} nodes, over DEV_NODES_MAX ({DEV_NODES_MAX})",
            dir.display(),
            names.len()
        );
    }
    cluster::sort_node_names(&mut names);
    Ok(names)
}

/// Checks that the configs in `dir` describe one cluster: every node has the ring shape (Q, N)
/// of the first, so they can form one ring.
fn check_members(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    let mut shape = None;
    for name in names {
        let path = cluster::node_config(dir, name);
        let config = NodeConfig::load(&path)?.cluster();
        let this = (config.partitions, config.replicas);
        match shape {
            None => shape = Some((name, this)),
            Some((first, s)) if s != this => bail!(
                "{} has {} partitions and {} replicas but {first}'s config has {} and {}; make them agree, or remove {} to start a fresh cluster",
                path.display(),
                this.0,
                this.1,
                s.0,
                s.1,
                dir.display()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Makes `count` nodes in an empty cluster directory. Every node's only seed is node1: the
/// others find each other through it by gossip. All are initial members, so each owns its
/// share of the layout from its first start.
fn create_nodes(dir: &Path, ca: &ClusterCa, count: usize) -> anyhow::Result<Vec<DevNode>> {
    let names: Vec<String> = (1..=count).map(cluster::node_name).collect();
    let ports = free_ports(count)?;
    let mut tcp_ports = free_ports(count * 3)?.into_iter();
    let addrs: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|port| (std::net::Ipv4Addr::LOCALHOST, *port).into())
        .collect();
    let replicas = DEV_REPLICAS.min(u8::try_from(count).unwrap_or(u8::MAX));
    for (name, addr) in names.iter().zip(&addrs) {
        let node_dir = dir.join(name);
        let data = node_dir.join("data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        ensure_issued(&node_dir, "node", || ca.issue_node(name, &[]))?;
        let config = NodeConfig {
            name: name.clone(),
            listen: *addr,
            advertise: None,
            data_dir: "data".into(),
            tls: TlsPaths {
                ca: "../ca.pem".into(),
                cert: "node.pem".into(),
                key: "node.key".into(),
                context_key: None,
            },
            cluster: Some(ClusterConfig {
                replicas,
                partitions: DEV_PARTITIONS,
                seeds: vec![addrs[0].to_string()],
                // Every node computes the same layout version 1 over all of them.
                initial_members: names.clone(),
                ..ClusterConfig::default()
            }),
            anti_entropy: Default::default(),
            transfer: Default::default(),
            tombstones: Default::default(),
            read_repair: true,
            hinted_handoff: true,
            resp: Default::default(),
            http: Default::default(),
            metrics: Default::default(),
        };
        let config = with_frontends(config, &mut tcp_ports);
        write_atomically(&node_dir.join(cluster::NODE_CONFIG), &config.to_toml())?;
    }
    names.iter().map(|name| load_node(dir, name)).collect()
}

fn load_node(dir: &Path, name: &str) -> anyhow::Result<DevNode> {
    let config_path = cluster::node_config(dir, name);
    let config = NodeConfig::load(&config_path)?;
    Ok(DevNode {
        name: config.name,
        dir: dir.join(name),
        config: config_path,
        addr: dial_addr(config.listen),
        resp: config.resp.listen.map(dial_addr),
        http: config.http.listen.map(dial_addr),
        metrics: config.metrics.listen.map(dial_addr),
    })
}

/// `config` with every front end that is off given a TLS listener on loopback, on the next of
/// `ports`.
fn with_frontends(mut config: NodeConfig, ports: &mut impl Iterator<Item = u16>) -> NodeConfig {
    for section in [&mut config.resp, &mut config.http, &mut config.metrics] {
        if section.listen.is_none() && section.plaintext_listen.is_none() {
            if let Some(port) = ports.next() {
                section.listen = Some((std::net::Ipv4Addr::LOCALHOST, port).into());
            }
        }
    }
    config
}

/// Gives a node directory made before the front ends existed its RESP, HTTP and metrics
/// listeners (free ports, written to its node.toml); a config that has them is left alone.
fn add_frontends(dir: &Path, name: &str) -> anyhow::Result<()> {
    let path = cluster::node_config(dir, name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: NodeConfig =
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    let off = [&config.resp, &config.http, &config.metrics]
        .iter()
        .filter(|s| s.listen.is_none() && s.plaintext_listen.is_none())
        .count();
    if off == 0 {
        return Ok(());
    }
    let mut ports = free_ports(off)?.into_iter();
    write_atomically(&path, &with_frontends(config, &mut ports).to_toml())
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

/// `count` distinct ports free on loopback a moment ago, for the listeners a dev cluster keeps
/// across runs (see [`dev_ports`]).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let (first_ephemeral, _) = ephemeral_ports();
    dev_ports(
        count,
        &mut rand::thread_rng(),
        DEV_PORT_MIN..=first_ephemeral.saturating_sub(1),
    )
}

/// `count` distinct ports, each free for both UDP and TCP on loopback a moment ago, drawn at
/// random from `range`, which lies below the kernel's ephemeral ports.
///
/// A dev cluster writes its ports into node.toml and binds them again on every run. A port
/// inside the ephemeral range may be handed out meanwhile to any socket bound on port 0 or to
/// an outgoing connection, so a stopped cluster could not start again (CI saw "Address already
/// in use" for a metrics port a parallel test had been given). Below that range only a socket
/// asking for that very port can take it, and the random draw makes two dev clusters asking for
/// the same one unlikely. When the range leaves no room below it, the kernel chooses.
fn dev_ports(
    count: usize,
    rng: &mut impl rand::Rng,
    range: std::ops::RangeInclusive<u16>,
) -> anyhow::Result<Vec<u16>> {
    let (low, high) = (*range.start(), *range.end());
    // Every candidate is held bound until all are chosen, so none is chosen twice.
    let mut held = Vec::with_capacity(count);
    if usize::from(high.saturating_sub(low)) >= count.saturating_mul(DEV_PORT_ROOM_FACTOR) {
        for _ in 0..count.saturating_mul(DEV_PORT_ATTEMPTS_PER_PORT) {
            if held.len() == count {
                break;
            }
            if let Some(pair) = bind_both(rng.gen_range(low..=high)) {
                held.push(pair);
            }
        }
    }
    while held.len() < count {
        let udp = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .context("cannot find free ports")?;
        let port = udp.local_addr().context("cannot find free ports")?.port();
        if let Ok(tcp) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
            held.push((udp, tcp));
        }
    }
    held.iter()
        .map(|(udp, _)| Ok(udp.local_addr().context("cannot find free ports")?.port()))
        .collect()
}

/// `port` bound on loopback for UDP and TCP, or `None` if either is taken.
fn bind_both(port: u16) -> Option<(std::net::UdpSocket, std::net::TcpListener)> {
    let udp = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, port)).ok()?;
    let tcp = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).ok()?;
    Some((udp, tcp))
}

/// The kernel's ephemeral port range (Linux: `/proc/sys/net/ipv4/ip_local_port_range`), or
/// IANA's 49152–65535 where it cannot be read.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or((49152, 65535))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(first)), Some(Ok(last))) if first <= last => Some((first, last)),
        _ => None,
    }
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

/// Waits until every node answers a ping and sees every member up, or one exits, or
/// `READY_TIMEOUT` passes.
async fn wait_ready(children: &mut Children, identity: &Identity) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let nodes = children.nodes.clone();
    let log_starts = children.log_starts.clone();
    let pings = async {
        for (node, log_start) in nodes.iter().zip(log_starts) {
            ping_until_ready(node, log_start, identity, deadline).await?;
        }
        wait_connected(&nodes, identity, deadline).await
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

/// Waits until every node knows every node and sees it up. Nodes find each other by gossip
/// through node1 over a few rounds; until then a write that needs every replica would fail, and
/// "ready" would not be true.
async fn wait_connected(
    nodes: &[DevNode],
    identity: &Identity,
    deadline: Instant,
) -> anyhow::Result<()> {
    if nodes.len() < 2 {
        return Ok(());
    }
    let mut clients = Vec::with_capacity(nodes.len());
    for node in nodes {
        let client =
            tokio::time::timeout(READY_ATTEMPT_TIMEOUT, Client::connect(node.addr, identity))
                .await
                .map_err(|_| {
                    anyhow!(
                        "{} did not accept a connection within {READY_ATTEMPT_TIMEOUT:?}",
                        node.name
                    )
                })?
                .with_context(|| format!("connecting to {}", node.name))?;
        clients.push(client);
    }
    let mut backoff = READY_BACKOFF_MIN;
    let result = loop {
        let Some(why) = first_lagging(nodes, &clients).await else {
            break Ok(());
        };
        if Instant::now() + backoff >= deadline {
            break Err(anyhow!(
                "the nodes do not all see each other after {READY_TIMEOUT:?} ({why}); see the node.log files in {}",
                nodes[0].dir.parent().unwrap_or(Path::new(".")).display()
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(READY_BACKOFF_MAX);
    };
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
    }
    result
}

/// The first node that does not see every member up, and what it sees; `None` when all do.
async fn first_lagging(nodes: &[DevNode], clients: &[Client]) -> Option<String> {
    for (node, client) in nodes.iter().zip(clients) {
        let status = match tokio::time::timeout(READY_ATTEMPT_TIMEOUT, client.status()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Some(format!("{}: {e}", node.name)),
            Err(_) => {
                return Some(format!(
                    "{} gave no status within {READY_ATTEMPT_TIMEOUT:?}",
                    node.name
                ))
            }
        };
        if let Some(m) = status.members.iter().find(|m| m.status != "up") {
            return Some(format!("{} sees {} {}", node.name, m.name, m.status));
        }
        if status.members.len() < nodes.len() {
            return Some(format!(
                "{} knows {} of {} nodes so far",
                node.name,
                status.members.len(),
                nodes.len()
            ));
        }
    }
    None
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
    use rand::SeedableRng as _;

    #[test]
    fn dev_ports_are_distinct_free_and_drawn_from_their_range() {
        let range = DEV_PORT_MIN..=32767;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ports = dev_ports(48, &mut rng, range.clone()).unwrap();
        assert_eq!(ports.len(), 48);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "distinct: {ports:?}");
        for port in ports {
            assert!(range.contains(&port), "{port}");
            assert!(bind_both(port).is_some(), "{port} was released");
        }
    }

    #[test]
    fn a_taken_port_is_never_drawn() {
        // A range just wide enough to be drawn from, starting at a port held here: over many
        // draws the held one comes up and must be passed over.
        let (taken, _held) = (DEV_PORT_MIN..32767)
            .step_by(DEV_PORT_ROOM_FACTOR + 1)
            .find_map(|port| bind_both(port).map(|sockets| (port, sockets)))
            .expect("a free port on loopback");
        let range = taken..=taken + DEV_PORT_ROOM_FACTOR as u16;
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let port = dev_ports(1, &mut rng, range.clone()).unwrap()[0];
            assert_ne!(port, taken, "seed {seed}");
        }
    }

    #[test]
    fn without_room_in_the_range_the_kernel_chooses() {
        let range = DEV_PORT_MIN..=DEV_PORT_MIN + 10;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let ports = dev_ports(4, &mut rng, range.clone()).unwrap();
        assert_eq!(ports.len(), 4);
        let (first_ephemeral, last_ephemeral) = ephemeral_ports();
        for port in ports {
            assert!(!range.contains(&port), "{port}");
            assert!((first_ephemeral..=last_ephemeral).contains(&port), "{port}");
        }
    }

    #[test]
    fn the_port_range_file_is_parsed_or_refused() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x 1"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn a_fresh_directory_gets_a_full_layout_and_a_rerun_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), None).unwrap();
        assert_eq!(first.len(), DEV_NODES_DEFAULT);
        for node in &first {
            for file in ["node.toml", "node.pem", "node.key", "data"] {
                assert!(
                    node.dir.join(file).exists(),
                    "{}: {file} missing",
                    node.name
                );
            }
        }
        assert!(dir.path().join("client/client.pem").exists());
        assert!(dir.path().join("admin/admin.pem").exists());
        let text = std::fs::read_to_string(dir.path().join("node1/node.toml")).unwrap();
        assert!(text.contains("data_dir = \"data\""), "{text}");
        assert!(text.contains("ca = \"../ca.pem\""), "{text}");
        assert!(text.contains("127.0.0.1:"), "{text}");
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();

        // Every config names node1, at the address it listens on, as its only seed.
        for node in &first {
            let config = NodeConfig::load(&node.config).unwrap();
            let cluster = config.cluster.expect("a cluster section");
            assert_eq!(cluster.replicas, 3);
            assert_eq!(cluster.partitions, 64);
            assert_eq!(cluster.seeds, vec![first[0].addr.to_string()]);
        }
        let mut ports: Vec<u16> = first.iter().map(|n| n.addr.port()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), first.len(), "distinct ports");

        let second = prepare(dir.path(), Some(3)).unwrap();
        let addrs = |nodes: &[DevNode]| nodes.iter().map(|n| n.addr).collect::<Vec<_>>();
        assert_eq!(addrs(&first), addrs(&second), "the ports are kept");
        assert_eq!(addrs(&first), addrs(&prepare(dir.path(), None).unwrap()));
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).unwrap(),
            ca_before,
            "the CA is kept"
        );
    }

    #[test]
    fn a_different_node_count_is_refused_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), Some(2)).unwrap();
        let config = std::fs::read_to_string(dir.path().join("node1/node.toml")).unwrap();
        let err = prepare(dir.path(), Some(3)).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        let err = err.to_string();
        assert!(err.contains("holds a 2-node cluster; --nodes 3"), "{err}");
        assert!(!dir.path().join("node3").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node1/node.toml")).unwrap(),
            config
        );
    }

    /// Loads the config at `path`, applies `change`, and writes it back with the relative paths
    /// `cairn dev` uses (loading made them absolute).
    fn rewrite_config(path: &Path, change: impl FnOnce(&mut NodeConfig)) -> NodeConfig {
        let mut config = NodeConfig::load(path).unwrap();
        change(&mut config);
        config.data_dir = "data".into();
        config.tls = TlsPaths {
            ca: "../ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
            context_key: None,
        };
        std::fs::write(path, config.to_toml()).unwrap();
        config
    }

    #[test]
    fn nodes_that_disagree_on_the_ring_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), Some(3)).unwrap();
        rewrite_config(&dir.path().join("node3/node.toml"), |config| {
            config.cluster.as_mut().unwrap().partitions = 128;
        });
        let err = prepare(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("has 128 partitions and 3 replicas but node1's config has 64 and 3"),
            "{err}"
        );
    }

    #[test]
    fn a_one_node_directory_without_a_cluster_section_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), Some(1)).unwrap();
        let config = rewrite_config(&dir.path().join("node1/node.toml"), |config| {
            config.cluster = None;
        });
        let nodes = prepare(dir.path(), None).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].addr, config.listen);
    }

    #[test]
    fn a_directory_from_before_the_front_ends_gets_them_and_keeps_its_paths() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = prepare(dir.path(), Some(2)).unwrap();
        assert!(fresh
            .iter()
            .all(|n| n.resp.is_some() && n.http.is_some() && n.metrics.is_some()));
        let path = dir.path().join("node1/node.toml");
        rewrite_config(&path, |config| {
            config.resp = Default::default();
            config.http = Default::default();
            config.metrics = Default::default();
        });
        assert!(!std::fs::read_to_string(&path).unwrap().contains("[resp]"));
        let nodes = prepare(dir.path(), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[resp]") && text.contains("[metrics]"),
            "{text}"
        );
        assert!(
            text.contains("data_dir = \"data\""),
            "paths stay relative: {text}"
        );
        assert!(nodes[0].resp.is_some() && nodes[0].http.is_some());
        // node2 kept its ports.
        assert_eq!(nodes[1].resp, fresh[1].resp);
    }

    #[test]
    fn node_counts_are_bounded() {
        assert_eq!(parse_nodes("1"), Ok(1));
        assert_eq!(parse_nodes("16"), Ok(16));
        for bad in ["0", "17", "-1", "three"] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
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
