//! Forwarded writes applied at most once: the outcomes a replica remembers by (sender, request
//! id), so a forward retried after its reply was lost gets the first outcome instead of a second
//! application of the write (which would make one client write two siblings).
//!
//! The table is bounded by count (`FORWARD_REPLIES_MAX`), age (`FORWARD_REPLY_TTL`, time passed
//! in) and bytes (`FORWARD_REPLY_BYTES_MAX`). A retry that arrives while the first attempt is
//! still being coordinated waits for its outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, KeyOpReply, NodeId};
use tokio::sync::watch;

use crate::limits::{
    FORWARD_REPLIES_MAX, FORWARD_REPLY_BYTES_MAX, FORWARD_REPLY_KEPT_BYTES_MAX, FORWARD_REPLY_TTL,
};

/// One forward: the node that sent it (from its certificate) and the id it drew.
pub type ForwardKey = (NodeId, u64);

/// What to do with a forward that just arrived.
pub enum Admit {
    /// The first attempt: coordinate it, then [`Forwards::complete`] with the outcome.
    First,
    /// An earlier attempt is being coordinated: wait for its outcome.
    Wait(watch::Receiver<Option<KeyOpReply>>),
    /// An earlier attempt finished with this outcome.
    Done(KeyOpReply),
    /// A retry of a forward this node has no record of, at a time its records do not cover
    /// (it restarted, or forgot forwards early to stay within its limits): the first attempt
    /// may have been applied, so this one must not be.
    Unknown,
}

enum Slot {
    Running(watch::Sender<Option<KeyOpReply>>),
    /// The outcome and the bytes it is charged for.
    Done(KeyOpReply, usize),
}

struct Table {
    slots: HashMap<ForwardKey, Slot>,
    /// Every forward that arrived since this instant is in `slots` (or expired): the table's
    /// creation, raised when a forward is forgotten before its time.
    complete_since: Instant,
    /// Arrival order, for expiry and eviction; keys whose slot is gone are skipped.
    order: VecDeque<(Instant, ForwardKey)>,
    bytes: usize,
}

/// The remembered forwards of one node.
pub struct Forwards {
    table: Mutex<Table>,
}

impl Forwards {
    /// An empty table, created at `now` (it knows of no forward before).
    pub fn new(now: Instant) -> Forwards {
        Forwards {
            table: Mutex::new(Table {
                slots: HashMap::new(),
                complete_since: now,
                order: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    /// A forward with `key` arrived at `now`; `retry` says whether the sender sent an earlier
    /// attempt (at most `window` ago) that got no answer.
    pub fn admit(&self, key: ForwardKey, retry: bool, window: Duration, now: Instant) -> Admit {
        let mut t = self.table.lock().expect("forwards lock");
        t.expire(now);
        match t.slots.get(&key) {
            Some(Slot::Running(tx)) => return Admit::Wait(tx.subscribe()),
            Some(Slot::Done(reply, _)) => return Admit::Done(reply.clone()),
            None => {}
        }
        // No record: the earlier attempt never arrived, if the records cover its time.
        if retry
            && now
                .checked_sub(window)
                .is_none_or(|first| first < t.complete_since)
        {
            return Admit::Unknown;
        }
        while t.slots.len() >= FORWARD_REPLIES_MAX {
            if !t.evict_oldest() {
                break;
            }
        }
        let (tx, _) = watch::channel(None);
        t.slots.insert(key, Slot::Running(tx));
        t.order.push_back((now, key));
        Admit::First
    }

    /// The first attempt of `key` finished with `reply`: remember it and wake any retry
    /// waiting for it.
    pub fn complete(&self, key: ForwardKey, reply: &KeyOpReply) {
        let mut t = self.table.lock().expect("forwards lock");
        let bytes = reply_bytes(reply);
        let kept = if bytes > FORWARD_REPLY_KEPT_BYTES_MAX {
            applied_too_large(bytes)
        } else {
            reply.clone()
        };
        let charged = bytes.min(FORWARD_REPLY_KEPT_BYTES_MAX);
        while t.bytes + charged > FORWARD_REPLY_BYTES_MAX {
            if !t.evict_oldest() {
                break;
            }
        }
        // Woken with the reply itself, whatever is kept: a waiting retry is the same client.
        let Some(Slot::Running(tx)) = t.slots.remove(&key) else {
            return;
        };
        tx.send_replace(Some(reply.clone()));
        t.bytes += charged;
        t.slots.insert(key, Slot::Done(kept, charged));
    }

    /// Remembered forwards (running or done), for tests and status.
    pub fn len(&self) -> usize {
        self.table.lock().expect("forwards lock").slots.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// Forgets every finished forward older than the TTL.
    fn expire(&mut self, now: Instant) {
        self.forget_while(|at, _| now.saturating_duration_since(at) >= FORWARD_REPLY_TTL);
    }

    /// Forgets the oldest finished forward; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let mut evicted = false;
        self.forget_while(|_, done| {
            let first = !evicted && done;
            evicted |= done;
            first || !evicted
        });
        evicted
    }

    /// Walks arrival order from the oldest while `go(arrived, done)` holds, forgetting the
    /// finished forwards it passes. A running one stays (its retry must wait for it; running
    /// forwards are bounded by the requests in flight).
    fn forget_while(&mut self, mut go: impl FnMut(Instant, bool) -> bool) {
        let mut running = Vec::new();
        while let Some(&(at, key)) = self.order.front() {
            let done = match self.slots.get(&key) {
                Some(Slot::Done(..)) => true,
                Some(Slot::Running(_)) => false,
                None => {
                    self.order.pop_front();
                    continue;
                }
            };
            if !go(at, done) {
                break;
            }
            self.order.pop_front();
            if done {
                if let Some(Slot::Done(_, bytes)) = self.slots.remove(&key) {
                    self.bytes -= bytes;
                }
                // Forgotten before its time: the records no longer cover its arrival.
                self.complete_since = self.complete_since.max(at);
            } else {
                running.push((at, key));
            }
        }
        for entry in running.into_iter().rev() {
            self.order.push_front(entry);
        }
    }
}

/// About what a reply costs to keep: its values and contexts.
fn reply_bytes(reply: &KeyOpReply) -> usize {
    const OVERHEAD_BYTES: usize = 64;
    match reply {
        KeyOpReply::Value(r) | KeyOpReply::Written(r) => {
            OVERHEAD_BYTES
                + r.context.0.len()
                + r.siblings
                    .iter()
                    .map(|s| s.value.len() + OVERHEAD_BYTES)
                    .sum::<usize>()
        }
        KeyOpReply::Error(e) => OVERHEAD_BYTES + e.to_string().len(),
    }
}

/// What a retry of a write whose reply was too large to keep is told.
fn applied_too_large(bytes: usize) -> KeyOpReply {
    KeyOpReply::Error(ErrorReply::Refused {
        reason: format!(
            "this forwarded write was already carried out; its reply of {bytes} bytes exceeds \
             FORWARD_REPLY_KEPT_BYTES_MAX ({FORWARD_REPLY_KEPT_BYTES_MAX}), so it was not kept: \
             read the key"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{Context, GetReply};

    /// A forwarder's retry window in these tests.
    const W: Duration = Duration::from_secs(60);

    fn written(n: u8) -> KeyOpReply {
        KeyOpReply::Written(GetReply {
            siblings: Vec::new(),
            context: Context(vec![n]),
        })
    }

    #[test]
    fn a_retry_gets_the_first_outcome_and_waits_for_a_running_one() {
        let start = Instant::now();
        let f = Forwards::new(start);
        let now = start + 2 * W;
        let k = (NodeId(1), 7);
        assert!(matches!(f.admit(k, false, W, now), Admit::First));
        let Admit::Wait(mut rx) = f.admit(k, true, W, now) else {
            panic!("a retry during the first attempt waits");
        };
        f.complete(k, &written(1));
        assert_eq!(*rx.borrow_and_update(), Some(written(1)));
        assert!(matches!(f.admit(k, true, W, now), Admit::Done(r) if r == written(1)));
        // Another sender's id is another forward.
        assert!(matches!(
            f.admit((NodeId(2), 7), false, W, now),
            Admit::First
        ));
        // A retry of a forward never seen, with records covering its window: it never arrived.
        assert!(matches!(
            f.admit((NodeId(2), 8), true, W, now),
            Admit::First
        ));
    }

    #[test]
    fn a_retry_the_records_do_not_cover_is_not_applied() {
        let start = Instant::now();
        let f = Forwards::new(start);
        // Just after a (re)start, a retry's first attempt may have reached the old process.
        let soon = start + W / 2;
        assert!(matches!(
            f.admit((NodeId(1), 1), true, W, soon),
            Admit::Unknown
        ));
        // A first attempt is always carried out.
        assert!(matches!(
            f.admit((NodeId(1), 2), false, W, soon),
            Admit::First
        ));
    }

    #[test]
    fn outcomes_expire_and_the_table_stays_bounded() {
        let start = Instant::now();
        let f = Forwards::new(start);
        let now = start + 2 * W;
        for i in 0..FORWARD_REPLIES_MAX as u64 + 10 {
            assert!(matches!(
                f.admit((NodeId(1), i), false, W, now),
                Admit::First
            ));
            f.complete((NodeId(1), i), &written(0));
        }
        assert_eq!(f.len(), FORWARD_REPLIES_MAX);
        // The oldest were forgotten first, before their time: a retry of one is not applied.
        assert!(matches!(
            f.admit((NodeId(1), 0), true, W, now),
            Admit::Unknown
        ));
        assert!(matches!(
            f.admit((NodeId(1), 20), true, W, now),
            Admit::Done(_)
        ));
        let later = now + FORWARD_REPLY_TTL;
        assert!(matches!(
            f.admit((NodeId(3), 0), false, W, later),
            Admit::First
        ));
        assert_eq!(f.len(), 1, "everything older than the TTL expired");
    }

    #[test]
    fn a_reply_too_large_to_keep_is_remembered_as_applied() {
        let now = Instant::now();
        let f = Forwards::new(now);
        let k = (NodeId(1), 1);
        assert!(matches!(f.admit(k, false, W, now), Admit::First));
        let big = KeyOpReply::Written(GetReply {
            siblings: vec![cairn_proto::Sibling {
                value: vec![0; FORWARD_REPLY_KEPT_BYTES_MAX + 1],
                dot: cairn_proto::DotId {
                    actor: cairn_proto::ActorId {
                        node: NodeId(1),
                        epoch: 1,
                    },
                    counter: 1,
                },
            }],
            context: Context::empty(),
        });
        f.complete(k, &big);
        match f.admit(k, true, W, now) {
            Admit::Done(KeyOpReply::Error(ErrorReply::Refused { reason })) => {
                assert!(reason.contains("already carried out"), "{reason}")
            }
            _ => panic!("a retry must not apply the write again"),
        }
    }
}
