//! Tombstone reaping, pure: the reaper machine of each node driven over its own `MemoryStore`
//! and writer, the members' answers computed from their stores (`reaper::holding`, what the
//! node's peer handler answers). Every rule that keeps a tombstone has a test in which it is the
//! only thing keeping it, and Riak's KV679 "doomstone" (delete, reap, an old tombstone comes
//! back) is played through with the real writer.

// A test needs one real instant to start its virtual clock from; the core itself reads none.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::reaper::{self, Action, Reaper, ReaperConfig};
use cairn_core::store::{MemoryStore, Store};
use cairn_core::version::{Object, Payload, VClock};
use cairn_core::writer::{Write, Writer, WriterConfig};
use cairn_layout::{Change, Layout, LayoutVersion};
use cairn_proto::NodeId;
use cairn_ring::{Member, RingConfig};

const GRACE: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_secs(1);

fn node(i: usize) -> NodeId {
    NodeId::from_name(&format!("node{i}"))
}

fn ring_config() -> RingConfig {
    RingConfig {
        partitions: 16,
        replicas: 3,
    }
}

fn layout_of(members: usize) -> Layout {
    let first: Vec<(Member, String)> = (1..=members)
        .map(|i| (Member::new(node(i)), format!("node{i}")))
        .collect();
    Layout::new(LayoutVersion::initial(ring_config(), &first).unwrap())
}

/// One node: its store, its writer and its reaper.
struct Replica {
    id: NodeId,
    store: MemoryStore,
    writer: Writer,
    reaper: Reaper,
}

impl Replica {
    fn new(i: usize, now: Instant, layout: &Arc<Layout>) -> Replica {
        let store = MemoryStore::new();
        let writer = Writer::open(&store, node(i), 100 + i as u64, WriterConfig::new(4, 100))
            .expect("writer opens");
        let config = ReaperConfig {
            grace: GRACE,
            interval: INTERVAL,
            keys_per_round: 16,
        };
        let mut reaper = Reaper::new(now, node(i), config);
        reaper.handle_layout(now, Some(layout.clone()));
        Replica {
            id: node(i),
            store,
            writer,
            reaper,
        }
    }

    fn apply(&mut self, key: &[u8], write: Write) -> Object {
        let out = self
            .writer
            .apply_batch(&self.store, &[(key.to_vec(), write)], &mut |b| {
                self.store.commit(b)
            });
        out.results
            .into_iter()
            .next()
            .unwrap()
            .expect("write applies")
    }

    fn object(&self, key: &[u8]) -> Object {
        cairn_core::writer::read_object(&self.store, key).unwrap()
    }

    /// A restart: the writer opens again over the same store.
    fn restart_writer(&mut self) {
        self.writer = Writer::open(&self.store, self.id, 999, WriterConfig::new(4, 100)).unwrap();
    }
}

fn put(value: &str, ctx: VClock) -> Write {
    Write::Update {
        ctx,
        payload: Payload::Value(value.as_bytes().to_vec()),
    }
}

fn delete(ctx: VClock) -> Write {
    Write::Update {
        ctx,
        payload: Payload::Tombstone,
    }
}

fn merge(object: &Object) -> Write {
    Write::Merge {
        object: object.clone(),
        hint_for: None,
    }
}

fn values(o: &Object) -> Vec<String> {
    o.live()
        .iter()
        .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        .collect()
}

/// The test's cluster: replicas by node index; `down` ones do not answer checks.
struct World {
    now: Instant,
    layout: Arc<Layout>,
    nodes: BTreeMap<usize, Replica>,
    down: Vec<usize>,
}

impl World {
    fn new(members: usize) -> World {
        World::with_layout(Arc::new(layout_of(members)), members)
    }

    fn with_layout(layout: Arc<Layout>, members: usize) -> World {
        let now = Instant::now();
        let nodes = (1..=members)
            .map(|i| (i, Replica::new(i, now, &layout)))
            .collect();
        World {
            // Every reaper's first round is due from here on.
            now: now + INTERVAL,
            layout,
            nodes,
            down: Vec::new(),
        }
    }

    fn n(&mut self, i: usize) -> &mut Replica {
        self.nodes.get_mut(&i).unwrap()
    }

    /// The primaries of `key`, by node index.
    fn replicas(&self, key: &[u8]) -> Vec<usize> {
        let p = ring_config().partition_of(key);
        let primaries = self.layout.current().primaries(p);
        self.nodes
            .iter()
            .filter(|(_, r)| primaries.contains(&r.id))
            .map(|(i, _)| *i)
            .collect()
    }

    fn index_of(&self, id: NodeId) -> usize {
        *self.nodes.iter().find(|(_, r)| r.id == id).unwrap().0
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// One full round of node `i`'s reaper (started at once if due), every action carried out
    /// against the stores, `before_drop` run between the checks and the drops.
    fn round_with(&mut self, i: usize, mut before_drop: impl FnMut(&mut World)) {
        let now = self.now;
        let mut dropped_once = false;
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 10_000, "the round does not end");
            let Some(action) = self.n(i).reaper.poll_action(now) else {
                break;
            };
            match action {
                Action::Scan {
                    after,
                    tombstones_max,
                } => {
                    let page =
                        reaper::read_page(&self.n(i).store, after.as_deref(), tombstones_max)
                            .map_err(|e| e.to_string());
                    self.n(i).reaper.handle_page(now, page);
                }
                Action::Check { peer, probes } => {
                    let j = self.index_of(peer);
                    let answer = if self.down.contains(&j) {
                        Err("unreachable".to_owned())
                    } else {
                        Ok(probes
                            .iter()
                            .map(|p| reaper::holding(&self.nodes[&j].store, p).unwrap())
                            .collect())
                    };
                    self.n(i).reaper.handle_checked(now, peer, answer);
                }
                Action::Drop { key, expected } => {
                    if !dropped_once {
                        dropped_once = true;
                        before_drop(self);
                    }
                    let left = self.n(i).apply(&key, Write::DropIfUnchanged { expected });
                    self.n(i)
                        .reaper
                        .handle_dropped(now, &key, Ok(left.is_empty()));
                }
            }
        }
    }

    fn round(&mut self, i: usize) {
        self.round_with(i, |_| {});
    }

    /// A round of every node that is up, one interval after the last.
    fn rounds(&mut self) {
        self.advance(INTERVAL);
        let up: Vec<usize> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| !self.down.contains(i))
            .collect();
        for i in up {
            self.round(i);
        }
    }

    /// Writes `value` at `coordinator` and merges the result into `to`.
    fn write(&mut self, key: &[u8], coordinator: usize, w: Write, to: &[usize]) -> Object {
        let object = self.n(coordinator).apply(key, w);
        for &j in to {
            self.n(j).apply(key, merge(&object));
        }
        object
    }
}

/// A key whose three replicas exclude node 4 (a fallback for it), in a 4-node cluster.
fn key_not_on(world: &World, outside: usize) -> Vec<u8> {
    (0..1000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| !world.replicas(k).contains(&outside))
        .unwrap()
}

/// v1 on all three replicas, then a delete coordinated by the first, merged into `reached`.
fn written_then_deleted(world: &mut World, key: &[u8], reached: &[usize]) -> Object {
    let r = world.replicas(key);
    let v1 = world.write(key, r[0], put("v1", VClock::default()), &r[1..]);
    world.write(key, r[0], delete(v1.join()), reached)
}

#[test]
fn a_tombstone_every_member_holds_is_reaped_only_after_the_grace_period() {
    let mut w = World::new(3);
    let key = b"k".to_vec();
    written_then_deleted(&mut w, &key, &[2, 3]);
    // First seen here; then one interval short of the grace period.
    w.rounds();
    w.advance(GRACE - 2 * INTERVAL);
    w.rounds();
    for i in 1..=3 {
        assert!(
            !w.n(i).object(&key).is_empty(),
            "node{i} reaped before the grace period"
        );
        assert_eq!(w.n(i).reaper.status().held, 1);
    }
    w.advance(INTERVAL);
    w.rounds();
    for i in 1..=3 {
        assert!(
            w.n(i).object(&key).is_empty(),
            "node{i} still holds the tombstone"
        );
        assert_eq!(w.n(i).reaper.status().reaped, 1);
        assert_eq!(w.n(i).reaper.status().held, 0);
    }
}

#[test]
fn a_replica_that_missed_the_delete_blocks_the_reap_until_it_has_the_tombstone() {
    let mut w = World::new(3);
    let key = b"k".to_vec();
    // Node 3 holds v1 but missed the delete.
    let tombstone = written_then_deleted(&mut w, &key, &[2]);
    w.rounds();
    w.advance(GRACE * 2);
    w.rounds();
    for i in 1..=2 {
        assert!(
            !w.n(i).object(&key).is_empty(),
            "node{i} reaped while node3 holds v1"
        );
        assert_eq!(w.n(i).reaper.status().blocked.other_copy, 1);
    }
    assert_eq!(values(&w.n(3).object(&key)), vec!["v1"]);
    // Anti-entropy (or a hint) brings it the tombstone: the same object everywhere.
    w.n(3).apply(&key, merge(&tombstone));
    w.rounds();
    // Node 3 has held it for less than the grace period; the others reap now (node 3 holds
    // the same tombstone), node 3 once its own grace period passed.
    assert!(w.n(1).object(&key).is_empty() && w.n(2).object(&key).is_empty());
    assert!(!w.n(3).object(&key).is_empty());
    w.advance(GRACE);
    w.rounds();
    assert!(w.n(3).object(&key).is_empty());
}

#[test]
fn a_member_that_does_not_answer_blocks_every_reap() {
    let mut w = World::new(3);
    let key = b"k".to_vec();
    written_then_deleted(&mut w, &key, &[2, 3]);
    w.down = vec![3];
    w.rounds();
    w.advance(GRACE * 2);
    w.rounds();
    for i in 1..=2 {
        assert!(!w.n(i).object(&key).is_empty());
        let status = w.n(i).reaper.status();
        assert_eq!(status.blocked.unanswered, 1);
        assert_eq!(status.waiting_on, vec![node(3)]);
    }
    w.down.clear();
    w.rounds();
    for i in 1..=2 {
        assert!(
            w.n(i).object(&key).is_empty(),
            "node{i} kept it once all answered"
        );
    }
    // Node 3 (restarted) waits its own grace period from its first scan.
    assert!(!w.n(3).object(&key).is_empty());
    w.advance(GRACE);
    w.rounds();
    assert!(w.n(3).object(&key).is_empty());
}

#[test]
fn a_hint_holder_blocks_the_reap_until_its_hint_is_delivered() {
    let mut w = World::new(4);
    let key = key_not_on(&w, 4);
    let r = w.replicas(&key);
    let (a, b, c) = (r[0], r[1], r[2]);
    let v1 = w.write(&key, a, put("v1", VClock::default()), &[b, c]);
    // The delete reaches a and b; node 4 stands in for c and keeps a hint for it, and c gets
    // the tombstone some other way (read repair): only the hint is left to block.
    let tombstone = w.write(&key, a, delete(v1.join()), &[b, c]);
    w.n(4).apply(
        &key,
        Write::Merge {
            object: tombstone.clone(),
            hint_for: Some(node(c)),
        },
    );
    w.rounds();
    w.advance(GRACE * 2);
    w.rounds();
    for i in [a, b, c] {
        assert!(
            !w.n(i).object(&key).is_empty(),
            "node{i} reaped while node4 holds a hint"
        );
        assert_eq!(w.n(i).reaper.status().blocked.hinted, 1);
    }
    // Node 4 is no replica: its reaper leaves its copy alone (handoff drops it).
    assert!(!w.n(4).object(&key).is_empty());
    // The hint is delivered and node 4 drops its copy, as handoff does.
    let seq = w.n(4).store.hint(node(c), &key).unwrap().unwrap().seq;
    w.n(4).apply(
        &key,
        Write::HintDelivered {
            target: node(c),
            seq,
        },
    );
    w.n(4).apply(
        &key,
        Write::DropIfUnchanged {
            expected: tombstone,
        },
    );
    w.rounds();
    for i in [a, b, c] {
        assert!(
            w.n(i).object(&key).is_empty(),
            "node{i} kept it after the hint went"
        );
    }
}

#[test]
fn a_member_holding_an_old_copy_outside_the_replicas_blocks_the_reap() {
    // A fallback's leftover copy of v1 would be served by a read while a primary is down, and
    // read repair would write v1 back.
    let mut w = World::new(4);
    let key = key_not_on(&w, 4);
    let r = w.replicas(&key);
    let v1 = w.write(&key, r[0], put("v1", VClock::default()), &[r[1], r[2], 4]);
    w.write(&key, r[0], delete(v1.join()), &[r[1], r[2]]);
    w.rounds();
    w.advance(GRACE * 2);
    w.rounds();
    for &i in &r {
        assert!(!w.n(i).object(&key).is_empty());
        assert_eq!(w.n(i).reaper.status().blocked.other_copy, 1);
    }
}

#[test]
fn a_transfer_blocks_the_reap_of_its_partitions_only() {
    let mut layout = layout_of(4);
    let plan = layout
        .plan(&Change::Join {
            node: node(5),
            name: "node5".into(),
            zone: None,
        })
        .unwrap();
    layout.apply(plan).unwrap();
    let layout = Arc::new(layout);
    let mut w = World::with_layout(layout.clone(), 5);
    let moved = (0..1000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| !layout.is_stable(ring_config().partition_of(k)))
        .expect("a key whose partition moves");
    let stable = (0..1000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| layout.is_stable(ring_config().partition_of(k)))
        .expect("a key whose partition stays");
    for key in [&moved, &stable] {
        // Every node of every live version that replicates the key holds the tombstone.
        let p = ring_config().partition_of(key);
        let holders: Vec<usize> = (1..=5).filter(|i| layout.replicates(node(*i), p)).collect();
        let v1 = w.write(key, holders[0], put("v1", VClock::default()), &holders[1..]);
        w.write(key, holders[0], delete(v1.join()), &holders[1..]);
    }
    w.rounds();
    w.advance(GRACE * 2);
    w.rounds();
    for i in 1..=5 {
        assert!(
            w.n(i).object(&stable).is_empty(),
            "node{i} kept the stable key's tombstone"
        );
    }
    let p = ring_config().partition_of(&moved);
    for i in (1..=5).filter(|i| layout.replicates(node(*i), p)) {
        assert!(
            !w.n(i).object(&moved).is_empty(),
            "node{i} reaped a tombstone of a partition in transfer"
        );
    }
}

#[test]
fn a_write_newer_than_the_tombstone_survives_the_compare_and_delete() {
    let mut w = World::new(3);
    let key = b"k".to_vec();
    let tombstone = written_then_deleted(&mut w, &key, &[2, 3]);
    w.rounds();
    w.advance(GRACE * 2);
    // Node 1's round confirms the reap; then, before its drop, a write with the delete's
    // context arrives from node 2.
    let ctx = tombstone.join();
    w.round_with(1, |w| {
        w.write(&key, 2, put("v2", ctx.clone()), &[1, 3]);
    });
    assert_eq!(values(&w.n(1).object(&key)), vec!["v2"]);
    assert_eq!(w.n(1).reaper.status().blocked.changed, 1);
    assert_eq!(w.n(1).reaper.status().reaped, 0);
    // And the key is no tombstone any more: nobody reaps it.
    w.advance(GRACE * 2);
    w.rounds();
    for i in 1..=3 {
        assert_eq!(values(&w.n(i).object(&key)), vec!["v2"], "node{i}");
    }
}

/// Riak's KV679: a tombstone on the primaries and on a fallback whose hint is stuck; the
/// tombstone is reaped on the primaries (here as if the hint holder had been missed: the worst
/// case, which the reaper's rules prevent), the key is written again, and then the fallback
/// hands off its old tombstone. The new write must survive: its dot is fresh, because the
/// writer's counter does not start from the key's (erased) history. The coordinator restarts
/// in between, so the lease across restarts is part of it.
#[test]
fn kv679_an_old_tombstone_coming_back_after_a_reap_does_not_swallow_a_new_write() {
    let mut w = World::new(4);
    let key = key_not_on(&w, 4);
    let r = w.replicas(&key);
    let (a, b, c) = (r[0], r[1], r[2]);
    let v1 = w.write(&key, a, put("v1", VClock::default()), &[b, c]);
    let tombstone = w.write(&key, a, delete(v1.join()), &[b, c]);
    w.n(4).apply(
        &key,
        Write::Merge {
            object: tombstone.clone(),
            hint_for: Some(node(c)),
        },
    );
    for i in [a, b, c] {
        let left = w.n(i).apply(
            &key,
            Write::DropIfUnchanged {
                expected: tombstone.clone(),
            },
        );
        assert!(left.is_empty());
    }
    w.n(a).restart_writer();
    // The key is not found: the client writes with an empty context, at the same coordinator.
    let v2 = w.write(&key, a, put("v2", VClock::default()), &[b, c]);
    assert_eq!(values(&v2), vec!["v2"]);
    // The fallback's hint is finally delivered, and anti-entropy spreads the result.
    let late = w.n(4).object(&key);
    for i in [a, b, c] {
        let after = w.n(i).apply(&key, merge(&late));
        assert_eq!(
            values(&after),
            vec!["v2"],
            "node{i} lost the write after the reap"
        );
    }
    // A write at another replica after the reap does not get swallowed either.
    let v3 = w.write(&key, b, put("v3", VClock::default()), &[a, c]);
    let after = w.n(c).apply(&key, merge(&late));
    assert_eq!(values(&after).len(), 2, "v2 and v3 are concurrent: {v3:?}");
}

/// The same scenario with the dot the writer would mint if its counter restarted from the key's
/// history (Riak's per-key counters): the late tombstone swallows the write. This is what the
/// KV679 test above guards against.
#[test]
fn kv679_with_a_reused_dot_the_old_tombstone_swallows_the_new_write() {
    let mut w = World::new(4);
    let key = key_not_on(&w, 4);
    let r = w.replicas(&key);
    let (a, b, c) = (r[0], r[1], r[2]);
    let v1 = w.write(&key, a, put("v1", VClock::default()), &[b, c]);
    let tombstone = w.write(&key, a, delete(v1.join()), &[b, c]);
    // After the reap the key's history is empty, so a per-key counter would start again at 1
    // (for the actor that wrote v1 and the tombstone).
    let actor = v1.siblings()[0].0.actor;
    let reused = Object::new()
        .update_next(&VClock::default(), actor, Payload::Value(b"v2".to_vec()))
        .unwrap();
    assert_eq!(values(&reused), vec!["v2"]);
    assert_eq!(values(&reused.sync(&tombstone)), Vec::<String>::new());
}

#[cfg(feature = "sabotage")]
#[test]
fn kv679_a_writer_that_reuses_dots_loses_the_write() {
    use cairn_core::writer::Sabotage;
    let mut w = World::new(4);
    let key = key_not_on(&w, 4);
    let r = w.replicas(&key);
    let (a, b, c) = (r[0], r[1], r[2]);
    let v1 = w.write(&key, a, put("v1", VClock::default()), &[b, c]);
    let tombstone = w.write(&key, a, delete(v1.join()), &[b, c]);
    for i in [a, b, c] {
        w.n(i).apply(
            &key,
            Write::DropIfUnchanged {
                expected: tombstone.clone(),
            },
        );
    }
    let store = &w.nodes[&a].store;
    let writer = Writer::open(
        store,
        node(a),
        999,
        WriterConfig::new(4, 100).with_sabotage(Sabotage::ReuseDots),
    )
    .unwrap();
    w.n(a).writer = writer;
    let v2 = w.write(&key, a, put("v2", VClock::default()), &[b, c]);
    assert_eq!(values(&v2), vec!["v2"]);
    let after = w.n(b).apply(&key, merge(&tombstone));
    assert!(
        values(&after).is_empty(),
        "with reused dots the write is swallowed"
    );
}

#[test]
fn a_blocked_key_does_not_starve_the_others() {
    let mut w = World::new(3);
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = format!("key{i:02}").into_bytes();
        // The first 16 (a whole round's worth) never reach node 3's delete: they block forever.
        let reached: &[usize] = if i < 16 { &[2] } else { &[2, 3] };
        let v1 = w.write(&key, 1, put("v", VClock::default()), &[2, 3]);
        w.write(&key, 1, delete(v1.join()), reached);
        keys.push(key);
    }
    w.rounds();
    w.advance(GRACE * 2);
    // 16 keys per round, taken after the last round's: the blocked ones, then the 24 others.
    for _ in 0..3 {
        w.advance(INTERVAL);
        w.round(1);
    }
    for key in &keys[..16] {
        assert!(!w.n(1).object(key).is_empty());
    }
    for key in &keys[16..] {
        assert!(
            w.n(1).object(key).is_empty(),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(w.n(1).reaper.status().reaped, 24);
}

#[test]
fn a_reaped_tombstone_handed_back_by_a_replica_is_reaped_again_without_a_new_grace_period() {
    let mut w = World::new(3);
    let key = b"k".to_vec();
    let tombstone = written_then_deleted(&mut w, &key, &[2, 3]);
    w.rounds();
    w.advance(GRACE * 2);
    w.advance(INTERVAL);
    w.round(1);
    assert!(w.n(1).object(&key).is_empty());
    // A round of node 1 that finds the key gone.
    w.advance(INTERVAL);
    w.round(1);
    // Before node 2 and node 3 reap, anti-entropy hands node 1 the tombstone back.
    w.n(1).apply(&key, merge(&tombstone));
    w.rounds();
    for i in 1..=3 {
        assert!(
            w.n(i).object(&key).is_empty(),
            "node{i} still holds the tombstone"
        );
    }
    assert_eq!(w.n(1).reaper.status().reaped, 2);
}

#[test]
fn a_scan_page_ends_at_its_tombstones_maximum_and_the_next_goes_on_after_it() {
    let mut w = World::new(1);
    for (i, deleted) in [true, false, true, false, true].into_iter().enumerate() {
        let key = format!("key{i}").into_bytes();
        let v = w.n(1).apply(&key, put("v", VClock::default()));
        if deleted {
            w.n(1).apply(&key, delete(v.join()));
        }
    }
    let keys = |page: &reaper::ScanPage| -> Vec<String> {
        page.tombstones
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect()
    };
    let store = &w.nodes[&1].store;
    let first = reaper::read_page(store, None, 2).unwrap();
    assert_eq!(keys(&first), ["key0", "key2"]);
    assert!(!first.last);
    assert_eq!(first.last_key.as_deref(), Some(&b"key2"[..]));
    let second = reaper::read_page(store, first.last_key.as_deref(), 2).unwrap();
    assert_eq!(keys(&second), ["key4"]);
    assert!(second.last);
}

#[test]
fn a_reaper_without_a_layout_asks_to_be_woken_for_nothing() {
    let now = Instant::now();
    let config = ReaperConfig {
        grace: GRACE,
        interval: INTERVAL,
        keys_per_round: 16,
    };
    let mut r = Reaper::new(now, node(1), config);
    // Its first round is due, but with no layout there is nothing to do and nothing to wait
    // for: a deadline in the past here made its drivers wake at once, for ever.
    let later = now + INTERVAL * 3;
    assert_eq!(r.poll_action(later), None);
    assert_eq!(r.poll_timeout(), None);
    // Once a layout arrives the overdue round starts.
    r.handle_layout(later, Some(Arc::new(layout_of(3))));
    assert!(r.poll_timeout().is_some_and(|t| t <= later));
    assert!(matches!(r.poll_action(later), Some(Action::Scan { .. })));
}
