//! The cleanup machine alone, over an in-memory store and a virtual clock: what a sweep drops,
//! in pages, when it runs again, and how a layout change stops it.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::cleanup::{Action, Cleanup, CleanupConfig, SweepReport};
use cairn_core::store::{Batch, MemoryStore, Store};
use cairn_core::transfer::unreplicated_page;
use cairn_core::version::Object;
use cairn_layout::{Change, Layout, LayoutVersion};
use cairn_proto::NodeId;
use cairn_ring::{Member, RingConfig};

const CONFIG: RingConfig = RingConfig {
    partitions: 16,
    replicas: 3,
};
const RETRY: Duration = Duration::from_secs(3);
const PAGE: usize = 2;

fn id(i: u64) -> NodeId {
    NodeId::from_name(&format!("node{i}"))
}

/// Four members, N = 3: node1 replicates some partitions and not the others.
fn layout(members: u64) -> Arc<Layout> {
    let members: Vec<(Member, String)> = (1..=members)
        .map(|i| (Member::new(id(i)), format!("node{i}")))
        .collect();
    Arc::new(Layout::new(
        LayoutVersion::initial(CONFIG, &members).unwrap(),
    ))
}

/// node1's store: `keys` keys spread over every partition.
fn store(keys: usize) -> MemoryStore {
    let store = MemoryStore::new();
    let object = Object::new().encode();
    store
        .commit(&Batch {
            puts: (0..keys)
                .map(|i| (format!("k{i:03}").into_bytes(), object.clone()))
                .collect(),
            ..Batch::default()
        })
        .unwrap();
    store
}

fn unreplicated(store: &MemoryStore, layout: &Layout) -> Vec<Vec<u8>> {
    unreplicated_page(store, CONFIG, layout, id(1), None, usize::MAX)
        .unwrap()
        .0
        .into_iter()
        .map(|e| e.key)
        .collect()
}

struct World {
    cleanup: Cleanup,
    store: MemoryStore,
    now: Instant,
    /// Keys whose compare-and-delete keeps the copy (changed or hinted).
    keep: Vec<Vec<u8>>,
    /// Drops handed out and not yet answered.
    drops: Vec<Vec<u8>>,
    dropped: Vec<Vec<u8>>,
    scans: usize,
    /// Most drops handed out at once.
    max_drops: usize,
}

impl World {
    fn new(keys: usize) -> World {
        World {
            cleanup: Cleanup::new(CleanupConfig {
                page_max: PAGE,
                retry_interval: RETRY,
            }),
            store: store(keys),
            now: Instant::now(),
            keep: Vec::new(),
            drops: Vec::new(),
            dropped: Vec::new(),
            scans: 0,
            max_drops: 0,
        }
    }

    /// Hands out every action, then answers the drops; until nothing is asked.
    fn run(&mut self) -> Option<SweepReport> {
        let mut report = None;
        loop {
            while let Some(action) = self.cleanup.poll_action(self.now) {
                match action {
                    Action::Scan {
                        layout,
                        after,
                        keys_max,
                    } => {
                        self.scans += 1;
                        let page = unreplicated_page(
                            &self.store,
                            CONFIG,
                            &layout,
                            id(1),
                            after.as_deref(),
                            keys_max,
                        )
                        .map_err(|e| e.to_string());
                        self.cleanup.handle_page(self.now, page);
                    }
                    Action::Drop { key, .. } => self.drops.push(key),
                }
            }
            self.max_drops = self.max_drops.max(self.drops.len());
            if self.drops.is_empty() {
                return report.or_else(|| self.cleanup.poll_report());
            }
            for key in std::mem::take(&mut self.drops) {
                let removed = !self.keep.contains(&key);
                if removed {
                    self.store
                        .commit(&Batch {
                            removes: vec![key.clone()],
                            ..Batch::default()
                        })
                        .unwrap();
                    self.dropped.push(key.clone());
                }
                self.cleanup.handle_dropped(self.now, &key, Ok(removed));
            }
            if let Some(r) = self.cleanup.poll_report() {
                report = Some(r);
            }
        }
    }
}

#[test]
fn a_sweep_drops_exactly_the_unreplicated_keys_a_page_at_a_time() {
    let mut w = World::new(40);
    let layout = layout(4);
    let expected = unreplicated(&w.store, &layout);
    assert!(expected.len() > 2 * PAGE, "the test needs several pages");
    assert_eq!(
        w.cleanup.poll_action(w.now),
        None,
        "nothing without a layout"
    );
    w.cleanup.handle_layout(w.now, Some(layout.clone()));
    let report = w.run().expect("the sweep ended");
    assert_eq!(
        report,
        SweepReport {
            dropped: expected.len() as u64,
            kept: 0,
            interrupted: false
        }
    );
    assert_eq!(w.dropped, expected);
    assert_eq!(w.max_drops, PAGE, "a page's drops go out together");
    assert_eq!(
        w.scans,
        expected.len().div_ceil(PAGE),
        "a page knows when it is the last"
    );
    assert!(unreplicated(&w.store, &layout).is_empty());
    // Nothing kept: no retry, and the same layout again starts nothing.
    assert_eq!(w.cleanup.poll_timeout(), None);
    w.cleanup.handle_layout(w.now, Some(layout));
    assert_eq!(w.cleanup.poll_action(w.now + RETRY * 10), None);
}

#[test]
fn a_kept_key_makes_the_sweep_run_again_after_the_retry_interval() {
    let mut w = World::new(40);
    let layout = layout(4);
    let expected = unreplicated(&w.store, &layout);
    w.keep = vec![expected[1].clone()];
    w.cleanup.handle_layout(w.now, Some(layout.clone()));
    let report = w.run().unwrap();
    assert_eq!(
        (report.dropped, report.kept),
        (expected.len() as u64 - 1, 1)
    );
    let due = w.now + RETRY;
    assert_eq!(w.cleanup.poll_timeout(), Some(due));
    assert_eq!(w.cleanup.poll_action(due - Duration::from_millis(1)), None);
    // The key changes back (no longer kept): the retry drops it.
    w.keep.clear();
    w.now = due;
    let report = w.run().unwrap();
    assert_eq!((report.dropped, report.kept), (1, 0));
    assert!(unreplicated(&w.store, &layout).is_empty());
    assert_eq!(w.cleanup.poll_timeout(), None);
}

#[test]
fn a_layout_change_stops_the_sweep_and_starts_one_under_the_new_layout() {
    let mut w = World::new(40);
    let old = layout(4);
    w.cleanup.handle_layout(w.now, Some(old.clone()));
    let Some(Action::Scan { after: None, .. }) = w.cleanup.poll_action(w.now) else {
        panic!("a sweep starts with a scan from the start");
    };
    let page = unreplicated_page(&w.store, CONFIG, &old, id(1), None, PAGE).unwrap();
    w.cleanup.handle_page(w.now, Ok(page));
    let Some(Action::Drop { key: in_flight, .. }) = w.cleanup.poll_action(w.now) else {
        panic!("the page's drops");
    };
    // node5 joins: the old sweep ends, interrupted; its late answer changes nothing.
    let mut newer = (*old).clone();
    let plan = newer
        .plan(&Change::Join {
            node: id(5),
            name: "node5".into(),
            zone: None,
        })
        .unwrap();
    newer.apply(plan).unwrap();
    let newer = Arc::new(newer);
    w.cleanup.handle_layout(w.now, Some(newer.clone()));
    assert_eq!(
        w.cleanup.poll_report(),
        Some(SweepReport {
            dropped: 0,
            kept: 0,
            interrupted: true
        })
    );
    w.cleanup.handle_dropped(w.now, &in_flight, Ok(true));
    match w.cleanup.poll_action(w.now) {
        Some(Action::Scan {
            layout,
            after: None,
            ..
        }) => assert!(Arc::ptr_eq(&layout, &newer)),
        other => panic!("a new sweep from the start, got {other:?}"),
    }
}

#[test]
fn a_failed_read_and_a_corrupt_object_are_kept_and_retried() {
    let mut w = World::new(40);
    let layout = layout(4);
    w.cleanup.handle_layout(w.now, Some(layout.clone()));
    assert!(matches!(
        w.cleanup.poll_action(w.now),
        Some(Action::Scan { .. })
    ));
    w.cleanup.handle_page(w.now, Err("disk on fire".into()));
    assert_eq!(
        w.cleanup.poll_report(),
        Some(SweepReport {
            dropped: 0,
            kept: 1,
            interrupted: false
        })
    );
    assert_eq!(w.cleanup.poll_timeout(), Some(w.now + RETRY));
    // A corrupt copy is never dropped: kept for an operator to see.
    let corrupt = unreplicated(&w.store, &layout)[0].clone();
    w.store
        .commit(&Batch {
            puts: vec![(corrupt.clone(), vec![0xff; 3])],
            ..Batch::default()
        })
        .unwrap();
    w.now += RETRY;
    let report = w.run().unwrap();
    assert_eq!(report.kept, 1);
    assert_eq!(unreplicated(&w.store, &layout), vec![corrupt]);
    let by_key: BTreeMap<_, _> = w.dropped.iter().map(|k| (k.clone(), ())).collect();
    assert_eq!(by_key.len(), w.dropped.len(), "each key dropped once");
}
