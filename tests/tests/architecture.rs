//! Architecture invariants from ARCHITECTURE.md, checked mechanically.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Crates that must stay free of I/O: they may not depend, even transitively, on these.
const PURE_CRATES: &[&str] = &[
    "cairn-core",
    "cairn-proto",
    "cairn-ring",
    "cairn-layout",
    "cairn-gossip",
    "cairn-antientropy",
];
const IO_CRATES: &[&str] = &[
    "tokio",
    "quinn",
    "quinn-proto",
    "redb",
    "rustls",
    "mio",
    "socket2",
];

/// The workspace's resolved dependency graph, from `cargo metadata`: package names by id, and
/// each package's *normal* dependencies (dev- and build-dependencies never ship in the crate).
struct Graph {
    names: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1"])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let id = p["id"].as_str().unwrap().to_owned();
                (id, p["name"].as_str().unwrap().to_owned())
            })
            .collect();
        let deps = meta["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let deps = n["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| {
                        d["dep_kinds"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|k| k["kind"].is_null())
                    })
                    .map(|d| d["pkg"].as_str().unwrap().to_owned())
                    .collect();
                (n["id"].as_str().unwrap().to_owned(), deps)
            })
            .collect();
        Graph { names, deps }
    }

    fn id(&self, krate: &str) -> &str {
        self.names
            .iter()
            .find(|(_, n)| *n == krate)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("{krate} not in workspace"))
    }

    /// The names of `krate`'s direct normal dependencies.
    fn direct(&self, krate: &str) -> BTreeSet<&str> {
        self.deps[self.id(krate)]
            .iter()
            .map(|id| self.names[id].as_str())
            .collect()
    }

    /// The first I/O crate `krate` reaches through normal dependencies, with the path to it.
    fn reaches_io(&self, krate: &str) -> Option<Vec<&str>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![vec![self.id(krate)]];
        while let Some(path) = stack.pop() {
            let id = *path.last().unwrap();
            if !seen.insert(id) {
                continue;
            }
            if IO_CRATES.contains(&self.names[id].as_str()) {
                return Some(path.iter().map(|id| self.names[*id].as_str()).collect());
            }
            for dep in &self.deps[id] {
                let mut next = path.clone();
                next.push(dep.as_str());
                stack.push(next);
            }
        }
        None
    }
}

#[test]
fn pure_crates_and_the_simulator_never_depend_on_io_crates() {
    let graph = Graph::load();
    for krate in PURE_CRATES.iter().chain(&["cairn-sim"]) {
        if let Some(path) = graph.reaches_io(krate) {
            panic!(
                "architecture invariant broken: {krate} depends on {} ({})",
                path.last().unwrap(),
                path.join(" -> ")
            );
        }
    }
}

#[test]
fn the_node_and_the_simulator_drive_the_same_core() {
    let graph = Graph::load();
    for driver in ["cairn-node", "cairn-sim"] {
        assert!(
            graph.direct(driver).contains("cairn-core"),
            "architecture invariant broken: {driver} does not depend on cairn-core"
        );
    }
    // Only one cairn-core in the graph: both resolve to the workspace's.
    let cores = graph.names.values().filter(|n| *n == "cairn-core").count();
    assert_eq!(cores, 1, "more than one cairn-core package in the graph");
}

#[test]
fn the_simulated_client_waits_as_long_as_the_real_one() {
    assert_eq!(
        cairn_sim::CLIENT_TIMEOUT,
        cairn_client::REQUEST_TIMEOUT_DEFAULT,
        "cairn-sim's CLIENT_TIMEOUT must follow the client library's default"
    );
}

/// What the pure core may not call from std (Cargo cannot see std): its clippy configuration
/// forbids these, and `cargo clippy -D warnings` (CI) enforces it. This test keeps the
/// configuration from being dropped or weakened unnoticed.
const CORE_FORBIDS: &[&str] = &[
    "std::time::Instant::now",
    "std::time::SystemTime::now",
    "std::thread::spawn",
    "std::fs::File",
    "std::net::UdpSocket",
];

#[test]
fn the_pure_core_is_linted_against_clocks_threads_files_and_sockets() {
    let path = workspace_root().join("core/clippy.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    for forbidden in CORE_FORBIDS {
        let entry = format!("path = \"{forbidden}\"");
        assert!(
            text.contains(&entry),
            "architecture invariant broken: core/clippy.toml no longer forbids {forbidden}"
        );
    }
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let mut missing = Vec::new();
    let mut stack = vec![workspace_root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "cairn-dev" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.starts_with("//!") {
                    missing.push(path);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}
