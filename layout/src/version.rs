//! One version of the layout (a ring, its members' names, and who it does not wait for), its
//! digest, and the changes an operator makes to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cairn_proto::NodeId;
use cairn_ring::{Member, PartitionId, Ring, RingConfig};
use serde::{Deserialize, Serialize};

use crate::limits::NODE_NAME_BYTES_MAX;
use crate::LayoutError;

/// The blake3 digest of a layout version and its whole ancestry (versions are chained by their
/// parent's digest), so two different histories never share a digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// One numbered version of the layout: who owns which partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VersionParts", into = "VersionParts")]
pub struct LayoutVersion {
    version: u64,
    parent: Option<Digest>,
    ring: Ring,
    names: BTreeMap<NodeId, String>,
    departed: BTreeSet<NodeId>,
    digest: Digest,
}

#[derive(Serialize, Deserialize)]
struct VersionParts {
    version: u64,
    parent: Option<Digest>,
    ring: Ring,
    names: BTreeMap<NodeId, String>,
    departed: BTreeSet<NodeId>,
}

impl From<LayoutVersion> for VersionParts {
    fn from(v: LayoutVersion) -> VersionParts {
        VersionParts {
            version: v.version,
            parent: v.parent,
            ring: v.ring,
            names: v.names,
            departed: v.departed,
        }
    }
}

impl TryFrom<VersionParts> for LayoutVersion {
    type Error = LayoutError;

    fn try_from(p: VersionParts) -> Result<LayoutVersion, LayoutError> {
        LayoutVersion::new(p.version, p.parent, p.ring, p.names, p.departed)
    }
}

fn invalid(reason: impl Into<String>) -> LayoutError {
    LayoutError::Invalid {
        reason: reason.into(),
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), LayoutError> {
    if name.is_empty() || name.len() > NODE_NAME_BYTES_MAX {
        return Err(LayoutError::BadName {
            len: name.len(),
            max: NODE_NAME_BYTES_MAX,
        });
    }
    Ok(())
}

impl LayoutVersion {
    pub(crate) fn new(
        version: u64,
        parent: Option<Digest>,
        ring: Ring,
        names: BTreeMap<NodeId, String>,
        departed: BTreeSet<NodeId>,
    ) -> Result<LayoutVersion, LayoutError> {
        if version == 0 {
            return Err(invalid("layout versions start at 1"));
        }
        if (version == 1) != parent.is_none() {
            return Err(invalid(format!(
                "version {version} must {} a parent",
                if version == 1 { "not have" } else { "have" }
            )));
        }
        let members: BTreeSet<NodeId> = ring.members().iter().map(|m| m.id).collect();
        if names.keys().copied().collect::<BTreeSet<_>>() != members {
            return Err(invalid(format!(
                "version {version} names {} nodes for {} members",
                names.len(),
                members.len()
            )));
        }
        for name in names.values() {
            check_name(name)?;
        }
        if let Some(d) = departed.iter().find(|d| members.contains(d)) {
            return Err(invalid(format!(
                "node {d} is both a member of version {version} and departed from it"
            )));
        }
        let mut v = LayoutVersion {
            version,
            parent,
            ring,
            names,
            departed,
            digest: Digest([0; 32]),
        };
        v.digest = v.compute_digest();
        Ok(v)
    }

    /// The first version of a cluster: the ring claimed from scratch over `members`.
    pub fn initial(
        config: RingConfig,
        members: &[(Member, String)],
    ) -> Result<LayoutVersion, LayoutError> {
        let ring = Ring::new(
            config,
            &members.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
        )?;
        let names = members
            .iter()
            .map(|(m, name)| (m.id, name.clone()))
            .collect();
        LayoutVersion::new(1, None, ring, names, BTreeSet::new())
    }

    fn compute_digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"cairn layout version\0");
        h.update(&self.version.to_le_bytes());
        match &self.parent {
            Some(p) => h.update(&[1]).update(&p.0),
            None => h.update(&[0]),
        };
        let config = self.ring.config();
        h.update(&config.partitions.to_le_bytes());
        h.update(&(config.replicas as u64).to_le_bytes());
        for m in self.ring.members() {
            h.update(&m.id.0.to_le_bytes());
            let zone = m.zone.as_deref().unwrap_or("");
            h.update(&[u8::from(m.zone.is_some())]);
            h.update(&(zone.len() as u64).to_le_bytes())
                .update(zone.as_bytes());
            let name = &self.names[&m.id];
            h.update(&(name.len() as u64).to_le_bytes())
                .update(name.as_bytes());
        }
        for owner in self.ring.owners() {
            h.update(&owner.0.to_le_bytes());
        }
        h.update(&(self.departed.len() as u64).to_le_bytes());
        for d in &self.departed {
            h.update(&d.0.to_le_bytes());
        }
        Digest(*h.finalize().as_bytes())
    }

    /// Its number: 1 for a new cluster, one more for every applied change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The digest of the version it replaces (`None` for version 1).
    pub fn parent(&self) -> Option<Digest> {
        self.parent
    }

    /// Its digest (covering its ancestry through `parent`).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Its ring: members, owners and preference lists.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The name of member `node`.
    pub fn name(&self, node: NodeId) -> Option<&str> {
        self.names.get(&node).map(String::as_str)
    }

    /// Every member's name.
    pub fn names(&self) -> &BTreeMap<NodeId, String> {
        &self.names
    }

    /// Whether `node` is a member.
    pub fn is_member(&self, node: NodeId) -> bool {
        self.names.contains_key(&node)
    }

    /// Members of the previous version that this version does not wait for: removed or replaced
    /// while dead, so their data is rebuilt from the surviving replicas.
    pub fn departed(&self) -> &BTreeSet<NodeId> {
        &self.departed
    }

    /// The N replicas of partition `p` in this version.
    pub fn primaries(&self, p: PartitionId) -> Vec<NodeId> {
        self.ring.preference_list(p).primaries
    }

    fn name_or_id(&self, node: NodeId) -> String {
        self.name(node)
            .map_or_else(|| node.to_string(), str::to_owned)
    }

    /// The plan for `change` from this version: the next version and every partition whose
    /// replica set changes. The ring moves as few partitions as a balanced ring allows
    /// (`Ring::rebalance`); a replace moves exactly the old node's partitions to the new one.
    pub fn plan(&self, change: &Change) -> Result<Plan, LayoutError> {
        let mut names = self.names.clone();
        let mut departed = BTreeSet::new();
        let members: Vec<Member> = self.ring.members().to_vec();
        let ring = match change {
            Change::Join { node, name, zone } => {
                check_name(name)?;
                if self.is_member(*node) {
                    return Err(LayoutError::AlreadyMember {
                        name: name.clone(),
                        version: self.version,
                    });
                }
                names.insert(*node, name.clone());
                let mut next = members;
                next.push(Member {
                    id: *node,
                    zone: zone.clone(),
                });
                self.ring.rebalance(&next)?
            }
            Change::Leave { node } | Change::Remove { node } => {
                self.require_member(*node)?;
                if members.len() == 1 {
                    return Err(LayoutError::LastMember {
                        name: self.name_or_id(*node),
                    });
                }
                names.remove(node);
                if matches!(change, Change::Remove { .. }) {
                    departed.insert(*node);
                }
                let next: Vec<Member> = members.into_iter().filter(|m| m.id != *node).collect();
                self.ring.rebalance(&next)?
            }
            Change::Replace {
                old,
                new,
                name,
                zone,
            } => {
                self.require_member(*old)?;
                check_name(name)?;
                if self.is_member(*new) {
                    return Err(LayoutError::AlreadyMember {
                        name: name.clone(),
                        version: self.version,
                    });
                }
                names.remove(old);
                names.insert(*new, name.clone());
                departed.insert(*old);
                let next: Vec<Member> = members
                    .into_iter()
                    .map(|m| {
                        if m.id == *old {
                            Member {
                                id: *new,
                                zone: zone.clone(),
                            }
                        } else {
                            m
                        }
                    })
                    .collect();
                let owners = self
                    .ring
                    .owners()
                    .iter()
                    .map(|&o| if o == *old { *new } else { o })
                    .collect();
                Ring::from_parts(self.ring.config(), next, owners)?
            }
        };
        let next = LayoutVersion::new(self.version + 1, Some(self.digest), ring, names, departed)?;
        let moves = moves(self, &next);
        Ok(Plan {
            change: change.clone(),
            from: self.version,
            next,
            moves,
        })
    }

    fn require_member(&self, node: NodeId) -> Result<(), LayoutError> {
        if self.is_member(node) {
            Ok(())
        } else {
            Err(LayoutError::NotMember {
                node: node.to_string(),
                version: self.version,
            })
        }
    }
}

/// Every partition whose replica set differs between `old` and `new`.
pub(crate) fn moves(old: &LayoutVersion, new: &LayoutVersion) -> Vec<PartitionMove> {
    (0..old.ring.config().partitions)
        .filter_map(|p| {
            let from = old.primaries(p);
            let to = new.primaries(p);
            let same: BTreeSet<_> = from.iter().collect();
            if to.len() == from.len() && to.iter().all(|n| same.contains(n)) {
                return None;
            }
            let gaining = to.iter().filter(|n| !from.contains(n)).copied().collect();
            let sources = from
                .iter()
                .filter(|n| !new.departed.contains(n))
                .copied()
                .collect();
            Some(PartitionMove {
                partition: p,
                from,
                to,
                gaining,
                sources,
            })
        })
        .collect()
}

/// A change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add a node; it takes a balanced share of partitions from the others.
    Join {
        /// The node.
        node: NodeId,
        /// Its name.
        name: String,
        /// Its failure zone.
        zone: Option<String>,
    },
    /// Take a running node out: it pushes its partitions to their new owners, then is `left`.
    Leave {
        /// The node.
        node: NodeId,
    },
    /// Take a dead node out: its replicas are rebuilt on the new owners from the survivors.
    Remove {
        /// The node.
        node: NodeId,
    },
    /// Give a dead node's partitions to a fresh node, which gets them from the survivors.
    Replace {
        /// The dead node.
        old: NodeId,
        /// The fresh node.
        new: NodeId,
        /// The fresh node's name.
        name: String,
        /// The fresh node's failure zone.
        zone: Option<String>,
    },
}

/// What a change would do: the next version and every partition whose replicas change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The change planned.
    pub change: Change,
    /// The version it was planned against.
    pub from: u64,
    /// The version it makes.
    pub next: LayoutVersion,
    /// The partitions whose replica set changes.
    pub moves: Vec<PartitionMove>,
}

/// One partition whose replica set changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// The partition.
    pub partition: PartitionId,
    /// Its replicas before.
    pub from: Vec<NodeId>,
    /// Its replicas after.
    pub to: Vec<NodeId>,
    /// Replicas it gains, which receive its keys.
    pub gaining: Vec<NodeId>,
    /// Old replicas that push its keys (the old ones not departed).
    pub sources: Vec<NodeId>,
}
