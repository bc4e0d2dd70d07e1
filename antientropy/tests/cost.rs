//! What an exchange costs, counted in bytes and trips rather than timed: with 100 differing keys,
//! a replica of 1,000,000 keys must cost at most twice the bytes of one of 10,000 keys. Also the
//! (ignored, run in release) measurement of a 1M-key rebuild.
//!
//! The 1M-key case builds two trees, about 3 seconds in a debug build, so it runs every time.
//! Print the numbers with `cargo test -p cairn-antientropy --release --test cost -- --nocapture`.

mod common;

use std::time::Instant;

use cairn_antientropy::limits::DEPTH;
use cairn_antientropy::{KeyHash, MerkleTree, ObjectHash};
use common::{exchange, key, object};

const DIFFERENCES: u64 = 100;
const SMALL: u64 = 10_000;
const LARGE: u64 = 1_000_000;

/// Two replicas of `keys` keys that differ in exactly `DIFFERENCES` keys: a third only on the
/// first, a third only on the second, a third with different objects.
fn replicas(keys: u64) -> (MerkleTree, MerkleTree) {
    let a = MerkleTree::from_entries((0..keys).map(|i| (key(i), object(i))));
    let mut b = a.clone();
    for d in 0..DIFFERENCES {
        // Spread over the key space, not clustered at the start.
        let i = d * (keys / DIFFERENCES);
        match d % 3 {
            0 => {
                b.remove(&key(i));
            }
            1 => {
                b.insert(key(keys + d), object(d));
            }
            _ => {
                b.insert(key(i), object(i + 1));
            }
        }
    }
    (a, b)
}

struct Cost {
    keys: u64,
    bytes: usize,
    messages: usize,
    flights: usize,
    round_trips: usize,
    per_flight: Vec<usize>,
}

fn measure(keys: u64) -> Cost {
    let started = Instant::now();
    let (a, b) = replicas(keys);
    let built = started.elapsed();
    let out = exchange(&a, &b);
    assert_eq!(
        out.a.len() as u64,
        DIFFERENCES,
        "{keys} keys: found {:?}",
        out.a
    );
    assert_eq!(out.b.len() as u64, DIFFERENCES);
    let cost = Cost {
        keys,
        bytes: out.bytes,
        messages: out.messages,
        flights: out.flights,
        round_trips: out.round_trips(),
        per_flight: out.per_flight,
    };
    println!(
        "{:>9} keys/replica, {DIFFERENCES} differences: {:>7} bytes in {} messages, {} one-way \
         trips ({} round trips), bytes per trip {:?}; trees built in {:.2?}",
        cost.keys,
        cost.bytes,
        cost.messages,
        cost.flights,
        cost.round_trips,
        cost.per_flight,
        built
    );
    cost
}

#[test]
fn bytes_follow_the_differences_not_the_keys() {
    let small = measure(SMALL);
    let large = measure(LARGE);
    for c in [&small, &large] {
        assert!(c.flights <= DEPTH + 3);
    }
    assert!(
        large.bytes <= 2 * small.bytes,
        "{} keys cost {} bytes, more than twice the {} bytes of {} keys",
        large.keys,
        large.bytes,
        small.bytes,
        small.keys
    );
    println!(
        "ratio {}k/{}k keys: {:.3}",
        large.keys / 1000,
        small.keys / 1000,
        large.bytes as f64 / small.bytes as f64
    );
}

/// How long a restart's rebuild of one 1M-key partition takes. Timing, so not a regular test:
/// `cargo test -p cairn-antientropy --release --test cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement to report, run in release"]
fn rebuild_one_million_keys() {
    let entries: Vec<(KeyHash, ObjectHash)> = (0..LARGE).map(|i| (key(i), object(i))).collect();
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
    println!("from_entries, {LARGE} keys: {rebuilt:.2?}");
    println!(
        "insert one by one, {LARGE} keys: {inserted:.2?} ({:.0} ns per insert)",
        inserted.as_nanos() as f64 / LARGE as f64
    );
    if let (Some(before), Some(after), Some(incr)) = (rss_before, rss_after, rss_incremental) {
        println!(
            "resident memory: +{:.0} bytes/key after from_entries, +{:.0} bytes/key for the \
             incrementally built copy",
            (after - before) as f64 * 1024.0 / LARGE as f64,
            (incr - after) as f64 * 1024.0 / LARGE as f64
        );
    }
}

/// Resident set size from /proc, where there is one.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
