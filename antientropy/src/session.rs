//! The exchange session: one side of a comparison of two replicas' trees, as a sans-I/O state
//! machine (`handle_message` in, `poll_action` out).

use std::collections::VecDeque;
use std::mem;

use crate::hash::KeyHash;
use crate::limits::{
    CHUNK_HEADER_BYTES_MAX, DEPTH, ENTRY_BYTES, FANOUT, KEYS_PER_DIFF_BATCH_MAX,
    KEYS_PER_LEAF_CHUNK_MAX, MESSAGE_BYTES_MAX, MESSAGE_HEADER_BYTES_MAX, NODES_PER_MESSAGE_MAX,
};
use crate::message::{LeafChunk, Message, NodeChildren, STEP_ENTRIES, STEP_ROOT, STEP_VERDICT};
use crate::tree::MerkleTree;
use crate::AntiEntropyError;

/// Which end of an exchange a session is. The initiator sends the root; otherwise both ends run
/// the same code, and both end up with the same differences (mirrored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that starts the exchange.
    Initiator,
    /// The side that answers.
    Responder,
}

impl Role {
    /// Whether this side sends `step` (the initiator sends the even steps).
    fn sends(self, step: u8) -> bool {
        (step % 2 == 0) == (self == Role::Initiator)
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this message to the peer (encode it with [`Message::encode`]).
    Send(Message),
    /// Keys found to differ, as key hashes, at most `KEYS_PER_DIFF_BATCH_MAX` in one action.
    ///
    /// The driver maps each key hash to its key (the node keeps `key_hash → key` in its store),
    /// reads its local object for every key in `keys_missing_there` and `keys_differing`, and
    /// sends it to the peer, which merges it with `sync`. The peer's session reports the mirror
    /// image and its driver does the same, so every difference is repaired in both directions
    /// and nothing is ever dropped: `sync` keeps concurrent values as siblings.
    /// `keys_missing_here` are the keys the peer will send; they are reported for accounting.
    Diff {
        /// Keys the peer holds and this replica lacks.
        keys_missing_here: Vec<KeyHash>,
        /// Keys this replica holds and the peer lacks.
        keys_missing_there: Vec<KeyHash>,
        /// Keys both hold with different objects.
        keys_differing: Vec<KeyHash>,
    },
    /// The exchange is over and every difference has been reported. Returned again on every
    /// later poll.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This side sends `step` next.
    Sending(u8),
    /// This side waits for the peer's messages of `step`.
    Receiving(u8),
    Done,
    /// A message was refused; the session does nothing more.
    Failed,
}

/// Keys found to differ, from this side's point of view, waiting to be handed out.
#[derive(Debug, Default)]
struct KeyLists {
    missing_here: VecDeque<KeyHash>,
    missing_there: VecDeque<KeyHash>,
    differing: VecDeque<KeyHash>,
}

impl KeyLists {
    fn is_empty(&self) -> bool {
        self.missing_here.is_empty() && self.missing_there.is_empty() && self.differing.is_empty()
    }

    /// Up to `max` keys, taken from the three lists in order.
    fn take(&mut self, max: usize) -> [Vec<KeyHash>; 3] {
        let mut room = max;
        let mut grab = |list: &mut VecDeque<KeyHash>| {
            let n = list.len().min(room);
            room -= n;
            list.drain(..n).collect::<Vec<_>>()
        };
        [
            grab(&mut self.missing_here),
            grab(&mut self.missing_there),
            grab(&mut self.differing),
        ]
    }
}

/// Where the previous item of the current receive step was, so the next must come after it.
#[derive(Debug, Clone, Copy)]
enum Position {
    Node(u32),
    Chunk {
        bucket: u32,
        through: Option<KeyHash>,
    },
}

/// One side of an exchange between two replicas of a partition.
///
/// The protocol descends both trees level by level, and only into nodes whose digests differ.
/// Each step is one one-way trip, and the steps alternate between the sides (the initiator sends
/// the even ones):
///
/// | step | carries | bytes |
/// |---|---|---|
/// | 0 | the root digest and the tree's shape | 35 |
/// | 1..=`DEPTH` | for each node of level k−1 found differing, its `FANOUT` children's digests at level k | ≈ 520 per node |
/// | `DEPTH`+1 | the (key hash, object hash) entries of every leaf bucket found differing | 64 per entry, ≈ 7 per bucket |
/// | `DEPTH`+2 | the verdict: the differing key hashes, from the side that got the entries | 32 per key |
///
/// So identical trees cost one round trip (the root, and an empty step 1 in reply: 39 bytes),
/// and any exchange at most `DEPTH + 3` one-way trips (8 with `DEPTH` 5, i.e. 4 round trips),
/// whatever the number of keys. With d differences, step k carries at most
/// `min(d, FANOUT^(k−1))` nodes, so the bytes are about `d × DEPTH × 520` for the digests plus
/// 64 bytes per entry of the d differing buckets (`1 + keys / LEAVES` each): they follow the
/// differences, and grow with the keys only through the few neighbours sharing a difference's
/// leaf. The session never needs more of the peer's tree than the children of differing nodes.
///
/// The session does not hold the tree: every call takes the local tree, so the node can keep
/// applying writes between calls (a snapshot of a million-key tree per exchange would cost more
/// than the exchange). Differences written meanwhile may or may not be reported (the next
/// exchange finds them); reporting a key that no longer differs costs one idempotent `sync`.
/// The session ends after at most `DEPTH + 3` steps whatever happens to the trees.
///
/// Driving it: call [`Session::poll_action`] until it returns `None` (wait for the peer) or
/// [`Action::Done`]; hand every message from the peer, in order, to
/// [`Session::handle_message`]. Timeouts belong to the driver. The verdict streams back while
/// the entries are still arriving, so the side sending entries accepts verdict messages
/// between its own. A session holds one level's frontier of node indices (4 bytes each, at most
/// `LEAVES`) and the differences found from the latest incoming message, so polling after every
/// message keeps memory small; and the pace at which the driver polls and sends is the pace of
/// the exchange, so its rate limits apply directly.
#[derive(Debug)]
pub struct Session {
    role: Role,
    state: State,
    /// The nodes (or leaf buckets) whose children digests (or entries) this side sends in its
    /// current or most recent send step, ascending. Kept after sending, to check that the
    /// peer's answer only concerns what was offered.
    frontier: Vec<u32>,
    /// How much of `frontier` has been sent.
    cursor: usize,
    /// Inside a leaf bucket too big for one message: the last key already sent.
    chunk_after: Option<KeyHash>,
    /// Items received in the current receive step.
    received: usize,
    /// The last item received in the current receive step.
    position: Option<Position>,
    /// Differing nodes found in the current receive step: the next `frontier`.
    next: Vec<u32>,
    /// Differences still to be sent in verdict messages (on the side that received the entries).
    verdict: KeyLists,
    /// Differences still to be reported as `Action::Diff`.
    diff: KeyLists,
}

impl Session {
    /// A session playing `role`. The initiator's first action is to send the root.
    pub fn new(role: Role) -> Session {
        Session {
            role,
            state: if role == Role::Initiator {
                State::Sending(STEP_ROOT)
            } else {
                State::Receiving(STEP_ROOT)
            },
            frontier: Vec::new(),
            cursor: 0,
            chunk_after: None,
            received: 0,
            position: None,
            next: Vec::new(),
            verdict: KeyLists::default(),
            diff: KeyLists::default(),
        }
    }

    /// This session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the exchange is over (successfully: every difference reported or to be polled).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next thing to do, or `None` while waiting for the peer (or after a failure).
    pub fn poll_action(&mut self, tree: &MerkleTree) -> Option<Action> {
        if !self.diff.is_empty() {
            let [here, there, differing] = self.diff.take(KEYS_PER_DIFF_BATCH_MAX);
            return Some(Action::Diff {
                keys_missing_here: here,
                keys_missing_there: there,
                keys_differing: differing,
            });
        }
        match self.state {
            State::Failed => None,
            State::Done => Some(Action::Done),
            // The verdict streams while the entries still arrive.
            State::Receiving(STEP_ENTRIES) if !self.verdict.is_empty() => {
                Some(Action::Send(self.verdict_message()))
            }
            State::Receiving(_) => None,
            State::Sending(step) => Some(Action::Send(self.build(tree, step))),
        }
    }

    /// Takes one message from the peer. On an error the session is failed: it reports nothing
    /// more, and the driver should drop it.
    pub fn handle_message(
        &mut self,
        tree: &MerkleTree,
        message: Message,
    ) -> Result<(), AntiEntropyError> {
        let result = self.handle(tree, message);
        if result.is_err() {
            self.state = State::Failed;
            self.diff = KeyLists::default();
            self.verdict = KeyLists::default();
        }
        result
    }

    fn handle(&mut self, tree: &MerkleTree, message: Message) -> Result<(), AntiEntropyError> {
        message.validate()?;
        let got = message.step();
        let step = match self.state {
            State::Receiving(step) => step,
            // The peer streams its verdict while our entries are still going out (when the
            // driver paces them), about the buckets already sent.
            State::Sending(STEP_ENTRIES) if got == STEP_VERDICT => STEP_VERDICT,
            _ => {
                return Err(AntiEntropyError::UnexpectedMessage {
                    got,
                    expected: None,
                })
            }
        };
        if got != step {
            return Err(AntiEntropyError::UnexpectedMessage {
                got,
                expected: Some(step),
            });
        }
        debug_assert!(!self.role.sends(step));
        match message {
            Message::Root { digest, .. } => {
                self.received = 1;
                if digest != tree.root() {
                    self.next.push(0);
                }
                self.end_receive(step);
            }
            Message::Nodes { level, nodes, last } => {
                self.receive_nodes(tree, usize::from(level), &nodes)?;
                if last {
                    self.end_receive(step);
                }
            }
            Message::Entries { chunks, last } => {
                for chunk in &chunks {
                    self.receive_chunk(tree, chunk)?;
                }
                if last {
                    if let Some(Position::Chunk {
                        bucket,
                        through: Some(_),
                    }) = self.position
                    {
                        return Err(AntiEntropyError::ChunkGap { bucket });
                    }
                    self.end_receive(step);
                }
            }
            Message::Verdict {
                only_sender,
                only_receiver,
                differing,
                last,
            } => {
                let sending = self.state == State::Sending(STEP_ENTRIES);
                if sending && last {
                    // The verdict cannot be complete before all our entries were sent.
                    return Err(AntiEntropyError::UnexpectedMessage {
                        got: STEP_VERDICT,
                        expected: None,
                    });
                }
                for key in only_sender.iter().chain(&only_receiver).chain(&differing) {
                    if !self.entries_sent(key.leaf()) {
                        return Err(AntiEntropyError::NotOffered {
                            level: DEPTH as u8,
                            index: key.leaf(),
                        });
                    }
                }
                self.received += only_sender.len() + only_receiver.len() + differing.len();
                self.diff.missing_here.extend(only_sender);
                self.diff.missing_there.extend(only_receiver);
                self.diff.differing.extend(differing);
                if last {
                    self.end_receive(step);
                }
            }
        }
        Ok(())
    }

    /// Whether this side has sent (some of) its entries of `bucket`: only keys there can be in
    /// the peer's verdict.
    fn entries_sent(&self, bucket: u32) -> bool {
        match self.frontier.binary_search(&bucket) {
            Err(_) => false,
            Ok(_) if self.state != State::Sending(STEP_ENTRIES) => true,
            Ok(i) => i < self.cursor || (i == self.cursor && self.chunk_after.is_some()),
        }
    }

    /// Compares the peer's children digests with ours; differing children go to `next`.
    fn receive_nodes(
        &mut self,
        tree: &MerkleTree,
        level: usize,
        nodes: &[NodeChildren],
    ) -> Result<(), AntiEntropyError> {
        for item in nodes {
            let parent = item.parent;
            if let Some(Position::Node(previous)) = self.position {
                if parent <= previous {
                    return Err(AntiEntropyError::OutOfOrder {
                        level: (level - 1) as u8,
                        index: parent,
                        previous,
                    });
                }
            }
            self.position = Some(Position::Node(parent));
            // At level 1 the parent is the root, which `validate` already pinned to 0; deeper, it
            // must be a child of a node whose children this side sent.
            if level >= 2
                && self
                    .frontier
                    .binary_search(&(parent / FANOUT as u32))
                    .is_err()
            {
                return Err(AntiEntropyError::NotOffered {
                    level: (level - 1) as u8,
                    index: parent,
                });
            }
            let ours = tree.child_digests(level - 1, parent);
            for (i, (mine, theirs)) in ours.iter().zip(&item.digests).enumerate() {
                if mine != theirs {
                    self.next.push(parent * FANOUT as u32 + i as u32);
                }
            }
        }
        self.received += nodes.len();
        Ok(())
    }

    /// Diffs one chunk of the peer's entries against ours in the same range.
    fn receive_chunk(
        &mut self,
        tree: &MerkleTree,
        chunk: &LeafChunk,
    ) -> Result<(), AntiEntropyError> {
        let bucket = chunk.bucket;
        let continues = match self.position {
            None => chunk.after.is_none(),
            Some(Position::Chunk {
                bucket: previous,
                through: Some(t),
            }) => previous == bucket && chunk.after == Some(t),
            Some(Position::Chunk {
                bucket: previous,
                through: None,
            }) => {
                if bucket <= previous {
                    return Err(AntiEntropyError::OutOfOrder {
                        level: DEPTH as u8,
                        index: bucket,
                        previous,
                    });
                }
                chunk.after.is_none()
            }
            Some(Position::Node(_)) => unreachable!("positions are reset between steps"),
        };
        if !continues {
            return Err(AntiEntropyError::ChunkGap { bucket });
        }
        self.position = Some(Position::Chunk {
            bucket,
            through: chunk.through,
        });
        if self
            .frontier
            .binary_search(&(bucket / FANOUT as u32))
            .is_err()
        {
            return Err(AntiEntropyError::NotOffered {
                level: DEPTH as u8,
                index: bucket,
            });
        }
        self.received += 1;

        // Both sides are in tree order: one merge walk.
        let mut ours = tree
            .leaf_range(bucket, chunk.after.as_ref(), chunk.through.as_ref())
            .peekable();
        let mut theirs = chunk.entries.iter().peekable();
        let found = &mut self.diff;
        loop {
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.tree_order().cmp(&b.tree_order()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (key, _) = ours.next().expect("peeked");
                    found.missing_there.push_back(key);
                    self.verdict.missing_there.push_back(key);
                }
                std::cmp::Ordering::Greater => {
                    let (key, _) = theirs.next().expect("peeked");
                    found.missing_here.push_back(*key);
                    self.verdict.missing_here.push_back(*key);
                }
                std::cmp::Ordering::Equal => {
                    let (key, mine) = ours.next().expect("peeked");
                    let (_, other) = theirs.next().expect("peeked");
                    if mine != *other {
                        found.differing.push_back(key);
                        self.verdict.differing.push_back(key);
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer's step is complete: move on to ours, or end.
    fn end_receive(&mut self, step: u8) {
        if step == STEP_VERDICT || self.received == 0 {
            // After the verdict there is nothing left; and a step with no items means the peer
            // found no difference to descend into, and has ended too.
            self.state = State::Done;
            return;
        }
        // Ascending already: items come in ascending order and children in order within each.
        self.frontier = mem::take(&mut self.next);
        self.cursor = 0;
        self.chunk_after = None;
        self.state = State::Sending(step + 1);
    }

    /// Our step is fully sent: wait for the peer's next, or end.
    fn end_send(&mut self, step: u8) {
        // An empty step tells the peer there is nothing to descend into; both sides end.
        if step == STEP_VERDICT || (step != STEP_ROOT && self.frontier.is_empty()) {
            self.state = State::Done;
            return;
        }
        self.received = 0;
        self.position = None;
        self.next.clear();
        self.state = State::Receiving(step + 1);
    }

    fn build(&mut self, tree: &MerkleTree, step: u8) -> Message {
        debug_assert!(self.role.sends(step));
        match step {
            STEP_ROOT => {
                let message = Message::Root {
                    fanout: FANOUT as u8,
                    depth: DEPTH as u8,
                    digest: tree.root(),
                };
                self.end_send(step);
                message
            }
            STEP_ENTRIES => self.entries_message(tree),
            STEP_VERDICT => self.verdict_message(),
            level => self.nodes_message(tree, usize::from(level)),
        }
    }

    fn nodes_message(&mut self, tree: &MerkleTree, level: usize) -> Message {
        let end = (self.cursor + NODES_PER_MESSAGE_MAX).min(self.frontier.len());
        let nodes = self.frontier[self.cursor..end]
            .iter()
            .map(|&parent| NodeChildren {
                parent,
                digests: tree.child_digests(level - 1, parent),
            })
            .collect();
        self.cursor = end;
        let last = self.cursor == self.frontier.len();
        if last {
            self.end_send(level as u8);
        }
        Message::Nodes {
            level: level as u8,
            nodes,
            last,
        }
    }

    fn entries_message(&mut self, tree: &MerkleTree) -> Message {
        let mut chunks = Vec::new();
        let mut used = MESSAGE_HEADER_BYTES_MAX;
        while let Some(&bucket) = self.frontier.get(self.cursor) {
            let mut range = tree.leaf_range(bucket, self.chunk_after.as_ref(), None);
            let entries: Vec<_> = range.by_ref().take(KEYS_PER_LEAF_CHUNK_MAX).collect();
            let more = range.next().is_some();
            let bytes = CHUNK_HEADER_BYTES_MAX + entries.len() * ENTRY_BYTES;
            if used + bytes > MESSAGE_BYTES_MAX {
                assert!(
                    !chunks.is_empty(),
                    "a fresh message holds a full chunk (checked in limits.rs)"
                );
                break;
            }
            used += bytes;
            let through = if more {
                entries.last().map(|(k, _)| *k)
            } else {
                None
            };
            chunks.push(LeafChunk {
                bucket,
                after: self.chunk_after,
                through,
                entries,
            });
            if more {
                self.chunk_after = through;
            } else {
                self.chunk_after = None;
                self.cursor += 1;
            }
        }
        let last = self.cursor == self.frontier.len();
        if last {
            self.end_send(STEP_ENTRIES);
        }
        Message::Entries { chunks, last }
    }

    fn verdict_message(&mut self) -> Message {
        let [here, there, differing] = self.verdict.take(KEYS_PER_DIFF_BATCH_MAX);
        let last = self.state == State::Sending(STEP_VERDICT) && self.verdict.is_empty();
        if last {
            self.end_send(STEP_VERDICT);
        }
        Message::Verdict {
            only_sender: there,
            only_receiver: here,
            differing,
            last,
        }
    }
}
