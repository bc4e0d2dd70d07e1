//! Forwarding a client request to the key's chosen coordinator, both ends: the forwarder's
//! policy for one forward ([`Forwarder`]: ask again with the same id, coordinate here, or tell
//! the client the write may have been applied) and the replica's table of forwarded writes
//! applied at most once ([`ForwardTable`]: a retry gets the first attempt's outcome). The node
//! (`node/src/server/dispatch.rs`, `node/src/forwards.rs`) and the simulator drive the same two.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, NodeId};

use crate::coordinator::REQUEST_TIMEOUT_MAX;
use crate::driver::FORWARD_TIMEOUT_MARGIN;
use crate::limits::{FORWARD_ATTEMPTS_MAX, FORWARD_REPLIES_MAX, FORWARD_REPLY_TTL};
use crate::peer::PeerError;

/// How long after a forward's first attempt its last retry can arrive: every attempt waits at
/// most the longest request timeout plus the forward margin.
pub const FORWARD_RETRY_WINDOW: Duration = Duration::from_secs(
    (REQUEST_TIMEOUT_MAX.as_secs() + FORWARD_TIMEOUT_MARGIN.as_secs())
        * FORWARD_ATTEMPTS_MAX as u64,
);
// A replica remembers an outcome for longer than its retries can come.
const _: () = assert!(FORWARD_RETRY_WINDOW.as_secs() < FORWARD_REPLY_TTL.as_secs());

/// A deliberate bug in the forwarder, compiled only with the `sabotage` feature.
#[cfg(feature = "sabotage")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardSabotage {
    /// None: the forwarder behaves as in production.
    #[default]
    None,
    /// A write whose forward went out and got no answer is coordinated here as well (known bug
    /// 3: the forward may have been applied there, so one client write becomes two siblings).
    CoordinateAfterLostReply,
}

/// What the forwarder does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send the forward (again): `PeerRequest::Forward { id, retry, .. }`.
    Send {
        /// The forward's id, the same for every attempt.
        id: u64,
        /// Whether an earlier attempt went out (the replica then answers with its outcome).
        retry: bool,
    },
    /// Coordinate the request at this node: the replica never received it (or it is a read,
    /// which is safe to carry out twice).
    CoordinateHere,
    /// Wait, at most `FORWARD_RETRY_WAIT_MAX` and looking every `FORWARD_RETRY_POLL`, for the
    /// replica to be judged up again, then call [`Forwarder::handle_wait`].
    WaitForUp,
    /// Answer the client with this error (for a write, saying it may have been applied).
    Fail(ErrorReply),
}

/// The forwarder's side of one forwarded client request.
#[derive(Debug, Clone)]
pub struct Forwarder {
    id: u64,
    write: bool,
    /// The replica's name, for the client's error.
    to: String,
    /// Attempts sent.
    attempts: u32,
    /// Why the last attempt failed.
    last_failure: Option<String>,
    #[cfg(feature = "sabotage")]
    sabotage: ForwardSabotage,
}

impl Forwarder {
    /// A forward to replica `to` (by name) with `id` (drawn at random by the node, so that a
    /// restarted forwarder's ids do not meet its earlier ones); `write` for puts and deletes.
    pub fn new(id: u64, write: bool, to: String) -> Forwarder {
        Forwarder {
            id,
            write,
            to,
            attempts: 0,
            last_failure: None,
            #[cfg(feature = "sabotage")]
            sabotage: ForwardSabotage::None,
        }
    }

    /// Puts `sabotage` into this forwarder.
    #[cfg(feature = "sabotage")]
    pub fn set_sabotage(&mut self, sabotage: ForwardSabotage) {
        self.sabotage = sabotage;
    }

    /// The first attempt.
    pub fn start(&mut self) -> Step {
        self.send()
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn send(&mut self) -> Step {
        self.attempts += 1;
        Step::Send {
            id: self.id,
            retry: self.attempts > 1,
        }
    }

    /// The last attempt got no forwarded answer: the transport failed, the replica refused the
    /// peer request itself, or it answered with something else.
    pub fn handle_failure(&mut self, e: &PeerError) -> Step {
        // Over a limit there (an answer too large for a frame): so it would be here.
        if let PeerError::Refused {
            reply: reply @ ErrorReply::Limit(_),
            ..
        } = e
        {
            return Step::Fail(reply.clone());
        }
        if !self.write {
            // A read is safe to carry out here whatever happened there.
            return Step::CoordinateHere;
        }
        #[cfg(feature = "sabotage")]
        if self.sabotage == ForwardSabotage::CoordinateAfterLostReply {
            return Step::CoordinateHere;
        }
        let sent_before = self.attempts > 1;
        // A refusal of the peer request comes before the forward is carried out: this attempt
        // was not applied, but an earlier one may have been.
        let this_arrived = !matches!(e, PeerError::Refused { .. }) && e.may_have_arrived();
        if !sent_before && !this_arrived {
            // Never received there: the write still reaches the replicas that are up.
            return Step::CoordinateHere;
        }
        self.last_failure = Some(e.to_string());
        let retryable = matches!(e, PeerError::Timeout { .. } | PeerError::Lost { .. });
        if self.attempts >= FORWARD_ATTEMPTS_MAX || !retryable {
            // Out of attempts, or the replica cannot be reached or answers what no retry
            // changes: applying the write here too could make it two siblings.
            return self.fail();
        }
        Step::WaitForUp
    }

    /// The wait of [`Step::WaitForUp`] ended; `up` says whether the replica is judged up again.
    pub fn handle_wait(&mut self, up: bool) -> Step {
        if up {
            self.send()
        } else {
            // A node that went silent stays down: no retry that would wait for its timeout.
            self.fail()
        }
    }

    fn fail(&self) -> Step {
        let why = self.last_failure.as_deref().unwrap_or("no answer");
        Step::Fail(ErrorReply::Unreachable {
            node: self.to.clone(),
            reason: format!(
                "{why} (after {} attempts); the write may have been applied there: read the key \
                 before writing again",
                self.attempts
            ),
        })
    }
}

/// What a replica answers a retried forward `id` of which its table has no record
/// ([`Admit::Unknown`]); `node` is the replica's own name.
pub fn unrecorded_retry(node: &str, id: u64) -> ErrorReply {
    ErrorReply::Unreachable {
        node: node.to_owned(),
        reason: format!(
            "a retried forward {id:x} of which this node has no record (it restarted or forgot \
             it within its limits); the first attempt may have been applied: read the key \
             before writing again"
        ),
    }
}

/// One forward: the node that sent it (from its certificate) and the id it drew.
pub type ForwardKey = (NodeId, u64);

/// What to do with a forward that just arrived.
#[derive(Debug)]
pub enum Admit<'a, R, W> {
    /// The first attempt: coordinate it, then [`ForwardTable::complete`] with the outcome.
    First,
    /// An earlier attempt is being coordinated: wait for its outcome on the runner's handle.
    Wait(&'a mut W),
    /// An earlier attempt finished with this outcome.
    Done(R),
    /// A retry of a forward this node has no record of, at a time its records do not cover
    /// (it restarted, or forgot forwards early to stay within its limits): the first attempt
    /// may have been applied, so this one must not be.
    Unknown,
}

#[derive(Debug)]
enum Slot<R, W> {
    Running(W),
    /// The outcome and the bytes it is charged for.
    Done(R, usize),
}

/// The forwarded writes one node remembers, by (sender, id): `R` is the outcome kept, `W` the
/// runner's handle for retries waiting on a running first attempt. Bounded by count
/// (`FORWARD_REPLIES_MAX`), age (`FORWARD_REPLY_TTL`, time passed in) and bytes (`bytes_max`,
/// charged as the runner says).
#[derive(Debug)]
pub struct ForwardTable<R, W> {
    slots: HashMap<ForwardKey, Slot<R, W>>,
    /// Every forward that arrived since this instant is in `slots` (or expired): the table's
    /// creation, raised when a forward is forgotten before its time.
    complete_since: Instant,
    /// Arrival order, for expiry and eviction; keys whose slot is gone are skipped.
    order: VecDeque<(Instant, ForwardKey)>,
    bytes: usize,
    bytes_max: usize,
}

impl<R: Clone, W> ForwardTable<R, W> {
    /// An empty table, created at `now` (it knows of no forward before), keeping outcomes of at
    /// most `bytes_max` bytes in all.
    pub fn new(now: Instant, bytes_max: usize) -> ForwardTable<R, W> {
        ForwardTable {
            slots: HashMap::new(),
            complete_since: now,
            order: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// A forward with `key` arrived at `now`; `retry` says whether the sender sent an earlier
    /// attempt (at most `window` ago) that got no answer. A first attempt is entered as
    /// running with the handle `waiter` makes.
    pub fn admit(
        &mut self,
        key: ForwardKey,
        retry: bool,
        window: Duration,
        now: Instant,
        waiter: impl FnOnce() -> W,
    ) -> Admit<'_, R, W> {
        self.expire(now);
        if self.slots.contains_key(&key) {
            return match self.slots.get_mut(&key) {
                Some(Slot::Running(w)) => Admit::Wait(w),
                Some(Slot::Done(reply, _)) => Admit::Done(reply.clone()),
                None => unreachable!("the slot was just found"),
            };
        }
        // No record: the earlier attempt never arrived, if the records cover its time.
        if retry
            && now
                .checked_sub(window)
                .is_none_or(|first| first < self.complete_since)
        {
            return Admit::Unknown;
        }
        while self.slots.len() >= FORWARD_REPLIES_MAX {
            if !self.evict_oldest() {
                break;
            }
        }
        self.slots.insert(key, Slot::Running(waiter()));
        self.order.push_back((now, key));
        Admit::First
    }

    /// The first attempt of `key` finished: remember `kept`, charged `bytes`, and hand back the
    /// handle of the retries waiting for it (none if `key` was not running).
    pub fn complete(&mut self, key: ForwardKey, kept: R, bytes: usize) -> Option<W> {
        while self.bytes + bytes > self.bytes_max {
            if !self.evict_oldest() {
                break;
            }
        }
        let Some(Slot::Running(waiter)) = self.slots.remove(&key) else {
            return None;
        };
        self.bytes += bytes;
        self.slots.insert(key, Slot::Done(kept, bytes));
        Some(waiter)
    }

    /// Remembered forwards (running or done).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

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

#[cfg(test)]
// A test's clock starts at the real now; the core itself only takes `now` as an argument.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use cairn_proto::LimitError;

    /// A forwarder's retry window in these tests.
    const W: Duration = Duration::from_secs(60);

    type Table = ForwardTable<u8, Vec<u8>>;

    fn timeout() -> PeerError {
        PeerError::Timeout {
            node: "node2".into(),
            after: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_retry_gets_the_first_outcome_and_waits_for_a_running_one() {
        let start = Instant::now();
        let mut t = Table::new(start, 1 << 20);
        let now = start + 2 * W;
        let k = (NodeId(1), 7);
        assert!(matches!(t.admit(k, false, W, now, Vec::new), Admit::First));
        match t.admit(k, true, W, now, Vec::new) {
            Admit::Wait(waiters) => waiters.push(2),
            _ => panic!("a retry during the first attempt waits"),
        }
        assert_eq!(t.complete(k, 1, 10), Some(vec![2]), "the retry is woken");
        assert!(matches!(t.admit(k, true, W, now, Vec::new), Admit::Done(1)));
        // Another sender's id is another forward.
        assert!(matches!(
            t.admit((NodeId(2), 7), false, W, now, Vec::new),
            Admit::First
        ));
        // A retry of a forward never seen, with records covering its window: it never arrived.
        assert!(matches!(
            t.admit((NodeId(2), 8), true, W, now, Vec::new),
            Admit::First
        ));
    }

    #[test]
    fn a_retry_the_records_do_not_cover_is_not_applied() {
        let start = Instant::now();
        let mut t = Table::new(start, 1 << 20);
        // Just after a (re)start, a retry's first attempt may have reached the old process.
        let soon = start + W / 2;
        assert!(matches!(
            t.admit((NodeId(1), 1), true, W, soon, Vec::new),
            Admit::Unknown
        ));
        // A first attempt is always carried out.
        assert!(matches!(
            t.admit((NodeId(1), 2), false, W, soon, Vec::new),
            Admit::First
        ));
    }

    #[test]
    fn outcomes_expire_and_the_table_stays_bounded_by_count_and_bytes() {
        let start = Instant::now();
        let mut t = Table::new(start, 1 << 20);
        let now = start + 2 * W;
        for i in 0..FORWARD_REPLIES_MAX as u64 + 10 {
            assert!(matches!(
                t.admit((NodeId(1), i), false, W, now, Vec::new),
                Admit::First
            ));
            t.complete((NodeId(1), i), 0, 1);
        }
        assert_eq!(t.len(), FORWARD_REPLIES_MAX);
        // The oldest were forgotten first, before their time: a retry of one is not applied.
        assert!(matches!(
            t.admit((NodeId(1), 0), true, W, now, Vec::new),
            Admit::Unknown
        ));
        assert!(matches!(
            t.admit((NodeId(1), 20), true, W, now, Vec::new),
            Admit::Done(_)
        ));
        let later = now + FORWARD_REPLY_TTL;
        assert!(matches!(
            t.admit((NodeId(3), 0), false, W, later, Vec::new),
            Admit::First
        ));
        assert_eq!(t.len(), 1, "everything older than the TTL expired");
        // Bytes: a second outcome that does not fit with the first pushes it out.
        let mut t = Table::new(start, 100);
        for i in 0..2 {
            t.admit((NodeId(1), i), false, W, now, Vec::new);
            t.complete((NodeId(1), i), 0, 60);
        }
        assert!(matches!(
            t.admit((NodeId(1), 0), true, W, now, Vec::new),
            Admit::Unknown
        ));
        assert!(matches!(
            t.admit((NodeId(1), 1), true, W, now, Vec::new),
            Admit::Done(0)
        ));
    }

    #[test]
    fn a_lost_reply_is_asked_again_with_the_same_id_until_the_attempts_run_out() {
        let mut f = Forwarder::new(9, true, "node2".into());
        assert_eq!(
            f.start(),
            Step::Send {
                id: 9,
                retry: false
            }
        );
        for attempt in 2..=FORWARD_ATTEMPTS_MAX {
            assert_eq!(f.handle_failure(&timeout()), Step::WaitForUp);
            assert_eq!(f.handle_wait(true), Step::Send { id: 9, retry: true });
            assert_eq!(f.attempts(), attempt);
        }
        match f.handle_failure(&timeout()) {
            Step::Fail(ErrorReply::Unreachable { node, reason }) => {
                assert_eq!(node, "node2");
                assert!(reason.contains("may have been applied"), "{reason}");
                assert!(reason.contains(&format!("after {FORWARD_ATTEMPTS_MAX} attempts")));
            }
            other => panic!("out of attempts, the write fails: {other:?}"),
        }
    }

    #[test]
    fn a_write_is_coordinated_here_only_if_no_attempt_can_have_arrived() {
        let connect = PeerError::Connect {
            node: "node2".into(),
            reason: "refused".into(),
        };
        let refused = PeerError::Refused {
            node: "node2".into(),
            request: "forward",
            reply: ErrorReply::ShuttingDown,
        };
        // The first attempt never left, or was refused before it was carried out.
        for e in [&connect, &refused] {
            let mut f = Forwarder::new(1, true, "node2".into());
            f.start();
            assert_eq!(f.handle_failure(e), Step::CoordinateHere, "{e}");
        }
        // The replica stays down after a lost reply: no retry, and not here either.
        let mut f = Forwarder::new(1, true, "node2".into());
        f.start();
        assert_eq!(f.handle_failure(&timeout()), Step::WaitForUp);
        assert!(matches!(f.handle_wait(false), Step::Fail(_)));
        // A retry refused, or one that cannot connect: the first attempt may have been applied.
        for e in [&connect, &refused] {
            let mut f = Forwarder::new(1, true, "node2".into());
            f.start();
            f.handle_failure(&timeout());
            f.handle_wait(true);
            assert!(matches!(f.handle_failure(e), Step::Fail(_)), "{e}");
        }
        // An answer of another kind: broken there, and a retry would not change it.
        let mut f = Forwarder::new(1, true, "node2".into());
        f.start();
        let mismatch = PeerError::Mismatch {
            node: "node2".into(),
            request: "forward",
            answer: "Ack".into(),
        };
        assert!(matches!(f.handle_failure(&mismatch), Step::Fail(_)));
    }

    #[test]
    fn a_read_is_coordinated_here_and_a_limit_is_the_answer() {
        let mut f = Forwarder::new(1, false, "node2".into());
        f.start();
        assert_eq!(f.handle_failure(&timeout()), Step::CoordinateHere);
        let too_large = ErrorReply::Limit(LimitError::FrameTooLarge {
            what: "an answer".into(),
            len: 10,
            max: 5,
        });
        let mut f = Forwarder::new(1, false, "node2".into());
        f.start();
        let refused = PeerError::Refused {
            node: "node2".into(),
            request: "forward",
            reply: too_large.clone(),
        };
        assert_eq!(f.handle_failure(&refused), Step::Fail(too_large));
    }
}
