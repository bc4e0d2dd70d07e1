//! Forwarded writes applied at most once: the core's table of outcomes by (sender, request id)
//! (`cairn_core::forward::ForwardTable`) behind a lock, with tokio watch channels for the
//! retries waiting on a first attempt that is still being coordinated, and the node's measure of
//! what a reply costs to keep.
//!
//! The table is bounded by count (`FORWARD_REPLIES_MAX`), age (`FORWARD_REPLY_TTL`) and bytes
//! (`FORWARD_REPLY_BYTES_MAX`); a reply over `FORWARD_REPLY_KEPT_BYTES_MAX` is kept only as
//! "applied".

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_core::forward::{self, ForwardTable};
use cairn_proto::{ErrorReply, KeyOpReply};
use tokio::sync::watch;

pub use cairn_core::forward::ForwardKey;

use crate::limits::{FORWARD_REPLY_BYTES_MAX, FORWARD_REPLY_KEPT_BYTES_MAX};

/// What to do with a forward that just arrived.
pub enum Admit {
    /// The first attempt: coordinate it, then [`Forwards::complete`] with the outcome.
    First,
    /// An earlier attempt is being coordinated: wait for its outcome.
    Wait(watch::Receiver<Option<KeyOpReply>>),
    /// An earlier attempt finished with this outcome.
    Done(KeyOpReply),
    /// A retry of a forward this node has no record of, at a time its records do not cover:
    /// the first attempt may have been applied, so this one must not be.
    Unknown,
}

type Waiters = watch::Sender<Option<KeyOpReply>>;

/// The remembered forwards of one node.
pub struct Forwards {
    table: Mutex<ForwardTable<KeyOpReply, Waiters>>,
}

impl Forwards {
    /// An empty table, created at `now` (it knows of no forward before).
    pub fn new(now: Instant) -> Forwards {
        Forwards {
            table: Mutex::new(ForwardTable::new(now, FORWARD_REPLY_BYTES_MAX)),
        }
    }

    /// A forward with `key` arrived at `now`; `retry` says whether the sender sent an earlier
    /// attempt (at most `window` ago) that got no answer.
    pub fn admit(&self, key: ForwardKey, retry: bool, window: Duration, now: Instant) -> Admit {
        let mut t = self.table.lock().expect("forwards lock");
        match t.admit(key, retry, window, now, || watch::channel(None).0) {
            forward::Admit::First => Admit::First,
            forward::Admit::Wait(tx) => Admit::Wait(tx.subscribe()),
            forward::Admit::Done(reply) => Admit::Done(reply),
            forward::Admit::Unknown => Admit::Unknown,
        }
    }

    /// The first attempt of `key` finished with `reply`: remember it and wake any retry
    /// waiting for it.
    pub fn complete(&self, key: ForwardKey, reply: &KeyOpReply) {
        let bytes = reply_bytes(reply);
        let kept = if bytes > FORWARD_REPLY_KEPT_BYTES_MAX {
            applied_too_large(bytes)
        } else {
            reply.clone()
        };
        let charged = bytes.min(FORWARD_REPLY_KEPT_BYTES_MAX);
        let waiting = self
            .table
            .lock()
            .expect("forwards lock")
            .complete(key, kept, charged);
        // Woken with the reply itself, whatever is kept: a waiting retry is the same client.
        if let Some(tx) = waiting {
            tx.send_replace(Some(reply.clone()));
        }
    }

    /// Remembered forwards (running or done), for tests and status.
    pub fn len(&self) -> usize {
        self.table.lock().expect("forwards lock").len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    use cairn_proto::{Context, GetReply, NodeId};

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
