//! UDP relays in front of the nodes of a test cluster, which can cut the traffic between groups
//! of nodes: a real network partition for real QUIC on loopback, without root or containers.
//!
//! Node `i` listens on a private address and advertises its relay's address, so every datagram
//! another node sends it passes the relay. The relay knows each node's private address, hence
//! who sent a datagram, and drops it when the sender and the receiver are on different sides of
//! a partition; replies are relayed back the same way and dropped by the same rule. Datagrams
//! from anyone else (test clients) always pass.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// Largest datagram relayed; QUIC sends at most about 1500 bytes on loopback by default, and
/// GSO batches are split by the kernel before they reach a socket.
const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Sources one relay tracks (each gets its own upstream socket); a test cluster has a handful.
const SOURCES_PER_RELAY_MAX: usize = 256;

struct Shared {
    /// Private address of node `i`, once it is known.
    backends: RwLock<Vec<Option<SocketAddr>>>,
    /// (sender, receiver) pairs of node indexes whose traffic is dropped; a partition blocks
    /// both orders.
    blocked: RwLock<BTreeSet<(usize, usize)>>,
}

impl Shared {
    fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.backends
            .read()
            .expect("backends lock")
            .iter()
            .position(|b| *b == Some(addr))
    }

    fn passes(&self, from: Option<usize>, to: usize) -> bool {
        from.is_none_or(|from| {
            !self
                .blocked
                .read()
                .expect("blocked lock")
                .contains(&(from, to))
        })
    }
}

/// The relays of one cluster.
pub struct Relays {
    fronts: Vec<SocketAddr>,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl Relays {
    /// `n` relays on free loopback ports; each forwards to its node once
    /// [`Relays::set_backend`] says where that node listens.
    pub async fn new(n: usize) -> anyhow::Result<Relays> {
        let shared = Arc::new(Shared {
            backends: RwLock::new(vec![None; n]),
            blocked: RwLock::new(BTreeSet::new()),
        });
        let mut fronts = Vec::new();
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            fronts.push(front.local_addr()?);
            tasks.spawn(relay(i, front, shared.clone()));
        }
        Ok(Relays {
            fronts,
            shared,
            _tasks: tasks,
        })
    }

    /// The address node `i` should advertise.
    pub fn front(&self, i: usize) -> SocketAddr {
        self.fronts[i]
    }

    /// Node `i` listens on `addr`.
    pub fn set_backend(&self, i: usize, addr: SocketAddr) {
        self.shared.backends.write().expect("backends lock")[i] = Some(addr);
    }

    /// Cuts every pair of nodes in different `groups` (node indexes); nodes in no group keep
    /// talking to everyone.
    pub fn partition(&self, groups: &[&[usize]]) {
        let mut blocked = self.shared.blocked.write().expect("blocked lock");
        blocked.clear();
        for (g, a) in groups.iter().enumerate() {
            for b in &groups[g + 1..] {
                for &x in *a {
                    for &y in *b {
                        blocked.insert((x, y));
                        blocked.insert((y, x));
                    }
                }
            }
        }
    }

    /// Drops what node `from` sends to node `to`, and nothing the other way: `to`'s requests
    /// arrive, the answers to them are lost. Adds to whatever is already cut.
    pub fn block(&self, from: usize, to: usize) {
        self.shared
            .blocked
            .write()
            .expect("blocked lock")
            .insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.shared.blocked.write().expect("blocked lock").clear();
    }
}

/// Relays datagrams for node `me`: from any source to the node through one upstream socket per
/// source, and the node's answers back to that source.
async fn relay(me: usize, front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((len, source)) = front.recv_from(&mut buf).await else {
            return;
        };
        let Some(backend) = shared.backends.read().expect("backends lock")[me] else {
            continue;
        };
        let from = shared.node_at(source);
        if !shared.passes(from, me) {
            continue;
        }
        let existing = upstreams
            .lock()
            .expect("upstreams lock")
            .get(&source)
            .cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                if upstreams.lock().expect("upstreams lock").len() >= SOURCES_PER_RELAY_MAX {
                    continue;
                }
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(backend).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams
                    .lock()
                    .expect("upstreams lock")
                    .insert(source, u.clone());
                let (front, shared, u2) = (front.clone(), shared.clone(), u.clone());
                replies.spawn(async move {
                    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
                    while let Ok(len) = u2.recv(&mut buf).await {
                        // The node answers `source`: dropped when `me` may not reach it.
                        if from.is_none_or(|to| shared.passes(Some(me), to)) {
                            let _ = front.send_to(&buf[..len], source).await;
                        }
                    }
                });
                u
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}
