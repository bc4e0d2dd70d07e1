//! The node's configuration file (`node.toml`): who it is, where it listens, where its data and
//! certificates live.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_gossip::limits::{SEEDS_MAX, ZONE_BYTES_MAX};
use cairn_proto::limits::ADDRESS_BYTES_MAX;
use serde::{Deserialize, Serialize};

use crate::limits::{GOSSIP_INTERVAL_MS_MAX, GOSSIP_INTERVAL_MS_MIN, NAME_BYTES_MAX};

/// One node's configuration, as written to `node.toml`.
///
/// Relative paths are relative to the directory holding the file, so a cluster directory can be
/// moved as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster; its identity (`NodeId`) derives from it.
    pub name: String,
    /// UDP address to serve QUIC on. Port 0 picks a free port (peers learn the bound one by
    /// gossip; clients must be told).
    pub listen: SocketAddr,
    /// The address other nodes reach this one at, gossiped to them. Default: the bound address,
    /// which must then not be unspecified (`0.0.0.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Directory holding the node's redb file.
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsPaths,
    /// The cluster this node belongs to. Absent: a cluster of this node alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// The cluster this node belongs to: its shape, where to find it, and how to gossip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Replicas per key (N); every node of a cluster must agree.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// Partitions in the ring (Q), a power of two, fixed when the cluster is created; every node
    /// of a cluster must agree.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Addresses (host:port) of seed nodes: a starting node joins the cluster through them, and
    /// every node turns to them now and then so views split by a partition merge again. Empty, or
    /// only this node's own address: the node starts a cluster of its own.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// This node's failure zone (rack, host); replicas of a key go to distinct zones when
    /// possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Milliseconds between gossip rounds; every node of a cluster should agree.
    #[serde(default = "default_gossip_interval_ms")]
    pub gossip_interval_ms: u64,
    /// Phi above which the failure detector judges a node down.
    #[serde(default = "default_phi_threshold")]
    pub phi_threshold: f64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            replicas: default_replicas(),
            partitions: default_partitions(),
            seeds: Vec::new(),
            zone: None,
            gossip_interval_ms: default_gossip_interval_ms(),
            phi_threshold: default_phi_threshold(),
        }
    }
}

fn default_gossip_interval_ms() -> u64 {
    cairn_gossip::limits::GOSSIP_INTERVAL_DEFAULT.as_millis() as u64
}

fn default_phi_threshold() -> f64 {
    cairn_gossip::limits::PHI_THRESHOLD_DEFAULT
}

fn default_replicas() -> u8 {
    3
}

fn default_partitions() -> u32 {
    64
}

/// Where the node's certificates are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM): peers and clients must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (PEM), signed by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid node configuration.
    #[error("invalid config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser reported.
        reason: String,
    },
    /// A value is not acceptable.
    #[error("invalid config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which value and why.
        reason: String,
    },
}

impl ClusterConfig {
    /// Checks every value against its limit; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 {
            return Err("cluster.replicas must be at least 1".into());
        }
        if self.seeds.len() > SEEDS_MAX {
            return Err(format!(
                "cluster.seeds lists {} addresses, over SEEDS_MAX ({SEEDS_MAX})",
                self.seeds.len()
            ));
        }
        if let Some(seed) = self.seeds.iter().find(|s| s.len() > ADDRESS_BYTES_MAX) {
            return Err(format!(
                "cluster.seeds: {seed:?} exceeds ADDRESS_BYTES_MAX ({ADDRESS_BYTES_MAX} bytes)"
            ));
        }
        if self.zone.as_ref().is_some_and(|z| z.len() > ZONE_BYTES_MAX) {
            return Err(format!(
                "cluster.zone exceeds ZONE_BYTES_MAX ({ZONE_BYTES_MAX} bytes)"
            ));
        }
        if !(GOSSIP_INTERVAL_MS_MIN..=GOSSIP_INTERVAL_MS_MAX).contains(&self.gossip_interval_ms) {
            return Err(format!(
                "cluster.gossip_interval_ms must be in {GOSSIP_INTERVAL_MS_MIN}..={GOSSIP_INTERVAL_MS_MAX}"
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err("cluster.phi_threshold must be a positive number".into());
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Reads `path` and resolves relative paths against its directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if config.name.is_empty()
            || !config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "name {:?} must be non-empty ASCII letters, digits, '-' or '_'",
                    config.name
                ),
            });
        }
        if config.name.len() > NAME_BYTES_MAX {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "name of {} bytes exceeds NAME_BYTES_MAX ({NAME_BYTES_MAX})",
                    config.name.len()
                ),
            });
        }
        if let Some(cluster) = &config.cluster {
            cluster.validate().map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        Ok(config)
    }

    /// Makes every relative path relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.tls.ca,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The cluster section, or the defaults (a cluster of this node alone) without one.
    pub fn cluster(&self) -> ClusterConfig {
        self.cluster.clone().unwrap_or_default()
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("NodeConfig always serializes")
    }
}
