//! The durable step of the write path alone: `ROUNDS` group commits of `BATCH` fresh 1 KiB
//! objects into a `RedbStore` in a temporary directory, as the engine's writer makes them.
//! Prints the wall time per commit; run under `valgrind --tool=callgrind` for instruction counts.
//!
//! `cargo run --release -p cairn-node --example store_commit -- [ROUNDS] [BATCH] [VALUE_BYTES] [DIR] [PENDING_BYTES]`
//!
//! PENDING_BYTES replaces `PENDING_BYTES_MAX`, the logged objects the store keeps in memory
//! before it writes them to redb; 0 writes every commit to redb at once.

use std::time::Instant;

use cairn_node::store::{Batch, RedbStore, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(2_000, |a| a.parse().expect("ROUNDS"));
    let batch: usize = args.next().map_or(8, |a| a.parse().expect("BATCH"));
    let value_bytes: usize = args
        .next()
        .map_or(1024, |a| a.parse().expect("VALUE_BYTES"));
    // The directory matters: fdatasync costs what the file system under it costs.
    let parent = args
        .next()
        .filter(|a| !a.is_empty())
        .map(std::path::PathBuf::from);
    let dir = match &parent {
        Some(p) => tempfile::tempdir_in(p),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let mut store = RedbStore::open(dir.path()).expect("open store");
    if let Some(bytes) = args.next() {
        store = store.with_pending_bytes_max(bytes.parse().expect("PENDING_BYTES"));
    }
    let object = vec![0xa5u8; value_bytes];
    let start = Instant::now();
    for round in 0..rounds {
        let puts = (0..batch)
            .map(|i| {
                // Spread over the key space as uniform bench keys are.
                let n = (round * batch + i) as u64;
                let key = format!(
                    "bench:{}",
                    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_000
                );
                (key.into_bytes(), object.clone())
            })
            .collect();
        store
            .commit(&Batch {
                puts,
                ..Batch::default()
            })
            .expect("commit");
    }
    let elapsed = start.elapsed();
    println!(
        "{rounds} commits of {batch} x {value_bytes} B: {:.1} us per commit, {:.0} objects/s",
        elapsed.as_secs_f64() * 1e6 / rounds as f64,
        (rounds * batch) as f64 / elapsed.as_secs_f64()
    );
    drop(store);
}
