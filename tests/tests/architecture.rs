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

#[test]
fn pure_crates_never_depend_on_io_crates() {
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
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                // Only normal dependencies count: dev-dependencies never ship in the crate.
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    for krate in PURE_CRATES {
        let root = names
            .iter()
            .find(|(_, n)| *n == krate)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("{krate} not in workspace"));
        let mut seen = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let name = names[id];
            assert!(
                !IO_CRATES.contains(&name),
                "architecture invariant broken: {krate} depends on {name}"
            );
            stack.extend(nodes[id].iter().copied());
        }
    }
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
