//! Benchmark: how long a node's start-up rebuild of its Merkle trees takes for 1M keys in a real
//! redb file, and what recording a commit in the trees costs the writer thread.
//!
//! Timing, so a benchmark rather than a test:
//! `cargo run --release -p cairn-node --example rebuild_trees` (optionally `-- KEYS PARTITIONS`;
//! the defaults are 1,000,000 keys and Q = 64, the default ring).

use std::sync::Arc;
use std::time::Instant;

use cairn_node::store::{Batch, RedbStore, Store};
use cairn_node::trees::Trees;
use cairn_node::version::{Dot, Object, Payload, VClock};
use cairn_proto::{ActorId, NodeId};

/// Objects per commit while the data set is written (not measured).
const LOAD_BATCH: usize = 20_000;

/// First argument of the child process that measures the rebuild in a fresh address space (so
/// memory freed by the load phase does not hide the trees' own).
const CHILD: &str = "--rebuild-in";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some(CHILD) {
        args.next();
        let dir = std::path::PathBuf::from(args.next().ok_or("a directory")?);
        let keys: usize = args.next().ok_or("keys")?.parse()?;
        let partitions: u32 = args.next().ok_or("partitions")?.parse()?;
        return rebuild(&dir, keys, partitions);
    }
    let keys: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let partitions: u32 = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let actor = ActorId {
        node: NodeId(1),
        epoch: 7,
    };

    let started = Instant::now();
    {
        let store = RedbStore::open(dir.path())?;
        for chunk in (0..keys).collect::<Vec<_>>().chunks(LOAD_BATCH) {
            let puts = chunk
                .iter()
                .map(|&i| (format!("user:{i:010}").into_bytes(), object_of(actor, i)))
                .collect();
            store.commit(&Batch {
                puts,
                ..Batch::default()
            })?;
        }
    }
    let file = std::fs::metadata(dir.path().join("cairn.redb"))?.len();
    println!(
        "loaded {keys} objects in {:.1?} ({:.0} MB file)",
        started.elapsed(),
        file as f64 / 1e6
    );

    let status = std::process::Command::new(std::env::current_exe()?)
        .arg(CHILD)
        .arg(dir.path())
        .arg(keys.to_string())
        .arg(partitions.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("the rebuild process failed: {status}").into());
    }
    Ok(())
}

/// What a restart does: open the file, then scan it and build every tree; then what the writer
/// pays per commit.
fn rebuild(
    dir: &std::path::Path,
    keys: usize,
    partitions: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let actor = ActorId {
        node: NodeId(1),
        epoch: 7,
    };
    let started = Instant::now();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir)?);
    let opened = started.elapsed();
    let rss_before = rss_kib();
    let trees = Trees::new(partitions);
    let started = Instant::now();
    let report = trees.rebuild(&*store)?;
    let rebuilt = started.elapsed();
    let rss_after = rss_kib();
    assert_eq!(report.objects as usize, keys);
    assert_eq!(trees.keys() as usize, keys);
    println!("open: {opened:.2?}");
    println!(
        "rebuild of {keys} keys in {partitions} trees: {rebuilt:.2?} ({:.2} µs per key)",
        rebuilt.as_secs_f64() * 1e6 / keys as f64
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        // An upper bound on the trees: it includes the scan's temporary vectors, freed but
        // mostly kept by the allocator.
        println!(
            "resident memory: +{:.0} MB across the rebuild ({:.0} bytes per key)",
            after.saturating_sub(before) as f64 / 1024.0,
            after.saturating_sub(before) as f64 * 1024.0 / keys as f64,
        );
    }

    // What the writer thread pays per committed object: two blake3 calls and a tree update.
    let updates: Vec<(Vec<u8>, Vec<u8>)> = (0..keys.min(200_000))
        .map(|i| {
            (
                format!("user:{i:010}").into_bytes(),
                object_of(actor, i + keys),
            )
        })
        .collect();
    let started = Instant::now();
    // In writer batches (`WRITE_BATCH_MAX`).
    for chunk in updates.chunks(512) {
        trees.record(chunk.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    }
    let recorded = started.elapsed();
    println!(
        "recording {} committed updates: {recorded:.2?} ({:.2} µs per object)",
        updates.len(),
        recorded.as_secs_f64() * 1e6 / updates.len() as f64
    );
    Ok(())
}

/// One live value of 100 bytes, as a small real object (keys are 15 bytes).
fn object_of(actor: ActorId, i: usize) -> Vec<u8> {
    Object::new()
        .update(
            &VClock::new(),
            Dot::new(actor, i as u64 + 1),
            Payload::Value(format!("{i:0100}").into_bytes()),
        )
        .expect("a small object")
        .encode()
}

/// Resident set size from /proc, where there is one.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
