//! Test helpers shared by the integration tests: synthetic keys and objects, the naive set
//! difference the exchange must equal, and a loopback driver that runs two sessions against each
//! other through the real encoding, counting messages, bytes and one-way trips.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cairn_antientropy::{Action, KeyHash, MerkleTree, Message, ObjectHash, Role, Session};

/// A scattered key hash for key number `i`, like `blake3(key)` of a real key.
pub fn key(i: u64) -> KeyHash {
    KeyHash::of_key(&i.to_le_bytes())
}

/// An object hash for version `v` of an object.
pub fn object(v: u64) -> ObjectHash {
    ObjectHash::of_encoded(&v.to_be_bytes())
}

/// A key hash forced into leaf bucket `leaf`, unique per `i`: crafted keys that share a bucket.
pub fn key_in_leaf(leaf: u32, i: u64) -> KeyHash {
    let mut k = key(i).0;
    let offset = cairn_antientropy::limits::PATH_BYTE_OFFSET;
    let shift = 32 - cairn_antientropy::limits::PATH_BITS;
    let mut word = [0u8; 4];
    word.copy_from_slice(&k[offset..offset + 4]);
    let low = u32::from_be_bytes(word) & ((1u32 << shift) - 1);
    let word = (leaf << shift) | low;
    k[offset..offset + 4].copy_from_slice(&word.to_be_bytes());
    let key = KeyHash(k);
    assert_eq!(key.leaf(), leaf);
    key
}

/// A replica's contents as the test sees them.
pub type Contents = BTreeMap<KeyHash, ObjectHash>;

pub fn tree_of(contents: &Contents) -> MerkleTree {
    MerkleTree::from_entries(contents.iter().map(|(k, o)| (*k, *o)))
}

/// What one side learned, as sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    pub missing_here: BTreeSet<KeyHash>,
    pub missing_there: BTreeSet<KeyHash>,
    pub differing: BTreeSet<KeyHash>,
}

impl Found {
    pub fn len(&self) -> usize {
        self.missing_here.len() + self.missing_there.len() + self.differing.len()
    }
}

/// The naive set difference, from `here`'s point of view.
pub fn naive(here: &Contents, there: &Contents) -> Found {
    let mut f = Found::default();
    for (k, o) in here {
        match there.get(k) {
            None => {
                f.missing_there.insert(*k);
            }
            Some(p) if p != o => {
                f.differing.insert(*k);
            }
            Some(_) => {}
        }
    }
    for k in there.keys() {
        if !here.contains_key(k) {
            f.missing_here.insert(*k);
        }
    }
    f
}

/// What an exchange did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What the initiator learned.
    pub a: Found,
    /// What the responder learned.
    pub b: Found,
    /// Messages sent, both ways.
    pub messages: usize,
    /// Encoded bytes sent, both ways.
    pub bytes: usize,
    /// One-way trips: runs of messages in one direction.
    pub flights: usize,
    /// Largest single message.
    pub largest: usize,
    /// Bytes of each one-way trip, in order.
    pub per_flight: Vec<usize>,
    /// Verdict messages that reached the side sending entries before it had sent its last
    /// entries message (only under [`exchange_scheduled`]).
    pub early_verdicts: usize,
}

impl Outcome {
    /// Round trips, counting a final one-way trip as a whole one.
    pub fn round_trips(&self) -> usize {
        self.flights.div_ceil(2)
    }
}

/// Polls `session` until it waits or is done; returns the encoded messages, and records diffs
/// (each key reported once at most) and whether it is done.
fn drain(
    session: &mut Session,
    tree: &MerkleTree,
    found: &mut Found,
    done: &mut bool,
    out: &mut Outcome,
) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    while let Some(action) = session.poll_action(tree) {
        match action {
            Action::Send(message) => {
                let bytes = message
                    .encode()
                    .expect("a session's messages fit the budget");
                out.largest = out.largest.max(bytes.len());
                out.bytes += bytes.len();
                out.messages += 1;
                sent.push(bytes);
            }
            Action::Diff {
                keys_missing_here,
                keys_missing_there,
                keys_differing,
            } => {
                let n = keys_missing_here.len() + keys_missing_there.len() + keys_differing.len();
                assert!(n >= 1, "a Diff action is never empty");
                assert!(n <= cairn_antientropy::limits::KEYS_PER_DIFF_BATCH_MAX);
                for k in keys_missing_here {
                    assert!(found.missing_here.insert(k), "{k} reported twice");
                }
                for k in keys_missing_there {
                    assert!(found.missing_there.insert(k), "{k} reported twice");
                }
                for k in keys_differing {
                    assert!(found.differing.insert(k), "{k} reported twice");
                }
            }
            Action::Done => {
                *done = true;
                break;
            }
        }
    }
    sent
}

/// The two replicas' trees as the loopback driver sees them.
trait Trees {
    fn tree(&self, side: usize) -> &MerkleTree;
    /// Called after every one-way trip.
    fn between(&mut self, _flights: usize) {}
}

struct Fixed<'t>(&'t MerkleTree, &'t MerkleTree);

impl Trees for Fixed<'_> {
    fn tree(&self, side: usize) -> &MerkleTree {
        if side == 0 {
            self.0
        } else {
            self.1
        }
    }
}

struct Changing<'t, F>(&'t mut MerkleTree, &'t mut MerkleTree, F);

impl<F: FnMut(usize, &mut MerkleTree, &mut MerkleTree)> Trees for Changing<'_, F> {
    fn tree(&self, side: usize) -> &MerkleTree {
        if side == 0 {
            self.0
        } else {
            self.1
        }
    }
    fn between(&mut self, flights: usize) {
        (self.2)(flights, self.0, self.1)
    }
}

fn run(trees: &mut impl Trees) -> Outcome {
    let mut sessions = [Session::new(Role::Initiator), Session::new(Role::Responder)];
    let mut found = [Found::default(), Found::default()];
    let mut done = [false, false];
    let mut out = Outcome::default();
    let mut last_direction = None;
    let mut passes = 0;
    while !(done[0] && done[1]) {
        passes += 1;
        assert!(passes <= 64, "exchange did not end: {out:?}");
        for from in [0, 1] {
            let to = 1 - from;
            let sent = drain(
                &mut sessions[from],
                trees.tree(from),
                &mut found[from],
                &mut done[from],
                &mut out,
            );
            if sent.is_empty() {
                continue;
            }
            if last_direction != Some(from) {
                out.flights += 1;
                out.per_flight.push(0);
                last_direction = Some(from);
            }
            *out.per_flight.last_mut().expect("pushed above") +=
                sent.iter().map(Vec::len).sum::<usize>();
            for bytes in sent {
                let message = Message::decode(&bytes).expect("our own messages decode");
                sessions[to]
                    .handle_message(trees.tree(to), message)
                    .expect("our own messages are accepted");
            }
            trees.between(out.flights);
        }
    }
    let [a, b] = found;
    out.a = a;
    out.b = b;
    out
}

/// Runs a whole exchange between `a` (initiator) and `b` (responder) over encoded messages.
pub fn exchange(a: &MerkleTree, b: &MerkleTree) -> Outcome {
    run(&mut Fixed(a, b))
}

/// Like [`exchange`], calling `between` on both trees after every one-way trip (writes landing
/// during the exchange).
pub fn exchange_with(
    a: &mut MerkleTree,
    b: &mut MerkleTree,
    between: impl FnMut(usize, &mut MerkleTree, &mut MerkleTree),
) -> Outcome {
    run(&mut Changing(a, b, between))
}

/// Runs an exchange under a seeded schedule: at each turn one thing happens, either one side
/// polls one action or one message in flight is delivered (in order per direction, as on a
/// stream). Models a driver that paces its sends and a network that interleaves directions.
pub fn exchange_scheduled(a: &MerkleTree, b: &MerkleTree, seed: u64) -> Outcome {
    let trees = [a, b];
    let mut sessions = [Session::new(Role::Initiator), Session::new(Role::Responder)];
    let mut found = [Found::default(), Found::default()];
    let mut done = [false, false];
    let mut in_flight: [VecDeque<Vec<u8>>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut entries_done = [false, false];
    let mut out = Outcome::default();
    let mut rng = seed | 1;
    let mut turns = 0u64;
    while !(done[0] && done[1] && in_flight.iter().all(VecDeque::is_empty)) {
        turns += 1;
        assert!(turns < 10_000_000, "exchange did not end");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let side = (rng % 2) as usize;
        if rng % 5 < 2 {
            // Deliver the oldest message `side` sent.
            let Some(bytes) = in_flight[side].pop_front() else {
                continue;
            };
            let message = Message::decode(&bytes).expect("our own messages decode");
            let to = 1 - side;
            if matches!(message, Message::Verdict { .. }) && !entries_done[to] {
                out.early_verdicts += 1;
            }
            sessions[to]
                .handle_message(trees[to], message)
                .expect("our own messages are accepted");
            continue;
        }
        if done[side] {
            continue;
        }
        match sessions[side].poll_action(trees[side]) {
            None => {}
            Some(Action::Send(message)) => {
                if let Message::Entries { last: true, .. } = message {
                    entries_done[side] = true;
                }
                let bytes = message.encode().expect("fits");
                out.bytes += bytes.len();
                out.messages += 1;
                out.largest = out.largest.max(bytes.len());
                in_flight[side].push_back(bytes);
            }
            Some(Action::Diff {
                keys_missing_here,
                keys_missing_there,
                keys_differing,
            }) => {
                let f = &mut found[side];
                for k in keys_missing_here {
                    assert!(f.missing_here.insert(k), "{k} reported twice");
                }
                for k in keys_missing_there {
                    assert!(f.missing_there.insert(k), "{k} reported twice");
                }
                for k in keys_differing {
                    assert!(f.differing.insert(k), "{k} reported twice");
                }
            }
            Some(Action::Done) => done[side] = true,
        }
    }
    let [a, b] = found;
    out.a = a;
    out.b = b;
    out
}
