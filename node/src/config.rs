//! The node's configuration file (`node.toml`): who it is, where it listens, where its data and
//! certificates live.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One node's configuration, as written to `node.toml`.
///
/// Relative paths are relative to the directory holding the file, so a cluster directory can be
/// moved as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster; its identity (`NodeId`) derives from it.
    pub name: String,
    /// UDP address to serve QUIC on. Port 0 picks a free port (tests only: clients must learn it).
    pub listen: SocketAddr,
    /// Directory holding the node's redb file.
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsPaths,
    /// The cluster this node belongs to. Absent: a cluster of this node alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// The static cluster membership (the gossip issue replaces the member list with discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Replicas per key (N).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// Partitions in the ring (Q), a power of two, fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Every node of the cluster, this one included.
    pub members: Vec<MemberConfig>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Its name.
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its failure zone (rack, host); replicas of a key go to distinct zones when possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
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
        if let Some(cluster) = &config.cluster {
            let invalid = |reason: String| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            };
            if !cluster.members.iter().any(|m| m.name == config.name) {
                return Err(invalid(format!(
                    "cluster.members does not list this node ({})",
                    config.name
                )));
            }
            let mut names: Vec<_> = cluster.members.iter().map(|m| &m.name).collect();
            names.sort();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(invalid(format!("cluster.members lists {} twice", w[0])));
            }
            if cluster.replicas == 0 {
                return Err(invalid("cluster.replicas must be at least 1".into()));
            }
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

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("NodeConfig always serializes")
    }
}
