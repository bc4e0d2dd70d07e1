//! Benchmark: how long a restart's rebuild of one 1M-key partition tree takes, and its memory.
//!
//! Timing, so a benchmark rather than a test:
//! `cargo run --release -p cairn-antientropy --example rebuild`.

use std::time::Instant;

use cairn_antientropy::{KeyHash, MerkleTree, ObjectHash};

const KEYS: u64 = 1_000_000;

fn main() {
    let entries: Vec<(KeyHash, ObjectHash)> = (0..KEYS)
        .map(|i| {
            (
                KeyHash::of_key(&i.to_le_bytes()),
                ObjectHash::of_encoded(&i.to_be_bytes()),
            )
        })
        .collect();
    let rss_before = rss_kib();
    let started = Instant::now();
    let tree = MerkleTree::from_entries(entries.iter().copied());
    let rebuilt = started.elapsed();
    let rss_after = rss_kib();
    let started = Instant::now();
    let mut incremental = MerkleTree::new();
    for (k, o) in &entries {
        incremental.insert(*k, *o);
    }
    let inserted = started.elapsed();
    let rss_incremental = rss_kib();
    assert_eq!(tree.root(), incremental.root());
    println!("from_entries, {KEYS} keys: {rebuilt:.2?}");
    println!(
        "insert one by one, {KEYS} keys: {inserted:.2?} ({:.0} ns per insert)",
        inserted.as_nanos() as f64 / KEYS as f64
    );
    if let (Some(before), Some(after), Some(incr)) = (rss_before, rss_after, rss_incremental) {
        println!(
            "resident memory: +{:.0} bytes/key after from_entries, +{:.0} bytes/key for the \
             incrementally built copy",
            (after - before) as f64 * 1024.0 / KEYS as f64,
            (incr - after) as f64 * 1024.0 / KEYS as f64
        );
    }
}

/// Resident set size from /proc, where there is one.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
