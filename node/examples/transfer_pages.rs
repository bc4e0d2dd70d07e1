//! Benchmark: what reading one partition's transfer pages costs a node's redb store, three ways
//! on one binary: `transfer::read_page` as it is (the partition's own keys through the
//! key-hash index, `Store::scan_partition`); as it was before (each page a scan of the objects
//! in key order from the cursor on, skipping other partitions' keys, so each partition walks
//! the whole store); and as it was before issue 11 (every page walked the store from its first
//! key and skipped the keys up to the cursor).
//!
//! Timing, so a benchmark rather than a test:
//! `cargo run --release -p cairn-node --example transfer_pages -- [KEYS] [VALUE_BYTES] [PARTITIONS]`
//! (defaults 200,000 keys of 1,024 bytes, Q = 64; pages of the default transfer batch).

use std::time::{Duration, Instant};

use cairn_core::store::StoreError;
use cairn_core::transfer::{read_page, Page, TransferConfig, TransferEntry};
use cairn_node::store::{Batch, RedbStore, Store};
use cairn_ring::{PartitionId, RingConfig};

/// Objects per commit while the data set is written (not measured).
const LOAD_BATCH: usize = 10_000;
/// Partitions whose pages are read with each scan; the figures are their mean.
const PARTITIONS_READ: u32 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let value_bytes: usize = args.next().map_or(Ok(1024), |a| a.parse())?;
    let partitions: u32 = args.next().map_or(Ok(64), |a| a.parse())?;
    let config = RingConfig {
        partitions,
        replicas: 3,
    };
    let batch = TransferConfig::default();
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path())?;
    let started = Instant::now();
    let value = vec![0xa5u8; value_bytes];
    for chunk in (0..keys).collect::<Vec<_>>().chunks(LOAD_BATCH) {
        let puts = chunk
            .iter()
            .map(|&i| (format!("bench:{i}").into_bytes(), value.clone()))
            .collect();
        store.commit(&Batch {
            puts,
            ..Batch::default()
        })?;
    }
    println!(
        "loaded {keys} keys of {value_bytes} bytes in {:.1?}; Q = {partitions}, pages of at most \
         {} keys or {} bytes",
        started.elapsed(),
        batch.batch_keys,
        batch.batch_bytes
    );
    type ReadPage = fn(&dyn Store, RingConfig, PartitionId, Option<&[u8]>, usize, u64) -> Page;
    let ranged: ReadPage = |s, c, p, a, k, b| read_page(s, c, p, a, k, b).expect("read page");
    let key_order: ReadPage =
        |s, c, p, a, k, b| read_page_in_key_order(s, c, p, a, k, b, false).expect("read page");
    let from_start: ReadPage =
        |s, c, p, a, k, b| read_page_in_key_order(s, c, p, a, k, b, true).expect("read page");
    // The old reads first, so the new one does not run on pages the old ones left cold.
    for (name, read) in [
        ("from the first key", from_start),
        ("key order", key_order),
        ("partition index", ranged),
    ] {
        let mut total = Duration::ZERO;
        let mut pages = 0;
        let mut entries = 0;
        for partition in 0..PARTITIONS_READ.min(partitions) {
            let started = Instant::now();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = read(
                    &store,
                    config,
                    partition,
                    after.as_deref(),
                    batch.batch_keys,
                    batch.batch_bytes,
                );
                pages += 1;
                entries += page.entries.len();
                after = page.entries.last().map(|e| e.key.clone());
                if page.last {
                    break;
                }
            }
            total += started.elapsed();
        }
        let n = PARTITIONS_READ.min(partitions);
        println!(
            "{name:>18}: {:.1?} per partition ({} pages, {} keys per partition)",
            total / n,
            pages / n as usize,
            entries / n as usize
        );
    }
    Ok(())
}

/// `transfer::read_page` as it was: a scan of the objects in key order from the cursor on that
/// skips other partitions' keys; with `from_start`, as it was before issue 11, from the store's
/// first key, skipping the keys up to the cursor too (the k-th page walks k pages' share of the
/// store first).
fn read_page_in_key_order(
    store: &dyn Store,
    config: RingConfig,
    partition: PartitionId,
    after: Option<&[u8]>,
    keys_max: usize,
    bytes_max: u64,
    from_start: bool,
) -> Result<Page, StoreError> {
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    let mut more = false;
    let scan_after = if from_start { None } else { after };
    store.scan_objects(scan_after, &mut |key, object| {
        if after.is_some_and(|a| key <= a) || config.partition_of(key) != partition {
            return true;
        }
        if entries.len() >= keys_max || bytes >= bytes_max {
            more = true;
            return false;
        }
        bytes += (key.len() + object.len()) as u64;
        entries.push(TransferEntry {
            key: key.to_vec(),
            object: object.to_vec(),
        });
        true
    })?;
    Ok(Page {
        entries,
        last: !more,
    })
}
