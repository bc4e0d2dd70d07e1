//! Membership: runs the pure gossip state machine over QUIC, keeps this node's generation and
//! seeds on disk, and publishes the cluster view (members, the layout, and the routing ring
//! taken from the layout) that routing, the coordinator, hinted handoff and `cairn status` read.
//!
//! Ownership comes from the layout alone ([`crate::layout`]); liveness only decides which
//! replicas are tried and which fallbacks stand in. Gossip carries each node's layout stamp
//! (version and digest); a node that sees a peer with another stamp exchanges whole layouts
//! with it (`PeerRequest::Layout`) and both merge.
//!
//! One exchange is SYN → ACK → ACK2: the initiator sends the SYN as a peer request and gets the
//! ACK as its response, then sends the ACK2 as a second request on the same connection. The
//! responder never dials back, so a joiner whose address nobody knows yet is answered too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_gossip::{
    Destination, Gossip, GossipConfig, GossipError, MembershipEvent, NodeState, Status, Storage,
    Transmit, Value,
};
use cairn_layout::{Change, Layout, LayoutError, LayoutVersion, MergeOutcome, Plan};
use cairn_proto::{
    ErrorReply, LayoutChangeReply, MemberStatus, NodeId, PartitionMoveReply, PartitionSize,
    PeerRequest, PeerResponse,
};
use cairn_ring::{Ring, RingConfig};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::layout::{Held, LayoutFileError, NodeLayout, Stamp};
use crate::limits::{
    GOSSIP_EXCHANGES_MAX, GOSSIP_EXCHANGE_TIMEOUT, GOSSIP_OUTBOX_MAX, LAYOUT_CONFIRM_TIMEOUT,
    LAYOUT_EXCHANGE_TIMEOUT, PLAN_SIZES_TIMEOUT,
};
use crate::peers::{exchange_on, Peers};
use crate::trees::Trees;
use cairn_core::membership::{
    joining_ends, layout_exchange_partners, receive_gossip, LayoutPeer, PeerJudge, RingInfo,
};

/// The file in the data directory that keeps membership across restarts.
pub const STATE_FILE: &str = "membership.toml";
pub use cairn_core::membership::{NEW_MEMBER_GRACE_ROUNDS, SUSPECT_ROUNDS};
/// Gossip rounds a restarted node that was a member waits to hear from any peer before it
/// serves alone (its peers may all be down); a node that never was a member waits for ever.
pub const REJOIN_ROUNDS_MAX: u32 = 10;
pub use cairn_core::health::STORAGE_CHECK_INTERVAL;

/// Why membership could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The state file could not be read or written.
    #[error("membership state {path}: {reason}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The gossip configuration or this node's state is refused.
    #[error("gossip: {0}")]
    Gossip(#[from] GossipError),
    /// The layout file could not be read, or the layout not bootstrapped.
    #[error(transparent)]
    Layout(#[from] LayoutFileError),
    /// Other nodes could not reach the advertised address.
    #[error(
        "cannot advertise {addr}: set `advertise` in the node config to an address peers can reach"
    )]
    Advertise {
        /// The address.
        addr: SocketAddr,
    },
}

/// Why client requests are refused while node `node` has no ring.
pub fn no_ring(node: &str) -> ErrorReply {
    ErrorReply::NoRing {
        node: node.to_owned(),
        reason: "it holds no layout yet: it is not in cluster.initial_members and no layout \
                 has reached it from the cluster (`cairn join` adds a node)"
            .into(),
    }
}

/// Why a layout change is refused while this node holds no layout.
fn no_layout() -> ErrorReply {
    ErrorReply::Membership {
        reason: "this node holds no layout yet; `cairn join SEED --node NAME` adds it to a cluster"
            .into(),
    }
}

/// A refused layout change, in the layout crate's words.
fn layout_error(e: LayoutError) -> ErrorReply {
    ErrorReply::Membership {
        reason: e.to_string(),
    }
}

/// A change in words, with names from `layout`.
fn describe(change: &Change, layout: &Layout) -> String {
    let name = |id: &NodeId| {
        layout
            .name(*id)
            .map_or_else(|| id.to_string(), str::to_owned)
    };
    match change {
        Change::Join { name, .. } => format!("join {name}"),
        Change::Leave { node } => format!("leave {}", name(node)),
        Change::Remove { node } => format!("remove {}", name(node)),
        Change::Replace { old, name: new, .. } => format!("replace {} with {new}", name(old)),
    }
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Where it is reached.
    pub addr: SocketAddr,
    /// Its declared status.
    pub status: Status,
    /// Its failure zone.
    pub zone: Option<String>,
    /// Its generation.
    pub generation: u64,
    /// Whether its ring shape (Q, N) matches this node's; layouts are never exchanged with
    /// members that disagree.
    pub compatible: bool,
    /// The stamp of its layout, as it gossips it (`None`: it holds none yet).
    pub layout: Option<Stamp>,
    /// Whether its disk accepts writes, as it declares it.
    pub storage: Storage,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    /// The ring requests are routed by, taken from the layout ([`crate::layout::routing_ring`]);
    /// `None` while this node holds no layout. Members that are down stay in it: they keep
    /// their partitions, and fallbacks stand in for them.
    pub ring: Option<Arc<Ring>>,
    /// The layout this node holds, as persisted (`None` while it holds none).
    pub layout: Option<Arc<Layout>>,
    /// The id of the cluster the layout belongs to (the digest of its version 1).
    pub cluster: Option<cairn_layout::Digest>,
    /// Every member whose whole state has arrived, this node included.
    pub members: BTreeMap<NodeId, MemberView>,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    /// The generation of the last start; the next start takes a higher one.
    generation: u64,
    /// `cairn leave` was run: the node stays leaving across restarts.
    #[serde(default)]
    leaving: bool,
    /// No live layout version has this node any more: it stays `left` across restarts (until a
    /// `cairn join`).
    #[serde(default)]
    left: bool,
    /// Seeds added by `cairn join`.
    #[serde(default)]
    seeds: Vec<String>,
    /// Addresses of the other members when last seen: a restarted node asks them too, so it
    /// rejoins even when the configured seeds are down.
    #[serde(default)]
    peers: Vec<String>,
}

impl Persisted {
    fn load(path: &Path) -> Result<Persisted, MembershipError> {
        let err = |reason: String| MembershipError::StateFile {
            path: path.to_owned(),
            reason,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Persisted::parse(&text).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Reads the text of the state file.
    fn parse(text: &str) -> Result<Persisted, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Writes the file whole and durably: a crash leaves the old file or the new one.
    fn store(&self, path: &Path) -> Result<(), MembershipError> {
        let err = |e: std::io::Error| MembershipError::StateFile {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string(self).expect("Persisted always serializes");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Reads the text of a state file (`data/membership.toml`) as a node does at start, and gives
/// back the state it holds written out again (the state itself is private to this module): the
/// fuzz target's entry point, which checks that the answer reads back as itself.
pub fn parse_state_file(text: &str) -> Result<String, String> {
    Persisted::parse(text).map(|p| toml::to_string(&p).expect("Persisted always serializes"))
}

/// The gossip state machine and what the driver keeps beside it; always changed together.
struct Local {
    gossip: Gossip,
    /// Rounds ticked while joining without hearing from anyone.
    lonely_rounds: u32,
    /// What gossip says about each member, for routing (the core's rules).
    judge: PeerJudge,
    /// What this node last put in its gossiped ring field.
    advertised: RingInfo,
}

/// Most uses are of the gossip itself.
impl std::ops::Deref for Local {
    type Target = Gossip;

    fn deref(&self) -> &Gossip {
        &self.gossip
    }
}

impl std::ops::DerefMut for Local {
    fn deref_mut(&mut self) -> &mut Gossip {
        &mut self.gossip
    }
}

/// This node's membership: its gossip, what it persisted, and the published view.
pub struct Membership {
    me: NodeId,
    name: String,
    /// This node's configured failure zone (what a join puts in the layout).
    zone: Option<String>,
    advertise: SocketAddr,
    ring_config: RingConfig,
    /// Gossip and the driver's own per-member bookkeeping, under one lock.
    local: Mutex<Local>,
    /// The layout, its file and its channel.
    layout: Arc<NodeLayout>,
    /// Peers a layout exchange is running with (one at a time per peer).
    layout_exchanges: Mutex<std::collections::BTreeSet<NodeId>>,
    /// The coordinator's write fence (`DriverContext::write_fence`): this node acknowledges a
    /// layout version only once its coordinator routes by it with no older write unanswered.
    write_fence: std::sync::OnceLock<watch::Receiver<u64>>,
    view: watch::Sender<Arc<ClusterView>>,
    peers: Arc<Peers>,
    file: PathBuf,
    persisted: Arc<Mutex<Persisted>>,
    /// Held while the state file is written, so writes never interleave on its temporary file
    /// and the last write is always of the latest state.
    file_lock: Arc<Mutex<()>>,
    outbox: mpsc::Sender<Transmit>,
    outbox_rx: Mutex<Option<mpsc::Receiver<Transmit>>>,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Membership {
    /// Loads the persisted state from `config.data_dir`, takes a new generation (persisted before
    /// anything is sent) and starts this node's gossip, advertising `advertise`.
    pub fn open(
        config: &NodeConfig,
        advertise: SocketAddr,
        peers: Arc<Peers>,
    ) -> Result<Arc<Membership>, MembershipError> {
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(MembershipError::Advertise { addr: advertise });
        }
        let cluster = config.cluster();
        let file = config.data_dir.join(STATE_FILE);
        let mut persisted = Persisted::load(&file)?;
        // Above every earlier start, and above any generation a lost data directory may have
        // handed out (time only moves forward by more than one start per second in tests).
        persisted.generation = (persisted.generation + 1).max(unix_seconds());
        persisted.store(&file)?;

        let own = advertise.to_string();
        let mut seeds: Vec<String> = Vec::new();
        for s in cluster
            .seeds
            .iter()
            .chain(&persisted.seeds)
            .chain(&persisted.peers)
        {
            if *s != own && !seeds.contains(s) && seeds.len() < cairn_gossip::limits::SEEDS_MAX {
                seeds.push(s.clone());
            }
        }
        let ring_config = crate::layout::ring_config(&cluster);
        // Nobody to join and no initial members: this node is a cluster of its own.
        let layout = Arc::new(NodeLayout::open(
            &config.data_dir,
            &config.name,
            &cluster,
            seeds.is_empty(),
        )?);
        let info = RingInfo {
            name: config.name.clone(),
            partitions: cluster.partitions,
            replicas: cluster.replicas,
            layout: layout.stamp(),
        };
        let status = if persisted.left {
            Status::Left
        } else if persisted.leaving {
            Status::Leaving
        } else if seeds.is_empty() {
            // Nobody to join: this node starts a cluster of its own.
            Status::Up
        } else {
            Status::Joining
        };
        let state = NodeState {
            address: own,
            status,
            zone: cluster.zone.clone(),
            ring: info.encode(),
            load: 0,
            // A freshly opened engine has no fault; `storage_watch` declares one when it comes.
            storage: Storage::Ok,
        };
        let gossip_config = GossipConfig {
            seeds,
            phi_threshold: cluster.phi_threshold,
            ..GossipConfig::with_interval(Duration::from_millis(cluster.gossip_interval_ms))
        };
        let me = NodeId::from_name(&config.name);
        let generation = persisted.generation;
        let gossip = Gossip::new(me, gossip_config, state, generation, Instant::now())?;
        let (outbox, outbox_rx) = mpsc::channel(GOSSIP_OUTBOX_MAX);
        let (view, _) = watch::channel(Arc::new(ClusterView::default()));
        let membership = Arc::new(Membership {
            me,
            name: config.name.clone(),
            zone: cluster.zone.clone(),
            advertise,
            ring_config,
            local: Mutex::new(Local {
                gossip,
                lonely_rounds: 0,
                judge: PeerJudge::new(Duration::from_millis(cluster.gossip_interval_ms)),
                advertised: info,
            }),
            layout,
            layout_exchanges: Mutex::new(std::collections::BTreeSet::new()),
            write_fence: std::sync::OnceLock::new(),
            view,
            peers,
            file,
            persisted: Arc::new(Mutex::new(persisted)),
            file_lock: Arc::new(Mutex::new(())),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
        });
        let mut g = membership.lock();
        membership.refresh(&mut g);
        drop(g);
        info!(node = %config.name, generation, ?status, "membership started");
        Ok(membership)
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().expect("gossip lock")
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Follows the view as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    /// Whether `id` is believed reachable (this node always is).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.peers.is_up(id)
    }

    /// The name of `id` as gossiped (its id in hex if unknown).
    pub fn name(&self, id: NodeId) -> String {
        self.view
            .borrow()
            .members
            .get(&id)
            .map_or_else(|| self.peers.name(id), |m| m.name.clone())
    }

    /// Runs gossip rounds for ever (until its task is cancelled).
    pub async fn run(self: Arc<Self>) {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut outbox = self
            .outbox_rx
            .lock()
            .expect("outbox lock")
            .take()
            .expect("membership runs once");
        // Exchanges live in this set, so stopping the task stops them.
        let mut exchanges = tokio::task::JoinSet::new();
        loop {
            let deadline = self.lock().poll_timeout();
            let transmits = tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    let now = Instant::now();
                    let mut g = self.lock();
                    g.handle_tick(now, &mut rng);
                    self.joining_timeout(&mut g);
                    let transmits: Vec<Transmit> = std::iter::from_fn(|| g.poll_transmit()).collect();
                    self.refresh(&mut g);
                    drop(g);
                    self.start_layout_exchanges(&mut exchanges);
                    transmits
                }
                Some(t) = outbox.recv() => vec![t],
            };
            while exchanges.try_join_next().is_some() {}
            for t in transmits {
                if exchanges.len() >= GOSSIP_EXCHANGES_MAX {
                    debug!(
                        "skipping a gossip message: GOSSIP_EXCHANGES_MAX ({GOSSIP_EXCHANGES_MAX}) exchanges running"
                    );
                    continue;
                }
                exchanges.spawn(self.clone().exchange(t));
            }
        }
    }

    /// The layout this node holds (persisted; changes through [`NodeLayout::modify`] or
    /// [`Membership::change_layout`], which also republishes the view).
    pub fn layout(&self) -> &Arc<NodeLayout> {
        &self.layout
    }

    /// Starts a layout exchange with every peer that is up, of this node's ring shape, and
    /// gossips another layout stamp than this node's (one exchange per peer at a time, at most
    /// `LAYOUT_EXCHANGES_MAX` at once).
    fn start_layout_exchanges(self: &Arc<Self>, exchanges: &mut tokio::task::JoinSet<()>) {
        let view = self.view();
        let mine = self.layout.stamp();
        let mut running = self.layout_exchanges.lock().expect("layout exchanges lock");
        let peers = view.members.iter().map(|(&id, m)| LayoutPeer {
            id,
            compatible: m.compatible,
            layout: m.layout,
            up: id != self.me && self.peers.is_up(id),
        });
        let room = GOSSIP_EXCHANGES_MAX.saturating_sub(exchanges.len());
        for id in layout_exchange_partners(self.me, mine, peers, &running, room) {
            running.insert(id);
            let membership = self.clone();
            exchanges.spawn(async move {
                membership.clone().exchange_layout(id).await;
                membership
                    .layout_exchanges
                    .lock()
                    .expect("layout exchanges lock")
                    .remove(&id);
            });
        }
    }

    /// Sends this node's layout to `peer` and merges the one it answers with.
    async fn exchange_layout(self: Arc<Self>, peer: NodeId) {
        let mine = self.layout.encoded();
        match self
            .peers
            .request(peer, PeerRequest::Layout(mine), LAYOUT_EXCHANGE_TIMEOUT)
            .await
        {
            Ok(PeerResponse::Layout(theirs)) => {
                if let Err(e) = self.take_layout(&theirs, peer).await {
                    warn!("layout from {}: {e}", self.name(peer));
                }
            }
            Ok(other) => debug!("layout exchange with {} got {other:?}", self.name(peer)),
            Err(e) => debug!("layout exchange with {} failed: {e}", self.name(peer)),
        }
    }

    /// Answers `PeerRequest::Layout` from `sender`: merges its layout, then answers with this
    /// node's (after the merge).
    pub async fn receive_layout(
        &self,
        bytes: &[u8],
        sender: NodeId,
    ) -> Result<PeerResponse, ErrorReply> {
        self.take_layout(bytes, sender).await?;
        Ok(PeerResponse::Layout(self.layout.encoded()))
    }

    /// Decodes (size-checked) and merges a layout `from` sent; a merge that changes the layout
    /// is persisted before it is published.
    async fn take_layout(&self, bytes: &[u8], from: NodeId) -> Result<MergeOutcome, ErrorReply> {
        if bytes.is_empty() {
            return Ok(MergeOutcome::Unchanged);
        }
        let theirs = crate::layout::decode(bytes).map_err(|reason| ErrorReply::Malformed {
            reason: format!("layout: {reason}"),
        })?;
        let outcome = self.layout.merge(&theirs).await?;
        match outcome {
            MergeOutcome::Unchanged => {}
            MergeOutcome::Progressed => {
                debug!("layout progress from {}", self.name(from));
                self.layout_changed().await?;
            }
            MergeOutcome::Adopted { from: old, to } => {
                info!(from = old, to, peer = %self.name(from), "layout adopted");
                self.layout_changed().await?;
            }
        }
        Ok(outcome)
    }

    /// Gives membership the coordinator's write fence; set once, at start. Until it is set,
    /// no layout version is acknowledged.
    pub fn set_write_fence(&self, fence: watch::Receiver<u64>) {
        let _ = self.write_fence.set(fence);
    }

    /// Changes the layout through `change` (see [`NodeLayout::modify`]) and republishes the
    /// view, so routing follows at once.
    pub async fn change_layout<T>(
        &self,
        change: impl FnOnce(&mut Layout) -> Result<T, ErrorReply>,
    ) -> Result<T, ErrorReply> {
        let out = self.layout.modify(change).await?;
        self.layout_changed().await?;
        Ok(out)
    }

    /// After the layout changed: this node acknowledges a new version it is a member of, declares
    /// itself `left` once no live version has it any more, and the view (ring, stamp) is
    /// republished.
    ///
    /// The acknowledgement is given only once the coordinator routes by the new version and
    /// has no unanswered write routed under an older one (the write fence): the transfer task
    /// calls this again when the fence moves (see ARCHITECTURE.md, "The fence").
    pub async fn layout_changed(&self) -> Result<(), ErrorReply> {
        let me = self.me;
        // No fence yet (the coordinator has not started): nothing routed, nothing to ack.
        let fence = self.write_fence.get().map(|f| *f.borrow());
        let needs_ack =
            fence.is_some_and(|fence| self.layout.get().is_some_and(|l| l.should_ack(me, fence)));
        if needs_ack {
            self.layout
                .modify(|l| {
                    l.ack(me);
                    Ok(())
                })
                .await?;
        }
        // The view still shows the layout before this change. A node that moves into another
        // cluster (`cairn join`) was a member of its own, not of this one: it has not left.
        let before = self.view();
        let was_member = before.cluster == self.layout.stamp().map(|s| s.cluster)
            && before.layout.as_ref().is_some_and(|l| l.is_member(me));
        let is_member = self.layout.get().is_some_and(|l| l.is_member(me));
        if was_member && !is_member {
            self.persist(|p| {
                p.left = true;
                p.leaving = false;
            })
            .await?;
            let mut g = self.lock();
            let _ = g.set_local(Value::Status(Status::Left));
            info!("no live layout version has this node any more: left");
        }
        let mut g = self.lock();
        self.refresh(&mut g);
        Ok(())
    }

    /// A node that was a member and hears from nobody for `REJOIN_ROUNDS_MAX` rounds serves
    /// alone rather than never (its peers may all be down, and their addresses are all it has).
    fn joining_timeout(&self, g: &mut Local) {
        if g.node(self.me).map(|v| v.status()) != Some(Status::Joining) {
            return;
        }
        g.lonely_rounds += 1;
        let was_member = !self
            .persisted
            .lock()
            .expect("persisted lock")
            .peers
            .is_empty();
        if was_member && g.lonely_rounds >= REJOIN_ROUNDS_MAX {
            warn!("no peer answered in {REJOIN_ROUNDS_MAX} rounds; serving without them");
            let _ = g.set_local(Value::Status(Status::Up));
        }
    }

    /// Sends one message and carries the exchange it starts to its end.
    async fn exchange(self: Arc<Self>, t: Transmit) {
        let request = PeerRequest::Gossip(t.message.encode());
        match t.to {
            Destination::Node(id) => {
                let mut next = Some(request);
                while let Some(req) = next.take() {
                    match self.peers.request(id, req, GOSSIP_EXCHANGE_TIMEOUT).await {
                        Ok(PeerResponse::Gossip(Some(reply))) => {
                            next = match self.receive(&reply, id) {
                                Ok(next) => next.map(PeerRequest::Gossip),
                                Err(e) => {
                                    debug!("gossip from {}: {e}", self.name(id));
                                    None
                                }
                            };
                        }
                        Ok(PeerResponse::Gossip(None)) => {}
                        Ok(other) => debug!("gossip to {} got {other:?}", self.name(id)),
                        Err(e) => debug!("gossip to {} failed: {e}", self.name(id)),
                    }
                }
            }
            Destination::Seed(seed) => {
                if let Err(e) = self.exchange_with_seed(&seed, request).await {
                    debug!("gossip with seed {seed} failed: {e}");
                }
            }
        }
    }

    /// A seed is known only by address: dial it, run the exchange on that connection, close it.
    async fn exchange_with_seed(&self, seed: &str, request: PeerRequest) -> Result<(), String> {
        let addr = tokio::time::timeout(GOSSIP_EXCHANGE_TIMEOUT, tokio::net::lookup_host(seed))
            .await
            .map_err(|_| "name lookup timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        if addr == self.advertise {
            return Ok(());
        }
        let conn = self.peers.connect(addr).await?;
        // Whoever answers at a seed's address speaks for the node its certificate names.
        let Some(seed_node) = cairn_net::peer_node_name(&conn).map(|n| NodeId::from_name(&n))
        else {
            conn.close(0u32.into(), b"not a node");
            return Err("the seed's certificate names no node".into());
        };
        let run = async {
            let mut next = Some(request);
            while let Some(req) = next.take() {
                // Gossip tolerates loss: whether the request arrived does not matter here.
                let sent = std::sync::atomic::AtomicBool::new(false);
                match exchange_on(&conn, req, &sent).await? {
                    Ok(PeerResponse::Gossip(Some(reply))) => {
                        next = self
                            .receive(&reply, seed_node)
                            .map_err(|e| e.to_string())?
                            .map(PeerRequest::Gossip);
                    }
                    Ok(PeerResponse::Gossip(None)) => {}
                    Ok(other) => return Err(format!("answered {other:?}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        let result = tokio::time::timeout(GOSSIP_EXCHANGE_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        conn.close(0u32.into(), b"gossip done");
        result
    }

    /// Handles a gossip message from a peer; returns the reply to send back to it (an ACK for a
    /// SYN, an ACK2 for an ACK), encoded. Anything else the message caused is queued for the
    /// gossip task.
    ///
    /// `sender` is who sent it, as its certificate (or the address this node dialed) says: a
    /// message claiming to come from another node is refused, so one node cannot speak for
    /// another.
    pub fn receive(&self, bytes: &[u8], sender: NodeId) -> Result<Option<Vec<u8>>, ErrorReply> {
        let now = Instant::now();
        let mut g = self.lock();
        let received = receive_gossip(&mut g, now, bytes, sender)?;
        for t in received.others {
            if self.outbox.try_send(t).is_err() {
                debug!("gossip outbox full (GOSSIP_OUTBOX_MAX = {GOSSIP_OUTBOX_MAX}); dropped");
            }
        }
        let reply = received.reply.map(|m| m.encode());
        self.refresh(&mut g);
        Ok(reply)
    }

    /// `cairn leave`: plans taking this node out of the layout and, unless `dry_run`, applies
    /// the plan and declares this node leaving (it stays so across restarts, and becomes `left`
    /// once no live version has it).
    pub async fn leave(self: &Arc<Self>, dry_run: bool) -> Result<LayoutChangeReply, ErrorReply> {
        let reply = self
            .plan_change(Change::Leave { node: self.me }, dry_run)
            .await?;
        if reply.applied {
            {
                let mut g = self.lock();
                g.set_local(Value::Status(Status::Leaving)).map_err(|e| {
                    ErrorReply::Membership {
                        reason: e.to_string(),
                    }
                })?;
                self.refresh(&mut g);
            }
            self.persist(|p| p.leaving = true).await?;
            info!("leaving the cluster");
        }
        Ok(reply)
    }

    /// `cairn remove NODE`: plans taking the dead node `name` out of the layout (its replicas are
    /// rebuilt from the survivors) and, unless `dry_run`, applies it. A node that is up is
    /// refused: it should `leave`, which hands its own copies over.
    pub async fn remove(&self, name: &str, dry_run: bool) -> Result<LayoutChangeReply, ErrorReply> {
        let node = self.member_named(name)?;
        self.require_down(node, name, "remove")?;
        self.plan_change(Change::Remove { node }, dry_run).await
    }

    /// `cairn replace OLD NEW`: plans giving the dead node `old`'s partitions to the fresh node
    /// `new` (with the zone it gossips, if it is known yet) and, unless `dry_run`, applies it.
    pub async fn replace(
        &self,
        old: &str,
        new: &str,
        dry_run: bool,
    ) -> Result<LayoutChangeReply, ErrorReply> {
        let old_id = self.member_named(old)?;
        self.require_down(old_id, old, "replace")?;
        if !crate::config::valid_node_name(new) {
            return Err(ErrorReply::Membership {
                reason: format!("{new:?} is not a node name"),
            });
        }
        let new_id = NodeId::from_name(new);
        let zone = self
            .view()
            .members
            .get(&new_id)
            .and_then(|m| m.zone.clone());
        self.plan_change(
            Change::Replace {
                old: old_id,
                new: new_id,
                name: new.to_owned(),
                zone,
            },
            dry_run,
        )
        .await
    }

    fn member_named(&self, name: &str) -> Result<NodeId, ErrorReply> {
        let id = NodeId::from_name(name);
        let layout = self.layout.get().ok_or_else(no_layout)?;
        if layout.current().name(id) != Some(name) {
            return Err(ErrorReply::Membership {
                reason: format!(
                    "{name} is not a member of layout version {} (members: {})",
                    layout.current().version(),
                    layout
                        .current()
                        .names()
                        .values()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(id)
    }

    fn require_down(&self, node: NodeId, name: &str, command: &str) -> Result<(), ErrorReply> {
        if node == self.me || self.peers.is_up(node) {
            return Err(ErrorReply::Membership {
                reason: format!(
                    "{name} is up: `{command}` is for a dead node (its data is rebuilt from the \
                     other replicas); a running node should `cairn leave --node {name}`, which \
                     hands over its own copies"
                ),
            });
        }
        Ok(())
    }

    /// Plans `change` against this node's layout and, unless `dry_run`, applies it (planned
    /// again under the layout's lock, so it is never applied to another version than the one
    /// planned against), persisted before it spreads.
    async fn plan_change(
        &self,
        change: Change,
        dry_run: bool,
    ) -> Result<LayoutChangeReply, ErrorReply> {
        let layout = self.layout.get().ok_or_else(no_layout)?;
        let plan = layout.plan(&change).map_err(layout_error)?;
        if dry_run {
            return Ok(self.plan_reply(&layout, &plan, false));
        }
        let (before, plan) = self
            .change_layout(|l| {
                let before = l.clone();
                let plan = l.plan(&change).map_err(layout_error)?;
                l.apply(plan.clone()).map_err(layout_error)?;
                Ok((before, plan))
            })
            .await?;
        info!(
            from = plan.from,
            to = plan.next.version(),
            partitions = plan.moves.len(),
            "layout change applied: {}",
            describe(&change, &before)
        );
        let unconfirmed = self.confirm_change(&plan.next).await?;
        let mut reply = self.plan_reply(&before, &plan, true);
        reply.unconfirmed = unconfirmed;
        Ok(reply)
    }

    /// After this node applied the layout version `ours`: sends the layout to every other
    /// member of its live versions at once (a departed node excepted) and merges what each
    /// answers, so that a change another operator applied at the same moment, against the same
    /// version, meets this one now and the command that lost hears it, instead of one of them
    /// vanishing at a later gossip merge while both commands said "applied". Returns the
    /// members that did not answer within `LAYOUT_CONFIRM_TIMEOUT` (such a member could still
    /// hold a rival change); fails when the merge kept the rival.
    async fn confirm_change(&self, ours: &LayoutVersion) -> Result<Vec<String>, ErrorReply> {
        let mut members = self.layout.get().ok_or_else(no_layout)?.involved();
        members.remove(&self.me);
        let mine = self.layout.encoded();
        let mut asks = tokio::task::JoinSet::new();
        for &peer in &members {
            let (peers, req) = (self.peers.clone(), PeerRequest::Layout(mine.clone()));
            asks.spawn(
                async move { (peer, peers.request(peer, req, LAYOUT_CONFIRM_TIMEOUT).await) },
            );
        }
        // Whoever has not answered with a layout that merged is unconfirmed, a lost task too.
        let mut unanswered = members;
        while let Some(done) = asks.join_next().await {
            let Ok((peer, answer)) = done else { continue };
            match answer {
                Ok(PeerResponse::Layout(theirs)) => match self.take_layout(&theirs, peer).await {
                    Ok(_) => {
                        unanswered.remove(&peer);
                    }
                    Err(e) => warn!("layout from {}: {e}", self.name(peer)),
                },
                Ok(other) => debug!("layout confirmation from {} got {other:?}", self.name(peer)),
                Err(e) => debug!("layout confirmation from {} failed: {e}", self.name(peer)),
            }
        }
        let mut unconfirmed: Vec<String> = unanswered.into_iter().map(|n| self.name(n)).collect();
        unconfirmed.sort();
        let now = self.layout.get().ok_or_else(no_layout)?;
        if !now.kept(ours) {
            let current = now.current();
            return Err(ErrorReply::Membership {
                reason: format!(
                    "this change (layout version {}) was superseded: another change was applied \
                     against the same version at the same moment, and the cluster keeps that one \
                     (version {}, now in transition); nothing of this change will be carried out: \
                     look at `cairn status`, then plan again",
                    ours.version(),
                    current.version()
                ),
            });
        }
        Ok(unconfirmed)
    }

    fn plan_reply(&self, before: &Layout, plan: &Plan, applied: bool) -> LayoutChangeReply {
        let name = |id: &NodeId| {
            plan.next
                .name(*id)
                .or_else(|| before.name(*id))
                .map_or_else(|| id.to_string(), str::to_owned)
        };
        LayoutChangeReply {
            node: self.name.clone(),
            change: describe(&plan.change, before),
            from_version: plan.from,
            to_version: plan.next.version(),
            applied,
            moves: plan
                .moves
                .iter()
                .map(|m| PartitionMoveReply {
                    partition: m.partition,
                    from: m.from.iter().map(name).collect(),
                    to: m.to.iter().map(name).collect(),
                    keys: None,
                    bytes: None,
                })
                .collect(),
            // Counted by `count_plan`, which asks the old replicas.
            keys: None,
            bytes: None,
            // Filled by `confirm_change` once applied.
            unconfirmed: Vec::new(),
        }
    }

    /// Fills in what each move of `plan` transfers: for each moving partition the keys and
    /// bytes the most loaded of its old replicas that answered holds (each new replica receives
    /// that), asked of every old replica that is up (`PeerRequest::PartitionSizes`, within
    /// `PLAN_SIZES_TIMEOUT`) and read from this node's own trees (`trees`, present while
    /// anti-entropy keeps them). The plan's totals are the sums over moves of those figures
    /// times the replicas gaining the partition, and are left out unless every move is counted.
    pub async fn count_plan(&self, plan: &mut LayoutChangeReply, trees: Option<&Trees>) {
        // Which partitions to ask each old replica about.
        let mut asks: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for m in &plan.moves {
            for name in &m.from {
                asks.entry(NodeId::from_name(name))
                    .or_default()
                    .push(m.partition);
            }
        }
        let mut sizes: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut keep = |p: u32, keys: u64, bytes: u64| {
            let e = sizes.entry(p).or_default();
            *e = (e.0.max(keys), e.1.max(bytes));
        };
        let mut calls = tokio::task::JoinSet::new();
        for (node, partitions) in asks {
            if node == self.me {
                for p in partitions {
                    if let Some((keys, bytes)) = trees.and_then(|t| t.size(p)) {
                        keep(p, keys, bytes);
                    }
                }
                continue;
            }
            if !self.peers.is_up(node) {
                continue;
            }
            let peers = self.peers.clone();
            calls.spawn(async move {
                let req = PeerRequest::PartitionSizes { partitions };
                let sizes = |answer| match answer {
                    PeerResponse::PartitionSizes(sizes) => Ok(sizes),
                    other => Err(other),
                };
                let answer = peers
                    .call_for(node, "partition count", req, PLAN_SIZES_TIMEOUT, sizes)
                    .await;
                (node, answer)
            });
        }
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((_, Ok(answer))) => {
                    for s in answer {
                        keep(s.partition, s.keys, s.bytes);
                    }
                }
                Ok((node, Err(e))) => debug!(
                    "{} did not count its partitions for the plan: {e}",
                    self.peers.name(node)
                ),
                Err(e) => debug!("counting a plan's partitions: {e}"),
            }
        }
        let (mut keys, mut bytes, mut all) = (0u64, 0u64, true);
        for m in &mut plan.moves {
            let gaining = m.to.iter().filter(|n| !m.from.contains(n)).count() as u64;
            match sizes.get(&m.partition) {
                Some(&(k, b)) => {
                    (m.keys, m.bytes) = (Some(k), Some(b));
                    keys += k * gaining;
                    bytes += b * gaining;
                }
                None => all = false,
            }
        }
        (plan.keys, plan.bytes) = if all {
            (Some(keys), Some(bytes))
        } else {
            (None, None)
        };
    }

    /// Answers `PeerRequest::PartitionSizes` from this node's trees: nothing for a partition it
    /// cannot count (trees not rebuilt yet, or anti-entropy off).
    pub fn partition_sizes(trees: Option<&Trees>, partitions: &[u32]) -> Vec<PartitionSize> {
        partitions
            .iter()
            .filter_map(|&partition| {
                let (keys, bytes) = trees?.size(partition)?;
                Some(PartitionSize {
                    partition,
                    keys,
                    bytes,
                })
            })
            .collect()
    }

    /// `cairn join SEED`: takes the layout of the cluster `seed` belongs to (this node must
    /// hold none, or one of itself alone), plans adding this node to it and, unless `dry_run`,
    /// applies the plan and gossips with the seed from then on (the seed is kept across
    /// restarts). A node that already is a member only rejoins the gossip.
    pub async fn join(
        self: &Arc<Self>,
        seed: String,
        dry_run: bool,
    ) -> Result<LayoutChangeReply, ErrorReply> {
        if seed == self.advertise.to_string() {
            return Err(ErrorReply::Membership {
                reason: format!("{seed} is this node's own address"),
            });
        }
        let theirs = self
            .fetch_layout(&seed)
            .await
            .map_err(|reason| ErrorReply::Membership {
                reason: format!("cannot get the layout from {seed}: {reason}"),
            })?;
        let me = self.me;
        let change = Change::Join {
            node: me,
            name: self.name.clone(),
            zone: self.zone.clone(),
        };
        // What the layout would be once this node holds the seed's.
        let mut base = theirs.layout.clone();
        if let Some(mine) = self.layout.held() {
            if mine.cluster == theirs.cluster {
                base = mine.layout;
                base.merge(&theirs.layout);
            }
        }
        let reply = if base.is_member(me) {
            LayoutChangeReply {
                node: self.name.clone(),
                change: format!("join {} (already a member)", self.name),
                from_version: base.current().version(),
                to_version: base.current().version(),
                applied: false,
                ..LayoutChangeReply::default()
            }
        } else {
            let plan = base.plan(&change).map_err(layout_error)?;
            self.plan_reply(&base, &plan, false)
        };
        if dry_run {
            return Ok(reply);
        }
        self.layout.enter(me, &theirs).await?;
        let reply = if reply.to_version != reply.from_version {
            self.plan_change(change, false).await?
        } else {
            self.layout_changed().await?;
            reply
        };
        {
            let mut g = self.lock();
            g.add_seed(seed.clone())
                .map_err(|e| ErrorReply::Membership {
                    reason: e.to_string(),
                })?;
            if matches!(
                g.node(self.me).map(|v| v.status()),
                Some(Status::Leaving | Status::Left)
            ) {
                let _ = g.set_local(Value::Status(Status::Joining));
            }
            g.lonely_rounds = 0;
            self.refresh(&mut g);
        }
        self.persist(|p| {
            p.leaving = false;
            p.left = false;
            if !p.seeds.contains(&seed) {
                p.seeds.push(seed.clone());
            }
        })
        .await?;
        info!(%seed, "joining through seed");
        Ok(reply)
    }

    /// Asks the node at `seed` (an address) for its layout, sending none, so nothing of this
    /// node's reaches the seed this way.
    async fn fetch_layout(&self, seed: &str) -> Result<Held, String> {
        let addr = tokio::time::timeout(GOSSIP_EXCHANGE_TIMEOUT, tokio::net::lookup_host(seed))
            .await
            .map_err(|_| "name lookup timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let conn = self.peers.connect(addr).await?;
        let sent = std::sync::atomic::AtomicBool::new(false);
        let answer = tokio::time::timeout(
            LAYOUT_EXCHANGE_TIMEOUT,
            exchange_on(&conn, PeerRequest::Layout(Vec::new()), &sent),
        )
        .await;
        conn.close(0u32.into(), b"layout fetched");
        match answer {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Ok(Ok(PeerResponse::Layout(bytes)))) if bytes.is_empty() => {
                Err("it holds no layout yet".into())
            }
            Ok(Ok(Ok(PeerResponse::Layout(bytes)))) => crate::layout::decode(&bytes),
            Ok(Ok(Ok(other))) => Err(format!("answered {other:?}")),
        }
    }

    async fn persist(&self, change: impl FnOnce(&mut Persisted)) -> Result<(), ErrorReply> {
        change(&mut self.persisted.lock().expect("persisted lock"));
        tokio::task::spawn_blocking(self.save())
            .await
            .expect("persist task panicked")
            .map_err(|e| ErrorReply::Storage {
                reason: e.to_string(),
            })
    }

    /// A job that writes the latest persisted state (taken under the file lock, so of two
    /// concurrent saves the later one writes last and writes everything).
    fn save(&self) -> impl FnOnce() -> Result<(), MembershipError> + Send + 'static {
        let (persisted, lock, file) = (
            self.persisted.clone(),
            self.file_lock.clone(),
            self.file.clone(),
        );
        move || {
            let _writing = lock.lock().expect("file lock");
            let snapshot = persisted.lock().expect("persisted lock").clone();
            snapshot.store(&file)
        }
    }

    /// Applies gossip's events and republishes the view: peers' names, addresses and liveness,
    /// this node becoming up once it has heard from the cluster, and the ring.
    fn refresh(&self, local: &mut Local) {
        let now = Instant::now();
        let Local {
            gossip: g,
            judge,
            advertised,
            ..
        } = local;
        while let Some(event) = g.poll_event() {
            judge.handle_event(&event);
            match event {
                MembershipEvent::NodeDown { node } => {
                    info!(node = %self.name(node), "judged down by the failure detector");
                }
                MembershipEvent::NodeRemoved { node } => self.peers.remove(node),
                MembershipEvent::SelfSuperseded { generation } => warn!(
                    generation,
                    "a peer holds this node with a higher generation: another process uses this name, or the clock went back; restart the node"
                ),
                MembershipEvent::NodeJoined { node, generation }
                | MembershipEvent::NodeRestarted { node, generation } => {
                    debug!(%node, generation, "node (re)started")
                }
                _ => {}
            }
        }
        // Joining ends with the first other member heard of: from then on this node knows the
        // cluster it joins, and claiming partitions cannot split it.
        if joining_ends(g, self.me) {
            let _ = g.set_local(Value::Status(Status::Up));
            info!("joined the cluster");
        }
        let mut members = BTreeMap::new();
        for (id, v) in g.members() {
            let state = v.state();
            let (name, addr, compatible, layout) = if id == self.me {
                (self.name.clone(), self.advertise, true, self.layout.stamp())
            } else {
                let info = match RingInfo::read(id, &state.ring) {
                    Ok(info) => info,
                    Err(e) => {
                        debug!(%id, "member ignored: {e}");
                        continue;
                    }
                };
                let Ok(addr) = state.address.parse::<SocketAddr>() else {
                    debug!(%id, address = %state.address, "member address is not ip:port; ignored");
                    continue;
                };
                let compatible = info.compatible(self.ring_config);
                (info.name, addr, compatible, info.layout)
            };
            if id != self.me {
                let j = judge.judge(now, id, v);
                self.peers
                    .upsert(id, &name, addr, j.alive, j.late, j.degraded);
            }
            members.insert(
                id,
                MemberView {
                    name,
                    addr,
                    status: state.status,
                    zone: state.zone.clone(),
                    generation: v.generation(),
                    compatible,
                    layout,
                    storage: state.storage,
                },
            );
        }
        let layout = self.layout.get();
        // Peers learn this node's layout stamp from its gossiped ring field.
        let stamp = self.layout.stamp();
        if advertised.layout != stamp {
            let info = RingInfo {
                layout: stamp,
                ..advertised.clone()
            };
            match g.set_local(Value::Ring(info.encode())) {
                Ok(()) => *advertised = info,
                Err(e) => warn!("cannot gossip the layout stamp: {e}"),
            }
        }
        let view = ClusterView {
            ring: self.ring_for(layout.as_ref()),
            layout,
            cluster: stamp.map(|s| s.cluster),
            members,
        };
        let changed = self.view.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            if current.ring != view.ring {
                info!(
                    members = view.ring.as_ref().map_or(0, |r| r.members().len()),
                    layout = view.layout.as_ref().map_or(0, |l| l.current().version()),
                    "ring changed"
                );
            }
            *current = Arc::new(view);
            true
        });
        if changed {
            self.remember_peers();
        }
    }

    /// The routing ring of `layout`: the current one while the layout is the same (refresh runs
    /// on every gossip message; rings are cloned only when the layout changes).
    fn ring_for(&self, layout: Option<&Arc<Layout>>) -> Option<Arc<Ring>> {
        let layout = layout?;
        let current = self.view.borrow().clone();
        if current
            .layout
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, layout))
        {
            return current.ring.clone();
        }
        let ring = crate::layout::routing_ring(layout);
        match &current.ring {
            Some(r) if **r == *ring => Some(r.clone()),
            _ => Some(Arc::new(ring.clone())),
        }
    }

    /// Keeps the members' addresses on disk (on a blocking thread, off the gossip lock's
    /// holder) when they changed, so a restart can find the cluster without the seeds.
    fn remember_peers(&self) {
        let mut peers: Vec<String> = self
            .view
            .borrow()
            .members
            .iter()
            .filter(|(&id, m)| id != self.me && m.status != Status::Left)
            .map(|(_, m)| m.addr.to_string())
            .collect();
        peers.truncate(cairn_gossip::limits::SEEDS_MAX);
        {
            let mut p = self.persisted.lock().expect("persisted lock");
            if p.peers == peers || peers.is_empty() {
                return;
            }
            p.peers = peers;
        }
        let save = self.save();
        // Best effort: an old list only means a restart asks a few more addresses.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = save() {
                warn!("{e}");
            }
        });
    }

    /// Declares this node's storage in gossip (a no-op when it is unchanged): the engine's
    /// fault, read by [`storage_watch`], so peers route around a node whose commits fail.
    pub fn set_storage(&self, storage: Storage) {
        let mut g = self.lock();
        let current = g.node(self.me).map(|v| v.state().storage);
        if current == Some(storage) {
            return;
        }
        match g.set_local(Value::Storage(storage)) {
            Ok(()) => info!(?storage, "storage state gossiped"),
            Err(e) => warn!("could not gossip the storage state: {e}"),
        }
        self.refresh(&mut g);
    }

    /// Every member as this node sees it, for `cairn status`.
    pub fn status(&self, hints_pending: u64) -> Vec<MemberStatus> {
        let view = self.view();
        let layout = self.layout.get();
        let now = Instant::now();
        let g = self.lock();
        view.members
            .iter()
            .map(|(&id, m)| {
                let this_node = id == self.me;
                let gv = g.node(id);
                // A degraded member that gossip still hears from answers (only its disk
                // fails), so that is what it is shown as; one gossip cannot hear from is down.
                let heard = this_node || gv.is_some_and(|v| v.is_alive());
                let status = match m.status {
                    Status::Left => "left",
                    _ if m.storage.is_degraded() && heard => "degraded",
                    _ if !this_node && !self.peers.is_up(id) => "down",
                    // The layout says a member leaves as soon as this node holds the version
                    // that drops it; the leaver's own `Leaving` gossip may arrive later.
                    _ if layout.as_ref().is_some_and(|l| l.is_leaving(id)) => "leaving",
                    Status::Joining => "joining",
                    Status::Up => "up",
                    Status::Leaving => "leaving",
                };
                let phi = match gv {
                    Some(v) if !this_node => v.phi(now),
                    _ => 0.0,
                };
                MemberStatus {
                    name: m.name.clone(),
                    addr: m.addr.to_string(),
                    status: status.to_owned(),
                    generation: m.generation,
                    // JSON has no infinity; a node never heard from is as suspect as can be.
                    phi: if phi.is_finite() { phi } else { f64::MAX },
                    heartbeat_age_ms: gv
                        .filter(|_| !this_node)
                        .and_then(|v| v.heartbeat_age(now))
                        .map(|d| d.as_millis() as u64),
                    zone: m.zone.clone(),
                    this_node,
                    partitions: view
                        .ring
                        .as_ref()
                        .map_or(0, |r| r.partitions_of(id).len() as u32),
                    hints_pending: this_node.then_some(hints_pending),
                }
            })
            .collect()
    }
}

/// Gossips the engine's storage fault for as long as the node runs: every
/// `STORAGE_CHECK_INTERVAL` it reads whether the last commit failed and declares it (see
/// [`Membership::set_storage`]). Polled rather than pushed so the writer thread never waits on
/// the gossip lock.
pub async fn storage_watch(engine: Arc<crate::engine::Engine>, membership: Arc<Membership>) {
    let mut tick = tokio::time::interval(STORAGE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let storage = match engine.stats().degraded() {
            None => Storage::Ok,
            Some(fault) => Storage::Degraded {
                disk_full: fault.disk_full,
            },
        };
        membership.set_storage(storage);
        membership.peers.set_own_storage(storage.is_degraded());
    }
}
