//! The transfer machine alone, driven by a small in-memory world: a store of partitions, target
//! nodes that receive (or fail) batches, and a virtual clock.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cairn_core::limits::{TRANSFER_ATTEMPTS_MAX, TRANSFER_RETRY_BASE, TRANSFER_RETRY_MAX};
use std::sync::Mutex;

use cairn_antientropy::KeyHash;
use cairn_core::store::{Batch, Hint, MemoryStore, NodeMeta, Store, StoreError};
use cairn_core::transfer::{
    read_page, Action, Page, TransferConfig, TransferEntry, TransferMachine,
};
use cairn_layout::Transfer;
use cairn_proto::NodeId;
use cairn_ring::{PartitionId, RingConfig};

type Keys = BTreeMap<Vec<u8>, Vec<u8>>;

struct World {
    m: TransferMachine,
    start: Instant,
    now: Instant,
    store: BTreeMap<PartitionId, Keys>,
    received: BTreeMap<NodeId, Keys>,
    /// Decides whether a send to a node fails, given how many sends it has had so far.
    fail: Box<dyn FnMut(NodeId, u32) -> bool>,
    sends_to: BTreeMap<NodeId, u32>,
    /// Send times per node, to check backoff.
    send_times: BTreeMap<NodeId, Vec<Instant>>,
    events: Vec<Action>,
    /// Most partitions with a read or send outstanding at once.
    max_busy: usize,
}

fn n(i: u64) -> NodeId {
    NodeId(i)
}

fn store(partitions: u32, keys_each: usize, value_bytes: usize) -> BTreeMap<PartitionId, Keys> {
    (0..partitions)
        .map(|p| {
            let keys = (0..keys_each)
                .map(|k| {
                    (
                        format!("p{p}-k{k:04}").into_bytes(),
                        vec![p as u8; value_bytes],
                    )
                })
                .collect();
            (p, keys)
        })
        .collect()
}

fn plan(partitions: u32, to: &[u64]) -> Vec<Transfer> {
    (0..partitions)
        .map(|p| Transfer {
            partition: p,
            to: to.iter().map(|i| n(*i)).collect(),
        })
        .collect()
}

impl World {
    fn new(config: TransferConfig, store: BTreeMap<PartitionId, Keys>) -> World {
        let now = Instant::now();
        World {
            m: TransferMachine::new(now, config),
            start: now,
            now,
            store,
            received: BTreeMap::new(),
            fail: Box::new(|_, _| false),
            sends_to: BTreeMap::new(),
            send_times: BTreeMap::new(),
            events: Vec::new(),
            max_busy: 0,
        }
    }

    fn plan(&mut self, version: u64, transfers: Vec<Transfer>) {
        let sizes: BTreeMap<PartitionId, u64> = self
            .store
            .iter()
            .map(|(p, k)| (*p, k.len() as u64))
            .collect();
        self.m
            .handle_plan(self.now, version, transfers, &|p| sizes.get(&p).copied());
    }

    fn page(
        &self,
        p: PartitionId,
        after: &Option<Vec<u8>>,
        keys_max: usize,
        bytes_max: u64,
    ) -> Page {
        let keys = &self.store[&p];
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut rest = keys
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .peekable();
        for (k, v) in rest.by_ref() {
            bytes += (k.len() + v.len()) as u64;
            entries.push(TransferEntry {
                key: k.clone(),
                object: v.clone(),
            });
            if entries.len() >= keys_max || bytes >= bytes_max {
                break;
            }
        }
        Page {
            entries,
            last: rest.peek().is_none(),
        }
    }

    /// Polls every action due now, then answers them all; advances the clock when idle.
    fn step(&mut self) -> bool {
        let mut actions = Vec::new();
        while let Some(a) = self.m.poll_action(self.now) {
            actions.push(a);
        }
        let busy: BTreeSet<PartitionId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Scan { partition, .. } | Action::Send { partition, .. } => Some(*partition),
                _ => None,
            })
            .collect();
        self.max_busy = self.max_busy.max(busy.len());
        let mut answered = false;
        for a in actions {
            answered = true;
            match a {
                Action::Scan {
                    partition,
                    after,
                    keys_max,
                    bytes_max,
                } => {
                    let page = self.page(partition, &after, keys_max, bytes_max);
                    self.m.handle_page(self.now, partition, Ok(page));
                }
                Action::Send {
                    id, to, entries, ..
                } => {
                    let count = self.sends_to.entry(to).or_default();
                    *count += 1;
                    self.send_times.entry(to).or_default().push(self.now);
                    if (self.fail)(to, *count) {
                        self.m
                            .handle_sent(self.now, id, Err(format!("{to} unreachable")));
                    } else {
                        let got = self.received.entry(to).or_default();
                        for e in entries.iter() {
                            got.insert(e.key.clone(), e.object.clone());
                        }
                        self.m.handle_sent(self.now, id, Ok(()));
                    }
                }
                e => self.events.push(e),
            }
        }
        if answered {
            return true;
        }
        match self.m.poll_timeout() {
            Some(t) => {
                self.now = self.now.max(t);
                true
            }
            None => false,
        }
    }

    fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the transfer never settled");
    }

    fn all_pushed(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Action::AllPushed { version } => Some(*version),
                _ => None,
            })
            .collect()
    }

    fn partitions_pushed(&self) -> BTreeSet<PartitionId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Action::PartitionPushed(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn expect_every_key_at(&self, nodes: &[u64]) {
        let all: Keys = self
            .store
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for i in nodes {
            assert_eq!(self.received.get(&n(*i)), Some(&all), "node {i}");
        }
    }
}

fn config(batch_keys: usize, concurrent: usize) -> TransferConfig {
    TransferConfig {
        batch_keys,
        batch_bytes: 1 << 20,
        partitions_concurrent: concurrent,
        bytes_per_sec: 1 << 30,
    }
}

#[test]
fn every_key_reaches_every_new_replica_in_pages() {
    let mut w = World::new(config(7, 2), store(5, 30, 10));
    w.plan(3, plan(5, &[10, 11]));
    w.run();
    w.expect_every_key_at(&[10, 11]);
    assert_eq!(w.partitions_pushed(), (0..5).collect());
    assert_eq!(w.all_pushed(), vec![3]);
    assert!(w.m.is_done());
    // 30 keys in pages of 7: 5 pages per partition per target.
    assert_eq!(w.sends_to[&n(10)], 5 * 5);
    let status = w.m.status(w.now);
    assert_eq!(status.keys_moved, 2 * 5 * 30);
    assert_eq!(status.keys_left_estimate, Some(0));
    assert_eq!(status.partitions_pushed, 5);
}

#[test]
fn pages_stop_at_the_byte_budget() {
    let mut c = config(1000, 1);
    c.batch_bytes = 100;
    // Keys are 8 bytes, values 40: a page reaches 100 bytes at its third entry.
    let mut w = World::new(c, store(1, 9, 40));
    w.plan(2, plan(1, &[10]));
    w.run();
    w.expect_every_key_at(&[10]);
    assert_eq!(w.sends_to[&n(10)], 3);
}

#[test]
fn no_more_partitions_than_configured_are_busy_at_once() {
    for concurrent in [1, 3] {
        let mut w = World::new(config(4, concurrent), store(8, 10, 5));
        w.plan(2, plan(8, &[10]));
        w.run();
        w.expect_every_key_at(&[10]);
        assert_eq!(w.max_busy, concurrent);
    }
}

#[test]
fn the_byte_rate_is_kept() {
    let rate = 10_000;
    let c = TransferConfig {
        batch_keys: 10,
        batch_bytes: 1000,
        partitions_concurrent: 4,
        bytes_per_sec: rate,
    };
    // 4 partitions x 100 keys x (8 + 92) bytes = 40,000 bytes to one target.
    let mut w = World::new(c, store(4, 100, 92));
    w.plan(2, plan(4, &[10]));
    w.run();
    w.expect_every_key_at(&[10]);
    let took = w.now - w.start;
    // The bucket starts full (one second's worth) and the last batch (1,000 bytes) may go into
    // debt, so the rest takes (40,000 - 10,000 - 1,000) / rate.
    assert!(took >= Duration::from_millis(2_900), "{took:?}");
    assert!(took <= Duration::from_millis(3_200), "{took:?}");
    let status = w.m.status(w.now);
    assert_eq!(status.bytes_moved, 40_000);
    assert!(status.bytes_per_sec <= rate as f64 * 1.4, "{status:?}");
}

#[test]
fn failed_sends_are_retried_with_backoff_and_the_others_go_on() {
    let mut w = World::new(config(100, 1), store(1, 10, 5));
    // node 11 fails its first three sends.
    w.fail = Box::new(|to, count| to == n(11) && count <= 3);
    w.plan(2, plan(1, &[10, 11]));
    w.run();
    w.expect_every_key_at(&[10, 11]);
    assert_eq!(w.sends_to[&n(10)], 1, "a healthy target is not resent to");
    let times = &w.send_times[&n(11)];
    assert_eq!(times.len(), 4);
    let gaps: Vec<Duration> = times.windows(2).map(|t| t[1] - t[0]).collect();
    assert_eq!(
        gaps,
        vec![
            TRANSFER_RETRY_BASE,
            TRANSFER_RETRY_BASE * 2,
            TRANSFER_RETRY_BASE * 4
        ]
    );
    assert_eq!(w.all_pushed(), vec![2]);
}

#[test]
fn a_lost_target_stalls_the_transfer_visibly_until_it_returns() {
    let mut w = World::new(config(100, 2), store(1, 10, 5));
    let back_after = TRANSFER_ATTEMPTS_MAX + 3;
    w.fail = Box::new(move |to, count| to == n(11) && count <= back_after);
    w.plan(2, plan(1, &[10, 11]));
    // Run until the target has failed ATTEMPTS_MAX times.
    while w.sends_to.get(&n(11)).copied().unwrap_or(0) < TRANSFER_ATTEMPTS_MAX {
        assert!(w.step());
    }
    let status = w.m.status(w.now);
    assert!(w.all_pushed().is_empty());
    assert!(!status.stalled.is_empty(), "{status:?}");
    assert!(status
        .stalled
        .iter()
        .all(|s| s.target == Some(n(11)) && s.reason.contains("unreachable")));
    // Retries are spaced at most TRANSFER_RETRY_MAX apart, so the loop is bounded.
    w.run();
    let times = &w.send_times[&n(11)];
    assert!(times.windows(2).all(|t| t[1] - t[0] <= TRANSFER_RETRY_MAX));
    w.expect_every_key_at(&[10, 11]);
    assert!(w.m.status(w.now).stalled.is_empty());
    assert_eq!(w.all_pushed(), vec![2]);
}

#[test]
fn a_failed_page_read_is_retried() {
    let mut w = World::new(config(100, 1), store(1, 3, 5));
    w.plan(2, plan(1, &[10]));
    let Some(Action::Scan { partition, .. }) = w.m.poll_action(w.now) else {
        panic!("a read first");
    };
    w.m.handle_page(w.now, partition, Err("disk".into()));
    assert_eq!(w.m.poll_action(w.now), None);
    assert_eq!(w.m.poll_timeout(), Some(w.now + TRANSFER_RETRY_BASE));
    w.run();
    w.expect_every_key_at(&[10]);
}

#[test]
fn a_new_version_drops_the_old_work_and_its_answers() {
    let mut w = World::new(config(2, 1), store(2, 4, 5));
    w.plan(2, plan(2, &[10]));
    let Some(Action::Scan {
        partition,
        after,
        keys_max,
        bytes_max,
    }) = w.m.poll_action(w.now)
    else {
        panic!("a read first");
    };
    let page = w.page(partition, &after, keys_max, bytes_max);
    w.m.handle_page(w.now, partition, Ok(page));
    let Some(Action::Send { id, .. }) = w.m.poll_action(w.now) else {
        panic!("then a send");
    };
    // The same version again changes nothing.
    let sizes = |_| None;
    assert!(!w.m.handle_plan(w.now, 2, plan(2, &[10]), &sizes));
    // Version 3 sends to node 12 instead; the old send's answer is ignored.
    assert!(w.m.handle_plan(w.now, 3, plan(2, &[12]), &sizes));
    w.m.handle_sent(w.now, id, Ok(()));
    assert_eq!(w.m.status(w.now).keys_moved, 0);
    w.run();
    w.expect_every_key_at(&[12]);
    assert_eq!(w.all_pushed(), vec![3]);
}

#[test]
fn nothing_to_push_is_pushed_at_once() {
    let mut w = World::new(config(2, 1), store(2, 0, 5));
    w.plan(4, Vec::new());
    w.run();
    assert_eq!(w.all_pushed(), vec![4]);
    // Empty partitions, and a partition with no target, are pushed without a send.
    let mut w = World::new(config(2, 1), store(2, 0, 5));
    let mut p = plan(2, &[10]);
    p[1].to.clear();
    w.plan(5, p);
    w.run();
    assert_eq!(w.partitions_pushed(), [0, 1].into());
    assert_eq!(w.all_pushed(), vec![5]);
    assert!(w.sends_to.is_empty());
}

#[test]
fn bad_settings_are_refused() {
    let mut c = TransferConfig::default();
    assert!(c.validate().is_ok());
    c.batch_keys = 0;
    assert_eq!(c.validate().unwrap_err().setting, "batch_keys");
    c = TransferConfig {
        partitions_concurrent: 10_000,
        ..TransferConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().setting, "partitions_concurrent");
}

/// Found by the simulator (its seed 0 never advanced virtual time): once a failed send's retry
/// was in flight, `poll_timeout` still named the failure's retry time, now in the past, so a
/// driver sleeping until it woke at once, again and again, until the answer came.
#[test]
fn a_retry_in_flight_sets_no_timeout_in_the_past() {
    let mut w = World::new(config(100, 1), store(1, 2, 5));
    w.plan(2, plan(1, &[10]));
    let Some(Action::Scan {
        partition,
        after,
        keys_max,
        bytes_max,
    }) = w.m.poll_action(w.now)
    else {
        panic!("a read first");
    };
    let page = w.page(partition, &after, keys_max, bytes_max);
    w.m.handle_page(w.now, partition, Ok(page));
    let Some(Action::Send { id, .. }) = w.m.poll_action(w.now) else {
        panic!("then a send");
    };
    w.m.handle_sent(w.now, id, Err("unreachable".into()));
    assert_eq!(w.m.poll_timeout(), Some(w.now + TRANSFER_RETRY_BASE));
    w.now += TRANSFER_RETRY_BASE;
    let Some(Action::Send { .. }) = w.m.poll_action(w.now) else {
        panic!("the retry");
    };
    // The retry is in flight: nothing to wake for until its answer.
    assert_eq!(w.m.poll_timeout(), None);
}

/// `follow`, the transfer task's decisions moved out of `node/src/transfer.rs`: nothing until
/// every member acknowledged; then the transfer `Layout::transfers` gives a source; the push
/// asked again when the machine is done but the layout lacks it; retirement once every source
/// pushed; the machine cleared once the layout settled.
#[test]
fn following_the_layout_starts_records_and_retires() {
    use cairn_layout::{Change, Layout, LayoutVersion};
    use cairn_ring::{Member, RingConfig};
    let config = RingConfig {
        partitions: 16,
        replicas: 3,
    };
    let id = |i: u64| NodeId::from_name(&format!("node{i}"));
    let members: Vec<(Member, String)> = (1..=4)
        .map(|i| (Member::new(id(i)), format!("node{i}")))
        .collect();
    let mut layout = Layout::new(LayoutVersion::initial(config, &members).unwrap());
    let plan = layout
        .plan(&Change::Join {
            node: id(5),
            name: "node5".into(),
            zone: None,
        })
        .unwrap();
    layout.apply(plan).unwrap();
    let mut w = World::new(cfg_fast(), store(16, 1, 5));
    let me = id(1);
    let none = |_| None;
    let step = w.m.follow(w.now, me, &layout, &none);
    assert_eq!(
        step,
        Default::default(),
        "nothing moves before every member acked"
    );
    for i in 1..=5 {
        layout.ack(id(i));
    }
    let owed = layout.transfers(me).len();
    let step = w.m.follow(w.now, me, &layout, &none);
    assert_eq!(step.started, Some((2, owed)));
    assert!(!step.retire);
    // Every partition it owes is pushed.
    w.run();
    assert_eq!(w.all_pushed(), vec![2]);
    let step = w.m.follow(w.now, me, &layout, &none);
    assert_eq!(
        step.record_push,
        Some(2),
        "done, but the layout does not show it yet"
    );
    for s in layout.transition().unwrap().waiting_pushes {
        layout.record_pushed(s);
    }
    let step = w.m.follow(w.now, me, &layout, &none);
    assert!(step.retire && step.record_push.is_none());
    layout.poll_retire().unwrap();
    let step = w.m.follow(w.now, me, &layout, &none);
    assert_eq!(step, Default::default());
    assert_eq!(w.m.version(), None, "cleared once settled");
}

fn cfg_fast() -> TransferConfig {
    config(100, 2)
}

/// A store that records every key its scans hand to their visitor, scan by scan.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    scans: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl Store for Counting {
    fn meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        self.inner.meta()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.inner.commit(batch)
    }
    fn key_for_hash(&self, key_hash: &KeyHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_for_hash(key_hash)
    }
    fn scan_objects(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let mut visited = Vec::new();
        let n = self.inner.scan_objects(after, &mut |k, o| {
            visited.push(k.to_vec());
            visit(k, o)
        })?;
        self.scans.lock().unwrap().push(visited);
        Ok(n)
    }
    fn hints(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        self.inner.hints(target, limit)
    }
    fn hint(&self, target: NodeId, key: &[u8]) -> Result<Option<Hint>, StoreError> {
        self.inner.hint(target, key)
    }
    fn hint_counts(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        self.inner.hint_counts()
    }
}

/// Issue 11: a page read starts after the previous page's last key instead of walking the store
/// from its first key, so a partition's pages together visit each stored key at most twice (the
/// keys between a page's last entry and the key that told it there is more are visited again by
/// the next page) rather than once per page.
#[test]
fn a_page_read_visits_only_the_keys_after_the_previous_page() {
    let config = RingConfig {
        partitions: 4,
        replicas: 3,
    };
    let store = Counting::default();
    let keys: Vec<Vec<u8>> = (0..400).map(|i| format!("k{i:04}").into_bytes()).collect();
    store
        .commit(&Batch {
            puts: keys.iter().map(|k| (k.clone(), b"v".to_vec())).collect(),
            ..Batch::default()
        })
        .unwrap();
    let partition = 2;
    let want: Vec<&Vec<u8>> = keys
        .iter()
        .filter(|k| config.partition_of(k) == partition)
        .collect();
    assert!(want.len() > 40, "{} keys in partition 2", want.len());

    let mut got = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = read_page(&store, config, partition, after.as_deref(), 10, u64::MAX).unwrap();
        let visited = store.scans.lock().unwrap().last().unwrap().clone();
        // Strictly after the cursor: no key of an earlier page is visited again.
        if let Some(a) = &after {
            assert!(
                visited.iter().all(|k| k > a),
                "page {pages} after {a:?} visited {:?}",
                visited.first()
            );
        }
        pages += 1;
        got.extend(page.entries.iter().map(|e| e.key.clone()));
        after = page.entries.last().map(|e| e.key.clone());
        if page.last {
            break;
        }
    }
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    assert!(pages >= 4, "{pages} pages");
    let mut visits: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for k in store.scans.lock().unwrap().iter().flatten() {
        *visits.entry(k.clone()).or_default() += 1;
    }
    assert!(
        visits.values().all(|v| *v <= 2),
        "{pages} pages visited a key {:?} times",
        visits.values().max()
    );
}
