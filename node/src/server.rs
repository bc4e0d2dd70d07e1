//! The QUIC service: accepts mutual-TLS connections, reads one request frame per stream, answers
//! it from the engine, and shuts down without dropping acknowledged work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_net::{BudgetedFrame, ConnectionBudget, FrameBudget, Identity, NetError};
use cairn_proto::{
    check_peer_request, check_request, decode_body, decode_client_request, BatchAnswer, BatchItem,
    Context, ContextKey, ErrorReply, FrameError, GetReply, KeyOp, KeyOpReply, LimitError, NodeId,
    PartitionEntry, PeerRequest, PeerResponse, Request, Response, RingReply, Role, Sibling,
    StatusReply,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::antientropy::AntiEntropy;
use crate::config::NodeConfig;
use crate::coordinator::{route, Route, REQUEST_TIMEOUT_MAX};
use crate::driver::{CoordinatorHandle, DriverContext, Job};
use crate::engine::{Engine, EngineError, Write};
use crate::forwards::{Admit, Forwards};
use crate::frontend::FrontendAddrs;
use crate::limits::{
    CONNECTIONS_MAX, FORWARD_ATTEMPTS_MAX, FORWARD_REPLY_TTL, FORWARD_RETRY_POLL,
    FORWARD_RETRY_WAIT_MAX, REQUESTS_IN_FLIGHT_MAX, UP_EVENTS_MAX,
};
use crate::membership::{Membership, MembershipError};
use crate::peers::Peers;
use crate::store::{RedbStore, StoreError};
use crate::trees::Trees;
use crate::version::{encode_context, Object};

/// How long a finished stream waits for the peer to take the response.
const STREAM_LINGER_MAX: Duration = Duration::from_secs(5);

/// How long shutdown waits for in-flight requests before closing connections anyway.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Certificates or the socket could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused to start (e.g. the data directory belongs to another node).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Membership could not start (its state file, or the gossip configuration).
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// A TCP front end (RESP, HTTP, metrics) could not start.
    #[error(transparent)]
    Frontend(#[from] crate::frontend::FrontendError),
    /// The cluster's context key is missing or unreadable.
    #[error(transparent)]
    ContextKey(#[from] crate::config::ConfigError),
    /// A value of the configuration is not acceptable.
    #[error("invalid configuration: {reason}")]
    Config {
        /// Which value and why.
        reason: String,
    },
}

/// A running node.
pub struct Node {
    name: String,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    peers: Arc<Peers>,
    trees: Arc<Trees>,
    /// The start-up rebuild of the Merkle trees (a blocking scan shutdown must wait for).
    rebuild: Option<tokio::task::JoinHandle<()>>,
    anti_entropy: Arc<AntiEntropy>,
    frontends: FrontendAddrs,
}

/// What every request handler of the node shares, whatever front end the request came through.
pub(crate) struct Shared {
    name: String,
    me: NodeId,
    engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// Bytes of request frames in flight, per node and per connection.
    frame_budget: FrameBudget,
    membership: Arc<Membership>,
    peers: Arc<Peers>,
    coordinator: CoordinatorHandle,
    anti_entropy: Arc<AntiEntropy>,
    /// Tags the contexts handed to clients and checks the ones they hand back.
    context_key: ContextKey,
    /// Outcomes of forwarded writes, so a retried forward is not applied twice.
    forwards: Forwards,
    /// Where this node's push of a layout change stands.
    transfer: tokio::sync::watch::Receiver<cairn_core::transfer::TransferStatus>,
    /// Where this node's tombstone reaper stands (`None`: it does not reap).
    reaper: Option<tokio::sync::watch::Receiver<cairn_core::reaper::ReaperStatus>>,
    /// The Merkle trees, while anti-entropy keeps them (they count a partition's keys and bytes).
    trees: Option<Arc<Trees>>,
}

impl Node {
    /// Opens the node's database and starts serving on its configured address.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let identity = Identity::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
        let context_key = config.tls.load_context_key()?;
        config
            .anti_entropy
            .validate()
            .map_err(|reason| NodeError::Config { reason })?;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&data_dir))
            .await
            .expect("open task panicked")?;
        // Trees exist before the engine so the writer records every commit from the first.
        // With anti-entropy off they stay empty and cost nothing.
        let trees = Arc::new(Trees::new(config.cluster().partitions));
        let enabled = config.anti_entropy.enabled;
        let engine = Engine::open_with_trees(
            Arc::new(store),
            NodeId::from_name(&config.name),
            &mut rand::rngs::OsRng,
            enabled.then(|| trees.clone()),
        )?;
        let endpoint = cairn_net::server_endpoint(config.listen, &identity)?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        crate::metrics::install();
        let (listeners, frontends) = crate::frontend::bind(&config, &identity)?;
        let me = NodeId::from_name(&config.name);
        let engine = Arc::new(engine);
        // Room for a burst of peers coming up at once; the handoff loop also scans periodically.
        let (up_tx, up_rx) = mpsc::channel(UP_EVENTS_MAX);
        let peers = Arc::new(Peers::new(me, config.name.clone(), endpoint.clone(), up_tx));
        let advertise = config.advertise.unwrap_or(local_addr);
        let membership = Membership::open(&config, advertise, peers.clone())?;
        let transfer_config = config
            .transfer
            .config()
            .map_err(|reason| NodeError::Config { reason })?;
        let (write_fence, fence) = tokio::sync::watch::channel(0);
        membership.set_write_fence(fence.clone());
        let (coordinator, driver_task) = crate::driver::spawn(Arc::new(DriverContext {
            me,
            engine: engine.clone(),
            peers: peers.clone(),
            view: membership.subscribe(),
            read_repair: config.read_repair,
            write_fence,
        }));
        let (transfer_status, transfer_task) =
            crate::transfer::spawn(crate::transfer::TransferContext {
                me,
                membership: membership.clone(),
                write_fence: fence,
                store: engine.store(),
                peers: peers.clone(),
                config: transfer_config,
                trees: config.anti_entropy.enabled.then(|| trees.clone()),
            });
        let reaper_config = config
            .tombstones
            .config()
            .map_err(|reason| NodeError::Config { reason })?;
        let (reaper_status, reaper_task) = if config.tombstones.reap {
            let (status, task) = crate::reaper::spawn(crate::reaper::ReaperContext {
                me,
                engine: engine.clone(),
                peers: peers.clone(),
                layouts: membership.layout().subscribe(),
                config: reaper_config,
            });
            (Some(status), Some(task))
        } else {
            (None, None)
        };
        let anti_entropy = Arc::new(AntiEntropy::new(
            me,
            config.anti_entropy.clone(),
            membership.clone(),
            engine.clone(),
            trees.clone(),
            peers.clone(),
        ));
        let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            me,
            engine: engine.clone(),
            in_flight: in_flight.clone(),
            connections: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
            frame_budget: FrameBudget::new(),
            membership: membership.clone(),
            peers: peers.clone(),
            coordinator,
            anti_entropy: anti_entropy.clone(),
            context_key,
            forwards: Forwards::new(std::time::Instant::now()),
            transfer: transfer_status,
            reaper: reaper_status,
            trees: enabled.then(|| trees.clone()),
        });
        let peers_handle = peers.clone();
        let layout = membership.layout().clone();
        let mut tasks = vec![
            // The accept loop first: shutdown stops it before draining requests.
            tokio::spawn(accept_loop(endpoint.clone(), shared.clone())),
            driver_task,
            transfer_task,
            tokio::spawn(crate::membership::storage_watch(
                engine.clone(),
                membership.clone(),
            )),
            tokio::spawn(membership.run()),
            tokio::spawn(peers.clone().probe_loop()),
            tokio::spawn(crate::metrics::upkeep()),
        ];
        tasks.extend(reaper_task);
        tasks.extend(
            crate::frontend::serve(listeners, shared)
                .into_iter()
                .map(tokio::spawn),
        );
        tasks.push(tokio::spawn(crate::cleanup::run(
            me,
            engine.clone(),
            layout.ring_config(),
            layout.subscribe(),
        )));
        if config.hinted_handoff {
            tasks.push(tokio::spawn(crate::handoff::run(
                me,
                engine.clone(),
                peers,
                layout,
                up_rx,
            )));
        }
        // Started once nothing can fail any more: a failed start must not leave a scan
        // holding the database. Commits before it are logged for it (the trees log from their
        // creation).
        let rebuild = enabled.then(|| spawn_rebuild(&config.name, &trees, &engine));
        if enabled {
            tasks.push(tokio::spawn(anti_entropy.clone().run()));
        }
        info!(node = %config.name, actor = %engine.actor(), %local_addr, ?frontends, "serving");
        Ok(Node {
            name: config.name,
            endpoint,
            local_addr,
            engine,
            in_flight,
            tasks,
            peers: peers_handle,
            trees,
            rebuild,
            anti_entropy,
            frontends,
        })
    }

    /// Where the TCP front ends (RESP, HTTP, metrics) are bound.
    pub fn frontends(&self) -> &FrontendAddrs {
        &self.frontends
    }

    /// The address the node serves on (the bound port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The peers (connections, liveness, batching counters), for in-process tests.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The engine, for in-process tests and benchmarks.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Anti-entropy's counters, as `status` reports them.
    pub fn anti_entropy(&self) -> cairn_proto::AntiEntropyStatus {
        self.anti_entropy.status()
    }

    /// Stops accepting, lets in-flight requests finish (up to a deadline), closes connections and
    /// the database.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        // Refuse new connections; existing ones finish their requests below.
        self.endpoint.set_server_config(None);
        // Taking every permit means no request is running; new streams cannot start after the
        // endpoint closes below.
        let drained = tokio::time::timeout(
            SHUTDOWN_DRAIN_TIMEOUT,
            self.in_flight.acquire_many(REQUESTS_IN_FLIGHT_MAX as u32),
        )
        .await;
        if drained.is_err() {
            warn!(node = %self.name, "requests still running after {SHUTDOWN_DRAIN_TIMEOUT:?}; closing anyway");
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // The accept loop (with every connection task), the coordinator, probes and handoff
        // hold the endpoint and the engine: stop them so the socket and the database are
        // released before shutdown returns.
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // The rebuild holds the store: stop it at its next object and wait, so the database
        // file is closed when shutdown returns.
        self.trees.cancel_rebuild();
        if let Some(rebuild) = self.rebuild {
            let _ = rebuild.await;
        }
        drop(self.anti_entropy);
        // Tasks that were just stopped may release their handles a moment later; waiting for
        // the last one keeps the writer's drain and the socket's release inside shutdown.
        match sole_owner(self.engine).await {
            // Dropping the engine drains the write queue and joins the writer thread.
            Ok(engine) => tokio::task::spawn_blocking(move || drop(engine))
                .await
                .expect("engine close panicked"),
            Err(_) => warn!(node = %self.name, "engine still in use after shutdown"),
        }
        if sole_owner(self.peers).await.is_err() {
            warn!(node = %self.name, "peer connections still in use after shutdown");
        }
        info!(node = %self.name, "stopped");
        Ok(())
    }
}

/// Starts the rebuild of the Merkle trees from the store on a blocking thread; anti-entropy
/// waits for it, client traffic does not.
fn spawn_rebuild(name: &str, trees: &Arc<Trees>, engine: &Engine) -> tokio::task::JoinHandle<()> {
    let trees = trees.clone();
    let store = engine.store();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match trees.rebuild(&*store) {
            Ok(r) if r.cancelled => debug!(node = %name, "tree rebuild stopped by shutdown"),
            Ok(r) => info!(
                node = %name,
                objects = r.objects,
                logged = r.logged,
                "Merkle trees rebuilt in {:.2?}",
                started.elapsed()
            ),
            Err(e) => {
                warn!(node = %name, "rebuilding the Merkle trees failed, anti-entropy stays off: {e}")
            }
        }
    })
}

/// How long shutdown waits for the last handle of the engine or of the peer connections.
const LAST_HANDLE_WAIT: Duration = Duration::from_secs(2);

/// Waits up to `LAST_HANDLE_WAIT` until `arc` is the only handle, then returns its value.
async fn sole_owner<T>(mut arc: Arc<T>) -> Result<T, Arc<T>> {
    let deadline = tokio::time::Instant::now() + LAST_HANDLE_WAIT;
    loop {
        match Arc::try_unwrap(arc) {
            Ok(value) => return Ok(value),
            Err(shared) if tokio::time::Instant::now() < deadline => {
                arc = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(shared) => return Err(shared),
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    // Every connection task lives in this set: when shutdown stops the accept loop, the set is
    // dropped and aborts them, so none keeps the endpoint (and its UDP port) alive afterwards.
    let mut connections = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            warn!(
                "refusing connection from {}: CONNECTIONS_MAX ({CONNECTIONS_MAX}) reached",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _open = crate::metrics::ConnectionGuard::open("quic");
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, shared).await,
                // Most often a peer without a certificate from the cluster CA.
                Err(e) => info!(%remote, "handshake refused: {e}"),
            }
            drop(permit);
        });
    }
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let peer = Peer {
        role: cairn_net::peer_role(&conn),
        node: cairn_net::peer_node_name(&conn).map(|name| NodeId::from_name(&name)),
    };
    let role = peer.role;
    let budget = shared.frame_budget.connection();
    // Stream tasks die with their connection task (see `accept_loop`).
    let mut streams = tokio::task::JoinSet::new();
    debug!(%remote, %role, "connection open");
    loop {
        while streams.try_join_next().is_some() {}
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(%remote, "connection closed: {e}");
                return;
            }
        };
        // Streams are bounded per connection by QUIC (STREAMS_PER_CONNECTION_MAX) and
        // connections by CONNECTIONS_MAX; the in-flight permit is taken once a request has
        // arrived, so a client that stalls mid-request cannot hold up shutdown.
        let shared = shared.clone();
        let budget = budget.clone();
        streams.spawn(async move {
            serve_stream(send, recv, &shared, peer, &budget).await;
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Arc<Shared>,
    peer: Peer,
    budget: &ConnectionBudget,
) {
    let response = match read_request(&mut recv, peer.role, budget).await {
        // The frame's budget is held while its request is served: the request holds its bytes.
        Ok((req, _frame_budget)) => {
            let Ok(_permit) = shared.in_flight.clone().acquire_owned().await else {
                return;
            };
            let (started, op) = (std::time::Instant::now(), crate::metrics::op(&req));
            let response = handle(req, shared, peer).await;
            crate::metrics::record_request("quic", op, &response, started);
            response
        }
        Err(e @ NetError::OverBudget { .. }) => {
            let _ = recv.stop(1u32.into());
            debug!("refused frame: {e}");
            Response::Error(ErrorReply::Overloaded {
                reason: e.to_string(),
            })
        }
        Err(NetError::Frame(e)) => {
            // Tell the sender why, and stop reading whatever else it sends on this stream; the
            // connection and every other stream carry on.
            let _ = recv.stop(1u32.into());
            debug!("refused frame: {e}");
            Response::Error(frame_error(e, peer.role))
        }
        Err(e) => {
            debug!("stream ended before a request: {e}");
            return;
        }
    };
    let frame = match encode_response(&response) {
        Ok(frame) => frame,
        Err(e) => {
            warn!("could not encode a response: {e}");
            return;
        }
    };
    if let Err(e) = send.write_all(&frame).await {
        debug!("could not send response: {e}");
        return;
    }
    let _ = send.finish();
    // Wait until the peer has the response (or is gone) so finishing is not a reset; bounded,
    // so a vanished client does not keep the task for the idle timeout.
    let _ = tokio::time::timeout(STREAM_LINGER_MAX, send.stopped()).await;
}

/// The frame of `response`, or — when it does not fit a frame (a read whose merged siblings
/// exceed it) — of an error naming the limit, so the asker gets an answer rather than a reset
/// stream it would take for a failed node.
fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    match cairn_proto::encode_frame(response) {
        Err(FrameError::TooLarge { len, max }) => {
            warn!("an answer of {len} bytes exceeds FRAME_BYTES_MAX; answered with an error");
            cairn_proto::encode_frame(&Response::Error(ErrorReply::Limit(
                LimitError::FrameTooLarge {
                    what: "the answer".to_owned(),
                    len,
                    max,
                },
            )))
        }
        other => other,
    }
}

/// Reads one request within the connection's budget, decoded as what the sender's certificate
/// allows (only a node's frame may decode as a peer request); the returned reservation covers
/// the request's bytes.
async fn read_request(
    recv: &mut quinn::RecvStream,
    role: Role,
    budget: &ConnectionBudget,
) -> Result<(Request, BudgetedFrame), NetError> {
    let mut frame = cairn_net::read_frame_body_within(recv, budget).await?;
    let req = match role {
        Role::Node => decode_body(&frame.body)?,
        Role::Admin | Role::Data => decode_client_request(&frame.body)?.into(),
    };
    // The decoded request holds copies; the reservation now stands for them.
    frame.body = Vec::new();
    Ok((req, frame))
}

fn frame_error(e: FrameError, role: Role) -> ErrorReply {
    match e {
        FrameError::PeerRequestFromClient => forbidden("a peer request", Role::Node, role),
        FrameError::UnsupportedVersion { got, supported } => {
            ErrorReply::UnsupportedVersion { got, supported }
        }
        other => ErrorReply::Malformed {
            reason: other.to_string(),
        },
    }
}

fn forbidden(what: &str, needed: Role, held: Role) -> ErrorReply {
    ErrorReply::Forbidden {
        what: what.to_owned(),
        needed,
        held,
    }
}

/// What a refused request is called in the error that names the role it needs.
pub(crate) fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Peer(_) => "a peer request",
        other => crate::metrics::op(other),
    }
}

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// What its certificate lets it do.
    role: Role,
    /// The node its certificate names, if it follows `ClusterCa::issue_node`'s form.
    node: Option<NodeId>,
}

async fn handle(req: Request, shared: &Arc<Shared>, peer: Peer) -> Response {
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
            // The request's own timeout plus a margin (a fixed 65 s outlasted every client).
            let timeout_ms = match &req {
                Request::Get { opts, .. } => opts.timeout_ms,
                Request::Put { opts, .. } | Request::Delete { opts, .. } => opts.timeout_ms,
                _ => None,
            };
            let timeout = crate::coordinator::request_timeout(timeout_ms)
                + cairn_core::driver::FORWARD_TIMEOUT_MARGIN;
            // One id for every attempt: the replica applies a forwarded write at most once
            // and answers a retry with the first outcome.
            let id: u64 = rand::random();
            let mut sent_before = false;
            for attempt in 1..=FORWARD_ATTEMPTS_MAX {
                let forward = PeerRequest::Forward {
                    id,
                    retry: sent_before,
                    op: op.clone(),
                };
                match self.peers.call(to, forward, timeout).await {
                    Ok(Ok(PeerResponse::Forwarded(reply))) => return reply.into(),
                    // Over a limit there (an answer too large for a frame): so it would be here.
                    Ok(Err(e @ ErrorReply::Limit(_))) => return Response::Error(e),
                    // The write may have been applied there and its reply lost: ask again with
                    // the same id, which is never applied twice.
                    Err(e) if !is_get && (sent_before || e.may_have_arrived()) => {
                        sent_before = true;
                        if attempt == FORWARD_ATTEMPTS_MAX
                            || !e.may_have_arrived()
                            || !self.up_again(to).await
                        {
                            // Out of attempts, or the replica cannot be reached (or stays
                            // down): applying the write here too could make it two siblings.
                            return Response::Error(ErrorReply::Unreachable {
                                node: self.peers.name(to),
                                reason: format!(
                                    "{e} (after {attempt} attempts); the write may have been applied there: read the key before writing again"
                                ),
                            });
                        }
                        debug!(
                            "forward {id:x} to {} got no answer ({e}); asking again",
                            self.peers.name(to)
                        );
                    }
                    // The chosen coordinator is unreachable (and now marked down): coordinate
                    // here rather than fail, the write still reaches the replicas that are up.
                    // A read is safe to carry out here whatever happened there.
                    other => {
                        debug!(
                            "forwarding to {} failed ({other:?}); coordinating here",
                            self.peers.name(to)
                        );
                        break;
                    }
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

/// How long after a forward's first attempt its last retry can arrive.
const FORWARD_RETRY_WINDOW: Duration = Duration::from_secs(
    (REQUEST_TIMEOUT_MAX.as_secs() + cairn_core::driver::FORWARD_TIMEOUT_MARGIN.as_secs())
        * FORWARD_ATTEMPTS_MAX as u64,
);
const _: () = assert!(FORWARD_RETRY_WINDOW.as_secs() < FORWARD_REPLY_TTL.as_secs());

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
        Admit::Unknown => KeyOpReply::Error(ErrorReply::Unreachable {
            node: shared.name.clone(),
            reason: format!(
                "a retried forward {id:x} of which this node has no record (it restarted or \
                 forgot it within its limits); the first attempt may have been applied: read \
                 the key before writing again"
            ),
        }),
        Admit::First => {
            // Coordinated in a task of its own: if the forwarder's connection breaks, this
            // stream is dropped, but the write must still finish and be remembered for the
            // retry. It ends with the coordinator's deadline.
            let task_shared = shared.clone();
            let task = tokio::spawn(async move {
                let reply = KeyOpReply::from_response(coordinate(op.into(), &task_shared).await);
                task_shared.forwards.complete(key, &reply);
                reply
            });
            match task.await {
                Ok(reply) => reply,
                Err(e) => {
                    let reply = KeyOpReply::Error(ErrorReply::Storage {
                        reason: format!("coordinating the forward failed: {e}"),
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
            // Empty bytes say "absent" without encoding an empty object.
            Ok(obj) if obj.is_empty() => Ok(PeerResponse::Object(Vec::new())),
            Ok(obj) => Ok(PeerResponse::Object(obj.encode())),
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

/// Serves a batch of replica requests: its writes are queued at the engine together, so they
/// share one group commit, and its reads are read one after the other. When the copies read do not fit one answer frame, the
/// largest are answered `FrameTooLarge` instead, and the sender asks for those alone.
async fn serve_batch(
    items: Vec<BatchItem>,
    shared: &Arc<Shared>,
) -> Vec<Result<BatchAnswer, ErrorReply>> {
    let mut answers: Vec<Option<Result<BatchAnswer, ErrorReply>>> = vec![None; items.len()];
    let (mut writes, mut write_at, mut reads, mut read_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            BatchItem::Replicate {
                key,
                object,
                hint_for,
            } => match Object::decode(&object) {
                Ok(object) => {
                    writes.push((key, Write::Merge { object, hint_for }));
                    write_at.push(i);
                }
                Err(e) => {
                    answers[i] = Some(Err(ErrorReply::Malformed {
                        reason: format!("bad object: {e}"),
                    }))
                }
            },
            BatchItem::Read { key } => {
                reads.push(key);
                read_at.push(i);
            }
        }
    }
    let (written, read) = tokio::join!(
        shared.engine.apply_all(writes),
        shared.engine.read_many(reads)
    );
    for (i, result) in write_at.into_iter().zip(written) {
        answers[i] = Some(result.map(|_| BatchAnswer::Ack).map_err(ErrorReply::from));
    }
    let mut read_bytes = 0;
    for (i, result) in read_at.iter().copied().zip(read) {
        answers[i] = Some(match result {
            // Empty bytes say "absent", as for a lone read.
            Ok(obj) if obj.is_empty() => Ok(BatchAnswer::Object(Vec::new())),
            Ok(obj) => {
                let bytes = obj.encode();
                read_bytes += bytes.len();
                Ok(BatchAnswer::Object(bytes))
            }
            Err(e) => Err(e.into()),
        });
    }
    // Room for the copies in one answer frame; the rest of the frame holds the items' tags
    // and error texts.
    let room = cairn_proto::limits::FRAME_BYTES_MAX / 2;
    while read_bytes > room {
        let largest = read_at
            .iter()
            .copied()
            .filter_map(|i| match &answers[i] {
                Some(Ok(BatchAnswer::Object(b))) => Some((b.len(), i)),
                _ => None,
            })
            .max()
            .expect("read bytes come from some answer");
        read_bytes -= largest.0;
        answers[largest.1] = Some(Err(ErrorReply::Limit(LimitError::FrameTooLarge {
            what: "a copy in a batch answer".to_owned(),
            len: largest.0 as u64,
            max: room as u64,
        })));
    }
    answers
        .into_iter()
        .map(|a| a.expect("every item answered"))
        .collect()
}

fn status(shared: &Shared) -> StatusReply {
    // Writes a replica has not acknowledged yet count as pending hints: they are hints to be.
    let hints: u64 = shared.engine.hint_counts().values().sum::<u64>()
        + shared.coordinator.replicas_outstanding();
    let view = shared.membership.view();
    StatusReply {
        node: shared.name.clone(),
        replicas: view
            .ring
            .as_ref()
            .map_or(0, |r| crate::coordinator::replicas(r) as u8),
        partitions: view.ring.as_ref().map_or(0, |r| r.config().partitions),
        members: shared.membership.status(hints),
        anti_entropy: shared.anti_entropy.status(),
        layout: view.layout.as_deref().map(|l| Box::new(layout_status(l))),
        transfer: transfer_progress(&shared.transfer.borrow(), &shared.peers),
        tombstones: match &shared.reaper {
            Some(r) => crate::reaper::status(true, &r.borrow(), &shared.peers),
            None => cairn_proto::TombstoneStatus::default(),
        },
    }
}

/// This node's push, as `status` reports it (`None` when it has none).
fn transfer_progress(
    t: &cairn_core::transfer::TransferStatus,
    peers: &Peers,
) -> Option<cairn_proto::TransferProgress> {
    let version = t.version?;
    Some(cairn_proto::TransferProgress {
        version,
        partitions_total: t.partitions_total as u32,
        partitions_pushed: t.partitions_pushed as u32,
        partitions_active: t.partitions_active as u32,
        keys_moved: t.keys_moved,
        bytes_moved: t.bytes_moved,
        bytes_per_sec: t.bytes_per_sec as u64,
        keys_left_estimate: t.keys_left_estimate,
        seconds_left_estimate: t.seconds_left_estimate.map(|s| s.ceil() as u64),
        stalled: t
            .stalled
            .iter()
            .map(|s| cairn_proto::TransferStalled {
                partition: s.partition,
                target: s.target.map(|n| peers.name(n)),
                attempts: s.attempts,
                reason: s.reason.clone(),
            })
            .collect(),
    })
}

/// The layout part of `status`: versions, members, and the change in flight with each node's
/// partitions to send and receive.
fn layout_status(layout: &cairn_layout::Layout) -> cairn_proto::LayoutStatus {
    use std::collections::BTreeMap;
    let name = |id: &NodeId| {
        layout
            .name(*id)
            .map_or_else(|| id.to_string(), str::to_owned)
    };
    let names = |ids: &[NodeId]| ids.iter().map(name).collect::<Vec<_>>();
    let transition = layout.transition().map(|t| {
        let mut nodes: BTreeMap<NodeId, (u32, u32)> = BTreeMap::new();
        for p in &t.partitions {
            for source in &p.movement.sources {
                if !p.pushed.contains(source) {
                    nodes.entry(*source).or_default().0 += 1;
                }
            }
            for gaining in &p.movement.gaining {
                nodes.entry(*gaining).or_default().1 += 1;
            }
        }
        cairn_proto::TransitionStatusReply {
            from: t.from,
            to: t.to,
            waiting_acks: names(&t.waiting_acks),
            waiting_pushes: names(&t.waiting_pushes),
            forced: names(&t.forced),
            nodes: nodes
                .iter()
                .map(|(id, &(to_send, to_receive))| cairn_proto::NodeTransfers {
                    node: name(id),
                    to_send,
                    to_receive,
                })
                .collect(),
            partitions: t
                .partitions
                .iter()
                .map(|p| cairn_proto::PartitionProgressReply {
                    partition: p.movement.partition,
                    from: names(&p.movement.from),
                    to: names(&p.movement.to),
                    pushed: names(&p.pushed),
                    reads_switched: p.reads_switched,
                })
                .collect(),
        }
    });
    cairn_proto::LayoutStatus {
        version: layout.current().version(),
        versions: layout.versions().iter().map(|v| v.version()).collect(),
        members: {
            let mut names: Vec<String> = layout.current().names().values().cloned().collect();
            names.sort();
            names
        },
        transition,
    }
}

fn ring_reply(shared: &Shared) -> RingReply {
    let view = shared.membership.view();
    let Some(ring) = &view.ring else {
        return RingReply {
            replicas: 0,
            partitions: Vec::new(),
        };
    };
    let name = |id: &NodeId| {
        view.members
            .get(id)
            .map_or_else(|| id.to_string(), |m| m.name.clone())
    };
    RingReply {
        replicas: crate::coordinator::replicas(ring) as u8,
        partitions: (0..ring.config().partitions)
            .map(|p| {
                let pl = ring.preference_list(p);
                PartitionEntry {
                    partition: p,
                    primaries: pl.primaries.iter().map(name).collect(),
                    fallbacks: pl.fallbacks.iter().map(name).collect(),
                }
            })
            .collect(),
    }
}

/// The reply to a read: live siblings only, and a context covering tombstones too, so a write
/// with it supersedes the delete as well.
pub fn get_reply(obj: &Object) -> GetReply {
    GetReply {
        siblings: obj
            .live()
            .into_iter()
            .map(|(dot, value)| Sibling {
                value: value.to_vec(),
                dot: cairn_proto::DotId {
                    actor: dot.actor,
                    counter: dot.counter,
                },
            })
            .collect(),
        context: encode_context(&obj.join()),
    }
}
