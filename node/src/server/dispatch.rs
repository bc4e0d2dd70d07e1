//! What each request does once its frame is read and its sender's role known: client requests
//! (forwarded to the key's first chosen replica or coordinated here, contexts sealed and
//! opened), peer requests (forwards applied at most once, replicas, batches, gossip, layout,
//! anti-entropy, tombstones) and the operator's layout changes.

use std::sync::Arc;

use cairn_proto::{
    check_peer_request, check_request, BatchAnswer, BatchItem, Context, ContextKey, ErrorReply,
    GetReply, KeyOp, KeyOpReply, NodeId, PeerRequest, PeerResponse, Request, Response, Role,
    StatusReply,
};
use tracing::{debug, warn};

use super::accept::{forbidden, request_name, Peer};
use super::status::{ring_reply, status};
use super::Shared;
use crate::coordinator::{route, Route};
use crate::driver::Job;
use crate::engine::{Engine, Write};
use crate::forwards::Admit;
use crate::limits::{FORWARD_RETRY_POLL, FORWARD_RETRY_WAIT_MAX};
use crate::membership::Membership;
use crate::version::Object;
use cairn_core::forward::{unrecorded_retry, Forwarder, Step, FORWARD_RETRY_WINDOW};
use cairn_core::peer::typed_answer;
use cairn_core::reply::get_reply;
use cairn_core::serve::BatchPlan;

pub(super) async fn handle(req: Request, shared: &Arc<Shared>, peer: Peer) -> Response {
    let needed = req.role_needed();
    if !peer.role.permits(needed) {
        return Response::Error(forbidden(request_name(&req), needed, peer.role));
    }
    let checked = match &req {
        Request::Peer(p) => check_peer_request(p),
        other => check_request(other),
    };
    if let Err(e) = checked {
        return Response::Error(e.into());
    }
    match req {
        Request::Ping => Response::Pong {
            node: shared.name.clone(),
        },
        Request::Status => Response::Status(status(shared)),
        Request::Ring => Response::Ring(ring_reply(shared)),
        Request::Join { seed, dry_run } => {
            layout_change(shared, shared.membership.join(seed, dry_run).await).await
        }
        Request::Leave { dry_run } => {
            layout_change(shared, shared.membership.leave(dry_run).await).await
        }
        Request::Remove { node, dry_run } => {
            layout_change(shared, shared.membership.remove(&node, dry_run).await).await
        }
        Request::Replace { old, new, dry_run } => {
            layout_change(shared, shared.membership.replace(&old, &new, dry_run).await).await
        }
        Request::LayoutForce { node } => {
            // The operator's override (`cairn layout force`): may lose what only `node` held.
            let id = NodeId::from_name(&node);
            let forced = shared
                .membership
                .change_layout(|l| {
                    l.force(id).map_err(|e| ErrorReply::Membership {
                        reason: e.to_string(),
                    })
                })
                .await;
            match forced {
                Ok(()) => {
                    warn!(%node, "layout change goes on without this node: data only it held may be lost");
                    Response::Status(status(shared))
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::Peer(p) => handle_peer(p, shared, peer.node).await,
        Request::Get { .. } | Request::Put { .. } | Request::Delete { .. } => {
            shared.client_request(req).await
        }
    }
}

/// A layout change's answer, its plan counted (keys and bytes per moving partition).
async fn layout_change(
    shared: &Shared,
    result: Result<cairn_proto::LayoutChangeReply, ErrorReply>,
) -> Response {
    match result {
        Ok(mut reply) => {
            shared
                .membership
                .count_plan(&mut reply, shared.trees.as_deref())
                .await;
            Response::LayoutChange(reply)
        }
        Err(e) => Response::Error(e),
    }
}

impl Shared {
    /// Carries out a client get, put or delete that arrived at this node, whatever front end it
    /// came through: checks the tag of the context it carries, forwards it to the key's first
    /// chosen replica or coordinates it here, and tags the context of the reply. Between nodes
    /// (forwards) contexts travel raw.
    pub(crate) async fn client_request(&self, req: Request) -> Response {
        if let Err(e) = check_request(&req) {
            return Response::Error(e.into());
        }
        let req = match open_context(&self.context_key, req) {
            Ok(req) => req,
            Err(e) => return Response::Error(e),
        };
        let key = req.key().map(<[u8]>::to_vec).unwrap_or_default();
        seal_context(&self.context_key, &key, self.client_request_raw(req).await)
    }

    /// [`Shared::client_request`] once the context is opened: answers with a raw context.
    async fn client_request_raw(&self, req: Request) -> Response {
        if let Request::Get { key, opts } = &req {
            if opts.is_local() {
                // This node's own copy, as stored: never forwarded, nothing repaired.
                return match self.engine.read(key.clone()).await {
                    Ok(obj) => Response::Value(get_reply(&obj)),
                    Err(e) => Response::Error(e.into()),
                };
            }
        }
        let Some(key) = req.key() else {
            return Response::Error(ErrorReply::Malformed {
                reason: "only gets, puts and deletes are client requests".into(),
            });
        };
        let is_up = |id| self.peers.is_up(id);
        let view = self.membership.view();
        let Some(ring) = &view.ring else {
            return Response::Error(crate::membership::no_ring(&self.name));
        };
        if let Route::Forward(to) = route(ring, self.me, key, &is_up) {
            crate::metrics::record_forward();
            let op = req
                .clone()
                .into_op()
                .expect("gets, puts and deletes are key operations");
            let is_get = matches!(req, Request::Get { .. });
            let timeout = cairn_core::driver::forward_timeout(match &req {
                Request::Get { opts, .. } => opts.timeout_ms,
                Request::Put { opts, .. } | Request::Delete { opts, .. } => opts.timeout_ms,
                _ => None,
            });
            // One id for every attempt: the replica applies a forwarded write at most once
            // and answers a retry with the first outcome. The core's forwarder decides what
            // follows a failed attempt.
            let mut forwarder = Forwarder::new(rand::random(), !is_get, self.peers.name(to));
            let mut step = forwarder.start();
            loop {
                match step {
                    Step::Send { id, retry } => {
                        let forward = PeerRequest::Forward {
                            id,
                            retry,
                            op: op.clone(),
                        };
                        let answer = self.peers.call(to, forward, timeout).await;
                        let name = self.peers.name(to);
                        match typed_answer(&name, "forward", answer, cairn_core::peer::forwarded) {
                            Ok(reply) => return reply.into(),
                            Err(e) => {
                                step = forwarder.handle_failure(&e);
                                debug!("forward {id:x} to {name}: {e}; next {step:?}");
                            }
                        }
                    }
                    Step::WaitForUp => step = forwarder.handle_wait(self.up_again(to).await),
                    Step::Fail(e) => return Response::Error(e),
                    // The chosen coordinator never got it (and is now marked down), or it is a
                    // read: coordinate here rather than fail, the write still reaches the
                    // replicas that are up.
                    Step::CoordinateHere => break,
                }
            }
        }
        coordinate(req, self).await
    }

    /// Waits, at most `FORWARD_RETRY_WAIT_MAX`, for peer `to` to be judged up again after a
    /// failed forward marked it down; a node that went silent stays down, and its forwards get
    /// no retry that would wait for its timeout.
    async fn up_again(&self, to: NodeId) -> bool {
        let deadline = tokio::time::Instant::now() + FORWARD_RETRY_WAIT_MAX;
        while !self.peers.is_up(to) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(FORWARD_RETRY_POLL).await;
        }
        true
    }

    /// A client request from a TCP front end: counted in flight (shutdown waits for it, as for
    /// QUIC streams), then carried out like one from QUIC.
    pub(crate) async fn frontend_request(&self, req: Request) -> Response {
        let Ok(_permit) = self.in_flight.clone().acquire_owned().await else {
            return Response::Error(ErrorReply::ShuttingDown);
        };
        self.client_request(req).await
    }

    /// This node's view of the cluster, as `status` answers it.
    pub(crate) fn status(&self) -> StatusReply {
        status(self)
    }

    /// The storage engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The `/metrics` page.
    pub(crate) fn metrics(&self) -> String {
        crate::metrics::render(&self.status(), self.engine.stats())
    }
}

/// A client's put or delete with its context's tag checked and removed; a context that was
/// edited, or handed out for another key or by another cluster, is refused.
fn open_context(context_key: &ContextKey, req: Request) -> Result<Request, ErrorReply> {
    let open = |key: &[u8], context: Context| {
        context_key
            .open(key, &context)
            .map_err(|e| ErrorReply::BadContext {
                reason: e.to_string(),
            })
    };
    Ok(match req {
        Request::Put {
            key,
            value,
            context,
            opts,
        } => Request::Put {
            context: open(&key, context)?,
            key,
            value,
            opts,
        },
        Request::Delete { key, context, opts } => Request::Delete {
            context: open(&key, context)?,
            key,
            opts,
        },
        other => other,
    })
}

/// A reply for a client: the raw context of a read or write answer tagged for item `key`.
fn seal_context(context_key: &ContextKey, key: &[u8], response: Response) -> Response {
    let seal = |mut reply: GetReply| {
        reply.context = context_key.seal(key, &reply.context);
        reply
    };
    match response {
        Response::Value(reply) => Response::Value(seal(reply)),
        Response::Written(reply) => Response::Written(seal(reply)),
        other => other,
    }
}

/// Coordinates a client get, put or delete at this node.
async fn coordinate(req: Request, shared: &Shared) -> Response {
    match Job::from_request(req) {
        Some(job) => shared.coordinator.submit(job).await,
        None => Response::Error(ErrorReply::Malformed {
            reason: "only gets, puts and deletes can be coordinated".into(),
        }),
    }
}

/// Carries out a forwarded operation. A forwarded write is applied at most once per (sender,
/// id): a retry gets the first attempt's outcome, waiting for it if it is still running.
async fn forwarded(
    shared: &Arc<Shared>,
    sender: Option<NodeId>,
    id: u64,
    retry: bool,
    op: KeyOp,
) -> KeyOpReply {
    // A read is safe to carry out again; a node certificate always names its node.
    let (Some(sender), false) = (sender, matches!(op, KeyOp::Get { .. })) else {
        return KeyOpReply::from_response(coordinate(op.into(), shared).await);
    };
    let key = (sender, id);
    match shared
        .forwards
        .admit(key, retry, FORWARD_RETRY_WINDOW, std::time::Instant::now())
    {
        Admit::Done(reply) => {
            debug!("forward {id:x} retried: answered with its first outcome");
            reply
        }
        Admit::Wait(mut rx) => match rx.wait_for(Option::is_some).await {
            Ok(reply) => reply.clone().expect("waited for an outcome"),
            Err(_) => KeyOpReply::Error(ErrorReply::ShuttingDown),
        },
        Admit::Unknown => KeyOpReply::Error(unrecorded_retry(&shared.name, id)),
        Admit::First => {
            // Coordinated in a task of its own: if the forwarder's connection breaks, this
            // stream is dropped, but the write must still finish and be remembered for the
            // retry. It ends with the coordinator's deadline, or at shutdown.
            let task_shared = shared.clone();
            let task = shared.tasks.spawn("forwarded write", async move {
                let reply = KeyOpReply::from_response(coordinate(op.into(), &task_shared).await);
                task_shared.forwards.complete(key, &reply);
                reply
            });
            match task.await {
                Ok(Some(reply)) => reply,
                other => {
                    let reply = KeyOpReply::Error(match other {
                        Ok(_) if shared.tasks.is_cancelled() => ErrorReply::ShuttingDown,
                        // Its panic was logged with the task's name.
                        Ok(_) => ErrorReply::Storage {
                            reason: "coordinating the forward failed: its task panicked".into(),
                        },
                        Err(e) => ErrorReply::Storage {
                            reason: format!("coordinating the forward failed: {e}"),
                        },
                    });
                    shared.forwards.complete(key, &reply);
                    reply
                }
            }
        }
    }
}

async fn handle_peer(req: PeerRequest, shared: &Arc<Shared>, sender: Option<NodeId>) -> Response {
    let resp = match req {
        PeerRequest::Ping { .. } => Ok(PeerResponse::Pong {
            node: shared.name.clone(),
        }),
        // Never forwarded again: two nodes with different views must not bounce it.
        PeerRequest::Forward { id, retry, op } => Ok(PeerResponse::Forwarded(
            forwarded(shared, sender, id, retry, op).await,
        )),
        PeerRequest::Replicate {
            key,
            object,
            hint_for,
        } => match Object::decode(&object) {
            Ok(object) => shared
                .engine
                .apply(key, Write::Merge { object, hint_for })
                .await
                .map(|_| PeerResponse::Ack)
                .map_err(ErrorReply::from),
            Err(e) => Err(ErrorReply::Malformed {
                reason: format!("bad object: {e}"),
            }),
        },
        // A node speaks only for itself: gossip claiming another sender is refused.
        PeerRequest::Gossip(message) => match sender {
            Some(sender) => shared
                .membership
                .receive(&message, sender)
                .map(PeerResponse::Gossip),
            // A node certificate always names its node (`certificate_role`).
            None => Err(forbidden("gossip", Role::Node, Role::Data)),
        },
        // As for gossip, a node speaks only for itself.
        PeerRequest::Layout(layout) => match sender {
            Some(sender) => shared.membership.receive_layout(&layout, sender).await,
            None => Err(forbidden("a layout exchange", Role::Node, Role::Data)),
        },
        PeerRequest::Read { key } => match shared.engine.read(key).await {
            Ok(obj) => Ok(PeerResponse::Object(obj.encode_copy())),
            Err(e) => Err(e.into()),
        },
        PeerRequest::AntiEntropy {
            from,
            partition,
            session,
            message,
        } => {
            shared
                .anti_entropy
                .respond(from, partition, session, message)
                .await
        }
        PeerRequest::Keys {
            partition,
            key_hashes,
        } => shared.anti_entropy.keys(partition, key_hashes).await,
        PeerRequest::Tombstones { probes } => crate::reaper::answer(&shared.engine, probes).await,
        PeerRequest::PartitionSizes { partitions } => Ok(PeerResponse::PartitionSizes(
            Membership::partition_sizes(shared.trees.as_deref(), &partitions),
        )),
        PeerRequest::Batch(items) => Ok(PeerResponse::Batch(serve_batch(items, shared).await)),
    };
    match resp {
        Ok(r) => Response::Peer(r),
        Err(e) => Response::Error(e),
    }
}

/// Serves a batch of replica requests (`cairn_core::serve::BatchPlan`): its writes are queued
/// at the engine together, so they share one group commit, and its reads are read one after
/// the other; copies that do not fit one answer frame are refused, and the sender asks for
/// those alone.
async fn serve_batch(
    items: Vec<BatchItem>,
    shared: &Arc<Shared>,
) -> Vec<Result<BatchAnswer, ErrorReply>> {
    let mut plan = BatchPlan::new(items);
    let (writes, reads) = (
        std::mem::take(&mut plan.writes),
        std::mem::take(&mut plan.reads),
    );
    let (written, read) = tokio::join!(
        shared.engine.apply_all(writes),
        shared.engine.read_many(reads)
    );
    plan.answers(
        written
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(ErrorReply::from)),
        read.into_iter().map(|r| r.map_err(ErrorReply::from)),
    )
}
