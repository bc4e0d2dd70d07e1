//! The node's configuration file (`node.toml`): who it is, where it listens, where its data and
//! certificates live.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_gossip::limits::{SEEDS_MAX, ZONE_BYTES_MAX};
use cairn_proto::limits::ADDRESS_BYTES_MAX;
use cairn_proto::ContextKey;
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
    /// Background repair between replicas. Absent: on, with the defaults.
    #[serde(default, skip_serializing_if = "AntiEntropyConfig::is_default")]
    pub anti_entropy: AntiEntropyConfig,
    /// Moving data to new replicas during a layout change. Absent: the defaults.
    #[serde(default, skip_serializing_if = "TransferSection::is_default")]
    pub transfer: TransferSection,
    /// Reaping tombstones every member holds. Absent: on, with the defaults.
    #[serde(default, skip_serializing_if = "TombstonesSection::is_default")]
    pub tombstones: TombstonesSection,
    /// Whether a get this node coordinates sends the merged object to replicas that answered
    /// with less (read repair). On by default; tests switch it off to prove that anti-entropy
    /// alone repairs.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub read_repair: bool,
    /// Whether hints this node holds are handed to their targets when they come back. On by
    /// default; tests switch it off to prove that anti-entropy alone repairs (hints are still
    /// kept, so switching it on again delivers them).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub hinted_handoff: bool,
    /// The Redis-protocol (RESP2/RESP3) port. Absent: not served.
    #[serde(default, skip_serializing_if = "FrontendConfig::is_off")]
    pub resp: FrontendConfig,
    /// The HTTP/1.1 JSON API. Absent: not served.
    #[serde(default, skip_serializing_if = "FrontendConfig::is_off")]
    pub http: FrontendConfig,
    /// Prometheus metrics (`GET /metrics`). Absent: not served.
    #[serde(default, skip_serializing_if = "FrontendConfig::is_off")]
    pub metrics: FrontendConfig,
}

/// Where one front end (`[resp]`, `[http]`, `[metrics]`) listens on TCP. Both addresses are
/// optional; with neither the front end is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// TLS listener: the node's certificate, and a client certificate signed by the cluster CA
    /// required of every client. Port 0 picks a free port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Plaintext listener, for local tools without TLS; only a loopback address is accepted,
    /// since anyone who can connect can read and write every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_listen: Option<SocketAddr>,
}

impl FrontendConfig {
    fn is_off(&self) -> bool {
        self.listen.is_none() && self.plaintext_listen.is_none()
    }

    /// Checks that a plaintext listener is on a loopback address; `section` names it.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        match self.plaintext_listen {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "{section}.plaintext_listen {addr} is not a loopback address; a plaintext \
                 listener serves anyone who can connect, so only 127.0.0.0/8 or ::1 is accepted \
                 (use {section}.listen for TLS)"
            )),
            _ => Ok(()),
        }
    }
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The `[anti_entropy]` section: how often and how hard replicas compare their Merkle trees and
/// repair what differs. Every field has a default; the limits keep repair from starving client
/// traffic (Riak's AAE once cost a third of a cluster's throughput).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiEntropyConfig {
    /// Whether this node starts and answers exchanges.
    pub enabled: bool,
    /// Pause between two rounds, milliseconds; a round exchanges each partition this node is a
    /// primary replica of with one other primary that is up.
    pub interval_ms: u64,
    /// Exchanges this node runs at once as initiator.
    pub sessions_max: usize,
    /// Objects this node repairs per second across all its exchanges (a token bucket; a key
    /// repaired both ways costs one).
    pub repair_keys_per_sec: u32,
    /// Keys repaired concurrently in one batch, at most `KEYS_PER_DIFF_BATCH_MAX`.
    pub repair_batch_keys: usize,
}

impl Default for AntiEntropyConfig {
    fn default() -> AntiEntropyConfig {
        AntiEntropyConfig {
            enabled: true,
            interval_ms: 30_000,
            sessions_max: 2,
            repair_keys_per_sec: 1_000,
            repair_batch_keys: 64,
        }
    }
}

impl AntiEntropyConfig {
    fn is_default(&self) -> bool {
        *self == AntiEntropyConfig::default()
    }

    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{AE_INTERVAL_MIN, AE_SESSIONS_MAX};
        use cairn_antientropy::limits::KEYS_PER_DIFF_BATCH_MAX;
        if u128::from(self.interval_ms) < AE_INTERVAL_MIN.as_millis() {
            return Err(format!(
                "anti_entropy.interval_ms {} is below AE_INTERVAL_MIN ({} ms)",
                self.interval_ms,
                AE_INTERVAL_MIN.as_millis()
            ));
        }
        if !(1..=AE_SESSIONS_MAX).contains(&self.sessions_max) {
            return Err(format!(
                "anti_entropy.sessions_max {} is outside 1..=AE_SESSIONS_MAX ({AE_SESSIONS_MAX})",
                self.sessions_max
            ));
        }
        if self.repair_keys_per_sec == 0 {
            return Err("anti_entropy.repair_keys_per_sec must be at least 1".into());
        }
        if !(1..=KEYS_PER_DIFF_BATCH_MAX).contains(&self.repair_batch_keys) {
            return Err(format!(
                "anti_entropy.repair_batch_keys {} is outside 1..=KEYS_PER_DIFF_BATCH_MAX \
                 ({KEYS_PER_DIFF_BATCH_MAX})",
                self.repair_batch_keys
            ));
        }
        Ok(())
    }
}

/// The `[transfer]` section: how fast and how wide this node pushes its partitions to their
/// new replicas during a layout change. Every field has a named default
/// (`cairn_core::limits::TRANSFER_*_DEFAULT`) and a named maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSection {
    /// Keys per batch, at most `TRANSFER_BATCH_KEYS_MAX`.
    pub batch_keys: usize,
    /// Bytes per batch, at most `TRANSFER_BATCH_BYTES_MAX`.
    pub batch_bytes: u64,
    /// Partitions pushed at once, at most `TRANSFER_PARTITIONS_CONCURRENT_MAX`.
    pub partitions_concurrent: usize,
    /// Bytes per second this node pushes, over all targets.
    pub bytes_per_sec: u64,
}

impl Default for TransferSection {
    fn default() -> TransferSection {
        let d = cairn_core::transfer::TransferConfig::default();
        TransferSection {
            batch_keys: d.batch_keys,
            batch_bytes: d.batch_bytes,
            partitions_concurrent: d.partitions_concurrent,
            bytes_per_sec: d.bytes_per_sec,
        }
    }
}

impl TransferSection {
    fn is_default(&self) -> bool {
        *self == TransferSection::default()
    }

    /// The machine's configuration, checked against its limits.
    pub fn config(&self) -> Result<cairn_core::transfer::TransferConfig, String> {
        let c = cairn_core::transfer::TransferConfig {
            batch_keys: self.batch_keys,
            batch_bytes: self.batch_bytes,
            partitions_concurrent: self.partitions_concurrent,
            bytes_per_sec: self.bytes_per_sec,
        };
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// The `[tombstones]` section: when this node reaps its tombstones (removes a delete's marker
/// once every member of every live layout version holds it or nothing, no member holds a hint
/// for the key, no transfer involves its partition and the grace period has passed; see
/// `cairn_core::reaper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TombstonesSection {
    /// Whether this node reaps at all (it answers other members' checks either way).
    pub reap: bool,
    /// Seconds a tombstone must have been held unchanged before it may be reaped (default
    /// `TOMBSTONE_GRACE_DEFAULT`, one hour; ARCHITECTURE.md says why).
    pub grace_secs: u64,
    /// Milliseconds between two rounds (each scans the store once), at least
    /// `TOMBSTONE_ROUND_INTERVAL_MIN`.
    pub interval_ms: u64,
    /// Tombstones checked per round, at most `TOMBSTONE_KEYS_PER_ROUND_MAX`: with
    /// `interval_ms`, the reaping rate.
    pub keys_per_round: usize,
}

impl Default for TombstonesSection {
    fn default() -> TombstonesSection {
        let d = cairn_core::reaper::ReaperConfig::default();
        TombstonesSection {
            reap: true,
            grace_secs: d.grace.as_secs(),
            interval_ms: d.interval.as_millis() as u64,
            keys_per_round: d.keys_per_round,
        }
    }
}

impl TombstonesSection {
    fn is_default(&self) -> bool {
        *self == TombstonesSection::default()
    }

    /// The reaper's configuration, checked against its limits.
    pub fn config(&self) -> Result<cairn_core::reaper::ReaperConfig, String> {
        let c = cairn_core::reaper::ReaperConfig {
            grace: std::time::Duration::from_secs(self.grace_secs),
            interval: std::time::Duration::from_millis(self.interval_ms),
            keys_per_round: self.keys_per_round,
        };
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
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
    /// The members of a new cluster, like etcd's `initial-cluster`: each `"name"` or
    /// `"name@zone"`. A node without a persisted layout whose name is listed computes layout
    /// version 1 over exactly these members (every listed node computes the same one); a node
    /// not listed waits for the layout from gossip and owns nothing until a join adds it. Read
    /// only on a node's first start: afterwards the persisted layout rules. Empty and without
    /// seeds: a cluster of this node alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_members: Vec<String>,
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
            initial_members: Vec::new(),
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
    /// The cluster's context key (`cairn cert ca` writes it as `context.key` next to the CA):
    /// 64 hex digits every node of the cluster shares, which tag the contexts handed to clients
    /// so an edited one is refused. Absent: `context.key` in the CA certificate's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_key: Option<PathBuf>,
}

/// The file name of the cluster's context key, next to the CA certificate by default.
pub const CONTEXT_KEY_FILE: &str = "context.key";

impl TlsPaths {
    /// Where the context key is: `context_key`, or `context.key` next to the CA certificate.
    pub fn context_key_path(&self) -> PathBuf {
        self.context_key.clone().unwrap_or_else(|| {
            self.ca
                .parent()
                .unwrap_or(Path::new("."))
                .join(CONTEXT_KEY_FILE)
        })
    }

    /// Reads the context key. A node without one refuses to start rather than make up a key
    /// of its own: contexts it tagged would be refused by every other node.
    pub fn load_context_key(&self) -> Result<ContextKey, ConfigError> {
        let path = self.context_key_path();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ContextKey {
            reason: match source.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "no such file; `cairn cert ca` writes one next to ca.pem, and \
                     `cairn cert context-key --dir CA_DIR` adds one to an existing CA \
                     (every node of a cluster needs the same file): {source}"
                ),
                _ => source.to_string(),
            },
            path: path.clone(),
        })?;
        ContextKey::from_text(&text).map_err(|e| ConfigError::ContextKey {
            path,
            reason: e.to_string(),
        })
    }
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
    /// The cluster's context key could not be read.
    #[error("cannot use the context key {path}: {reason}")]
    ContextKey {
        /// The key file.
        path: PathBuf,
        /// What was wrong with it.
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

/// One entry of `cluster.initial_members`: a node's name and its failure zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// The node's name (its `NodeId` is `NodeId::from_name` of it).
    pub name: String,
    /// Its failure zone, after an `@`.
    pub zone: Option<String>,
}

/// Whether `name` is acceptable as a node name (as `name` in `node.toml` is checked).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ClusterConfig {
    /// `initial_members` parsed: names checked like `name`, zones against `ZONE_BYTES_MAX`,
    /// no name twice, at most `MEMBERS_MAX`.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, String> {
        use cairn_ring::limits::MEMBERS_MAX;
        if self.initial_members.len() > MEMBERS_MAX {
            return Err(format!(
                "cluster.initial_members lists {} nodes, over MEMBERS_MAX ({MEMBERS_MAX})",
                self.initial_members.len()
            ));
        }
        let mut members: Vec<InitialMember> = Vec::with_capacity(self.initial_members.len());
        for entry in &self.initial_members {
            let (name, zone) = match entry.split_once('@') {
                Some((name, zone)) => (name, Some(zone)),
                None => (entry.as_str(), None),
            };
            if !valid_node_name(name) {
                return Err(format!(
                    "cluster.initial_members: {entry:?}: a name must be 1..={NAME_BYTES_MAX} ASCII \
                     letters, digits, '-' or '_', optionally followed by @zone"
                ));
            }
            if let Some(zone) = zone {
                if zone.is_empty() || zone.len() > ZONE_BYTES_MAX {
                    return Err(format!(
                        "cluster.initial_members: {entry:?}: the zone must be 1..=ZONE_BYTES_MAX \
                         ({ZONE_BYTES_MAX}) bytes"
                    ));
                }
            }
            if members.iter().any(|m| m.name == name) {
                return Err(format!("cluster.initial_members names {name:?} twice"));
            }
            members.push(InitialMember {
                name: name.to_owned(),
                zone: zone.map(str::to_owned),
            });
        }
        Ok(members)
    }

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
        self.initial_members()?;
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
        NodeConfig::parse(&text, path)
    }

    /// Parses and checks the text of a `node.toml` read from `path` (named in errors; relative
    /// paths are resolved against its directory). Anything a person can write is an error
    /// naming the value, never a panic.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
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
        config
            .anti_entropy
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        config
            .tombstones
            .config()
            .map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        for (section, frontend) in [
            ("resp", &config.resp),
            ("http", &config.http),
            ("metrics", &config.metrics),
        ] {
            frontend
                .validate(section)
                .map_err(|reason| ConfigError::Invalid {
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
        ]
        .into_iter()
        .chain(self.tls.context_key.as_mut())
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "n1"
listen = "127.0.0.1:7001"
data_dir = "data"

[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
"#;

    fn load(text: &str) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::load(&path)
    }

    #[test]
    fn anti_entropy_and_read_repair_default_on_and_stay_out_of_the_file() {
        let config = load(BASE).unwrap();
        assert_eq!(config.anti_entropy, AntiEntropyConfig::default());
        assert!(config.anti_entropy.enabled && config.read_repair);
        let text = config.to_toml();
        assert!(
            !text.contains("anti_entropy") && !text.contains("read_repair"),
            "{text}"
        );
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let config = load(&format!(
            "read_repair = false\n{BASE}\n[anti_entropy]\ninterval_ms = 250\n"
        ))
        .unwrap();
        assert!(!config.read_repair);
        assert_eq!(
            config.anti_entropy,
            AntiEntropyConfig {
                interval_ms: 250,
                ..AntiEntropyConfig::default()
            }
        );
        // What is written reads back the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), config);
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        for (line, limit) in [
            ("interval_ms = 1", "AE_INTERVAL_MIN"),
            ("sessions_max = 0", "AE_SESSIONS_MAX"),
            ("sessions_max = 17", "AE_SESSIONS_MAX"),
            ("repair_keys_per_sec = 0", "repair_keys_per_sec"),
            ("repair_batch_keys = 0", "KEYS_PER_DIFF_BATCH_MAX"),
            ("repair_batch_keys = 1025", "KEYS_PER_DIFF_BATCH_MAX"),
        ] {
            let err = load(&format!("{BASE}\n[anti_entropy]\n{line}\n")).unwrap_err();
            assert!(err.to_string().contains(limit), "{line}: {err}");
        }
        let err = load(&format!("{BASE}\n[anti_entropy]\nrate = 5\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn tombstones_are_reaped_by_default_and_the_section_is_checked() {
        let config = load(BASE).unwrap();
        assert!(config.tombstones.reap);
        assert_eq!(config.tombstones.grace_secs, 3600);
        assert!(!config.to_toml().contains("tombstones"));
        let config = load(&format!("{BASE}\n[tombstones]\ngrace_secs = 5\n")).unwrap();
        let reaper = config.tombstones.config().unwrap();
        assert_eq!(reaper.grace, std::time::Duration::from_secs(5));
        assert_eq!(reaper.keys_per_round, 256);
        for (line, limit) in [
            ("keys_per_round = 0", "keys_per_round"),
            ("keys_per_round = 257", "keys_per_round"),
            ("interval_ms = 1", "minimum"),
        ] {
            let err = load(&format!("{BASE}\n[tombstones]\n{line}\n")).unwrap_err();
            assert!(err.to_string().contains(limit), "{line}: {err}");
        }
    }

    #[test]
    fn front_ends_are_off_without_their_sections_and_round_trip_with_them() {
        let config = load(BASE).unwrap();
        assert_eq!(config.resp, FrontendConfig::default());
        assert!(!config.to_toml().contains("[resp]"));
        let config = load(&format!(
            "{BASE}\n[resp]\nlisten = \"127.0.0.1:0\"\nplaintext_listen = \"127.0.0.1:6379\"\n\
             [http]\nlisten = \"0.0.0.0:8080\"\n[metrics]\nplaintext_listen = \"[::1]:9100\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.resp.plaintext_listen,
            Some("127.0.0.1:6379".parse().unwrap())
        );
        assert_eq!(config.http.listen, Some("0.0.0.0:8080".parse().unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), config);
    }

    #[test]
    fn a_plaintext_listener_off_loopback_is_refused() {
        let err = load(&format!(
            "{BASE}\n[http]\nplaintext_listen = \"0.0.0.0:8080\"\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("http.plaintext_listen 0.0.0.0:8080 is not a loopback"),
            "{err}"
        );
    }

    #[test]
    fn initial_members_take_names_and_zones_and_refuse_bad_entries_by_name() {
        let config = load(&format!(
            "{BASE}\n[cluster]\ninitial_members = [\"n1\", \"n2@rack-b\", \"n3\"]\n"
        ))
        .unwrap();
        let members = config.cluster().initial_members().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].name, "n2");
        assert_eq!(members[1].zone.as_deref(), Some("rack-b"));
        for (list, why) in [
            ("[\"n1\", \"n1\"]", "twice"),
            ("[\"\"]", "a name must be"),
            ("[\"bad name\"]", "a name must be"),
            ("[\"n1@\"]", "the zone must be"),
        ] {
            let err = load(&format!("{BASE}\n[cluster]\ninitial_members = {list}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{list}: {err}");
        }
        // What is written reads back the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), config);
    }

    #[test]
    fn the_full_fuzz_seed_is_a_valid_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/node_toml/seed-full");
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.cluster().initial_members().unwrap().len(), 3);
    }
}
