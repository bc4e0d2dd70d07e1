//! Simulated clients: one operation at a time, each a random get, put (with the context of the
//! client's own last read of the key, or blind), or delete with context, at a random node with
//! random R/W options; every operation goes into the history.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cairn_core::version::{decode_context, Payload};
use cairn_proto::{Context, KeyOp, KeyOpReply, ReadOptions, WriteOptions};
use rand::Rng;

use super::history::{History, Violation, WriteId};
use super::msg::{key_str, Addr, Body, ClientRequest, ClientResponse};
use super::world::{ClientIx, Event, NodeIx, World};

/// How long a client waits for an answer: the client library's default
/// (`cairn_client::REQUEST_TIMEOUT_DEFAULT`, which lives with tokio and quinn and so cannot be
/// named here); `tests/tests/architecture.rs` checks that the two agree.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What clients need from the simulation.
pub struct ClientCtx<'a> {
    /// Time, randomness, network.
    pub w: &'a mut World,
    /// The history.
    pub history: &'a mut History,
    /// Operations left to issue across all clients.
    pub ops_left: &'a mut usize,
    /// Keys to choose from.
    pub keys: usize,
    /// Nodes to choose from.
    pub nodes: usize,
    /// N.
    pub n: u8,
    /// Think time between operations, milliseconds.
    pub think_ms: (u64, u64),
    /// Problems the verifier ran into.
    pub problems: &'a mut Vec<Violation>,
}

#[derive(Debug)]
enum Kind {
    Read { index: usize, key: Vec<u8> },
    Write(WriteId),
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    kind: Kind,
}

/// One client.
#[derive(Debug)]
pub struct SimClient {
    ix: ClientIx,
    seq: u64,
    pending: Option<Pending>,
    contexts: BTreeMap<Vec<u8>, Context>,
    /// The verifier does only the final full reads (R = N) it is given.
    verify: Option<VecDeque<Vec<u8>>>,
    /// The nodes the verifier asks (the final layout's members).
    verify_at: Vec<NodeIx>,
}

/// The name of key `i`.
pub fn key_name(i: usize) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

impl SimClient {
    /// A random client.
    pub fn new(ix: ClientIx) -> SimClient {
        SimClient {
            ix,
            seq: 0,
            pending: None,
            contexts: BTreeMap::new(),
            verify: None,
            verify_at: Vec::new(),
        }
    }

    /// The verifier, which reads `keys` with R = N, one after another, each at one of `at`.
    pub fn verifier(ix: ClientIx, keys: Vec<Vec<u8>>, at: Vec<NodeIx>) -> SimClient {
        SimClient {
            verify: Some(keys.into()),
            verify_at: at,
            ..SimClient::new(ix)
        }
    }

    fn me(&self) -> Addr {
        Addr::Client(self.ix)
    }

    /// Whether an operation is outstanding.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the verifier has reads left (always false for random clients).
    pub fn verifying(&self) -> bool {
        self.verify.as_ref().is_some_and(|q| !q.is_empty()) || self.busy()
    }

    /// Starts the next operation, if any is left.
    pub fn next(&mut self, cx: &mut ClientCtx) {
        if self.pending.is_some() {
            return;
        }
        if let Some(queue) = &mut self.verify {
            let Some(key) = queue.pop_front() else { return };
            let node = self.verify_at[cx.w.rng.gen_range(0..self.verify_at.len())];
            let opts = ReadOptions {
                r: Some(cx.n),
                ..ReadOptions::default()
            };
            self.send_get(cx, node, key, opts);
            return;
        }
        if *cx.ops_left == 0 {
            return;
        }
        *cx.ops_left -= 1;
        let rng = &mut cx.w.rng;
        let key = key_name(rng.gen_range(0..cx.keys));
        let node = rng.gen_range(0..cx.nodes);
        let roll: u32 = rng.gen_range(0..100);
        let ctx = self.contexts.get(&key).cloned();
        match (roll, ctx) {
            (0..40, _) | (85.., None) => {
                let opts = read_options(cx.w, cx.n);
                self.send_get(cx, node, key, opts);
            }
            (40..70, Some(ctx)) => self.send_write(cx, node, key, ctx, false),
            (40..85, _) => self.send_write(cx, node, key, Context::empty(), false),
            (85.., Some(ctx)) => self.send_write(cx, node, key, ctx, true),
        }
    }

    fn send_get(&mut self, cx: &mut ClientCtx, node: NodeIx, key: Vec<u8>, opts: ReadOptions) {
        let index = cx.history.begin_read(self.ix, key.clone(), cx.w.now);
        let req = ClientRequest {
            op: KeyOp::Get {
                key: key.clone(),
                opts,
            },
            write: None,
        };
        self.send(cx, node, req, Kind::Read { index, key });
    }

    fn send_write(
        &mut self,
        cx: &mut ClientCtx,
        node: NodeIx,
        key: Vec<u8>,
        context: Context,
        delete: bool,
    ) {
        let ctx = decode_context(&context).expect("contexts come from reads");
        let (write, payload) = cx
            .history
            .begin_write(self.ix, key.clone(), delete, ctx, cx.w.now);
        let opts = write_options(cx.w, cx.n);
        let op = match payload {
            Payload::Value(value) => KeyOp::Put {
                key,
                value,
                context,
                opts,
            },
            Payload::Tombstone => KeyOp::Delete { key, context, opts },
        };
        let req = ClientRequest {
            op,
            write: Some(write),
        };
        self.send(cx, node, req, Kind::Write(write));
    }

    fn send(&mut self, cx: &mut ClientCtx, node: NodeIx, req: ClientRequest, kind: Kind) {
        self.seq += 1;
        let seq = self.seq;
        self.pending = Some(Pending { seq, kind });
        cx.w.send(self.me(), Addr::Node(node), Body::ClientReq { seq, req });
        cx.w.after(
            CLIENT_TIMEOUT,
            Event::ClientTimeout {
                client: self.ix,
                seq,
            },
        );
    }

    fn think(&self, cx: &mut ClientCtx) {
        let (lo, hi) = cx.think_ms;
        let delay = cx.w.micros(lo * 1000, hi * 1000);
        cx.w.after(delay, Event::ClientNext(self.ix));
    }

    /// An answer arrived.
    pub fn on_response(&mut self, cx: &mut ClientCtx, seq: u64, resp: ClientResponse) {
        if self.pending.as_ref().is_none_or(|p| p.seq != seq) {
            // A duplicate, or an answer after the client gave up.
            return;
        }
        let pending = self.pending.take().expect("checked above");
        let now = cx.w.now;
        match pending.kind {
            Kind::Write(id) => cx
                .history
                .end_write(id, now, Some((resp.reply, resp.minted))),
            Kind::Read { index, key } => {
                if let KeyOpReply::Value(r) = &resp.reply {
                    self.contexts.insert(key.clone(), r.context.clone());
                } else if self.verify.is_some() {
                    cx.problems.push(Violation {
                        rule: "final read failed",
                        key: key.clone(),
                        detail: format!("R = N read with every node up failed: {:?}", resp.reply),
                    });
                }
                cx.history.end_read(index, resp.reply);
            }
        }
        self.think(cx);
    }

    /// The client gave up on operation `seq`.
    pub fn on_timeout(&mut self, cx: &mut ClientCtx, seq: u64) {
        if self.pending.as_ref().is_none_or(|p| p.seq != seq) {
            return;
        }
        let pending = self.pending.take().expect("checked above");
        cx.w.log(self.me(), format!("op#{seq} timed out"));
        match pending.kind {
            Kind::Write(id) => cx.history.end_write(id, cx.w.now, None),
            Kind::Read { key, .. } => {
                if self.verify.is_some() {
                    cx.problems.push(Violation {
                        rule: "final read failed",
                        key: key.clone(),
                        detail: format!("R = N read of {} got no answer", key_str(&key)),
                    });
                }
            }
        }
        self.think(cx);
    }
}

fn timeout_ms(w: &mut World) -> Option<u32> {
    w.chance(0.3).then(|| w.rng.gen_range(200..=5000))
}

fn read_options(w: &mut World, n: u8) -> ReadOptions {
    let r = if w.chance(0.01) {
        Some(n + 1) // Invalid on purpose: must be refused as BadOptions.
    } else {
        (!w.chance(0.2)).then(|| w.rng.gen_range(1..=n))
    };
    ReadOptions {
        r,
        pr: w
            .chance(0.15)
            .then(|| w.rng.gen_range(1..=r.unwrap_or(1).min(n))),
        notfound_ok: match w.rng.gen_range(0..10) {
            0..=2 => Some(false),
            3 => Some(true),
            _ => None,
        },
        basic_quorum: w.chance(0.3).then(|| w.rng.gen_bool(0.5)),
        timeout_ms: timeout_ms(w),
        local: None,
    }
}

fn write_options(w: &mut World, n: u8) -> WriteOptions {
    let wq = if w.chance(0.01) {
        Some(n + 1) // Invalid on purpose: must be refused as BadOptions.
    } else {
        (!w.chance(0.2)).then(|| w.rng.gen_range(1..=n))
    };
    WriteOptions {
        w: wq,
        pw: w
            .chance(0.15)
            .then(|| w.rng.gen_range(1..=wq.unwrap_or(1).min(n))),
        timeout_ms: timeout_ms(w),
    }
}
