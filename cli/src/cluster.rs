//! The layout of a cluster directory: `cairn dev` writes it, the client commands read it.
//!
//! ```text
//! DIR/ca.pem, DIR/ca.key                  the cluster CA
//! DIR/client/client.pem, client.key       the data client identity (get, put, delete, ...)
//! DIR/admin/admin.pem, admin.key          the admin identity (layout changes)
//! DIR/nodeK/node.toml                     node K's config (paths relative to DIR/nodeK)
//! DIR/nodeK/node.pem, node.key, data/     its certificate and data
//! DIR/nodeK/pid, node.log                 while `cairn dev` runs it
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cairn_node::NodeConfig;

use crate::limits::NODES_MAX;

/// The cluster directory used when none is given.
pub const DEFAULT_DIR: &str = "./cairn-dev";
/// The config file name inside a node's directory.
pub const NODE_CONFIG: &str = "node.toml";

pub use crate::cert::ca_cert_path as ca_cert;

/// The directory holding the client identity.
pub fn client_dir(dir: &Path) -> PathBuf {
    dir.join("client")
}

/// The client certificate.
pub fn client_cert(dir: &Path) -> PathBuf {
    client_dir(dir).join("client.pem")
}

/// The client key.
pub fn client_key(dir: &Path) -> PathBuf {
    client_dir(dir).join("client.key")
}

/// The directory holding the admin identity, which membership commands use by default.
pub fn admin_dir(dir: &Path) -> PathBuf {
    dir.join("admin")
}

/// The admin certificate.
pub fn admin_cert(dir: &Path) -> PathBuf {
    admin_dir(dir).join("admin.pem")
}

/// The admin key.
pub fn admin_key(dir: &Path) -> PathBuf {
    admin_dir(dir).join("admin.key")
}

/// The name of the `k`-th node (1-based).
pub fn node_name(k: usize) -> String {
    format!("node{k}")
}

/// Node `name`'s config file.
pub fn node_config(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join(NODE_CONFIG)
}

/// A node of a cluster directory, as its config describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Its name.
    pub name: String,
    /// Where a client on this machine reaches it.
    pub addr: SocketAddr,
}

/// The address a client dials for a node listening on `listen`: a wildcard listen address is
/// reached on loopback.
pub fn dial_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// Reads node `name` of the cluster in `dir`.
pub fn node(dir: &Path, name: &str) -> anyhow::Result<NodeEntry> {
    let path = node_config(dir, name);
    if !path.exists() {
        bail!(
            "no node {name:?} in cluster directory {} (no {}); give --node an existing node name or an address like 127.0.0.1:7001",
            dir.display(),
            path.display()
        );
    }
    let config = NodeConfig::load(&path)?;
    Ok(NodeEntry {
        name: config.name,
        addr: dial_addr(config.listen),
    })
}

/// Every node of the cluster in `dir`, `node1` first: the subdirectories holding a `node.toml`,
/// ordered by their trailing number, then by name.
pub fn nodes(dir: &Path) -> anyhow::Result<Vec<NodeEntry>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read cluster directory {} (start a cluster with `cairn dev`, or pass --cluster DIR or --node ADDR)",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if entry.path().join(NODE_CONFIG).is_file() {
            names.push(name);
        }
    }
    if names.is_empty() {
        bail!(
            "no nodes in cluster directory {} (no */{NODE_CONFIG}); start a cluster with `cairn dev`",
            dir.display()
        );
    }
    if names.len() > NODES_MAX {
        bail!(
            "cluster directory {} holds {} nodes, over NODES_MAX ({NODES_MAX})",
            dir.display(),
            names.len()
        );
    }
    sort_node_names(&mut names);
    names.iter().map(|name| node(dir, name)).collect()
}

/// Orders `node2` before `node10`.
pub fn sort_node_names(names: &mut [String]) {
    names.sort_by(|a, b| name_order(a).cmp(&name_order(b)));
}

/// The sort key of a node name: its stem, then its number, so node2 comes before node10.
pub fn name_order(name: &str) -> (&str, u64, &str) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, number) = name.split_at(name.len() - digits);
    (stem, number.parse().unwrap_or(0), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sort_by_number() {
        let mut names: Vec<String> = ["node10", "node2", "node1", "alpha"]
            .map(String::from)
            .to_vec();
        sort_node_names(&mut names);
        assert_eq!(names, ["alpha", "node1", "node2", "node10"]);
    }

    #[test]
    fn wildcard_addresses_are_dialled_on_loopback() {
        let check = |listen: &str, dial: &str| {
            assert_eq!(
                dial_addr(listen.parse().unwrap()),
                dial.parse::<SocketAddr>().unwrap()
            )
        };
        check("0.0.0.0:7001", "127.0.0.1:7001");
        check("[::]:7001", "[::1]:7001");
        check("10.1.2.3:7001", "10.1.2.3:7001");
    }
}
