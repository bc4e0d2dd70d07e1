//! Connections to the other nodes and the liveness view built from them. A peer is up when
//! gossip's failure detector judges it alive *and* the last exchange with it did not fail: gossip
//! convicts a silent node within seconds, a failed request marks a peer down at once, and a probe
//! loop pings peers marked down that way (with backoff) until they answer.
//!
//! This is the membership interface the coordinator, hinted handoff and status use (`is_up`,
//! `name`); the member table itself is kept by `membership` from gossip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse, Request, Response};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ping may take before the peer counts as down.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the probe loop looks for peers to ping.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait between probes of a down peer (the backoff doubles up to this).
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Time between pings of a suspect peer that keeps answering.
pub const SUSPECT_PROBE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct PeerState {
    /// Transport view: false after an exchange failed, until one succeeds.
    reachable: bool,
    /// Gossip's view: the failure detector judges the node alive.
    alive: bool,
    /// Its heartbeat has not moved for a few rounds: the probe loop pings it directly, so a
    /// dead node is found by a failed ping long before phi convicts it.
    suspect: bool,
    /// When the last successful exchange started; failures of exchanges that started earlier
    /// are stale (e.g. a ping sent before the peer was listening) and ignored.
    last_success: Option<Instant>,
    backoff: Duration,
    next_probe: Instant,
}

impl PeerState {
    fn is_up(&self) -> bool {
        self.alive && self.reachable
    }
}

struct Peer {
    name: String,
    addr: SocketAddr,
    state: Mutex<PeerState>,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    /// Counts the peer's up-to-down transitions: requests in flight to it watch this and fail
    /// at once when it moves, instead of waiting out their own (long) timeouts for a peer
    /// already judged gone.
    went_down: watch::Sender<u64>,
}

impl Peer {
    /// Wakes every request in flight to this peer: it was just judged down.
    fn went_down(&self) {
        self.went_down.send_modify(|n| *n += 1);
    }
}

/// The other members of the cluster, as this node reaches them.
pub struct Peers {
    me: NodeId,
    my_name: String,
    endpoint: quinn::Endpoint,
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    up_events: mpsc::Sender<NodeId>,
}

impl Peers {
    /// No peers yet, reached through `endpoint`; `membership` adds them as gossip finds them.
    /// Up-transitions are reported on `up_events` (hint delivery listens).
    pub fn new(
        me: NodeId,
        my_name: String,
        endpoint: quinn::Endpoint,
        up_events: mpsc::Sender<NodeId>,
    ) -> Peers {
        Peers {
            me,
            my_name,
            endpoint,
            peers: RwLock::new(BTreeMap::new()),
            up_events,
        }
    }

    fn get(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().expect("peers lock").get(&id).cloned()
    }

    /// Adds peer `id` or updates its name and address (a restarted node may move); `alive` is
    /// gossip's judgement and `suspect` says its heartbeat is late (the probe loop pings it). A
    /// changed address drops the cached connection. Called for every member on every gossip
    /// message, so an unchanged peer costs a read lock only.
    pub fn upsert(&self, id: NodeId, name: &str, addr: SocketAddr, alive: bool, suspect: bool) {
        if id == self.me {
            return;
        }
        let peer = match self.get(id) {
            Some(p) if p.addr == addr && p.name == name => p,
            _ => self.replace(id, name, addr),
        };
        let (became_up, became_down) = {
            let mut s = peer.state.lock().expect("peer lock");
            let was_up = s.is_up();
            if alive && !s.alive {
                // Gossip heard from it (through any node): worth trying again at once.
                s.reachable = true;
                s.backoff = PROBE_INTERVAL;
            }
            s.alive = alive;
            s.suspect = suspect && alive;
            (!was_up && s.is_up(), was_up && !s.is_up())
        };
        if became_down {
            peer.went_down();
        }
        if became_up {
            info!(peer = %name, "peer is up");
            // Full channel: the handoff loop's periodic scan picks the peer up anyway.
            let _ = self.up_events.try_send(id);
        }
    }

    /// A fresh entry for `id` at `addr` (no cached connection), keeping gossip's judgement.
    fn replace(&self, id: NodeId, name: &str, addr: SocketAddr) -> Arc<Peer> {
        let mut peers = self.peers.write().expect("peers lock");
        let alive = peers
            .get(&id)
            .is_some_and(|old| old.state.lock().expect("peer lock").alive);
        let fresh = Arc::new(Peer {
            name: name.to_owned(),
            addr,
            // Reachable until an exchange says otherwise: gossip decides first.
            state: Mutex::new(PeerState {
                reachable: true,
                alive,
                suspect: false,
                last_success: None,
                backoff: PROBE_INTERVAL,
                next_probe: Instant::now(),
            }),
            conn: tokio::sync::Mutex::new(None),
            went_down: watch::Sender::new(0),
        });
        peers.insert(id, fresh.clone());
        fresh
    }

    /// Forgets peer `id` (it was removed from the cluster).
    pub fn remove(&self, id: NodeId) {
        self.peers.write().expect("peers lock").remove(&id);
    }

    /// Whether `id` is believed reachable (this node always is).
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.me
            || self
                .get(id)
                .is_some_and(|p| p.state.lock().expect("peer lock").is_up())
    }

    /// The name of `id`, or its id in hex if it is not a member.
    pub fn name(&self, id: NodeId) -> String {
        if id == self.me {
            return self.my_name.clone();
        }
        self.get(id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// Records the outcome of an exchange with `id` that started at `started`.
    fn mark(&self, id: NodeId, reachable: bool, error: Option<String>, started: Instant) {
        let Some(peer) = self.get(id) else {
            return;
        };
        let (was_up, is_up) = {
            let mut s = peer.state.lock().expect("peer lock");
            if !reachable && s.last_success.is_some_and(|t| t > started) {
                // A newer exchange already succeeded: this failure says nothing current.
                return;
            }
            let was_up = s.is_up();
            s.reachable = reachable;
            if reachable {
                s.backoff = PROBE_INTERVAL;
                s.last_success = Some(s.last_success.map_or(started, |t| t.max(started)));
            }
            (was_up, s.is_up())
        };
        if was_up != is_up {
            if is_up {
                info!(peer = %peer.name, "peer is up");
                let _ = self.up_events.try_send(id);
            } else {
                info!(peer = %peer.name, "peer is down: {}", error.unwrap_or_default());
                peer.went_down();
            }
        }
    }

    async fn connection(&self, peer: &Peer) -> Result<quinn::Connection, String> {
        let mut cached = peer.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = self.connect(peer.addr).await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// A new connection to `addr` (a seed, whose id is not known yet, or a peer).
    pub async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect(addr, cairn_net::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(PEER_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no connection within {PEER_CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    /// Sends `req` to peer `id`. Transport failures mark the peer down. Fails early, before
    /// `timeout`, when the peer is judged down meanwhile (another exchange with it failed, or
    /// gossip convicted it): a forward or replica request to a node that went silent must not
    /// outlast the client's deadline.
    pub async fn request(
        &self,
        id: NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ErrorReply> {
        let Some(peer) = self.get(id) else {
            return Err(ErrorReply::Unreachable {
                node: self.name(id),
                reason: "not a member".into(),
            });
        };
        let started = Instant::now();
        // Subscribed before the exchange starts, so a transition during it is seen.
        let mut went_down = peer.went_down.subscribe();
        let exchange = async {
            let conn = self.connection(&peer).await?;
            exchange_on(&conn, req).await
        };
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, exchange) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            },
            // The sender lives as long as `peer`, which this holds: only a transition ends it.
            _ = went_down.changed() => Err(format!(
                "no answer after {:?}, and the peer was judged down meanwhile",
                started.elapsed()
            )),
        };
        if result.is_ok() {
            self.mark(id, true, None, started);
        }
        match result {
            Ok(resp) => resp,
            Err(reason) => {
                // The cached connection may belong to a peer process that is gone (killed and
                // restarted peers do not reset old connections): dial afresh next time.
                peer.conn.lock().await.take();
                self.mark(id, false, Some(reason.clone()), started);
                Err(ErrorReply::Unreachable {
                    node: peer.name.clone(),
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

    /// Pings, forever, the peers gossip judges alive but whose last exchange failed, with
    /// doubling backoff, so a peer marked down by one failed request comes back as soon as it
    /// answers; and reachable peers whose heartbeat is late (suspects), every
    /// `SUSPECT_PROBE_INTERVAL`, so a dead one is marked down by its failed ping. Peers gossip
    /// judges dead are left to gossip.
    pub async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due: Vec<NodeId> = self
                .peers
                .read()
                .expect("peers lock")
                .iter()
                .filter(|(_, p)| {
                    let s = p.state.lock().expect("peer lock");
                    let retry = s.alive && !s.reachable;
                    let check = s.suspect && s.reachable;
                    (retry || check) && s.next_probe <= now
                })
                .map(|(id, _)| *id)
                .collect();
            let probes = due.into_iter().map(|id| {
                let this = self.clone();
                async move {
                    let ok = this.ping(id).await;
                    let Some(peer) = this.get(id) else { return };
                    let mut s = peer.state.lock().expect("peer lock");
                    if !ok {
                        s.backoff = (s.backoff * 2).min(PROBE_BACKOFF_MAX);
                    }
                    s.next_probe = Instant::now()
                        + match (ok, s.suspect) {
                            // Reachable but its heartbeat is late (a slow gossip path in a
                            // large cluster): check again, not in a tight loop.
                            (true, true) => SUSPECT_PROBE_INTERVAL,
                            (true, false) => PROBE_INTERVAL,
                            (false, _) => s.backoff,
                        };
                }
            });
            futures_join_all(probes).await;
        }
    }
}

/// One request and its response on a new stream of `conn`.
pub async fn exchange_on(
    conn: &quinn::Connection,
    req: PeerRequest,
) -> Result<Result<PeerResponse, ErrorReply>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    cairn_net::write_frame(&mut send, &Request::Peer(req))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let resp = cairn_net::read_frame::<Response>(&mut recv)
        .await
        .map_err(|e| e.to_string())?;
    Ok(match resp {
        Response::Peer(resp) => Ok(resp),
        Response::Error(e) => Err(e),
        other => Err(ErrorReply::Malformed {
            reason: format!("peer answered {other:?}"),
        }),
    })
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
