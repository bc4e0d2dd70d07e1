//! Causal versioning of one key: a dotted version vector set (DVVSet) that keeps exactly the
//! siblings no write has superseded, with no I/O, no clock and no async, so the simulator and
//! the property tests drive the same code the node runs.
//!
//! The structure follows Almeida et al., "Scalable and Accurate Causality Tracking for Eventually
//! Consistent Stores" (reference implementation `dvvset.erl`; rules and scenarios summarised in
//! REFERENCE.md §2), with one generalisation: every sibling stores its own dot counter. The
//! published DVVSet derives a sibling's dot from its position (`n - i`), which needs each actor's
//! dots for one key to be contiguous. Cairn mints dots from one node-wide counter, leased in blocks
//! and persisted before use, so that a dot is never minted twice (not after a crash, not after a
//! tombstone is reaped: Riak's KV679). Per key the dots of an actor are then increasing but have
//! gaps, and positions no longer name them.
//!
//! An entry's counter `n` claims every event of its actor for the key up to `n`, gaps included
//! (the gaps are other keys' dots). That claim is true only because the writer mints under an
//! actor only while its copy of the key holds that actor's latest event, and under a fresh
//! per-key actor otherwise (`writer.rs`, "Per-key actors"): a node that lost its copy and wrote
//! again under its old actor would claim, and on the next `sync` discard, the siblings it lost.
//!
//! Merge rule, per actor, for sides `(n1, live1)` and `(n2, live2)`: the counter becomes
//! `max(n1, n2)`; a sibling of side 1 survives iff side 2 also holds it live, or its counter is
//! above `n2` (side 2 never saw it); symmetrically for side 2. This is the join of a dot store
//! with a version-vector causal context, so it is commutative, associative and idempotent. When
//! dots are contiguous it keeps exactly the dots in `(max(base1, base2), max(n1, n2)]`, the
//! published rule.
//!
//! There is no anonymous (dotless) value list: Cairn never offers DVVSet's `reconcile`, so every
//! value has a dot.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use cairn_proto::limits::{
    CONTEXT_BYTES_MAX, OBJECT_BYTES_HARD_MAX, OBJECT_BYTES_MAX, SIBLINGS_HARD_MAX, SIBLINGS_MAX,
    VV_ENTRIES_HARD_MAX, VV_ENTRIES_MAX,
};
use cairn_proto::{check_len, Context, LimitError};
use serde::{Deserialize, Serialize};

pub use cairn_proto::ActorId;

/// A version vector over actors: the causal context a client reads and writes back.
pub type VClock = crdts::VClock<ActorId>;

/// One write event: the `counter`-th dot minted by `actor`.
pub type Dot = crdts::Dot<ActorId>;

/// Why a versioning operation was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The write's dot is not newer than what the key or the context already records for its
    /// actor. Accepting it could silently overwrite or resurrect a value, so a reused dot or a
    /// forged context is refused instead.
    #[error(
        "dot {}:{} is not fresh: counter {seen} of that actor is already known (reused dot or forged context)",
        dot.actor,
        dot.counter
    )]
    DotNotFresh {
        /// The dot the write was to get.
        dot: Dot,
        /// The highest counter of `dot.actor` already seen by the key or the context.
        seen: u64,
    },
    /// A size limit was exceeded.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A context's bytes are not one a node produced.
    #[error("context is not valid: {reason}")]
    BadContext {
        /// What was wrong with it.
        reason: String,
    },
    /// An object's bytes (from disk or a peer) are not a well-formed object.
    #[error("object is not valid: {reason}")]
    BadObject {
        /// What was wrong with it.
        reason: String,
    },
}

/// What one sibling holds: a value, or the marker a delete leaves.
///
/// `Ord` exists only so that `sync` picks deterministically should two replicas ever disagree on
/// the payload of one dot (which a never-reused dot rules out).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// A value a client wrote.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A delete: it supersedes what its context saw, and is itself superseded like any value.
    Tombstone,
}

/// What one actor has done to one key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Entry {
    /// The highest counter of this actor seen for this key: every dot of the actor at or below it
    /// is either in `values` or superseded.
    counter: u64,
    /// Live siblings by dot counter, strictly decreasing (newest first), each `<= counter`.
    values: Vec<(u64, Payload)>,
}

/// All versions of one key.
///
/// Entries are sorted by actor; per entry the counter `n` (all events of that actor seen for this
/// key) and the live siblings newest first. Deserializing validates the invariants, so an
/// `Object` that exists is always well formed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "ObjectRepr")]
pub struct Object {
    // Serialized as a sequence of pairs (same bytes as a map in postcard) so that decoding can see
    // and refuse duplicate or unsorted actors instead of letting a map silently fold them.
    #[serde(serialize_with = "entries_as_seq")]
    entries: BTreeMap<ActorId, Entry>,
}

/// The wire shape of [`Object`], checked before it becomes one.
#[derive(Deserialize)]
struct ObjectRepr {
    entries: Vec<(ActorId, Entry)>,
}

fn entries_as_seq<S: serde::Serializer>(
    entries: &BTreeMap<ActorId, Entry>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(entries.iter())
}

impl TryFrom<ObjectRepr> for Object {
    type Error = VersionError;

    fn try_from(repr: ObjectRepr) -> Result<Object, VersionError> {
        // Counted before anything else so an oversized vector is refused as a limit, not as noise.
        check_entries(repr.entries.len(), Limits::Merge)?;
        let mut entries = BTreeMap::new();
        let mut previous: Option<ActorId> = None;
        for (actor, entry) in repr.entries {
            if previous.is_some_and(|p| p >= actor) {
                return Err(bad_object(format!(
                    "actor {actor} is out of order or repeated"
                )));
            }
            previous = Some(actor);
            if entry.counter == 0 {
                return Err(bad_object(format!("actor {actor} has counter 0")));
            }
            // The next sibling's counter may be at most this: the entry's counter first, then
            // strictly below the previous sibling's. (Not `counter + 1` as a bound: a counter of
            // u64::MAX from a disk or a peer must be an answer, not an overflow; found by fuzzing.)
            let mut at_most = entry.counter;
            for (counter, _) in &entry.values {
                if *counter == 0 || *counter > at_most {
                    return Err(bad_object(format!(
                        "actor {actor}: sibling counter {counter} is not between 1 and {at_most} \
                         (entry counter {}, siblings newest first)",
                        entry.counter
                    )));
                }
                at_most = counter - 1;
            }
            entries.insert(actor, entry);
        }
        let object = Object { entries };
        check_siblings(object.sibling_count(), Limits::Merge)?;
        Ok(object)
    }
}

fn bad_object(reason: String) -> VersionError {
    VersionError::BadObject { reason }
}

fn bad_context(reason: String) -> VersionError {
    VersionError::BadContext { reason }
}

/// The limits an object is held to.
///
/// Client writes stop at the client limits; merges from peers (replicate, read repair,
/// anti-entropy, handoff) and whatever comes from a disk or a peer are held to the larger hard
/// limits, so replicas that each took writes up to the client limits still converge
/// (`proto/src/limits.rs` states the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// `SIBLINGS_MAX`, `VV_ENTRIES_MAX`, `OBJECT_BYTES_MAX`.
    Client,
    /// `SIBLINGS_HARD_MAX`, `VV_ENTRIES_HARD_MAX`, `OBJECT_BYTES_HARD_MAX`.
    Merge,
}

fn over_hard(limit: &str, value: usize, max: usize) -> LimitError {
    LimitError::OverHardLimit {
        limit: limit.to_owned(),
        value: value as u64,
        max: max as u64,
    }
}

fn check_entries(entries: usize, limits: Limits) -> Result<(), LimitError> {
    match limits {
        Limits::Client => check_len(entries, VV_ENTRIES_MAX, |entries, max| {
            LimitError::VersionVectorTooLarge { entries, max }
        }),
        Limits::Merge if entries > VV_ENTRIES_HARD_MAX => Err(over_hard(
            "VV_ENTRIES_HARD_MAX",
            entries,
            VV_ENTRIES_HARD_MAX,
        )),
        Limits::Merge => Ok(()),
    }
}

fn check_siblings(count: usize, limits: Limits) -> Result<(), LimitError> {
    match limits {
        Limits::Client => check_len(count, SIBLINGS_MAX, |count, max| {
            LimitError::TooManySiblings { count, max }
        }),
        Limits::Merge if count > SIBLINGS_HARD_MAX => {
            Err(over_hard("SIBLINGS_HARD_MAX", count, SIBLINGS_HARD_MAX))
        }
        Limits::Merge => Ok(()),
    }
}

fn check_object_bytes(len: usize, limits: Limits) -> Result<(), LimitError> {
    match limits {
        Limits::Client => check_len(len, OBJECT_BYTES_MAX, |len, max| {
            LimitError::ObjectTooLarge { len, max }
        }),
        Limits::Merge if len > OBJECT_BYTES_HARD_MAX => Err(over_hard(
            "OBJECT_BYTES_HARD_MAX",
            len,
            OBJECT_BYTES_HARD_MAX,
        )),
        Limits::Merge => Ok(()),
    }
}

impl Object {
    /// The object of a key never written: no history, no values.
    pub fn new() -> Object {
        Object::default()
    }

    /// DVVSet `update(new(ctx, payload), self, actor)`: discards every sibling `ctx` covers, then
    /// adds `payload` under `dot`.
    ///
    /// `dot.counter` must exceed the counter of `dot.actor` in both `self` and `ctx`, else
    /// [`VersionError::DotNotFresh`]: a reused dot or a forged context must never overwrite.
    /// The result must stay within `SIBLINGS_MAX`, `VV_ENTRIES_MAX` and `OBJECT_BYTES_MAX`, else
    /// [`VersionError::Limit`]. On error nothing changes (`self` is only read).
    pub fn update(&self, ctx: &VClock, dot: Dot, payload: Payload) -> Result<Object, VersionError> {
        let seen = self.max_counter(dot.actor).max(ctx.get(&dot.actor));
        if dot.counter <= seen {
            return Err(VersionError::DotNotFresh { dot, seen });
        }
        // Discard: merging with the context lifted to an object with no values drops exactly the
        // siblings the context covers and raises the counters to the context's.
        let mut next = self.sync(&Object::lift(ctx));
        // Event: `dot.counter` is above every counter of the actor, so newest-first holds.
        let entry = next.entries.entry(dot.actor).or_default();
        entry.counter = dot.counter;
        entry.values.insert(0, (dot.counter, payload));
        next.check_limits(Limits::Client)?;
        // A key merged past `VV_ENTRIES_MAX` must stay writable (nothing prunes actors): a
        // write is refused for the vector only if it adds an actor.
        if next.entries.len() > self.entries.len().max(VV_ENTRIES_MAX) {
            check_entries(next.entries.len(), Limits::Client)?;
        }
        Ok(next)
    }

    /// DVVSet `update` with per-key counters exactly as the paper: the dot's counter is one more
    /// than the larger of the actor's counter in `self` and in `ctx`. Used by the published
    /// scenarios and the simulator; the node itself mints dots with [`Object::update`].
    pub fn update_next(
        &self,
        ctx: &VClock,
        actor: ActorId,
        payload: Payload,
    ) -> Result<Object, VersionError> {
        let counter = self.max_counter(actor).max(ctx.get(&actor)) + 1;
        self.update(ctx, Dot::new(actor, counter), payload)
    }

    /// Merges two replicas' versions of one key. Never fails and never drops a sibling one side
    /// holds unless the other side's history covers it.
    ///
    /// The result can exceed the limits when replicas accepted concurrent writes independently;
    /// call [`Object::check_limits`] before storing it if that matters.
    pub fn sync(&self, other: &Object) -> Object {
        let mut entries = self.entries.clone();
        for (actor, theirs) in &other.entries {
            match entries.get_mut(actor) {
                Some(ours) => *ours = merge_entry(ours, theirs),
                None => {
                    entries.insert(*actor, theirs.clone());
                }
            }
        }
        Object { entries }
    }

    /// The causal context handed to clients: per actor, the highest counter seen for this key.
    pub fn join(&self) -> VClock {
        VClock {
            dots: self
                .entries
                .iter()
                .map(|(actor, entry)| (*actor, entry.counter))
                .collect(),
        }
    }

    /// Whether `other`'s counters strictly dominate this object's (every actor at least as high,
    /// one higher); values are ignored. Anti-entropy uses it to skip a merge that adds nothing.
    pub fn less(&self, other: &Object) -> bool {
        self.join().partial_cmp(&other.join()) == Some(Ordering::Less)
    }

    /// Every sibling, tombstones included, by actor ascending and newest first.
    pub fn siblings(&self) -> Vec<(Dot, &Payload)> {
        self.entries
            .iter()
            .flat_map(|(actor, entry)| {
                entry
                    .values
                    .iter()
                    .map(move |(counter, payload)| (Dot::new(*actor, *counter), payload))
            })
            .collect()
    }

    /// The siblings that are values, not tombstones, in the order of [`Object::siblings`].
    pub fn live(&self) -> Vec<(Dot, &[u8])> {
        self.siblings()
            .into_iter()
            .filter_map(|(dot, payload)| match payload {
                Payload::Value(bytes) => Some((dot, bytes.as_slice())),
                Payload::Tombstone => None,
            })
            .collect()
    }

    /// Whether the object holds no sibling at all (it may still carry history).
    pub fn is_empty(&self) -> bool {
        self.entries.values().all(|entry| entry.values.is_empty())
    }

    /// The object without its history-only entries (actors with a counter and no sibling): its
    /// siblings and the counters of their actors. Two copies that differ only by history-only
    /// entries hold the same values and claim the same events of every actor that has a sibling;
    /// they differ only by the fresh per-key actors a writer records when a merge brings events
    /// it had lost (`crate::writer`, "Per-key actors"). The reaper identifies a tombstone by
    /// this, so a replica handing back a tombstone another reaped still matches it.
    pub fn siblings_only(&self) -> Object {
        Object {
            entries: self
                .entries
                .iter()
                .filter(|(_, entry)| !entry.values.is_empty())
                .map(|(actor, entry)| (*actor, entry.clone()))
                .collect(),
        }
    }

    /// Siblings held, tombstones included.
    pub fn sibling_count(&self) -> usize {
        self.entries.values().map(|entry| entry.values.len()).sum()
    }

    /// `(actor, n, values newest first)` per actor, ascending: the shape of the published DVVSet
    /// states, for comparing with them.
    pub fn entries(&self) -> Vec<(ActorId, u64, Vec<&Payload>)> {
        self.entries
            .iter()
            .map(|(actor, entry)| {
                let values = entry.values.iter().map(|(_, payload)| payload).collect();
                (*actor, entry.counter, values)
            })
            .collect()
    }

    /// The highest counter of `actor` seen for this key, 0 if none.
    pub fn max_counter(&self, actor: ActorId) -> u64 {
        self.entries.get(&actor).map_or(0, |entry| entry.counter)
    }

    /// Checks the object against `limits`. For [`Limits::Client`] the version vector is left
    /// to [`Object::update`], which refuses only a write that adds an actor past the limit.
    pub fn check_limits(&self, limits: Limits) -> Result<(), VersionError> {
        check_siblings(self.sibling_count(), limits)?;
        if limits == Limits::Merge {
            check_entries(self.entries.len(), limits)?;
        }
        check_object_bytes(self.encoded_len(), limits)?;
        Ok(())
    }

    /// Whether the object is over a client limit (it can be, up to the hard limits, after a
    /// merge): a key the node reports, since client writes to it are refused until resolved.
    pub fn over_client_limits(&self) -> bool {
        self.sibling_count() > SIBLINGS_MAX
            || self.entries.len() > VV_ENTRIES_MAX
            || self.encoded_len() > OBJECT_BYTES_MAX
    }

    fn encoded_len(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .expect("measuring the encoding of an Object cannot fail")
    }

    /// The object's bytes (postcard), for the store and for peers.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding an Object into a Vec cannot fail")
    }

    /// A replica's copy as a read answer carries it (`PeerResponse::Object`,
    /// `BatchAnswer::Object`): no bytes for a copy without siblings (the key is absent here),
    /// else its encoding. [`Object::decode_copy`] reads it back.
    pub fn encode_copy(&self) -> Vec<u8> {
        if self.is_empty() {
            Vec::new()
        } else {
            self.encode()
        }
    }

    /// Reads a copy made by [`Object::encode_copy`]: no bytes are an absent key.
    pub fn decode_copy(bytes: &[u8]) -> Result<Object, VersionError> {
        if bytes.is_empty() {
            Ok(Object::new())
        } else {
            Object::decode(bytes)
        }
    }

    /// Reads bytes made by [`Object::encode`]. The bytes come from a disk or a peer, so anything
    /// malformed or over a limit is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Object, VersionError> {
        // Checked before decoding so a huge buffer is refused without work.
        check_object_bytes(bytes.len(), Limits::Merge)?;
        let (repr, rest) = postcard::take_from_bytes::<ObjectRepr>(bytes)
            .map_err(|e| bad_object(format!("cannot decode: {e}")))?;
        if !rest.is_empty() {
            return Err(bad_object(format!(
                "{} trailing bytes after the object",
                rest.len()
            )));
        }
        Object::try_from(repr)
    }

    /// The object with `dot` recorded as seen and no value for it: the actor's counter rises to
    /// `dot.counter` (if lower), and any sibling of that actor at or below it that this object
    /// holds stays. The writer records a fresh per-key actor this way when it merges a copy whose
    /// history of its own actors it lost (see `writer.rs`, "Per-key actors").
    pub fn witness(&self, dot: Dot) -> Object {
        if dot.counter == 0 {
            // Counter 0 is no event; an entry with it would break the invariants.
            return self.clone();
        }
        let mut entry = self.entries.get(&dot.actor).cloned().unwrap_or_default();
        entry.counter = entry.counter.max(dot.counter);
        let mut entries = self.entries.clone();
        entries.insert(dot.actor, entry);
        Object { entries }
    }

    /// A context as an object with history and no values: the left side of DVVSet's discard.
    fn lift(ctx: &VClock) -> Object {
        Object {
            entries: ctx
                .dots
                .iter()
                // A zero counter says nothing; keeping it would add an entry with no history.
                .filter(|(_, counter)| **counter > 0)
                .map(|(actor, counter)| {
                    let entry = Entry {
                        counter: *counter,
                        values: Vec::new(),
                    };
                    (*actor, entry)
                })
                .collect(),
        }
    }
}

/// Merges one actor's entries of two replicas; see the module documentation for the rule.
fn merge_entry(ours: &Entry, theirs: &Entry) -> Entry {
    let mut values = Vec::with_capacity(ours.values.len().max(theirs.values.len()));
    let (mut a, mut b) = (
        ours.values.iter().peekable(),
        theirs.values.iter().peekable(),
    );
    loop {
        // Both lists are newest first, so walk them like a merge of sorted lists, descending.
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            Ordering::Equal => {
                // Live on both sides: neither has superseded it.
                let ((dot, px), (_, py)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                values.push((*dot, px.max(py).clone()));
            }
            Ordering::Greater => {
                // Only ours holds it: it survives iff theirs never saw it.
                let (dot, payload) = a.next().expect("peeked");
                if *dot > theirs.counter {
                    values.push((*dot, payload.clone()));
                }
            }
            Ordering::Less => {
                let (dot, payload) = b.next().expect("peeked");
                if *dot > ours.counter {
                    values.push((*dot, payload.clone()));
                }
            }
        }
    }
    Entry {
        counter: ours.counter.max(theirs.counter),
        values,
    }
}

/// The context token for `vv`: postcard of its `(actor, counter)` pairs, actor ascending; the
/// empty version vector is the empty context (a blind write).
pub fn encode_context(vv: &VClock) -> Context {
    if vv.is_empty() {
        return Context::empty();
    }
    let pairs: Vec<(&ActorId, &u64)> = vv.dots.iter().collect();
    Context(postcard::to_allocvec(&pairs).expect("encoding a context into a Vec cannot fail"))
}

/// Reads a context token made by [`encode_context`]. It comes from a client, so anything that
/// is not one a node produced is [`VersionError::BadContext`] and anything too large is
/// [`VersionError::Limit`].
pub fn decode_context(ctx: &Context) -> Result<VClock, VersionError> {
    if ctx.is_empty() {
        return Ok(VClock::new());
    }
    if ctx.0.len() > CONTEXT_BYTES_MAX {
        return Err(LimitError::ContextTooLarge {
            len: ctx.0.len() as u64,
            max: CONTEXT_BYTES_MAX as u64,
        }
        .into());
    }
    let (pairs, rest) = postcard::take_from_bytes::<Vec<(ActorId, u64)>>(&ctx.0)
        .map_err(|e| bad_context(format!("cannot decode: {e}")))?;
    if !rest.is_empty() {
        return Err(bad_context(format!(
            "{} trailing bytes after the context",
            rest.len()
        )));
    }
    check_entries(pairs.len(), Limits::Merge)?;
    let mut dots = BTreeMap::new();
    let mut previous: Option<ActorId> = None;
    for (actor, counter) in pairs {
        if previous.is_some_and(|p| p >= actor) {
            return Err(bad_context(format!(
                "actor {actor} is out of order or repeated"
            )));
        }
        previous = Some(actor);
        if counter == 0 {
            return Err(bad_context(format!("actor {actor} has counter 0")));
        }
        dots.insert(actor, counter);
    }
    Ok(VClock { dots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::NodeId;
    use proptest::prelude::*;

    fn actor(n: u64) -> ActorId {
        ActorId {
            node: NodeId(n),
            epoch: 0,
        }
    }

    fn a() -> ActorId {
        actor(1)
    }
    fn b() -> ActorId {
        actor(2)
    }
    fn c() -> ActorId {
        actor(3)
    }
    fn x() -> ActorId {
        actor(24)
    }

    fn v(s: &str) -> Payload {
        Payload::Value(s.as_bytes().to_vec())
    }

    fn vv(pairs: &[(ActorId, u64)]) -> VClock {
        VClock {
            dots: pairs.iter().copied().collect(),
        }
    }

    /// A state in the published notation: `(id, n, [newest..oldest])`, dots contiguous.
    type State<'a> = &'a [(ActorId, u64, &'a [&'a str])];

    /// Builds an object in the published notation (dot of `values[i]` is `n - i`).
    fn dvv(state: State) -> Object {
        let entries = state
            .iter()
            .map(|(id, n, values)| {
                let values = values
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (n - i as u64, v(s)))
                    .collect();
                let entry = Entry {
                    counter: *n,
                    values,
                };
                (*id, entry)
            })
            .collect();
        Object::try_from(ObjectRepr { entries }).expect("test state is well formed")
    }

    /// Asserts `obj` is exactly the published `expected` state.
    #[track_caller]
    fn check(obj: &Object, expected: State) {
        let want: Vec<(ActorId, u64, Vec<Payload>)> = expected
            .iter()
            .map(|(id, n, values)| (*id, *n, values.iter().map(|s| v(s)).collect()))
            .collect();
        let got: Vec<(ActorId, u64, Vec<Payload>)> = obj
            .entries()
            .into_iter()
            .map(|(id, n, values)| (id, n, values.into_iter().cloned().collect()))
            .collect();
        assert_eq!(got, want);
        // The published states use contiguous dots; ours must agree with them too.
        assert_eq!(obj, &dvv(expected));
    }

    fn put(obj: &Object, ctx: &VClock, at: ActorId, s: &str) -> Object {
        obj.update_next(ctx, at, v(s)).expect("update succeeds")
    }

    fn values(obj: &Object) -> Vec<&[u8]> {
        obj.live().into_iter().map(|(_, bytes)| bytes).collect()
    }

    // REFERENCE.md §2.6, item 1 (dvvset.erl sync_update_test).
    #[test]
    fn scenario_lost_update_avoidance() {
        let none = VClock::new();
        let w1 = put(&Object::new(), &none, a(), "v1");
        check(&w1, &[(a(), 1, &["v1"])]);
        let peter = w1.join();
        assert_eq!(peter, vv(&[(a(), 1)]));
        let w2 = put(&w1, &none, a(), "v2");
        check(&w2, &[(a(), 2, &["v2", "v1"])]);
        let w3 = put(&w2, &peter, a(), "v3");
        check(&w3, &[(a(), 3, &["v3", "v2"])]);
        assert_eq!(values(&w3), vec![b"v3".as_slice(), b"v2"]);
    }

    // Item 2 (update_test).
    #[test]
    fn scenario_update() {
        let a0 = put(&Object::new(), &VClock::new(), a(), "v1");
        check(&a0, &[(a(), 1, &["v1"])]);
        let a1 = put(&a0, &vv(&[(a(), 1)]), a(), "v2");
        check(&a1, &[(a(), 2, &["v2"])]);
        let a2 = put(&a1, &vv(&[(a(), 2)]), b(), "v3");
        check(&a2, &[(a(), 2, &[]), (b(), 1, &["v3"])]);
        let a3 = put(&a1, &vv(&[(a(), 1)]), b(), "v4");
        check(&a3, &[(a(), 2, &["v2"]), (b(), 1, &["v4"])]);
        let a4 = put(&a1, &vv(&[(a(), 1)]), a(), "v5");
        check(&a4, &[(a(), 3, &["v5", "v2"])]);
    }

    // Item 3 (sync_test), table-driven.
    #[test]
    fn scenario_sync() {
        let cases: &[(State, State, State)] = &[
            (
                &[(a(), 1, &[])],
                &[(a(), 2, &["v2", "v1"])],
                &[(a(), 2, &["v2"])],
            ),
            (
                &[(x(), 1, &[])],
                &[(a(), 1, &["v1"])],
                &[(a(), 1, &["v1"]), (x(), 1, &[])],
            ),
            (
                &[(a(), 2, &[]), (b(), 1, &["v3"])],
                &[(a(), 2, &[]), (c(), 1, &["v3"])],
                // Equal bytes under different dots stay two siblings: they are two writes.
                &[(a(), 2, &[]), (b(), 1, &["v3"]), (c(), 1, &["v3"])],
            ),
        ];
        for (left, right, expected) in cases {
            check(&dvv(left).sync(&dvv(right)), expected);
            check(&dvv(right).sync(&dvv(left)), expected);
        }
    }

    // Item 4: alternating stale writers on one server.
    #[test]
    fn scenario_alternating_stale_writers() {
        let none = VClock::new();
        let s1 = put(&Object::new(), &none, a(), "v1");
        let ctx_a = s1.join();
        let s2 = put(&s1, &none, a(), "v2");
        check(&s2, &[(a(), 2, &["v2", "v1"])]);
        let ctx_b = s2.join();
        let s3 = put(&s2, &ctx_a, a(), "v3");
        check(&s3, &[(a(), 3, &["v3", "v2"])]);
        let s4 = put(&s3, &ctx_b, a(), "v4");
        check(&s4, &[(a(), 4, &["v4", "v3"])]);
    }

    // Item 5: partition heal.
    #[test]
    fn scenario_partition_heal() {
        let none = VClock::new();
        let ra = put(&Object::new(), &none, a(), "v1");
        let rb = put(&Object::new(), &none, b(), "v2");
        check(&ra, &[(a(), 1, &["v1"])]);
        check(&rb, &[(b(), 1, &["v2"])]);
        let healed: State = &[(a(), 1, &["v1"]), (b(), 1, &["v2"])];
        let (ra, rb) = (ra.sync(&rb), rb.sync(&ra));
        check(&ra, healed);
        check(&rb, healed);
        assert_eq!(values(&rb), vec![b"v1".as_slice(), b"v2"]);
        let ctx = rb.join();
        assert_eq!(ctx, vv(&[(a(), 1), (b(), 1)]));
        let rb = put(&rb, &ctx, b(), "v3");
        check(&rb, &[(a(), 1, &[]), (b(), 2, &["v3"])]);
        check(&ra.sync(&rb), &[(a(), 1, &[]), (b(), 2, &["v3"])]);
    }

    // Item 6: a context learned from another replica.
    #[test]
    fn scenario_context_from_other_replica() {
        let ra = put(&Object::new(), &VClock::new(), a(), "v1");
        let rb = put(&Object::new(), &vv(&[(a(), 1)]), b(), "v2");
        check(&ra, &[(a(), 1, &["v1"])]);
        check(&rb, &[(a(), 1, &[]), (b(), 1, &["v2"])]);
        let ctx = rb.join();
        assert_eq!(ctx, vv(&[(a(), 1), (b(), 1)]));
        let ra = put(&ra, &ctx, a(), "v3");
        check(&ra, &[(a(), 2, &["v3"]), (b(), 1, &[])]);
        let merged = ra.sync(&rb);
        check(&merged, &[(a(), 2, &["v3"]), (b(), 1, &[])]);
        assert_eq!(values(&merged), vec![b"v3".as_slice()]);
    }

    #[test]
    fn write_with_read_context_removes_exactly_what_the_read_returned() {
        let none = VClock::new();
        let s = put(&Object::new(), &none, a(), "v1");
        let s = put(&s, &none, b(), "v2");
        let read = s.join();
        // Written after the read: concurrent with the next write.
        let s = put(&s, &none, a(), "v3");
        let s = put(&s, &read, b(), "v4");
        assert_eq!(values(&s), vec![b"v3".as_slice(), b"v4"]);
    }

    #[test]
    fn writes_that_did_not_see_each_other_both_survive_everywhere() {
        let base = put(&Object::new(), &VClock::new(), a(), "v0");
        let ctx = base.join();
        // Both writers read `base`, then write at different coordinators.
        let ra = put(&base, &ctx, a(), "left");
        let rb = put(&base, &ctx, b(), "right");
        let rc = base.clone();
        for replica in [rc.sync(&ra).sync(&rb), rc.sync(&rb).sync(&ra), ra.sync(&rb)] {
            assert_eq!(values(&replica), vec![b"left".as_slice(), b"right"]);
        }
        // Two blind writes at the same coordinator are concurrent too.
        let s = put(&Object::new(), &VClock::new(), a(), "p");
        let s = put(&s, &VClock::new(), a(), "q");
        assert_eq!(values(&Object::new().sync(&s)), vec![b"q".as_slice(), b"p"]);
    }

    /// Two clients alternately write, each with the context of its own last read (README
    /// scenario 2); `mint` gives the dot of write `i` at `obj`.
    fn interleaved_writers(mint: impl Fn(&Object, usize) -> Dot) {
        let mut obj = Object::new();
        let mut ctx = [VClock::new(), VClock::new()];
        for i in 1..=101 {
            let client = i % 2;
            let dot = mint(&obj, i);
            obj = obj
                .update(&ctx[client], dot, v(&format!("w{i}")))
                .expect("update succeeds");
            ctx[client] = obj.join();
            if i >= 3 {
                assert_eq!(obj.sibling_count(), 2, "after write {i}");
                let expect = [format!("w{i}"), format!("w{}", i - 1)];
                let got: Vec<String> = values(&obj)
                    .into_iter()
                    .map(|b| String::from_utf8(b.to_vec()).unwrap())
                    .collect();
                assert_eq!(got, expect, "after write {i}");
            }
        }
    }

    #[test]
    fn interleaved_stale_writers_leave_two_siblings_per_key_counters() {
        interleaved_writers(|obj, _| Dot::new(a(), obj.max_counter(a()) + 1));
    }

    #[test]
    fn interleaved_stale_writers_leave_two_siblings_node_wide_counter() {
        // The node's counter also serves other keys, so this key sees gaps of varying size.
        interleaved_writers(|_, i| {
            let i = i as u64;
            Dot::new(a(), (1..=i).map(|k| 1 + (k * 7) % 5).sum())
        });
    }

    #[test]
    fn delete_with_context_leaves_nothing_live() {
        let s = put(&Object::new(), &VClock::new(), a(), "v1");
        let s = put(&s, &VClock::new(), b(), "v2");
        let deleted = s
            .update_next(&s.join(), a(), Payload::Tombstone)
            .expect("delete succeeds");
        assert!(deleted.live().is_empty());
        assert!(!deleted.is_empty(), "the tombstone is kept until reaped");
        assert_eq!(deleted.sibling_count(), 1);
        assert_eq!(
            deleted.siblings(),
            vec![(Dot::new(a(), 2), &Payload::Tombstone)]
        );
    }

    #[test]
    fn concurrent_value_survives_a_delete_that_did_not_see_it() {
        let s = put(&Object::new(), &VClock::new(), a(), "v1");
        let read = s.join();
        let concurrent = put(&s, &read, b(), "v2");
        let deleted = s.update_next(&read, a(), Payload::Tombstone).unwrap();
        for merged in [deleted.sync(&concurrent), concurrent.sync(&deleted)] {
            assert_eq!(values(&merged), vec![b"v2".as_slice()]);
            assert_eq!(merged.sibling_count(), 2);
        }
    }

    #[test]
    fn put_after_delete_with_its_context_is_the_only_value() {
        let s = put(&Object::new(), &VClock::new(), a(), "v1");
        let deleted = s.update_next(&s.join(), b(), Payload::Tombstone).unwrap();
        let again = put(&deleted, &deleted.join(), a(), "v2");
        assert_eq!(values(&again), vec![b"v2".as_slice()]);
        assert_eq!(again.sibling_count(), 1);
        // Also on a replica that only ever saw the delete.
        assert_eq!(deleted.sync(&again), again);
    }

    #[test]
    fn too_many_siblings_is_refused_and_changes_nothing() {
        let mut obj = Object::new();
        for i in 0..SIBLINGS_MAX {
            obj = put(&obj, &VClock::new(), a(), &format!("v{i}"));
        }
        assert_eq!(obj.sibling_count(), SIBLINGS_MAX);
        let before = obj.clone();
        let err = obj
            .update_next(&VClock::new(), a(), v("one too many"))
            .unwrap_err();
        assert_eq!(
            err,
            VersionError::Limit(LimitError::TooManySiblings {
                count: SIBLINGS_MAX as u64 + 1,
                max: SIBLINGS_MAX as u64,
            })
        );
        assert_eq!(obj, before);
        // A write with the context resolves them.
        let resolved = put(&obj, &obj.join(), a(), "resolved");
        assert_eq!(resolved.sibling_count(), 1);
    }

    #[test]
    fn a_merge_past_the_client_limits_is_kept_and_stays_writable_by_its_actors() {
        // Two sides of a partition, each at the client limits.
        let (mut left, mut right) = (Object::new(), Object::new());
        for i in 0..SIBLINGS_MAX / 2 + 1 {
            left = put(&left, &VClock::new(), actor(1000 + i as u64), "l");
            right = put(&right, &VClock::new(), actor(2000 + i as u64), "r");
        }
        for i in 0..VV_ENTRIES_MAX / 2 {
            left = left.sync(&Object::lift(&vv(&[(actor(3000 + i as u64), 1)])));
        }
        let merged = left.sync(&right);
        assert!(merged.over_client_limits());
        assert!(merged.entries.len() > VV_ENTRIES_MAX);
        assert_eq!(merged.check_limits(Limits::Merge), Ok(()));
        assert!(merged.check_limits(Limits::Client).is_err());
        // A blind write by an actor it already holds is refused for the siblings only...
        assert!(matches!(
            merged.update_next(&VClock::new(), actor(1000), v("more")),
            Err(VersionError::Limit(LimitError::TooManySiblings { .. }))
        ));
        // ...one that adds an actor, for the vector...
        assert!(matches!(
            merged.update_next(&merged.join(), actor(9999), v("new actor")),
            Err(VersionError::Limit(
                LimitError::VersionVectorTooLarge { .. }
            ))
        ));
        // ...and a write with the context by one of its actors resolves it.
        let resolved = merged
            .update_next(&merged.join(), actor(1000), v("resolved"))
            .unwrap();
        assert_eq!(resolved.sibling_count(), 1);
    }

    #[test]
    fn too_many_actors_is_refused() {
        let ctx = vv(&(1..=VV_ENTRIES_MAX as u64)
            .map(|n| (actor(100 + n), 1))
            .collect::<Vec<_>>());
        let err = Object::new().update_next(&ctx, a(), v("v")).unwrap_err();
        assert_eq!(
            err,
            VersionError::Limit(LimitError::VersionVectorTooLarge {
                entries: VV_ENTRIES_MAX as u64 + 1,
                max: VV_ENTRIES_MAX as u64,
            })
        );
    }

    #[test]
    fn too_large_object_is_refused() {
        let big = Payload::Value(vec![7; cairn_proto::limits::VALUE_BYTES_MAX]);
        let mut obj = Object::new();
        let mut result = Ok(obj.clone());
        while let Ok(next) = result {
            obj = next;
            result = obj.update_next(&VClock::new(), a(), big.clone());
        }
        assert!(
            matches!(
                result,
                Err(VersionError::Limit(LimitError::ObjectTooLarge { len, max }))
                    if len > max && max == OBJECT_BYTES_MAX as u64
            ),
            "{result:?}"
        );
        assert!(obj.encode().len() <= OBJECT_BYTES_MAX);
        assert_eq!(Object::decode(&obj.encode()), Ok(obj));
    }

    #[test]
    fn stale_or_forged_dots_are_refused() {
        let s = put(&Object::new(), &VClock::new(), a(), "v1");
        let s = put(&s, &VClock::new(), a(), "v2");
        let cases = [
            // A context claiming the dot itself.
            (vv(&[(a(), 5)]), Dot::new(a(), 5), 5),
            // A context claiming beyond it.
            (vv(&[(a(), 9)]), Dot::new(a(), 5), 9),
            // A dot the key already holds (reused).
            (VClock::new(), Dot::new(a(), 2), 2),
            // A dot below one the key already holds.
            (VClock::new(), Dot::new(a(), 1), 2),
        ];
        for (ctx, dot, seen) in cases {
            let err = s.update(&ctx, dot, v("forged")).unwrap_err();
            assert_eq!(err, VersionError::DotNotFresh { dot, seen });
        }
        let message = s
            .update(&VClock::new(), Dot::new(a(), 2), v("x"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("is not fresh"), "{message}");
        // Gaps are fine: a node-wide counter skips numbers.
        let ok = s.update(&s.join(), Dot::new(a(), 1000), v("v3")).unwrap();
        assert_eq!(ok.siblings(), vec![(Dot::new(a(), 1000), &v("v3"))]);
    }

    #[test]
    fn contexts_roundtrip_and_refuse_garbage() {
        assert_eq!(encode_context(&VClock::new()), Context::empty());
        assert_eq!(decode_context(&Context::empty()), Ok(VClock::new()));
        let ctx = vv(&[(a(), 3), (x(), u64::MAX), (b(), 1)]);
        assert_eq!(decode_context(&encode_context(&ctx)), Ok(ctx));

        // A key merged past the client limit hands out contexts past it, and must take them
        // back; past the hard limit no node made the context.
        let over_client = vv(&(0..=VV_ENTRIES_MAX as u64)
            .map(|n| (actor(n), n + 1))
            .collect::<Vec<_>>());
        assert_eq!(
            decode_context(&encode_context(&over_client)),
            Ok(over_client)
        );
        let too_many = vv(&(0..=VV_ENTRIES_HARD_MAX as u64)
            .map(|n| (actor(n), n + 1))
            .collect::<Vec<_>>());
        assert_eq!(
            decode_context(&encode_context(&too_many)),
            Err(VersionError::Limit(LimitError::OverHardLimit {
                limit: "VV_ENTRIES_HARD_MAX".into(),
                value: VV_ENTRIES_HARD_MAX as u64 + 1,
                max: VV_ENTRIES_HARD_MAX as u64,
            }))
        );

        let encoded = |pairs: &[(ActorId, u64)]| Context(postcard::to_allocvec(pairs).unwrap());
        let mut trailing = encode_context(&vv(&[(a(), 1)]));
        trailing.0.push(0);
        let garbage = [
            Context(vec![0xff; 12]),
            Context(vec![3, 1]),
            trailing,
            encoded(&[(b(), 1), (a(), 1)]),
            encoded(&[(a(), 1), (a(), 2)]),
            encoded(&[(a(), 0)]),
        ];
        for ctx in garbage {
            assert!(
                matches!(decode_context(&ctx), Err(VersionError::BadContext { .. })),
                "{ctx:?}"
            );
        }
        assert!(matches!(
            decode_context(&Context(vec![0; CONTEXT_BYTES_MAX + 1])),
            Err(VersionError::Limit(LimitError::ContextTooLarge { .. }))
        ));
    }

    #[test]
    fn decode_refuses_broken_invariants() {
        let raw = |entries: Vec<(ActorId, u64, Vec<u64>)>| {
            let entries: Vec<(ActorId, Entry)> = entries
                .into_iter()
                .map(|(id, counter, dots)| {
                    let values = dots.into_iter().map(|d| (d, v("v"))).collect();
                    (id, Entry { counter, values })
                })
                .collect();
            postcard::to_allocvec(&entries).unwrap()
        };
        let ok = raw(vec![(a(), 5, vec![5, 3]), (b(), 1, vec![])]);
        assert_eq!(
            Object::decode(&ok).unwrap().siblings(),
            vec![(Dot::new(a(), 5), &v("v")), (Dot::new(a(), 3), &v("v"))]
        );
        let broken = [
            ("sibling above counter", raw(vec![(a(), 2, vec![3])])),
            ("oldest first", raw(vec![(a(), 5, vec![3, 5])])),
            ("repeated dot", raw(vec![(a(), 5, vec![4, 4])])),
            ("zero dot", raw(vec![(a(), 5, vec![0])])),
            ("zero counter", raw(vec![(a(), 0, vec![])])),
            (
                "actors unsorted",
                raw(vec![(b(), 1, vec![]), (a(), 1, vec![])]),
            ),
            (
                "actor repeated",
                raw(vec![(a(), 1, vec![]), (a(), 2, vec![])]),
            ),
            ("trailing bytes", [ok.clone(), vec![0]].concat()),
            ("truncated", ok[..ok.len() - 1].to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in broken {
            assert!(
                matches!(Object::decode(&bytes), Err(VersionError::BadObject { .. })),
                "{what}: {:?}",
                Object::decode(&bytes)
            );
        }
        // Stored and replicated objects are held to the hard limits (a merge may pass the
        // client limits).
        let actors = |n: u64| raw((0..n).map(|n| (actor(n), 1, vec![])).collect());
        assert!(Object::decode(&actors(VV_ENTRIES_MAX as u64 + 1)).is_ok());
        assert!(matches!(
            Object::decode(&actors(VV_ENTRIES_HARD_MAX as u64 + 1)),
            Err(VersionError::Limit(LimitError::OverHardLimit { .. }))
        ));
        let siblings = |n: u64| raw(vec![(a(), 1000, (1..=n).rev().collect())]);
        assert!(Object::decode(&siblings(SIBLINGS_MAX as u64 + 1)).is_ok());
        assert!(matches!(
            Object::decode(&siblings(SIBLINGS_HARD_MAX as u64 + 1)),
            Err(VersionError::Limit(LimitError::OverHardLimit { .. }))
        ));
        assert!(matches!(
            Object::decode(&vec![0; OBJECT_BYTES_HARD_MAX + 1]),
            Err(VersionError::Limit(LimitError::OverHardLimit { .. }))
        ));
        // The serde path validates too (objects embedded in peer messages).
        let embedded: Result<Object, _> = postcard::from_bytes(&raw(vec![(a(), 2, vec![3])]));
        assert!(embedded.is_err());
    }

    #[test]
    fn sync_picks_deterministically_if_a_dot_was_ever_reused() {
        // Never-reused dots rule this out; should it happen anyway, replicas still converge.
        let left = dvv(&[(a(), 1, &["left"])]);
        let right = dvv(&[(a(), 1, &["right"])]);
        assert_eq!(left.sync(&right), right.sync(&left));
        assert_eq!(left.sync(&right).sibling_count(), 1);
    }

    #[test]
    fn witness_records_history_and_keeps_every_sibling() {
        let s = dvv(&[(a(), 3, &["v3"]), (b(), 1, &["w"])]);
        // A new actor: a history-only entry; what the object held stays.
        let marked = s.witness(Dot::new(c(), 7));
        assert_eq!(marked.siblings(), s.siblings());
        assert_eq!(marked.max_counter(c()), 7);
        assert!(s.less(&marked));
        // It supersedes, on a merge, only the new actor's events up to its counter.
        let other = dvv(&[(a(), 5, &["v5", "v3"])]);
        assert_eq!(values(&marked.sync(&other)), values(&s.sync(&other)));
        // A known actor's counter only rises; counter 0 is no event.
        assert_eq!(s.witness(Dot::new(a(), 2)), s);
        assert_eq!(s.witness(Dot::new(c(), 0)), s);
        assert_eq!(Object::decode(&marked.encode()), Ok(marked));
    }

    #[test]
    fn empty_object() {
        let empty = Object::new();
        assert!(empty.is_empty());
        assert_eq!(empty.sibling_count(), 0);
        assert!(empty.join().is_empty());
        assert_eq!(empty.max_counter(a()), 0);
        assert_eq!(Object::decode(&empty.encode()), Ok(empty.clone()));
        let history_only = Object::lift(&vv(&[(a(), 3)]));
        assert!(history_only.is_empty());
        assert!(empty.less(&history_only));
    }

    // ---- Property tests over realistic objects ----

    const REPLICAS: usize = 3;

    /// One step of a small cluster's life for one key.
    #[derive(Debug, Clone)]
    enum Step {
        /// A client write coordinated by `replica` (whose actor mints the dot), with the context
        /// of some earlier state of any replica, or a blind write.
        Write {
            replica: usize,
            ctx: Option<prop::sample::Index>,
            payload: Payload,
            /// How many counter values other keys took since this node's last dot.
            skip: u64,
        },
        /// Anti-entropy or replication: `to` merges `from`'s state.
        Sync { from: usize, to: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        let payload = prop_oneof![
            4 => any::<u8>().prop_map(|b| Payload::Value(vec![b])),
            1 => Just(Payload::Tombstone),
        ];
        prop_oneof![
            3 => (0..REPLICAS, prop::option::of(any::<prop::sample::Index>()), payload, 0..3u64)
                .prop_map(|(replica, ctx, payload, skip)| Step::Write { replica, ctx, payload, skip }),
            2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
        ]
    }

    /// Every state the replicas went through, starting with the empty ones. Dots are unique across
    /// the whole history, as the node guarantees, so any states of it may be merged.
    fn history(steps: &[Step]) -> Vec<Object> {
        let mut replicas = vec![Object::new(); REPLICAS];
        let mut counters = [0u64; REPLICAS];
        let mut seen = vec![Object::new()];
        for step in steps {
            match step {
                Step::Write {
                    replica,
                    ctx,
                    payload,
                    skip,
                } => {
                    let ctx = ctx.map_or_else(VClock::new, |i| i.get(&seen).join());
                    counters[*replica] += 1 + skip;
                    let dot = Dot::new(actor(*replica as u64 + 1), counters[*replica]);
                    let current = &replicas[*replica];
                    replicas[*replica] = current
                        .update(&ctx, dot, payload.clone())
                        .expect("fresh dots within limits are accepted");
                }
                Step::Sync { from, to } => {
                    replicas[*to] = replicas[*to].sync(&replicas[*from]);
                }
            }
            seen.extend(replicas.iter().cloned());
        }
        seen
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(step(), 0..24)
    }

    fn pick(states: &[Object], i: &prop::sample::Index) -> Object {
        i.get(states).clone()
    }

    fn covered(dot: &Dot, by: &Object) -> bool {
        dot.counter <= by.max_counter(dot.actor)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn sync_is_a_semilattice_join(
            steps in steps(),
            i in any::<prop::sample::Index>(),
            j in any::<prop::sample::Index>(),
            k in any::<prop::sample::Index>(),
        ) {
            let states = history(&steps);
            let (x, y, z) = (pick(&states, &i), pick(&states, &j), pick(&states, &k));
            prop_assert_eq!(x.sync(&x), x.clone());
            prop_assert_eq!(x.sync(&y), y.sync(&x));
            prop_assert_eq!(x.sync(&y).sync(&z), x.sync(&y.sync(&z)));
        }

        #[test]
        fn sync_keeps_exactly_what_the_other_side_did_not_supersede(
            steps in steps(),
            i in any::<prop::sample::Index>(),
            j in any::<prop::sample::Index>(),
        ) {
            let states = history(&steps);
            let (x, y) = (pick(&states, &i), pick(&states, &j));
            let merged = x.sync(&y);
            let (xs, ys, ms) = (x.siblings(), y.siblings(), merged.siblings());
            // The dot-store join, spelled out naively: a sibling survives iff both sides hold it
            // or the side that lacks it never saw its dot.
            let mut expected: Vec<(Dot, &Payload)> = Vec::new();
            for s in xs.iter().chain(ys.iter()) {
                let keep = match (xs.contains(s), ys.contains(s)) {
                    (true, true) => true,
                    (true, false) => !covered(&s.0, &y),
                    (false, _) => !covered(&s.0, &x),
                };
                if keep && !expected.contains(s) {
                    expected.push(*s);
                }
            }
            for s in &ms {
                prop_assert!(expected.contains(s), "{:?} should have been dropped", s);
            }
            for s in &expected {
                prop_assert!(ms.contains(s), "{:?} was dropped", s);
            }
            prop_assert_eq!(ms.len(), expected.len());
            prop_assert_eq!(merged.join(), {
                let mut vv = x.join();
                for (actor, n) in y.join().dots {
                    let e = vv.dots.entry(actor).or_default();
                    *e = (*e).max(n);
                }
                vv
            });
        }

        #[test]
        fn less_is_a_strict_partial_order(
            steps in steps(),
            i in any::<prop::sample::Index>(),
            j in any::<prop::sample::Index>(),
            k in any::<prop::sample::Index>(),
        ) {
            let states = history(&steps);
            let (x, y, z) = (pick(&states, &i), pick(&states, &j), pick(&states, &k));
            // Chains guarantee the transitivity premise is met, not only when picks happen to be.
            let chain = [x.clone(), x.sync(&y), x.sync(&y).sync(&z)];
            for (p, q, r) in [(&x, &y, &z), (&chain[0], &chain[1], &chain[2])] {
                prop_assert!(!p.less(p));
                if p.less(q) {
                    prop_assert!(!q.less(p));
                }
                if p.less(q) && q.less(r) {
                    prop_assert!(p.less(r));
                }
            }
        }

        #[test]
        fn a_write_with_the_full_context_is_the_only_sibling(
            steps in steps(),
            i in any::<prop::sample::Index>(),
            who in 1..=REPLICAS as u64 + 1,
            value in any::<u8>(),
        ) {
            let states = history(&steps);
            let obj = pick(&states, &i);
            let written = obj.update_next(&obj.join(), actor(who), Payload::Value(vec![value])).unwrap();
            let dot = Dot::new(actor(who), written.max_counter(actor(who)));
            let bytes = [value];
            prop_assert_eq!(written.live(), vec![(dot, bytes.as_slice())]);
            prop_assert_eq!(written.sibling_count(), 1);
            prop_assert!(obj.less(&written));
        }

        #[test]
        fn encoding_roundtrips(steps in steps(), i in any::<prop::sample::Index>()) {
            let states = history(&steps);
            let obj = pick(&states, &i);
            prop_assert_eq!(Object::decode(&obj.encode()), Ok(obj.clone()));
            prop_assert_eq!(decode_context(&encode_context(&obj.join())), Ok(obj.join()));
            // As a read answer: the object itself, or an absent key when it has no sibling.
            let copy = Object::decode_copy(&obj.encode_copy()).unwrap();
            if obj.is_empty() {
                prop_assert!(obj.encode_copy().is_empty());
                prop_assert_eq!(copy, Object::new());
            } else {
                prop_assert_eq!(copy, obj.clone());
            }
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = Object::decode(&bytes);
            let _ = decode_context(&Context(bytes));
        }

        #[test]
        fn decode_of_damaged_objects_never_panics(
            steps in steps(),
            i in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let states = history(&steps);
            let mut bytes = pick(&states, &i).encode();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            // Whatever decodes is well formed: it re-encodes to itself.
            if let Ok(obj) = Object::decode(&bytes) {
                prop_assert_eq!(Object::decode(&obj.encode()), Ok(obj));
            }
            let mut ctx = encode_context(&pick(&states, &i).join());
            if !ctx.0.is_empty() {
                let at = at % ctx.0.len();
                ctx.0[at] = byte;
                let _ = decode_context(&ctx);
            }
        }
    }
}
