//! The QUIC side of serving: the accept loop, one task per connection and per stream, reading
//! one request frame per stream within the connection's budget, and the role a connection's
//! certificate grants.

use std::sync::Arc;
use std::time::Duration;

use cairn_net::{BudgetedFrame, ConnectionBudget, NetError};
use cairn_proto::{
    decode_body, decode_client_request, ErrorReply, FrameError, LimitError, NodeId, Request,
    Response, Role,
};
use tracing::{debug, info, warn};

use super::dispatch::handle;
use super::Shared;
use crate::limits::CONNECTIONS_MAX;
use crate::tasks::Tasks;

/// How long a finished stream waits for the peer to take the response.
const STREAM_LINGER_MAX: Duration = Duration::from_secs(5);

/// Accepts connections until the endpoint closes, each served by a task in `scope`: they end
/// with the loop, and shutdown waits for them, so none keeps the endpoint (and its UDP port)
/// alive afterwards.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, scope: Tasks) {
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
        scope.spawn_scoped("quic connection", |streams| async move {
            let _open = crate::metrics::ConnectionGuard::open("quic");
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, shared, streams).await,
                // Most often a peer without a certificate from the cluster CA.
                Err(e) => info!(%remote, "handshake refused: {e}"),
            }
            drop(permit);
        });
    }
}

/// Serves a connection's streams, each by a task in `streams`, which end with the connection.
async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>, streams: Tasks) {
    let remote = conn.remote_address();
    let peer = Peer {
        role: cairn_net::peer_role(&conn),
        node: cairn_net::peer_node_name(&conn).map(|name| NodeId::from_name(&name)),
    };
    let role = peer.role;
    let budget = shared.frame_budget.connection();
    debug!(%remote, %role, "connection open");
    loop {
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
        streams.spawn("quic stream", async move {
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

pub(super) fn forbidden(what: &str, needed: Role, held: Role) -> ErrorReply {
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
pub(super) struct Peer {
    /// What its certificate lets it do.
    pub(super) role: Role,
    /// The node its certificate names, if it follows `ClusterCa::issue_node`'s form.
    pub(super) node: Option<NodeId>,
}
