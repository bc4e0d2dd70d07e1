//! The ring: its configuration, its members, the owner of each partition, and the preference list
//! of replicas for a key.

use std::collections::BTreeMap;

use cairn_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::claim;
use crate::limits::{
    MEMBERS_MAX, PARTITIONS_DEFAULT, PARTITIONS_MAX, PARTITIONS_MIN, REPLICAS_DEFAULT,
    REPLICAS_MAX, ZONE_BYTES_MAX,
};
use crate::RingError;

/// Index of a partition, `0..Q`.
pub type PartitionId = u32;

/// A node taking part in the ring, with the failure domain it sits in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// Its failure domain (rack, availability zone). A member without a label is treated as a
    /// zone of its own: it is assumed to share its fate with no other member.
    pub zone: Option<String>,
}

impl Member {
    /// A member without a zone label.
    pub fn new(id: NodeId) -> Member {
        Member { id, zone: None }
    }

    /// A member in zone `zone`.
    pub fn in_zone(id: NodeId, zone: impl Into<String>) -> Member {
        Member {
            id,
            zone: Some(zone.into()),
        }
    }
}

/// The shape of the ring, fixed for the life of a cluster: changing Q would move almost every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingConfig {
    /// Q: how many partitions the key space is cut into; a power of two in
    /// `PARTITIONS_MIN..=PARTITIONS_MAX`, so a key's partition is the top `log2(Q)` bits of its
    /// hash.
    pub partitions: u32,
    /// N: how many replicas hold each key, `1..=REPLICAS_MAX`.
    pub replicas: usize,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            partitions: PARTITIONS_DEFAULT,
            replicas: REPLICAS_DEFAULT,
        }
    }
}

impl RingConfig {
    /// Checks Q and N against the limits.
    pub fn validate(&self) -> Result<(), RingError> {
        if !(PARTITIONS_MIN..=PARTITIONS_MAX).contains(&self.partitions) {
            return Err(RingError::PartitionsOutOfRange {
                partitions: self.partitions,
                min: PARTITIONS_MIN,
                max: PARTITIONS_MAX,
            });
        }
        if !self.partitions.is_power_of_two() {
            return Err(RingError::PartitionsNotPowerOfTwo {
                partitions: self.partitions,
            });
        }
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(RingError::ReplicasOutOfRange {
                replicas: self.replicas,
                max: REPLICAS_MAX,
            });
        }
        Ok(())
    }

    /// The partition holding `key`: the top `log2(Q)` bits of `blake3(key)`. Depends on Q only,
    /// never on the members, so a key stays in its partition through every membership change.
    ///
    /// Part of the storage format: changing it moves keys between partitions.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        self.partition_of_hash(blake3::hash(key).as_bytes())
    }

    /// The partition of a key whose `blake3` hash is `key_hash`, for callers that already hold
    /// the hash (anti-entropy names keys by it).
    pub fn partition_of_hash(&self, key_hash: &[u8; 32]) -> PartitionId {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&key_hash[..8]);
        let bits = self.partitions.trailing_zeros();
        // With Q = 1 there are no bits to keep: a 64-bit shift is `None`, partition 0.
        u64::from_be_bytes(prefix)
            .checked_shr(64 - bits)
            .map_or(0, |p| p as PartitionId)
    }

    /// The key hashes of `partition` as a range of their first 8 bytes (big-endian): every
    /// hash at or above the first bound and (unless it is the last partition, `None`) below the
    /// second. A partition is a hash's top bits, so in a table ordered by key hash its keys
    /// lie together between these bounds.
    pub fn hash_prefix_range(&self, partition: PartitionId) -> ([u8; 8], Option<[u8; 8]>) {
        let bits = self.partitions.trailing_zeros();
        // With Q = 1 the shift is 64 (`None`): the single partition holds every hash.
        let start = |p: u64| p.checked_shl(64 - bits).unwrap_or(0).to_be_bytes();
        let next = u64::from(partition) + 1;
        let end = (next < u64::from(self.partitions)).then(|| start(next));
        (start(u64::from(partition)), end)
    }
}

/// The replicas of one partition, in the order a coordinator should try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceList {
    /// The N nodes that hold the partition (all members when there are fewer than N), first the
    /// partition's owner. In distinct zones whenever the members span at least N zones.
    pub primaries: Vec<NodeId>,
    /// Every other member, in walk order: where writes go when primaries are down (with a hint
    /// for the primary they stand in for).
    pub fallbacks: Vec<NodeId>,
}

impl PreferenceList {
    /// Primaries, then fallbacks.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.primaries.iter().chain(&self.fallbacks).copied()
    }
}

/// One partition changing hands between two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: PartitionId,
    /// Its owner in the old ring.
    pub from: NodeId,
    /// Its owner in the new ring.
    pub to: NodeId,
}

/// Q equal partitions of the key space, each owned by one member.
///
/// Invariants, established by every constructor (`new`, `rebalance`, `from_parts`, decoding):
/// the config is valid; members are sorted by id with no id twice, at most Q of them and at most
/// `MEMBERS_MAX`; there is one owner per partition and it is a member; every member owns at least
/// one partition (so a walk round the ring meets every member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingParts")]
pub struct Ring {
    config: RingConfig,
    members: Vec<Member>,
    owners: Vec<NodeId>,
    /// Zone index of each member (derived from `members`, so not sent).
    #[serde(skip_serializing)]
    zone_of: Vec<u32>,
}

/// What travels on the wire; decoding checks it with [`Ring::from_parts`], because a ring can
/// come from a peer.
#[derive(Deserialize)]
struct RingParts {
    config: RingConfig,
    members: Vec<Member>,
    owners: Vec<NodeId>,
}

impl TryFrom<RingParts> for Ring {
    type Error = RingError;

    fn try_from(parts: RingParts) -> Result<Ring, RingError> {
        Ring::from_parts(parts.config, parts.members, parts.owners)
    }
}

impl Ring {
    /// Claims the partitions from scratch for `members`.
    ///
    /// Deterministic for the same member set: the order of `members` does not matter. Every
    /// member owns `floor(Q/n)` or `ceil(Q/n)` partitions, and a member's partitions are spread
    /// round the ring as far apart as any balanced claim allows: whenever it is possible at all,
    /// no member owns two of any N consecutive partitions.
    pub fn new(config: RingConfig, members: &[Member]) -> Result<Ring, RingError> {
        config.validate()?;
        let members = canonical_members(config, members)?;
        let zone_of = zone_indices(&members);
        let order = claim::claim_order(&zone_of);
        let owners = claim::stripes(config.partitions as usize, members.len())
            .into_iter()
            .map(|slot| members[order[slot]].id)
            .collect();
        Ok(Ring {
            config,
            members,
            owners,
            zone_of,
        })
    }

    /// The ring for a changed member set, starting from this one and moving as few partitions as
    /// a balanced result allows.
    ///
    /// Afterwards every member owns `floor(Q/n)` or `ceil(Q/n)` partitions. Members above their
    /// share give up only their excess (a joining node takes its partitions from the most loaded
    /// owners); a leaving node's partitions go to the members below their share (the least
    /// loaded); nothing else moves. From a balanced ring, one node joining moves exactly
    /// `floor(Q/(n+1))` partitions, all to it, and one node leaving moves exactly its own
    /// partitions. Members present in both keep their id; their zone labels are taken from
    /// `members`. Deterministic given `self` and the member set.
    ///
    /// Among the partitions that could move, it picks ones that keep each member out of N
    /// consecutive owners and that relieve members crowded by earlier changes (see
    /// [`Ring::crowded_partitions`]). That is best effort: a leave moves nothing but the leaver's
    /// partitions, so it may leave some crowding; later joins heal it.
    pub fn rebalance(&self, members: &[Member]) -> Result<Ring, RingError> {
        let members = canonical_members(self.config, members)?;
        let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
        let owners = claim::rebalance(&self.owners, &ids, self.config.replicas);
        let zone_of = zone_indices(&members);
        Ok(Ring {
            config: self.config,
            members,
            owners,
            zone_of,
        })
    }

    /// Rebuilds a ring from its parts (as gossiped), checking every invariant.
    pub fn from_parts(
        config: RingConfig,
        members: Vec<Member>,
        owners: Vec<NodeId>,
    ) -> Result<Ring, RingError> {
        config.validate()?;
        let members = canonical_members(config, &members)?;
        if owners.len() != config.partitions as usize {
            return Err(RingError::OwnerCount {
                owners: owners.len(),
                partitions: config.partitions,
            });
        }
        let mut owns = vec![false; members.len()];
        for (p, &owner) in owners.iter().enumerate() {
            match members.binary_search_by_key(&owner, |m| m.id) {
                Ok(i) => owns[i] = true,
                Err(_) => {
                    return Err(RingError::OwnerNotMember {
                        partition: p as PartitionId,
                        owner,
                    })
                }
            }
        }
        if let Some(i) = owns.iter().position(|&o| !o) {
            return Err(RingError::MemberOwnsNothing {
                node: members[i].id,
            });
        }
        let zone_of = zone_indices(&members);
        Ok(Ring {
            config,
            members,
            owners,
            zone_of,
        })
    }

    /// Q and N.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with id `node`, if it is one.
    pub fn member(&self, node: NodeId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&node, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// The owner of every partition, indexed by partition.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// The partition holding `key`: the top `log2(Q)` bits of `blake3(key)` (see
    /// [`RingConfig::partition_of`]).
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        self.config.partition_of(key)
    }

    /// The owner of partition `p`.
    ///
    /// # Panics
    /// If `p` is not below Q (a partition from a peer must be checked against `config()` first).
    pub fn owner(&self, p: PartitionId) -> NodeId {
        self.owners[p as usize]
    }

    /// The partitions `node` owns, ascending (empty if it is not a member).
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.config.partitions)
            .filter(|&p| self.owners[p as usize] == node)
            .collect()
    }

    /// The partitions for which `node` is among the primaries, ascending.
    pub fn primary_partitions(&self, node: NodeId) -> Vec<PartitionId> {
        (0..self.config.partitions)
            .filter(|&p| self.walk(p, false).primaries.contains(&node))
            .collect()
    }

    /// The replicas of partition `p`: N distinct primaries, then every other member as fallbacks.
    ///
    /// Both come from one walk round the ring starting at `p`: the owners of `p, p+1, …` in turn,
    /// each node taken the first time it appears. A node whose zone already holds a primary is
    /// passed over while primaries are still being chosen, so with at least N zones the primaries
    /// are in N distinct zones; with fewer zones, the first nodes passed over fill the remaining
    /// places. With fewer than N members, every member is a primary.
    ///
    /// # Panics
    /// If `p` is not below Q.
    pub fn preference_list(&self, p: PartitionId) -> PreferenceList {
        self.walk(p, true)
    }

    /// The partitions whose owner also owns one of the next N−1 partitions, ascending.
    ///
    /// Empty for rings from [`Ring::new`] whenever any balanced claim can achieve that. A crowded
    /// partition still gets N distinct primaries (the walk skips repeats), but its neighbours'
    /// load on failure concentrates on fewer nodes; an operator may prefer a full re-claim with
    /// [`Ring::new`] (which moves many partitions) when this grows.
    pub fn crowded_partitions(&self) -> Vec<PartitionId> {
        let q = self.owners.len();
        let window = self.config.replicas.min(q);
        (0..q)
            .filter(|&p| (1..window).any(|d| self.owners[(p + d) % q] == self.owners[p]))
            .map(|p| p as PartitionId)
            .collect()
    }

    /// Every partition whose owner differs from `next`'s, with both owners, ascending.
    pub fn moves(&self, next: &Ring) -> Result<Vec<Move>, RingError> {
        if self.config.partitions != next.config.partitions {
            return Err(RingError::PartitionsDiffer {
                left: self.config.partitions,
                right: next.config.partitions,
            });
        }
        Ok(self
            .owners
            .iter()
            .zip(&next.owners)
            .enumerate()
            .filter(|(_, (from, to))| from != to)
            .map(|(p, (&from, &to))| Move {
                partition: p as PartitionId,
                from,
                to,
            })
            .collect())
    }

    /// The walk behind [`Ring::preference_list`]; without `fallbacks` it stops as soon as the
    /// primaries are known.
    fn walk(&self, p: PartitionId, fallbacks: bool) -> PreferenceList {
        assert!(
            p < self.config.partitions,
            "partition {p} out of range (Q = {})",
            self.config.partitions
        );
        let q = self.owners.len();
        let n = self.members.len();
        let want = self.config.replicas.min(n);
        let zones = self
            .zone_of
            .iter()
            .map(|&z| z as usize + 1)
            .max()
            .unwrap_or(0);
        let mut seen = vec![false; n];
        let mut zone_taken = vec![false; zones];
        let mut primaries = Vec::with_capacity(want);
        let mut passed = Vec::new();
        let mut seen_count = 0;
        for step in 0..q {
            let i = self.member_index(self.owners[(p as usize + step) % q]);
            if seen[i] {
                continue;
            }
            seen[i] = true;
            seen_count += 1;
            let zone = self.zone_of[i] as usize;
            if primaries.len() < want && !zone_taken[zone] {
                zone_taken[zone] = true;
                primaries.push(i);
            } else {
                passed.push(i);
            }
            if seen_count == n || (!fallbacks && primaries.len() == want) {
                break;
            }
        }
        // Fewer zones than N: the first nodes passed over fill the remaining places.
        let fill = want - primaries.len();
        primaries.extend(passed.drain(..fill));
        let id = |i: usize| self.members[i].id;
        PreferenceList {
            primaries: primaries.into_iter().map(id).collect(),
            fallbacks: if fallbacks {
                passed.into_iter().map(id).collect()
            } else {
                Vec::new()
            },
        }
    }

    fn member_index(&self, node: NodeId) -> usize {
        self.members
            .binary_search_by_key(&node, |m| m.id)
            .expect("every owner is a member (a ring invariant)")
    }
}

/// Checks a member list against the limits and returns it sorted by id.
fn canonical_members(config: RingConfig, members: &[Member]) -> Result<Vec<Member>, RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    if members.len() > MEMBERS_MAX {
        return Err(RingError::TooManyMembers {
            count: members.len(),
            max: MEMBERS_MAX,
        });
    }
    if let Some(m) = members
        .iter()
        .find(|m| m.zone.as_ref().is_some_and(|z| z.len() > ZONE_BYTES_MAX))
    {
        return Err(RingError::ZoneTooLong {
            node: m.id,
            len: m.zone.as_ref().map_or(0, String::len),
            max: ZONE_BYTES_MAX,
        });
    }
    let mut sorted = members.to_vec();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(RingError::DuplicateMember { node: w[0].id });
    }
    if sorted.len() > config.partitions as usize {
        return Err(RingError::MoreMembersThanPartitions {
            members: sorted.len(),
            partitions: config.partitions,
        });
    }
    Ok(sorted)
}

/// Zone index of each member: equal labels share an index, and each unlabelled member gets one of
/// its own. Indices follow the members' order, so they depend only on the member set.
fn zone_indices(members: &[Member]) -> Vec<u32> {
    let mut labels: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next = 0u32;
    let mut fresh = || {
        next += 1;
        next - 1
    };
    members
        .iter()
        .map(|m| match &m.zone {
            Some(label) => *labels.entry(label).or_insert_with(&mut fresh),
            None => fresh(),
        })
        .collect()
}
