//! In-process clusters of real nodes serving real QUIC on loopback, for multi-node tests.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_client::Client;
use cairn_node::{ClusterConfig, Node, NodeConfig};

use crate::relay::Relays;
use crate::TestDir;

/// Gossip interval of test clusters: short, so membership settles in about a second, yet far
/// above the scheduling noise of a loaded machine (the detector convicts after ~18 intervals of
/// silence).
pub const TEST_GOSSIP_INTERVAL_MS: u64 = 250;

/// A cluster of `n` nodes named node1..nodeN, each on its own loopback port; node1 is every
/// node's seed, the others find each other through it.
pub struct TestCluster {
    /// Certificates and data directories.
    pub dir: TestDir,
    configs: Vec<NodeConfig>,
    nodes: Vec<Option<Node>>,
    /// The relays in front of the nodes, for clusters that can be partitioned.
    relays: Option<Relays>,
}

/// Ports handed to test nodes: below Linux's ephemeral range (32768–60999), so a port a
/// stopped node releases is not taken by some other socket's `bind(0)` before it restarts.
const NODE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports this test process has handed out, never handed out again: a port is free from the
/// moment it is picked until its node binds it (a second or more for the last node of a cluster
/// on a loaded machine), and a test running in parallel that picked it meanwhile failed with
/// "Address already in use" (seen in CI as `a_hint_for_a_removed_node_is_delivered_to_the_new_owners`).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free UDP port on loopback (bound, then released for the node to take), not handed out
/// before by this process.
fn free_addr() -> anyhow::Result<SocketAddr> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(NODE_PORTS);
        let mut handed_out = HANDED_OUT.lock().expect("port registry lock");
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(sock) = UdpSocket::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            return Ok(sock.local_addr()?);
        }
    }
    anyhow::bail!("no free UDP port in {NODE_PORTS:?}")
}

impl TestCluster {
    /// Configures and starts `n` nodes with N = `replicas` and Q = `partitions`.
    pub async fn start(n: usize, replicas: u8, partitions: u32) -> anyhow::Result<TestCluster> {
        TestCluster::start_with(n, replicas, partitions, |_| {}).await
    }

    /// [`TestCluster::start`], with `configure` applied to every node's configuration first.
    pub async fn start_with(
        n: usize,
        replicas: u8,
        partitions: u32,
        configure: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<TestCluster> {
        TestCluster::build(n, replicas, partitions, None, configure).await
    }

    /// [`TestCluster::start_with`], with every node behind a relay ([`Relays`]) that
    /// [`TestCluster::relays`] can partition: nodes advertise their relay's address, so all
    /// traffic between nodes passes the relays, while clients talk to the nodes directly.
    pub async fn start_partitionable(
        n: usize,
        replicas: u8,
        partitions: u32,
        configure: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<TestCluster> {
        let relays = Relays::new(n).await?;
        TestCluster::build(n, replicas, partitions, Some(relays), configure).await
    }

    async fn build(
        n: usize,
        replicas: u8,
        partitions: u32,
        relays: Option<Relays>,
        configure: impl Fn(&mut NodeConfig),
    ) -> anyhow::Result<TestCluster> {
        let dir = TestDir::new()?;
        let listens = (0..n)
            .map(|_| free_addr())
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Nodes reach each other at their relay when there is one; node1 is everyone's seed.
        let reach = |i: usize| relays.as_ref().map_or(listens[i], |r| r.front(i));
        let mut configs = Vec::new();
        for (i, listen) in listens.iter().enumerate() {
            let mut config = dir.node_config(&format!("node{}", i + 1))?;
            config.listen = *listen;
            if let Some(relays) = &relays {
                config.advertise = Some(relays.front(i));
                relays.set_backend(i, *listen);
            }
            config.cluster = Some(ClusterConfig {
                replicas,
                partitions,
                seeds: vec![reach(0).to_string()],
                initial_members: (1..=n).map(|k| format!("node{k}")).collect(),
                gossip_interval_ms: TEST_GOSSIP_INTERVAL_MS,
                ..ClusterConfig::default()
            });
            configure(&mut config);
            configs.push(config);
        }
        let mut cluster = TestCluster {
            dir,
            configs,
            nodes: Vec::new(),
            relays,
        };
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// The relays of a cluster made by [`TestCluster::start_partitionable`] (nodes are numbered
    /// from 0 there: node `k` is relay `k - 1`).
    pub fn relays(&self) -> &Relays {
        self.relays
            .as_ref()
            .expect("a cluster started with start_partitionable")
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        crate::init_test_log();
        for i in 0..self.configs.len() {
            let node = Node::start(self.configs[i].clone()).await?;
            self.nodes.push(Some(node));
        }
        // Nodes find each other over a few gossip rounds; wait until every view agrees.
        self.wait_all_up().await
    }

    /// Waits until every running node sees every running node up (and so computes the same
    /// ring over them).
    pub async fn wait_all_up(&self) -> anyhow::Result<()> {
        let running: Vec<usize> = (1..=self.nodes.len())
            .filter(|k| self.nodes[k - 1].is_some())
            .collect();
        let names: Vec<String> = running.iter().map(|k| format!("node{k}")).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for &k in &running {
            let client = self.client(k).await?;
            loop {
                let status = client.status().await?;
                let up = status
                    .members
                    .iter()
                    .filter(|m| names.contains(&m.name) && m.status == "up")
                    .count();
                let all_up = up == names.len();
                if all_up {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node{k} still sees peers down: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The running node `k` (1-based).
    pub fn node(&self, k: usize) -> &Node {
        self.nodes[k - 1].as_ref().expect("node is running")
    }

    /// The address of node `k`.
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.configs[k - 1].listen
    }

    /// Stops node `k` (cleanly; its data stays).
    pub async fn stop(&mut self, k: usize) -> anyhow::Result<()> {
        if let Some(node) = self.nodes[k - 1].take() {
            node.shutdown().await?;
        }
        Ok(())
    }

    /// Starts node `k` again on the same address and data, and waits until every node sees
    /// every other up. Tried once: a stopped node has released its port and its database by
    /// the time `shutdown` returns, so a failure to start is the test's failure.
    pub async fn restart(&mut self, k: usize) -> anyhow::Result<()> {
        let node = Node::start(self.configs[k - 1].clone())
            .await
            .map_err(|e| anyhow::anyhow!("restarting node{k} on its old port and data: {e}"))?;
        self.nodes[k - 1] = Some(node);
        self.wait_all_up().await
    }

    /// A client connected to node `k`.
    pub async fn client(&self, k: usize) -> anyhow::Result<Client> {
        Ok(Client::connect(self.addr(k), &self.dir.client_identity()?).await?)
    }

    /// Stops every running node.
    pub async fn shutdown(mut self) {
        for k in 1..=self.nodes.len() {
            let _ = self.stop(k).await;
        }
    }
}

/// Polls `cond` until it is true, failing the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `client`'s node shows member `node` as anything but up (down, degraded, ...):
/// coordinators choose fallbacks only for primaries they know are down.
pub async fn eventually_not_up(client: &Client, node: &str, within: Duration) {
    eventually(&format!("{node} to be seen not up"), within, || async {
        let status = client.status().await.unwrap();
        status
            .members
            .iter()
            .any(|m| m.name == node && m.status != "up")
    })
    .await;
}

/// Write options asking for `n` acknowledgements (everything else default).
pub fn w(n: u8) -> cairn_proto::WriteOptions {
    cairn_proto::WriteOptions {
        w: Some(n),
        ..Default::default()
    }
}

/// Read options asking for `n` answers (everything else default).
pub fn r(n: u8) -> cairn_proto::ReadOptions {
    cairn_proto::ReadOptions {
        r: Some(n),
        ..Default::default()
    }
}
