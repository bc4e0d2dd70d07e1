//! The layout this node holds (`cairn_layout::Layout`): bootstrapped on a first start from
//! `cluster.initial_members`, persisted to `data/layout.bin` before any change is used, and
//! published on a watch channel that membership builds the routing ring from.
//!
//! Every change goes through [`NodeLayout::modify`]: it works on a copy, writes the file
//! (temporary file, fsync, rename, fsync of the directory) and only then publishes the copy, so
//! nothing this node routes or answers ever rests on a layout a crash could take back.
//!
//! A layout travels with the id of its cluster: the digest of the version 1 it grew from. Two
//! layouts of different clusters never merge (the greater would silently take every partition
//! from the other cluster's nodes); only an explicit `cairn join` of a node that is alone moves
//! it into another cluster.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use cairn_layout::held::{decode, encode, Held, Stamp, HELD_ENCODED_BYTES_MAX};
use cairn_layout::{Layout, LayoutVersion, MergeOutcome};
use cairn_proto::{ErrorReply, NodeId};
use cairn_ring::{Member, Ring, RingConfig};
use tokio::sync::watch;
use tracing::info;

use crate::config::{ClusterConfig, InitialMember};

/// The file in the data directory that holds the layout.
pub const LAYOUT_FILE: &str = "layout.bin";
/// What a layout file starts with.
const MAGIC: &[u8; 8] = b"CAIRNLAY";
/// The file format; a file of another format is refused by name, never guessed at.
const FORMAT: u16 = 1;
/// Magic, format and the length of the body (u32).
const HEADER_BYTES: usize = 8 + 2 + 4;
/// The CRC32 of the body, after it.
const CHECKSUM_BYTES: usize = 4;
/// Bytes of the largest layout file: the header, the largest encoded layout, the checksum. A
/// larger file is refused before it is read whole.
pub const LAYOUT_FILE_BYTES_MAX: usize = HEADER_BYTES + HELD_ENCODED_BYTES_MAX + CHECKSUM_BYTES;

const _: () = assert!(
    HELD_ENCODED_BYTES_MAX <= cairn_proto::limits::LAYOUT_BYTES_MAX,
    "a node must be able to send its whole layout in one peer request"
);

/// Why the layout file could not be read or written, or the layout not used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutFileError {
    /// The file could not be read or written.
    #[error("layout file {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The file is larger than any layout.
    #[error("layout file {path} is {len} bytes, over LAYOUT_FILE_BYTES_MAX ({max}); it is not a layout this node wrote")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// `LAYOUT_FILE_BYTES_MAX`.
        max: usize,
    },
    /// The file is damaged or of another format. The node refuses to start rather than make a
    /// new layout, which could give its partitions to others.
    #[error("layout file {path} is corrupt: {reason}; restore it from a backup or from another node (`cairn status`), never delete it to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The layout disagrees with the configuration.
    #[error("layout file {path}: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// The initial members do not make a layout.
    #[error("cannot bootstrap the layout from cluster.initial_members: {0}")]
    Bootstrap(cairn_layout::LayoutError),
}

/// Reads the layout file at `path`: `None` if there is none.
pub fn load(path: &Path) -> Result<Option<Held>, LayoutFileError> {
    use std::io::Read as _;
    let io = |e: std::io::Error| LayoutFileError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let corrupt = |reason: String| LayoutFileError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len > LAYOUT_FILE_BYTES_MAX as u64 {
        return Err(LayoutFileError::TooLarge {
            path: path.to_owned(),
            len,
            max: LAYOUT_FILE_BYTES_MAX,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The limit again, in case the file grows while it is read.
    file.take(LAYOUT_FILE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(corrupt(format!(
            "{} bytes, shorter than a header and a checksum",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("it does not start with CAIRNLAY".into()));
    }
    let format = u16::from_le_bytes([bytes[8], bytes[9]]);
    if format != FORMAT {
        return Err(corrupt(format!(
            "format {format}, this node reads format {FORMAT}"
        )));
    }
    let body_len = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
    if bytes.len() != HEADER_BYTES + body_len + CHECKSUM_BYTES {
        return Err(corrupt(format!(
            "the header says {body_len} bytes of layout, the file holds {}",
            bytes.len().saturating_sub(HEADER_BYTES + CHECKSUM_BYTES)
        )));
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + body_len];
    let stored = u32::from_le_bytes(
        bytes[HEADER_BYTES + body_len..]
            .try_into()
            .expect("4 bytes"),
    );
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum {actual:08x}, the file says {stored:08x}"
        )));
    }
    decode(body).map(Some).map_err(corrupt)
}

/// Writes `layout` to `path` whole and durably: a crash leaves the old file or the new one.
pub fn store(path: &Path, held: &Held) -> Result<(), LayoutFileError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| LayoutFileError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let body = encode(held);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len() + CHECKSUM_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let tmp = path.with_extension("bin.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// The layout a node without a layout file starts with:
/// - named in `initial_members`: version 1 over exactly those members, the same at every one;
/// - no initial members and nobody to join (`alone`): version 1 of this node alone;
/// - otherwise none: it waits for a layout from gossip and owns nothing.
pub fn bootstrap(
    name: &str,
    cluster: &ClusterConfig,
    alone: bool,
) -> Result<Option<Held>, LayoutFileError> {
    let config = ring_config(cluster);
    let initial = cluster.initial_members().map_err(|reason| {
        LayoutFileError::Bootstrap(cairn_layout::LayoutError::Invalid { reason })
    })?;
    let members: Vec<InitialMember> = if initial.is_empty() && alone {
        vec![InitialMember {
            name: name.to_owned(),
            zone: cluster.zone.clone(),
        }]
    } else if initial.iter().any(|m| m.name == name) {
        initial
    } else {
        return Ok(None);
    };
    let mut members: Vec<(Member, String)> = members
        .into_iter()
        .map(|m| {
            (
                Member {
                    id: NodeId::from_name(&m.name),
                    zone: m.zone,
                },
                m.name,
            )
        })
        .collect();
    // The order written in the file must not matter: every member computes the same version.
    members.sort_by_key(|(m, _)| m.id);
    let first = LayoutVersion::initial(config, &members).map_err(LayoutFileError::Bootstrap)?;
    Ok(Some(Held {
        cluster: first.digest(),
        layout: Layout::new(first),
    }))
}

/// The ring shape (Q, N) the configuration asks for.
pub fn ring_config(cluster: &ClusterConfig) -> RingConfig {
    RingConfig {
        partitions: cluster.partitions,
        replicas: cluster.replicas.into(),
    }
}

/// The ring requests are routed by (`Layout::routing_ring`).
pub fn routing_ring(layout: &Layout) -> &Ring {
    layout.routing_ring()
}

/// The layout this node holds, its file, and the channel it is published on.
pub struct NodeLayout {
    file: PathBuf,
    config: RingConfig,
    /// Serialises changes: each reads the latest layout, persists, then publishes.
    writing: tokio::sync::Mutex<()>,
    tx: watch::Sender<Option<Arc<Layout>>>,
    /// The published layout's cluster and stamp, kept beside it so gossip never re-encodes it.
    held: Mutex<Option<Stamp>>,
}

impl NodeLayout {
    /// Loads the layout from `data_dir`, or bootstraps and persists it (see [`bootstrap`]).
    /// A file that cannot be read, is corrupt, or disagrees with the configured Q and N is an
    /// error: never a silent new layout.
    pub fn open(
        data_dir: &Path,
        name: &str,
        cluster: &ClusterConfig,
        alone: bool,
    ) -> Result<NodeLayout, LayoutFileError> {
        let file = data_dir.join(LAYOUT_FILE);
        let config = ring_config(cluster);
        let held = match load(&file)? {
            Some(held) => {
                let found = held.layout.current().ring().config();
                if found != config {
                    return Err(LayoutFileError::Mismatch {
                        path: file,
                        reason: format!(
                            "the layout has {} partitions and {} replicas, the configuration \
                             asks for {} and {}; Q and N are fixed when a cluster is created",
                            found.partitions, found.replicas, config.partitions, config.replicas
                        ),
                    });
                }
                info!(version = held.layout.current().version(), "layout loaded");
                Some(held)
            }
            None => {
                let held = bootstrap(name, cluster, alone)?;
                if let Some(held) = &held {
                    store(&file, held)?;
                    info!(
                        members = held.layout.current().names().len(),
                        "layout version 1 bootstrapped"
                    );
                } else {
                    info!("no layout yet: waiting for one from the cluster");
                }
                held
            }
        };
        let stamp = held.as_ref().map(Stamp::of);
        let (tx, _) = watch::channel(held.map(|h| Arc::new(h.layout)));
        Ok(NodeLayout {
            file,
            config,
            writing: tokio::sync::Mutex::new(()),
            tx,
            held: Mutex::new(stamp),
        })
    }

    /// The layout as last persisted (`None` while this node has none).
    pub fn get(&self) -> Option<Arc<Layout>> {
        self.tx.borrow().clone()
    }

    /// Follows the layout as it changes; every value seen is already on disk.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Layout>>> {
        self.tx.subscribe()
    }

    /// The stamp gossip carries for the published layout.
    pub fn stamp(&self) -> Option<Stamp> {
        *self.held.lock().expect("stamp lock")
    }

    /// The published layout with its cluster id, as peers are sent it.
    pub fn held(&self) -> Option<Held> {
        let cluster = self.stamp()?.cluster;
        self.get().map(|layout| Held {
            cluster,
            layout: (*layout).clone(),
        })
    }

    /// The encoded [`NodeLayout::held`] (empty while none is held), as `PeerRequest::Layout`
    /// carries it.
    pub fn encoded(&self) -> Vec<u8> {
        self.held().map_or_else(Vec::new, |h| encode(&h))
    }

    /// The ring shape every layout this node takes must have.
    pub fn ring_config(&self) -> RingConfig {
        self.config
    }

    /// Changes the layout: `change` works on a copy of the latest one; if the copy differs it is
    /// persisted, then published. Returns what `change` returned; nothing is published when it
    /// or the write fails. A node without a layout gets one only by [`NodeLayout::merge`] or
    /// [`NodeLayout::enter`].
    pub async fn modify<T>(
        &self,
        change: impl FnOnce(&mut Layout) -> Result<T, ErrorReply>,
    ) -> Result<T, ErrorReply> {
        let _writing = self.writing.lock().await;
        let (Some(before), Some(stamp)) = (self.get(), self.stamp()) else {
            return Err(ErrorReply::Membership {
                reason: "this node holds no layout yet".into(),
            });
        };
        let mut next = (*before).clone();
        let out = change(&mut next)?;
        if next != *before {
            self.publish(Held {
                cluster: stamp.cluster,
                layout: next,
            })
            .await?;
        }
        Ok(out)
    }

    /// Persists `held`, then publishes it. Called with `writing` held.
    async fn publish(&self, held: Held) -> Result<(), ErrorReply> {
        let c = held.layout.current().ring().config();
        if c != self.config {
            return Err(ErrorReply::Membership {
                reason: format!(
                    "a layout of {} partitions and {} replicas; this node has {} and {}",
                    c.partitions, c.replicas, self.config.partitions, self.config.replicas
                ),
            });
        }
        let (file, copy) = (self.file.clone(), held.clone());
        tokio::task::spawn_blocking(move || store(&file, &copy))
            .await
            .expect("layout store task panicked")
            .map_err(|e| ErrorReply::Storage {
                reason: e.to_string(),
            })?;
        *self.held.lock().expect("stamp lock") = Some(Stamp::of(&held));
        self.tx.send_replace(Some(Arc::new(held.layout)));
        Ok(())
    }

    /// Merges a peer's layout into this node's (adopting it when this node has none), persisted
    /// before it is used. A layout of another cluster or ring shape is refused.
    pub async fn merge(&self, other: &Held) -> Result<MergeOutcome, ErrorReply> {
        let _writing = self.writing.lock().await;
        let (mine, stamp) = (self.get(), self.stamp());
        let (next, outcome) = match (mine, stamp) {
            (Some(mine), Some(stamp)) => {
                if stamp.cluster != other.cluster {
                    return Err(ErrorReply::Membership {
                        reason: format!(
                            "refusing the layout of another cluster ({}; this node's is {}): \
                             a node moves to another cluster only by `cairn join`",
                            other.cluster, stamp.cluster
                        ),
                    });
                }
                let mut next = (*mine).clone();
                let outcome = next.merge(&other.layout);
                (next, outcome)
            }
            _ => (
                other.layout.clone(),
                MergeOutcome::Adopted {
                    from: 0,
                    to: other.layout.current().version(),
                },
            ),
        };
        if outcome != MergeOutcome::Unchanged {
            self.publish(Held {
                cluster: other.cluster,
                layout: next,
            })
            .await?;
        }
        Ok(outcome)
    }

    /// Takes `other` (another cluster's layout) in place of this node's, for `cairn join`:
    /// allowed only while this node holds none, or holds a settled layout of itself alone (it
    /// owns nothing anyone else relies on). Returns whether the layout changed.
    pub async fn enter(&self, me: NodeId, other: &Held) -> Result<bool, ErrorReply> {
        let _writing = self.writing.lock().await;
        if let (Some(mine), Some(stamp)) = (self.get(), self.stamp()) {
            if stamp.cluster == other.cluster {
                drop(_writing);
                return Ok(self.merge(other).await? != MergeOutcome::Unchanged);
            }
            let alone = mine.is_settled()
                && mine.current().names().len() == 1
                && mine.current().is_member(me);
            if !alone {
                return Err(ErrorReply::Membership {
                    reason: format!(
                        "this node is a member of another cluster (layout version {} with {} \
                         members); take it out there first (`cairn leave`)",
                        mine.current().version(),
                        mine.current().names().len()
                    ),
                });
            }
        }
        self.publish(other.clone()).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(members: &[&str]) -> ClusterConfig {
        ClusterConfig {
            initial_members: members.iter().map(|s| (*s).to_owned()).collect(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn every_initial_member_computes_the_same_first_version_whatever_the_order() {
        let a = bootstrap("n1", &cluster(&["n1", "n2@z2", "n3"]), false)
            .unwrap()
            .unwrap();
        let b = bootstrap("n3", &cluster(&["n3", "n1", "n2@z2"]), false)
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cluster, a.layout.current().digest());
        let a = a.layout;
        assert_eq!(a.current().version(), 1);
        assert_eq!(a.current().names().len(), 3);
        let z2 = a
            .current()
            .ring()
            .members()
            .iter()
            .find(|m| m.id == NodeId::from_name("n2"))
            .unwrap();
        assert_eq!(z2.zone.as_deref(), Some("z2"));
    }

    #[test]
    fn a_node_not_listed_waits_and_a_lone_node_bootstraps_itself() {
        assert_eq!(
            bootstrap("n4", &cluster(&["n1", "n2"]), false).unwrap(),
            None
        );
        assert_eq!(bootstrap("n4", &cluster(&[]), false).unwrap(), None);
        let alone = bootstrap("n4", &cluster(&[]), true).unwrap().unwrap();
        assert_eq!(
            alone.layout.current().names().values().collect::<Vec<_>>(),
            ["n4"]
        );
    }

    #[test]
    fn the_file_round_trips_and_damage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LAYOUT_FILE);
        assert!(load(&path).unwrap().is_none());
        let layout = bootstrap("n1", &cluster(&["n1", "n2", "n3"]), false)
            .unwrap()
            .unwrap();
        store(&path, &layout).unwrap();
        assert_eq!(load(&path).unwrap(), Some(layout));
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "shorter than a header"),
            (b"NOTALAYOUTFILE!!!!".to_vec(), "CAIRNLAY"),
            (
                {
                    let mut b = good.clone();
                    b[20] ^= 0x40;
                    b
                },
                "checksum",
            ),
            (good[..good.len() - 1].to_vec(), "the header says"),
            (
                {
                    let mut b = good.clone();
                    b[8] = 9;
                    b
                },
                "format 9",
            ),
        ];
        for (bytes, why) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains(&path.display().to_string()),
                "{why}: {err}"
            );
        }
        std::fs::write(&path, vec![0u8; LAYOUT_FILE_BYTES_MAX + 1]).unwrap();
        assert!(matches!(
            load(&path).unwrap_err(),
            LayoutFileError::TooLarge { .. }
        ));
    }

    #[test]
    fn a_layout_of_another_shape_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(&["n1", "n2", "n3"]);
        NodeLayout::open(dir.path(), "n1", &c, false).unwrap();
        let other = ClusterConfig {
            partitions: 128,
            ..c
        };
        let err = NodeLayout::open(dir.path(), "n1", &other, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("128"), "{err}");
    }

    #[tokio::test]
    async fn changes_are_persisted_before_they_are_published_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(&["n1", "n2", "n3"]);
        let held = NodeLayout::open(dir.path(), "n1", &c, false).unwrap();
        let mut rx = held.subscribe();
        let n4 = NodeId::from_name("n4");
        held.modify(|l| {
            let plan = l
                .plan(&cairn_layout::Change::Join {
                    node: n4,
                    name: "n4".into(),
                    zone: None,
                })
                .unwrap();
            l.apply(plan).map_err(|e| ErrorReply::Membership {
                reason: e.to_string(),
            })
        })
        .await
        .unwrap();
        assert!(rx.has_changed().unwrap());
        let published = rx.borrow_and_update().clone().unwrap();
        assert_eq!(published.current().version(), 2);
        // What was published is what the file holds.
        let stored = load(&dir.path().join(LAYOUT_FILE)).unwrap().unwrap();
        assert_eq!(stored.layout, *published);
        assert_eq!(Some(Stamp::of(&stored)), held.stamp());
        drop(held);
        let reopened = NodeLayout::open(dir.path(), "n1", &c, false).unwrap();
        assert_eq!(reopened.get().unwrap(), published);
        // A refused change publishes nothing.
        let err = reopened
            .modify(|_| -> Result<(), ErrorReply> {
                Err(ErrorReply::Membership {
                    reason: "no".into(),
                })
            })
            .await;
        assert!(err.is_err());
        assert_eq!(reopened.get().unwrap(), published);
    }

    #[tokio::test]
    async fn layouts_of_two_clusters_never_merge_and_only_a_lone_node_enters_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a_dir, b_dir, w_dir) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("w"),
        );
        for d in [&a_dir, &b_dir, &w_dir] {
            std::fs::create_dir(d).unwrap();
        }
        let three = cluster(&["n1", "n2", "n3"]);
        let a = NodeLayout::open(&a_dir, "n1", &three, false).unwrap();
        // n9 alone: a cluster of its own, with another version 1.
        let lone = NodeLayout::open(&b_dir, "n9", &cluster(&[]), true).unwrap();
        let theirs = a.held().unwrap();
        assert_ne!(theirs.cluster, lone.stamp().unwrap().cluster);
        let err = lone.merge(&theirs).await.unwrap_err().to_string();
        assert!(err.contains("another cluster"), "{err}");
        assert_eq!(lone.get().unwrap().current().names().len(), 1);
        // ...and the three-node cluster does not take the lone node's layout either.
        let err = a
            .merge(&lone.held().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("another cluster"), "{err}");
        // `cairn join` moves the lone node into the cluster.
        assert!(lone.enter(NodeId::from_name("n9"), &theirs).await.unwrap());
        assert_eq!(lone.held().unwrap(), theirs);
        // A member of a cluster of three may not be moved so.
        let err = a
            .enter(NodeId::from_name("n1"), &lone_layout(&w_dir))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("member of another cluster"), "{err}");
        // A node without a layout adopts the first one it is sent.
        let waiting = NodeLayout::open(&w_dir, "n4", &three, false).unwrap();
        assert!(waiting.get().is_none());
        assert!(matches!(
            waiting.merge(&theirs).await.unwrap(),
            MergeOutcome::Adopted { from: 0, to: 1 }
        ));
        assert_eq!(waiting.held().unwrap(), theirs);
    }

    fn lone_layout(dir: &Path) -> Held {
        let d = dir.join("lone");
        std::fs::create_dir_all(&d).unwrap();
        NodeLayout::open(&d, "n8", &cluster(&[]), true)
            .unwrap()
            .held()
            .unwrap()
    }

    #[test]
    fn a_peer_layout_over_its_limit_is_refused_before_decoding() {
        let err = decode(&vec![0u8; HELD_ENCODED_BYTES_MAX + 1]).unwrap_err();
        assert!(err.contains("HELD_ENCODED_BYTES_MAX"), "{err}");
        assert!(decode(b"garbage").is_err());
    }
}
