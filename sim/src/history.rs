//! The history of a simulated run (every write with its value, context, dot and result; every
//! read with what it returned) and the checker that judges the final state against it,
//! Jepsen-style.
//!
//! Values are unique per write (`c<client>w<id>`), and the simulator records the dot each
//! write's coordinating replica minted, so every sibling in the final state names the one write
//! that produced it (tombstones included).
//!
//! A dot `d` is *covered* by a version vector `vv` when `vv[d.actor] >= d.counter`. A write
//! *took effect in* a final object `F` when one of its dots is covered by `F`'s context (the
//! final state descends from it), or it is a delete whose tombstone a node reaped (the reaper
//! removes only what every member holds, so the final state descended from it before the reap;
//! the reaped tombstone's own dot is not required in `F`). The rules checked, per key, after healing, hint delivery and the
//! final repair (anti-entropy, or a full read repair without it):
//!
//! 1. *No lost write*: every acknowledged write's dot is a sibling of the final object, or some
//!    write whose context covers that dot took effect in it (it was superseded by a write that
//!    saw it). With rule 3 this means present on every replica.
//! 2. *Siblings only from concurrency*: no two siblings where the context of the write that
//!    produced one covers the other's dot.
//! 3. *Convergence*: every primary replica of the key holds the identical object (a tombstone
//!    a node reaped counts as no object: replicas reap one by one).
//! 4. *Nothing superseded returns*: no sibling of the final object is covered by the context of
//!    a write that took effect in it; in particular no value an acknowledged delete saw.
//!
//! 5. *One write, one sibling*: no object (final, read or written reply) holds two siblings
//!    produced by the same client write (a forward retried after a lost reply must not apply a
//!    write twice).
//! 6. *Nothing removed reappears on a replica*: once a replica stores an object whose context
//!    covers a dot that is not among its siblings (deleted or superseded there), no later object
//!    it stores has that dot as a sibling. Checked on every store, as it happens.
//!
//! 7. *A transfer moves every key*: when a source records that it pushed a layout version's
//!    partitions, every gaining replica holds every dot the source held for them when its
//!    transfer started (unless it lost its data since). Checked by the simulation as it
//!    happens.
//!
//! Also: every sibling ever returned (during the run or at the end) was produced by a write to
//! that key with that payload (no phantoms), and an acknowledged write's reply holds its own dot.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cairn_core::version::{decode_context, Dot, Object, Payload, VClock};
use cairn_proto::ActorId;
use cairn_proto::{GetReply, KeyOpReply};

use super::fmt::{dot, obj, payload as payload_str, reply as reply_str, vclock};
use super::msg::{key_str, reply_siblings};
use super::world::{ClientIx, NodeIx};

/// The history's name for one write.
pub type WriteId = u64;

/// How a write ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteStatus {
    /// Not answered yet.
    Pending,
    /// Acknowledged: W replicas stored it.
    Ok,
    /// An error answer (it may still be stored on the replicas that did acknowledge).
    Failed(String),
    /// No answer before the client gave up.
    Unknown,
}

/// One put or delete.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Its id.
    pub id: WriteId,
    /// Who wrote.
    pub client: ClientIx,
    /// The key.
    pub key: Vec<u8>,
    /// The value (unique) or a tombstone.
    pub payload: Payload,
    /// The context it was written with.
    pub ctx: VClock,
    /// When it was sent.
    pub start: Duration,
    /// When it was answered or given up on.
    pub end: Option<Duration>,
    /// How it ended.
    pub status: WriteStatus,
    /// The dot its acknowledgement reported.
    pub acked_dot: Option<Dot>,
    /// Every dot a coordinating replica minted for it, with the node (more than one if a
    /// duplicated message made two nodes coordinate it).
    pub minted: Vec<(NodeIx, Dot)>,
}

/// One get.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Who read.
    pub client: ClientIx,
    /// The key.
    pub key: Vec<u8>,
    /// When it was sent.
    pub start: Duration,
    /// The reply returned, the error, or `None` if never answered.
    pub result: Option<Result<GetReply, String>>,
}

/// One broken rule.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// The key it is about.
    pub key: Vec<u8>,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] key {}: {}",
            self.rule,
            key_str(&self.key),
            self.detail
        )
    }
}

/// Everything clients did and saw.
#[derive(Debug, Default)]
pub struct History {
    /// Writes by id.
    pub writes: Vec<WriteRecord>,
    /// Reads in order of issue.
    pub reads: Vec<ReadRecord>,
    by_dot: BTreeMap<(ActorId, u64), WriteId>,
    /// Violations found while the run went on (phantoms, bad acknowledgements).
    pub online: Vec<Violation>,
    /// The nodes whose store holds each dot as a sibling (since their last data loss).
    holders: BTreeMap<(ActorId, u64), Holders>,
    /// Dots every holder of which lost its data directory: a write may be lost with them.
    orphaned: std::collections::BTreeSet<(ActorId, u64)>,
    /// Dots of tombstones a node reaped: a delete whose tombstone was reaped took effect (the
    /// reaper removes only what every member holds), and its own dot is gone by design.
    reaped: std::collections::BTreeSet<(ActorId, u64)>,
}

/// How a node holds the key it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// It replicates the key in a live version of its layout.
    Primary,
    /// It stands in for a primary (with a hint), or coordinated a write off the key's replicas
    /// (with hints for them).
    Fallback,
    /// A replica copy sent by a node with an older layout, which this node does not replicate:
    /// no hint goes with it and its cleanup drops it, so it is no way for the write to reach a
    /// replica and does not make the write survive a loss of its real holders (seed 2791 of the
    /// crash sweep: a removed fallback's hints were lost with it; a stray copy it had sent is
    /// not a holder).
    Stray,
}

/// Who holds a dot.
#[derive(Debug, Default)]
struct Holders {
    /// Primaries of its key.
    primaries: std::collections::BTreeSet<NodeIx>,
    /// Other nodes (fallbacks, coordinators off the key's replicas).
    others: std::collections::BTreeSet<NodeIx>,
    /// Whether a node that held it lost its data directory since.
    wiped_any: bool,
    /// Whether a primary ever stored it.
    reached_primary: bool,
}

fn covers(vv: &VClock, d: Dot) -> bool {
    vv.get(&d.actor) >= d.counter
}

impl History {
    /// Records a write being sent; returns its id and its unique value (for puts).
    pub fn begin_write(
        &mut self,
        client: ClientIx,
        key: Vec<u8>,
        delete: bool,
        ctx: VClock,
        now: Duration,
    ) -> (WriteId, Payload) {
        let id = self.writes.len() as WriteId;
        let payload = if delete {
            Payload::Tombstone
        } else {
            Payload::Value(format!("c{}w{id}", client + 1).into_bytes())
        };
        self.writes.push(WriteRecord {
            id,
            client,
            key,
            payload: payload.clone(),
            ctx,
            start: now,
            end: None,
            status: WriteStatus::Pending,
            acked_dot: None,
            minted: Vec::new(),
        });
        (id, payload)
    }

    /// A coordinating replica minted `d` for write `id` and stored it durably.
    pub fn minted(&mut self, id: WriteId, node: NodeIx, d: Dot) {
        if let Some(prev) = self.by_dot.insert((d.actor, d.counter), id) {
            let w = &self.writes[id as usize];
            self.online.push(Violation {
                rule: "dot minted twice",
                key: w.key.clone(),
                detail: format!(
                    "dot {} minted for w{id} was already minted for w{prev}",
                    dot(d)
                ),
            });
        }
        self.writes[id as usize].minted.push((node, d));
    }

    /// The client got an answer for write `id` (or gave up: `response` is `None`): the node's
    /// reply, and the dot its coordinating replica minted.
    pub fn end_write(
        &mut self,
        id: WriteId,
        now: Duration,
        response: Option<(KeyOpReply, Option<Dot>)>,
    ) {
        let w = &mut self.writes[id as usize];
        w.end = Some(now);
        match response {
            None => w.status = WriteStatus::Unknown,
            Some((KeyOpReply::Error(e), _)) => w.status = WriteStatus::Failed(e.to_string()),
            Some((KeyOpReply::Written(r), minted)) => {
                w.status = WriteStatus::Ok;
                w.acked_dot = minted;
                let siblings = reply_siblings(&r);
                // A reply lists live values only: a delete's own tombstone shows as a context
                // that covers its dot.
                let holds_own = minted.is_some_and(|d| match &w.payload {
                    Payload::Value(_) => siblings.iter().any(|(s, p)| *s == d && *p == w.payload),
                    Payload::Tombstone => {
                        decode_context(&r.context).is_ok_and(|vv| covers(&vv, d))
                            && siblings.iter().all(|(s, _)| *s != d)
                    }
                });
                if !holds_own {
                    let detail = format!(
                        "acknowledged write w{id} ({}) reports dot {} but its reply is {}",
                        payload_str(&w.payload),
                        minted.map_or("none".into(), dot),
                        reply_str(&r)
                    );
                    let key = w.key.clone();
                    self.online.push(Violation {
                        rule: "acknowledgement without its write",
                        key,
                        detail,
                    });
                }
                let key = self.writes[id as usize].key.clone();
                self.check_phantoms("written reply", &key, &siblings, &reply_str(&r));
            }
            Some((KeyOpReply::Value(r), _)) => {
                w.status =
                    WriteStatus::Failed(format!("a write answered with a read: {}", reply_str(&r)));
            }
        }
    }

    /// Records a read being sent; returns its index.
    pub fn begin_read(&mut self, client: ClientIx, key: Vec<u8>, now: Duration) -> usize {
        self.reads.push(ReadRecord {
            client,
            key,
            start: now,
            result: None,
        });
        self.reads.len() - 1
    }

    /// The client got an answer for read `i`.
    pub fn end_read(&mut self, i: usize, response: KeyOpReply) {
        let key = self.reads[i].key.clone();
        let result = match response {
            KeyOpReply::Value(r) => {
                self.check_phantoms("read", &key, &reply_siblings(&r), &reply_str(&r));
                Ok(r)
            }
            KeyOpReply::Written(r) => {
                Err(format!("a read answered with a write: {}", reply_str(&r)))
            }
            KeyOpReply::Error(e) => Err(e.to_string()),
        };
        self.reads[i].result = Some(result);
    }

    /// The write that produced sibling `d`.
    pub fn writer_of(&self, d: Dot) -> Option<&WriteRecord> {
        self.by_dot
            .get(&(d.actor, d.counter))
            .map(|&id| &self.writes[id as usize])
    }

    /// Rule 5 for one object: the writes that produced two or more of its siblings.
    fn doubled_writes(&self, dots: impl IntoIterator<Item = Dot>) -> Vec<WriteId> {
        let mut per_write: BTreeMap<WriteId, usize> = BTreeMap::new();
        for d in dots {
            if let Some(w) = self.writer_of(d) {
                *per_write.entry(w.id).or_insert(0) += 1;
            }
        }
        per_write
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect()
    }

    /// Node `node` lost its data directory: the dots only it held are gone with it. Once a dot
    /// reached a primary of its key, only primaries count: a fallback's copy has no way to a
    /// primary but its hint, which was for a primary that got it. Before, the fallbacks (with
    /// their hints) are all it has.
    pub fn wiped(&mut self, node: NodeIx) {
        for (d, h) in &mut self.holders {
            if h.others.remove(&node) {
                h.wiped_any = true;
            }
            if h.primaries.remove(&node) {
                h.reached_primary = true;
                h.wiped_any = true;
            }
            let gone = if h.reached_primary {
                h.primaries.is_empty()
            } else {
                h.others.is_empty()
            };
            if gone {
                self.orphaned.insert(*d);
            }
        }
    }

    /// Node `node` dropped its copy `before` of a key it no longer replicates (the cleanup's
    /// compare-and-delete, once no live layout version has it as a replica): it holds none of
    /// those dots any more. For those partitions the node has left, and the rule is
    /// [`History::left`]'s: a dot it was the last holder of is excused only if another holder
    /// lost its data before (seed 8751: W = 1 while v3 and v4 were live, so the write was
    /// acknowledged by one old replica, which had pushed its partitions before the write came,
    /// and by one new one, whose data was then wiped; the old replica dropped its copy when v3
    /// retired). Otherwise the dropped copy should have reached the new replicas: not excused.
    pub fn dropped(&mut self, node: NodeIx, before: &Object) {
        self.forget(node, before, true);
    }

    /// `node` holds none of `before`'s dots any more; with `may_orphan`, a dot whose last holder
    /// it was after another holder lost its data is excused ([`History::left`]).
    fn forget(&mut self, node: NodeIx, before: &Object, may_orphan: bool) {
        for (d, _) in before.siblings() {
            let id = (d.actor, d.counter);
            if let Some(h) = self.holders.get_mut(&id) {
                let held = h.primaries.remove(&node) | h.others.remove(&node);
                if may_orphan
                    && held
                    && h.wiped_any
                    && h.primaries.is_empty()
                    && h.others.is_empty()
                {
                    self.orphaned.insert(id);
                }
            }
        }
    }

    /// Node `node` reaped its tombstone `before` (compare-and-delete after every member
    /// confirmed): it holds none of its dots any more, and the deletes they stand for took
    /// effect.
    pub fn reaped(&mut self, node: NodeIx, before: &Object) {
        self.forget(node, before, false);
        for (d, _) in before.siblings() {
            self.reaped.insert((d.actor, d.counter));
        }
    }

    /// How many tombstone dots nodes reaped.
    pub fn reaped_count(&self) -> usize {
        self.reaped.len()
    }

    fn was_reaped(&self, d: Dot) -> bool {
        self.reaped.contains(&(d.actor, d.counter))
    }

    /// Node `node` left the layout: its copies flow nowhere any more (it pushed them to the new
    /// replicas when it left), so it no longer counts as a holder of anything. A later loss of
    /// every replica's data is a loss even though the node that left still has a stale copy.
    /// A dot it was the last holder of is excused only if another holder lost its data before:
    /// a write that reached the leaving node after its transfer read the partition was, by the
    /// write quorum in every live version, also acknowledged by replicas of the new one, and if
    /// those lost their data the write went with them (seed 8749: W = 1, the one new replica
    /// that acknowledged it gone for good, the other copy wiped). With no such loss, the leaving
    /// node's copy should have reached the new replicas: not excused.
    pub fn left(&mut self, node: NodeIx) {
        for (d, h) in &mut self.holders {
            let held = h.primaries.remove(&node) | h.others.remove(&node);
            if held && h.wiped_any && h.primaries.is_empty() && h.others.is_empty() {
                self.orphaned.insert(*d);
            }
        }
    }

    /// Whether every node that stored dot `d` lost its data since (so rules 1 and 4 excuse it).
    fn orphaned(&self, d: Dot) -> bool {
        self.orphaned.contains(&(d.actor, d.counter))
    }

    /// Node `node`, holding `key` as `holding` says, replaces its object for `key`, `old`, with
    /// `new` (rule 6).
    pub fn stored(
        &mut self,
        node: NodeIx,
        holding: Holding,
        key: &[u8],
        old: &Object,
        new: &Object,
    ) {
        for (d, _) in new.siblings() {
            let id = (d.actor, d.counter);
            match holding {
                Holding::Primary => {
                    let h = self.holders.entry(id).or_default();
                    h.primaries.insert(node);
                    h.reached_primary = true;
                }
                Holding::Fallback => {
                    self.holders.entry(id).or_default().others.insert(node);
                }
                Holding::Stray => continue,
            }
            self.orphaned.remove(&id);
        }
        let seen = old.join();
        let old_sibs: Vec<Dot> = old.siblings().into_iter().map(|(d, _)| d).collect();
        let deleted = !old.is_empty() && old.live().is_empty();
        for (d, p) in new.siblings() {
            if covers(&seen, d) && !old_sibs.contains(&d) {
                let rule = if deleted {
                    "6 deleted value reappeared"
                } else {
                    "6 superseded value reappeared"
                };
                let detail = format!(
                    "n{} held {} (which covers {}@{} without it) and then stored {}",
                    node + 1,
                    obj(old),
                    payload_str(p),
                    dot(d),
                    obj(new)
                );
                self.online.push(Violation {
                    rule,
                    key: key.to_vec(),
                    detail,
                });
            }
        }
    }

    fn check_phantoms(&mut self, what: &str, key: &[u8], siblings: &[(Dot, Payload)], shown: &str) {
        for id in self.doubled_writes(siblings.iter().map(|(d, _)| *d)) {
            let detail = format!("{what} returned {shown} with two siblings from write w{id}");
            self.online.push(Violation {
                rule: "5 one write, two siblings",
                key: key.to_vec(),
                detail,
            });
        }
        for (d, p) in siblings {
            let ok = self
                .writer_of(*d)
                .is_some_and(|w| w.key == key && w.payload == *p);
            if !ok {
                let detail = format!(
                    "{what} returned sibling {}@{} that no write to this key produced ({shown})",
                    payload_str(p),
                    dot(*d),
                );
                self.online.push(Violation {
                    rule: "phantom sibling",
                    key: key.to_vec(),
                    detail,
                });
            }
        }
    }

    /// Keys written at least once, in order.
    pub fn keys_written(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self.writes.iter().map(|w| w.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Checks the final state: `replicas` maps each key written to what each of its primaries
    /// holds.
    pub fn check(&mut self, replicas: &BTreeMap<Vec<u8>, Vec<(NodeIx, Object)>>) -> Vec<Violation> {
        let mut out = std::mem::take(&mut self.online);
        for (key, copies) in replicas {
            let mut v = |rule: &'static str, detail: String| {
                out.push(Violation {
                    rule,
                    key: key.clone(),
                    detail,
                })
            };
            // Rule 3: convergence. Replicas reap one by one, so a tombstone some node reaped
            // and no replica yet (or no more) holds are the same state.
            let settled = |o: &Object| -> Object {
                let reaped_tombstone = !o.is_empty()
                    && o.live().is_empty()
                    && o.siblings().iter().all(|(d, _)| self.was_reaped(*d));
                if reaped_tombstone {
                    Object::new()
                } else {
                    o.clone()
                }
            };
            if copies
                .windows(2)
                .any(|w| settled(&w[0].1) != settled(&w[1].1))
            {
                let all: Vec<String> = copies
                    .iter()
                    .map(|(n, o)| format!("n{}={}", n + 1, obj(o)))
                    .collect();
                v("3 replicas differ", all.join("  "));
            }
            let fin = copies.iter().fold(Object::new(), |acc, (_, o)| acc.sync(o));
            let fin_vv = fin.join();
            let sibs = fin.siblings();
            let writes: Vec<&WriteRecord> = self.writes.iter().filter(|w| w.key == *key).collect();
            let took_effect = |w: &WriteRecord| {
                w.minted
                    .iter()
                    .any(|(_, d)| covers(&fin_vv, *d) || self.was_reaped(*d))
            };

            // Phantoms in the final state.
            for (d, p) in &sibs {
                let ok = self
                    .writer_of(*d)
                    .is_some_and(|w| w.key == *key && w.payload == **p);
                if !ok {
                    v(
                        "phantom sibling",
                        format!(
                            "final state holds {}@{} that no write to this key produced",
                            payload_str(p),
                            dot(*d)
                        ),
                    );
                }
            }

            // Rule 5: one write, at most one sibling.
            for id in self.doubled_writes(fin.siblings().into_iter().map(|(d, _)| d)) {
                v(
                    "5 one write, two siblings",
                    format!("final object {} has two siblings from w{id}", obj(&fin)),
                );
            }

            // Rule 1: no acknowledged write lost.
            for w in writes.iter().filter(|w| w.status == WriteStatus::Ok) {
                let Some(d) = w.acked_dot else {
                    v(
                        "1 acknowledged write lost",
                        format!("w{} was acknowledged without a dot", w.id),
                    );
                    continue;
                };
                if sibs.iter().any(|(s, _)| *s == d) || self.orphaned(d) || self.was_reaped(d) {
                    continue;
                }
                // A write that saw it and took effect supersedes it; so does one that took
                // effect and was then lost with the data of every node holding it (excused
                // itself): the older write is gone with that loss, not by a bug.
                let superseded_by = writes.iter().find(|w2| {
                    w2.id != w.id
                        && covers(&w2.ctx, d)
                        && (took_effect(w2) || w2.minted.iter().any(|(_, d2)| self.orphaned(*d2)))
                });
                if superseded_by.is_none() {
                    let holders: Vec<String> = w
                        .minted
                        .iter()
                        .map(|(n, d)| format!("n{}@{}", n + 1, dot(*d)))
                        .collect();
                    v(
                        "1 acknowledged write lost",
                        format!(
                            "w{} {} (dot {}, minted at {}, acked at {:.6}s) is not in the final \
                             object {} and no write that saw it took effect",
                            w.id,
                            payload_str(&w.payload),
                            dot(d),
                            holders.join(","),
                            w.end.unwrap_or_default().as_secs_f64(),
                            obj(&fin)
                        ),
                    );
                }
            }

            // Rule 2: siblings only from concurrency.
            for (i, (d1, _)) in sibs.iter().enumerate() {
                for (d2, _) in sibs.iter().skip(i + 1) {
                    let (Some(w1), Some(w2)) = (self.writer_of(*d1), self.writer_of(*d2)) else {
                        continue;
                    };
                    for (a, da, b, db) in [(w1, d1, w2, d2), (w2, d2, w1, d1)] {
                        if covers(&b.ctx, *da) {
                            v(
                                "2 sibling not concurrent",
                                format!(
                                    "siblings {}@{} and {}@{}: w{} was written with context {} \
                                     which covers w{}",
                                    payload_str(&a.payload),
                                    dot(*da),
                                    payload_str(&b.payload),
                                    dot(*db),
                                    b.id,
                                    vclock(&b.ctx),
                                    a.id
                                ),
                            );
                        }
                    }
                }
            }

            // Rule 4: nothing a write that took effect saw comes back.
            for w2 in writes
                .iter()
                .filter(|w2| took_effect(w2) && !w2.minted.iter().any(|(_, m)| self.orphaned(*m)))
            {
                for (d, p) in &sibs {
                    if covers(&w2.ctx, *d) && !w2.minted.iter().any(|(_, m)| m == d) {
                        let rule = if w2.payload == Payload::Tombstone {
                            "4 deleted value returned"
                        } else {
                            "4 superseded value returned"
                        };
                        v(
                            rule,
                            format!(
                                "{}@{} is in the final object {} but w{} ({}, {:?}) took effect \
                                 with context {} that covers it",
                                payload_str(p),
                                dot(*d),
                                obj(&fin),
                                w2.id,
                                payload_str(&w2.payload),
                                w2.status,
                                vclock(&w2.ctx)
                            ),
                        );
                    }
                }
            }
        }
        out
    }

    /// Counts for the run summary: (acknowledged, failed, unknown) writes and reads answered.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let by = |s: fn(&WriteStatus) -> bool| self.writes.iter().filter(|w| s(&w.status)).count();
        (
            by(|s| *s == WriteStatus::Ok),
            by(|s| matches!(s, WriteStatus::Failed(_))),
            by(|s| matches!(s, WriteStatus::Unknown | WriteStatus::Pending)),
            self.reads
                .iter()
                .filter(|r| matches!(r.result, Some(Ok(_))))
                .count(),
        )
    }
}
