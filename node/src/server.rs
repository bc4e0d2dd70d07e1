//! The QUIC service: accepts mutual-TLS connections, reads one request frame per stream, answers
//! it from the engine, and shuts down without dropping acknowledged work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_net::{Identity, NetError};
use cairn_proto::{
    check_request, ErrorReply, FrameError, GetReply, NodeId, Request, Response, Sibling,
    PROTOCOL_VERSION,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::engine::{Engine, EngineError};
use crate::limits::{CONNECTIONS_MAX, REQUESTS_IN_FLIGHT_MAX};
use crate::store::{RedbStore, StoreError};
use crate::version::{encode_context, Object, Payload};

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
}

/// A running node.
pub struct Node {
    name: String,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    name: String,
    engine: Arc<Engine>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Node {
    /// Opens the node's database and starts serving on its configured address.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let identity = Identity::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&data_dir))
            .await
            .expect("open task panicked")?;
        let engine = Engine::open(
            Arc::new(store),
            NodeId::from_name(&config.name),
            &mut rand::rngs::OsRng,
        )?;
        let endpoint = cairn_net::server_endpoint(config.listen, &identity)?;
        let local_addr = endpoint.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        let engine = Arc::new(engine);
        let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            engine: engine.clone(),
            in_flight: in_flight.clone(),
            connections: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared));
        info!(node = %config.name, actor = %engine.actor(), %local_addr, "serving");
        Ok(Node {
            name: config.name,
            endpoint,
            local_addr,
            engine,
            in_flight,
            accept,
        })
    }

    /// The address the node serves on (the bound port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine, for in-process tests and benchmarks.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops accepting, lets in-flight requests finish (up to a deadline), closes connections and
    /// the database.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.accept.abort();
        let _ = self.accept.await;
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
        // Dropping the last engine handle drains the write queue and joins the writer thread.
        let engine = self.engine;
        tokio::task::spawn_blocking(move || drop(engine))
            .await
            .expect("engine close panicked");
        info!(node = %self.name, "stopped");
        Ok(())
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            warn!(
                "refusing connection from {}: CONNECTIONS_MAX ({CONNECTIONS_MAX}) reached",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
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
    debug!(%remote, "connection open");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(%remote, "connection closed: {e}");
                return;
            }
        };
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_stream(send, recv, &shared).await;
            drop(permit);
        });
    }
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: &Shared) {
    let response = match cairn_net::read_frame::<Request>(&mut recv).await {
        Ok(req) => handle(req, shared).await,
        Err(NetError::Frame(e)) => {
            // Tell the sender why, and stop reading whatever else it sends on this stream; the
            // connection and every other stream carry on.
            let _ = recv.stop(1u32.into());
            debug!("refused frame: {e}");
            Response::Error(frame_error(e))
        }
        Err(e) => {
            debug!("stream ended before a request: {e}");
            return;
        }
    };
    if let Err(e) = cairn_net::write_frame(&mut send, &response).await {
        debug!("could not send response: {e}");
        return;
    }
    let _ = send.finish();
    // Wait until the peer has the response (or is gone) so finishing is not a reset.
    let _ = send.stopped().await;
}

fn frame_error(e: FrameError) -> ErrorReply {
    match e {
        FrameError::UnsupportedVersion { got, supported } => {
            ErrorReply::UnsupportedVersion { got, supported }
        }
        other => ErrorReply::Malformed {
            reason: other.to_string(),
        },
    }
}

async fn handle(req: Request, shared: &Shared) -> Response {
    debug_assert_eq!(PROTOCOL_VERSION, cairn_proto::PROTOCOL_VERSION);
    if let Err(e) = check_request(&req) {
        return Response::Error(e.into());
    }
    let result = match req {
        Request::Ping => Ok(Response::Pong {
            node: shared.name.clone(),
        }),
        Request::Get { key } => {
            let engine = shared.engine.clone();
            tokio::task::spawn_blocking(move || engine.get(&key))
                .await
                .expect("read task panicked")
                .map(|obj| Response::Value(get_reply(&obj)))
        }
        Request::Put {
            key,
            value,
            context,
        } => shared
            .engine
            .update(key, &context, Payload::Value(value))
            .await
            .map(|obj| Response::Written(get_reply(&obj))),
        Request::Delete { key, context } => shared
            .engine
            .update(key, &context, Payload::Tombstone)
            .await
            .map(|obj| Response::Written(get_reply(&obj))),
    };
    result.unwrap_or_else(|e| Response::Error(engine_error(e)))
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

fn engine_error(e: EngineError) -> ErrorReply {
    match e {
        EngineError::Limit(l) => ErrorReply::Limit(l),
        EngineError::BadContext { reason } => ErrorReply::BadContext { reason },
        EngineError::Overloaded { .. } => ErrorReply::Overloaded {
            reason: e.to_string(),
        },
        EngineError::Closed => ErrorReply::ShuttingDown,
        other => {
            warn!("request failed: {other}");
            ErrorReply::Storage {
                reason: other.to_string(),
            }
        }
    }
}
