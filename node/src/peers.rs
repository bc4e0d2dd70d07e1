//! Connections to the other nodes and the liveness view built from them: failed requests mark
//! a peer down, a probe loop pings peers (down ones with backoff) and marks them up again.
//!
//! This is the narrow membership interface the coordinator uses (`is_up`); the gossip issue
//! replaces its insides with scuttlebutt and phi accrual.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse, Request, Response};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ping may take before the peer counts as down.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How often up peers are pinged.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between probes of a down peer (the backoff doubles up to this).
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(4);

#[derive(Debug)]
struct PeerState {
    up: bool,
    /// Whether an exchange with the peer succeeded since it was last marked down (until then
    /// `up` is only the optimistic start state).
    confirmed: bool,
    /// When the last successful exchange started; failures of exchanges that started earlier
    /// are stale (e.g. a ping sent before the peer was listening) and ignored.
    last_success: Option<Instant>,
    backoff: Duration,
    next_probe: Instant,
    last_error: Option<String>,
}

struct Peer {
    name: String,
    addr: SocketAddr,
    state: Mutex<PeerState>,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

/// The other members of the cluster, as this node reaches them.
pub struct Peers {
    me: NodeId,
    my_name: String,
    endpoint: quinn::Endpoint,
    peers: BTreeMap<NodeId, Peer>,
    up_events: mpsc::Sender<NodeId>,
}

impl Peers {
    /// The peers `members` (this node may be among them; it is skipped), reached through
    /// `endpoint`. Up-transitions are reported on `up_events` (hint delivery listens).
    pub fn new(
        me: NodeId,
        my_name: String,
        endpoint: quinn::Endpoint,
        members: impl IntoIterator<Item = (NodeId, String, SocketAddr)>,
        up_events: mpsc::Sender<NodeId>,
    ) -> Peers {
        let now = Instant::now();
        let peers = members
            .into_iter()
            .filter(|(id, _, _)| *id != me)
            .map(|(id, name, addr)| {
                (
                    id,
                    Peer {
                        name,
                        addr,
                        // Optimistic: a peer is up until a request or a probe says otherwise.
                        state: Mutex::new(PeerState {
                            up: true,
                            confirmed: false,
                            last_success: None,
                            backoff: PROBE_INTERVAL,
                            next_probe: now,
                            last_error: None,
                        }),
                        conn: tokio::sync::Mutex::new(None),
                    },
                )
            })
            .collect();
        Peers {
            me,
            my_name,
            endpoint,
            peers,
            up_events,
        }
    }

    /// Whether `id` is believed reachable (this node always is).
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.me
            || self
                .peers
                .get(&id)
                .is_some_and(|p| p.state.lock().expect("peer lock").up)
    }

    /// The name of `id`, or its id in hex if it is not a member.
    pub fn name(&self, id: NodeId) -> String {
        if id == self.me {
            return self.my_name.clone();
        }
        self.peers
            .get(&id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// The address of peer `id`.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.get(&id).map(|p| p.addr)
    }

    /// The last error seen talking to `id`.
    pub fn last_error(&self, id: NodeId) -> Option<String> {
        self.peers
            .get(&id)
            .and_then(|p| p.state.lock().expect("peer lock").last_error.clone())
    }

    /// Whether this node has confirmed `id` up by a successful exchange (status shows this;
    /// routing uses the optimistic `is_up`).
    pub fn is_confirmed_up(&self, id: NodeId) -> bool {
        id == self.me
            || self.peers.get(&id).is_some_and(|p| {
                let s = p.state.lock().expect("peer lock");
                s.up && s.confirmed
            })
    }

    /// Records the outcome of an exchange with `id` that started at `started`.
    fn mark(&self, id: NodeId, up: bool, error: Option<String>, started: Instant) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let was_up = {
            let mut s = peer.state.lock().expect("peer lock");
            if !up && s.last_success.is_some_and(|t| t > started) {
                // A newer exchange already succeeded: this failure says nothing current.
                return;
            }
            let was_up = s.up;
            s.up = up;
            s.confirmed = up;
            if up {
                s.backoff = PROBE_INTERVAL;
                s.last_error = None;
                s.last_success = Some(s.last_success.map_or(started, |t| t.max(started)));
            } else {
                s.last_error = error.clone();
            }
            was_up
        };
        if was_up != up {
            if up {
                info!(peer = %peer.name, "peer is up");
                // Full channel: the handoff loop's periodic scan picks the peer up anyway.
                let _ = self.up_events.try_send(id);
            } else {
                info!(peer = %peer.name, "peer is down: {}", error.clone().unwrap_or_default());
            }
        }
    }

    async fn connection(&self, id: NodeId) -> Result<quinn::Connection, String> {
        let peer = self.peers.get(&id).ok_or("not a member")?;
        let mut cached = peer.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(peer.addr, cairn_net::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(PEER_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no connection within {PEER_CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `req` to peer `id`. Transport failures mark the peer down.
    pub async fn request(
        &self,
        id: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ErrorReply> {
        let started = Instant::now();
        let exchange = async {
            let conn = self.connection(id).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            cairn_net::write_frame(&mut send, &Request::Peer(req))
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            cairn_net::read_frame::<Response>(&mut recv)
                .await
                .map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if result.is_ok() {
            self.mark(id, true, None, started);
        }
        match result {
            Ok(Response::Peer(resp)) => Ok(resp),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(ErrorReply::Malformed {
                reason: format!("peer answered {other:?}"),
            }),
            Err(reason) => {
                // The cached connection may belong to a peer process that is gone (killed and
                // restarted peers do not reset old connections): dial afresh next time.
                if let Some(peer) = self.peers.get(&id) {
                    peer.conn.lock().await.take();
                }
                self.mark(id, false, Some(reason.clone()), started);
                Err(ErrorReply::Unreachable {
                    node: self.name(id),
                    reason,
                })
            }
        }
    }

    async fn ping(&self, id: NodeId) -> bool {
        let req = PeerRequest::Ping {
            from: self.my_name.clone(),
        };
        let started = Instant::now();
        match self.request(id, req, PING_TIMEOUT).await {
            Ok(PeerResponse::Pong { .. }) => true,
            Ok(other) => {
                self.mark(
                    id,
                    false,
                    Some(format!("odd answer to ping: {other:?}")),
                    started,
                );
                false
            }
            Err(e) => {
                debug!("ping {} failed: {e}", self.name(id));
                false
            }
        }
    }

    /// Pings peers forever: up peers every `PROBE_INTERVAL`, down ones with doubling backoff.
    pub async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.state.lock().expect("peer lock").next_probe <= now)
                .map(|(id, _)| *id)
                .collect();
            let probes = due.into_iter().map(|id| {
                let this = self.clone();
                async move {
                    let ok = this.ping(id).await;
                    let peer = &this.peers[&id];
                    let mut s = peer.state.lock().expect("peer lock");
                    if !ok {
                        s.backoff = (s.backoff * 2).min(PROBE_BACKOFF_MAX);
                    }
                    s.next_probe = Instant::now() + if ok { PROBE_INTERVAL } else { s.backoff };
                }
            });
            futures_join_all(probes).await;
        }
    }

    /// Every peer id.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }
}

/// Runs futures concurrently and waits for all (a few lines instead of a dependency).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
