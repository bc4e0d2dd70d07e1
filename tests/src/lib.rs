//! Shared helpers for Cairn's integration tests: a cluster directory with real certificates and
//! in-process nodes serving real QUIC on loopback.

pub mod cluster;
pub mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cairn_client::Client;
use cairn_net::{ClusterCa, Identity};
use cairn_node::{Node, NodeConfig, TlsPaths};
use cairn_proto::ContextKey;

/// Sends the nodes' logs to stderr when `CAIRN_TEST_LOG` holds a filter (e.g.
/// `CAIRN_TEST_LOG=cairn_node=debug`), for debugging a test; does nothing otherwise.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("CAIRN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A temporary cluster directory: a CA, a data and an admin client identity, and node configs.
pub struct TestDir {
    dir: tempfile::TempDir,
    ca: ClusterCa,
}

impl TestDir {
    /// A new directory with a fresh cluster CA and a client certificate.
    pub fn new() -> anyhow::Result<TestDir> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::generate("test")?;
        std::fs::write(dir.path().join("ca.pem"), &ca.pem().cert_pem)?;
        // Nodes find the cluster's context key next to the CA certificate.
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        std::fs::write(
            dir.path().join(cairn_node::config::CONTEXT_KEY_FILE),
            ContextKey::from_bytes(secret).to_text(),
        )?;
        let client = ca.issue_client("tester")?;
        std::fs::write(dir.path().join("client.pem"), &client.cert_pem)?;
        std::fs::write(dir.path().join("client.key"), &client.key_pem)?;
        let admin = ca.issue_admin("operator")?;
        std::fs::write(dir.path().join("admin.pem"), &admin.cert_pem)?;
        std::fs::write(dir.path().join("admin.key"), &admin.key_pem)?;
        Ok(TestDir { dir, ca })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster CA.
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// The (data) client identity signed by this cluster's CA.
    pub fn client_identity(&self) -> anyhow::Result<Identity> {
        let p = self.path();
        Ok(Identity::load(
            &p.join("ca.pem"),
            &p.join("client.pem"),
            &p.join("client.key"),
        )?)
    }

    /// An admin client identity (it may also join and leave) signed by this cluster's CA.
    pub fn admin_identity(&self) -> anyhow::Result<Identity> {
        let p = self.path();
        Ok(Identity::load(
            &p.join("ca.pem"),
            &p.join("admin.pem"),
            &p.join("admin.key"),
        )?)
    }

    /// A config for node `name` listening on a free loopback port, with certificates written.
    pub fn node_config(&self, name: &str) -> anyhow::Result<NodeConfig> {
        let node_dir = self.path().join(name);
        std::fs::create_dir_all(&node_dir)?;
        let issued = self.ca.issue_node(name, &[])?;
        std::fs::write(node_dir.join("node.pem"), &issued.cert_pem)?;
        std::fs::write(node_dir.join("node.key"), &issued.key_pem)?;
        Ok(NodeConfig {
            name: name.to_owned(),
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            data_dir: node_dir.join("data"),
            tls: TlsPaths {
                ca: self.path().join("ca.pem"),
                cert: node_dir.join("node.pem"),
                key: node_dir.join("node.key"),
                context_key: None,
            },
            cluster: None,
            anti_entropy: Default::default(),
            transfer: Default::default(),
            tombstones: Default::default(),
            read_repair: true,
            hinted_handoff: true,
            resp: Default::default(),
            http: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Starts node `name` in this process.
    pub async fn start_node(&self, name: &str) -> anyhow::Result<Node> {
        let config = self.node_config(name)?;
        Node::start(config).await.context("starting node")
    }

    /// The data directory of node `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.path().join(name).join("data")
    }
}

/// Connects a client with `identity` to `addr`.
pub async fn connect(addr: SocketAddr, identity: &Identity) -> anyhow::Result<Client> {
    Ok(Client::connect(addr, identity).await?)
}
