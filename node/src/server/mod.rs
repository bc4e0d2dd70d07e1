//! The node's lifecycle: `Node::start` opens the database and starts every task (the QUIC
//! accept loop, the coordinator, membership, handoff, anti-entropy, transfer, cleanup, the
//! reaper, the front ends), and `Node::shutdown` stops them without dropping acknowledged work.
//! Serving is split by concern: `accept` (connections, streams, frames, roles), `dispatch`
//! (what each request does, forwarding included) and `status` (the status and ring answers).

mod accept;
mod dispatch;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_net::{FrameBudget, Identity, NetError};
use cairn_proto::{ContextKey, NodeId};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::antientropy::AntiEntropy;
use crate::config::NodeConfig;
use crate::driver::{CoordinatorHandle, DriverContext};
use crate::engine::{Engine, EngineError};
use crate::forwards::Forwards;
use crate::frontend::FrontendAddrs;
use crate::limits::{CONNECTIONS_MAX, REQUESTS_IN_FLIGHT_MAX, UP_EVENTS_MAX};
use crate::membership::{Membership, MembershipError};
use crate::peers::Peers;
use crate::store::{RedbStore, StoreClosed, StoreError};
use crate::tasks::Tasks;
use crate::trees::Trees;

pub(crate) use accept::request_name;

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
    /// Every task the node runs, in one tracker, under one cancellation token.
    tasks: Tasks,
    peers: Arc<Peers>,
    trees: Arc<Trees>,
    anti_entropy: Arc<AntiEntropy>,
    frontends: FrontendAddrs,
    /// Resolves once the database is closed: its last handle dropped.
    store_closed: StoreClosed,
    /// Resolves once the UDP socket is closed: the endpoint and its connections gone.
    socket_closed: cairn_net::SocketClosed,
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
    /// The node's tasks, for work that must outlive the stream that asked for it (a forwarded
    /// write).
    tasks: Tasks,
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
        let transfer_config = config
            .transfer
            .config()
            .map_err(|reason| NodeError::Config { reason })?;
        let reaper_config = config
            .tombstones
            .config()
            .map_err(|reason| NodeError::Config { reason })?;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&data_dir))
            .await
            .expect("open task panicked")?;
        let store_closed = store.closed();
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
        let (endpoint, socket_closed) = cairn_net::server_endpoint(config.listen, &identity)?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        crate::metrics::install();
        let (listeners, frontends) = crate::frontend::bind(&config, &identity)?;
        let me = NodeId::from_name(&config.name);
        let engine = Arc::new(engine);
        let tasks = Tasks::new();
        // Room for a burst of peers coming up at once; the handoff loop also scans periodically.
        let (up_tx, up_rx) = mpsc::channel(UP_EVENTS_MAX);
        let peers = Arc::new(Peers::new(
            me,
            config.name.clone(),
            endpoint.clone(),
            up_tx,
            tasks.clone(),
        ));
        let advertise = config.advertise.unwrap_or(local_addr);
        let membership = Membership::open(&config, advertise, peers.clone())?;
        let (write_fence, fence) = tokio::sync::watch::channel(0);
        membership.set_write_fence(fence.clone());
        // Nothing fails from here on, so a start that fails leaves no task running.
        let coordinator = crate::driver::spawn(
            Arc::new(DriverContext {
                me,
                engine: engine.clone(),
                peers: peers.clone(),
                view: membership.subscribe(),
                read_repair: config.read_repair,
                write_fence,
            }),
            &tasks,
        );
        let transfer_status = crate::transfer::spawn(
            crate::transfer::TransferContext {
                me,
                membership: membership.clone(),
                write_fence: fence,
                store: engine.store(),
                peers: peers.clone(),
                config: transfer_config,
                trees: config.anti_entropy.enabled.then(|| trees.clone()),
            },
            &tasks,
        );
        let reaper_status = config.tombstones.reap.then(|| {
            crate::reaper::spawn(
                crate::reaper::ReaperContext {
                    me,
                    engine: engine.clone(),
                    peers: peers.clone(),
                    layouts: membership.layout().subscribe(),
                    config: reaper_config,
                },
                &tasks,
            )
        });
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
            tasks: tasks.clone(),
        });
        let layout = membership.layout().clone();
        {
            let (endpoint, shared) = (endpoint.clone(), shared.clone());
            tasks.spawn_scoped("quic accept loop", |scope| {
                accept::accept_loop(endpoint, shared, scope)
            });
        }
        tasks.spawn(
            "storage watch",
            crate::membership::storage_watch(engine.clone(), membership.clone()),
        );
        tasks.spawn("membership", membership.run());
        tasks.spawn("peer probes", peers.clone().probe_loop());
        tasks.spawn("metrics upkeep", crate::metrics::upkeep());
        crate::frontend::serve(listeners, shared, &tasks);
        tasks.spawn(
            "cleanup",
            crate::cleanup::run(me, engine.clone(), layout.ring_config(), layout.subscribe()),
        );
        if config.hinted_handoff {
            tasks.spawn(
                "handoff",
                crate::handoff::run(me, engine.clone(), peers.clone(), layout, up_rx),
            );
        }
        if enabled {
            // The rebuild reads the whole store on a blocking thread; commits before it are
            // logged for it (the trees log from their creation).
            spawn_rebuild(&tasks, &config.name, &trees, &engine);
            tasks.spawn("anti-entropy", anti_entropy.clone().run());
        }
        info!(node = %config.name, actor = %engine.actor(), %local_addr, ?frontends, "serving");
        Ok(Node {
            name: config.name,
            endpoint,
            local_addr,
            engine,
            in_flight,
            tasks,
            peers,
            trees,
            anti_entropy,
            frontends,
            store_closed,
            socket_closed,
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

    /// Stops accepting, lets in-flight requests finish (up to a deadline), closes connections,
    /// stops every task and waits for them, then closes the database.
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
        let _ = tokio::time::timeout(ENDPOINT_IDLE_WAIT, self.endpoint.wait_idle()).await;
        // The rebuild is a blocking scan: it stops at its next object when asked to.
        self.trees.cancel_rebuild();
        let stopped = self.tasks.stop(SHUTDOWN_TASKS_WAIT).await;
        if !stopped.unfinished.is_empty() {
            warn!(
                node = %self.name,
                "tasks still running {SHUTDOWN_TASKS_WAIT:?} after they were cancelled: {}",
                crate::tasks::describe(&stopped.unfinished)
            );
        }
        if !stopped.panicked.is_empty() {
            warn!(
                node = %self.name,
                "tasks that panicked while the node ran: {}",
                crate::tasks::describe(&stopped.panicked)
            );
        }
        let Node {
            name,
            endpoint,
            engine,
            peers,
            anti_entropy,
            store_closed,
            socket_closed,
            ..
        } = self;
        drop((endpoint, peers, anti_entropy));
        // Dropping the engine's last handle drains the write queue and joins the writer
        // thread: blocking, so off the runtime.
        tokio::task::spawn_blocking(move || drop(engine))
            .await
            .expect("engine close panicked");
        // Work the stopped tasks had handed off (a read on a blocking thread, a helper task
        // their sets aborted) may hold the store or the peers' endpoint a moment longer; the
        // database file and the port are free once the last handle goes.
        if tokio::time::timeout(RELEASE_WAIT, store_closed.wait())
            .await
            .is_err()
        {
            warn!(node = %name, "the database is still open {RELEASE_WAIT:?} after the node's tasks ended");
        }
        if tokio::time::timeout(RELEASE_WAIT, socket_closed.wait())
            .await
            .is_err()
        {
            warn!(node = %name, "the UDP socket is still open {RELEASE_WAIT:?} after the node's tasks ended");
        }
        info!(node = %name, "stopped");
        Ok(())
    }
}

/// How long shutdown waits for the endpoint's connections to close after it closed them.
const ENDPOINT_IDLE_WAIT: Duration = Duration::from_secs(2);

/// How long shutdown waits for its cancelled tasks to end (a task ends at its next await; a
/// blocking scan at its next object).
const SHUTDOWN_TASKS_WAIT: Duration = Duration::from_secs(5);

/// How long shutdown waits, once its tasks ended, for the database and the UDP socket to close
/// (each at most this long: their last handles may be held by work the tasks handed off).
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Starts the rebuild of the Merkle trees from the store on a blocking thread; anti-entropy
/// waits for it, client traffic does not.
fn spawn_rebuild(tasks: &Tasks, name: &str, trees: &Arc<Trees>, engine: &Engine) {
    let trees = trees.clone();
    let store = engine.store();
    let name = name.to_owned();
    tasks.spawn_blocking("tree rebuild", move || {
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
    });
}
