//! What an exchange costs, counted in bytes and trips rather than timed: with 100 differing keys,
//! a replica of 1,000,000 keys must cost at most twice the bytes of one of 10,000 keys. (The
//! rebuild timing is a benchmark: `examples/rebuild.rs`.)
//!
//! The 1M-key case builds two trees, about 3 seconds in a debug build, so it runs every time.
//! Print the numbers with `cargo test -p cairn-antientropy --release --test cost -- --nocapture`.

mod common;

use std::time::Instant;

use cairn_antientropy::limits::DEPTH;
use cairn_antientropy::MerkleTree;
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
