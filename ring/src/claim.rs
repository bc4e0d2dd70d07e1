//! Who owns which partition: the claim from scratch (`stripes`) and the claim that moves as little
//! as possible from an existing ring (`rebalance`). Works on member indices; `ring.rs` maps them
//! to node ids.

use std::cmp::Reverse;

use cairn_proto::NodeId;

/// Owner slot (0..n) of each of `partitions` partitions, from scratch.
///
/// Every slot owns `floor(Q/n)` or `ceil(Q/n)` partitions, and the distance between two
/// partitions of the same slot, going round the ring, is never below
/// `min(n, floor(Q / ceil(Q/n)))`. No balanced claim can do better: any n + 1 consecutive
/// partitions repeat an owner, and the gaps of a slot owning `ceil(Q/n)` partitions sum to Q, so
/// the smallest is at most `floor(Q / ceil(Q/n))`. So whenever any balanced claim keeps every
/// node out of each window of N consecutive partitions, this one does.
///
/// Construction, with `Q = q·n + r`: the first `r` slots are "heavy" (`q + 1` partitions each),
/// the other `m = n - r` "light" (`q` each). The ring is `q + 1` rounds; every round is all heavy
/// slots in order, followed by the next chunk of an endless walk over the light slots in order.
/// The chunks share the `q·m` light places as evenly as possible. A heavy slot's gap is one round,
/// `r + chunk ≥ r + floor(q·m/(q+1)) = floor(Q/(q+1))`; a light slot's gap is one walk period
/// plus one heavy block, `m + r = n` (a chunk never exceeds `m`, so it never repeats a slot, and
/// `q·m` is a whole number of walk periods, so the walk also closes the circle). With `r = 0` this
/// is plain striping: slot `p mod n`.
pub(crate) fn stripes(partitions: usize, n: usize) -> Vec<usize> {
    assert!(
        n >= 1 && n <= partitions,
        "members ({n}) checked against partitions ({partitions}) by the caller"
    );
    let q = partitions / n;
    let r = partitions % n;
    let m = n - r;
    let rounds = q + 1;
    let light_places = q * m;
    let mut slots = Vec::with_capacity(partitions);
    let mut walk = 0;
    for round in 0..rounds {
        slots.extend(0..r);
        // Bresenham split: chunk sizes differ by at most one, and they sum to `light_places`.
        let chunk = (round + 1) * light_places / rounds - round * light_places / rounds;
        for _ in 0..chunk {
            slots.push(r + walk % m);
            walk += 1;
        }
    }
    assert_eq!(slots.len(), partitions);
    slots
}

/// The order in which members take slots of [`stripes`]: round-robin over zones, largest zone
/// first, so neighbouring slots tend to sit in different zones and a preference-list walk finds
/// distinct zones quickly. `zone_of[i]` is member `i`'s zone index (members without a label have
/// a zone of their own).
pub(crate) fn claim_order(zone_of: &[u32]) -> Vec<usize> {
    let zones = zone_of.iter().map(|&z| z as usize + 1).max().unwrap_or(0);
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); zones];
    for (member, &zone) in zone_of.iter().enumerate() {
        groups[zone as usize].push(member);
    }
    // Stable sort: equal-sized zones keep the order of their first member, so the order depends
    // only on the member set.
    groups.sort_by_key(|g| Reverse(g.len()));
    let deepest = groups.first().map_or(0, Vec::len);
    (0..deepest)
        .flat_map(|depth| groups.iter().filter_map(move |g| g.get(depth).copied()))
        .collect()
}

/// How many partitions each member should own: `floor(Q/n)` or `ceil(Q/n)`, the extra ones going
/// to the members that own the most now (ties to the lower index), which makes the total
/// distance from `counts` to the targets as small as it can be.
///
/// From a balanced ring (counts `q` or `q+1`, `Q = q·n + r`) this moves only what it must:
/// - One join: the newcomer owns 0, so it ranks last and gets `q' = floor(Q/(n+1)) ≤ q`. Every
///   old member already owns at least `q'`; if `q' = q`, only `r' = r - q < r` extras exist and
///   they go to members owning `q + 1`. So nobody old has a deficit: the newcomer's `q'`
///   partitions are the only moves.
/// - One leave: `q'' = floor(Q/(n-1)) ≥ q`. If `q'' > q` nobody is above target; if `q'' = q`,
///   the `r'' = r + q > r` extras cover every member owning `q + 1`. So nobody has an excess:
///   only the leaver's partitions move.
pub(crate) fn targets(counts: &[usize], partitions: usize) -> Vec<usize> {
    let n = counts.len();
    let base = partitions / n;
    let extra = partitions % n;
    let mut by_load: Vec<usize> = (0..n).collect();
    by_load.sort_by_key(|&i| (Reverse(counts[i]), i));
    let mut target = vec![base; n];
    for &i in &by_load[..extra] {
        target[i] += 1;
    }
    target
}

/// Fills `out[p]` with the cyclic distance from partition `p` to the nearest partition owned by
/// `member` (Q when it owns none: farther than any real distance).
fn distances_to(owner: &[Option<usize>], member: usize, out: &mut [usize]) {
    let q = owner.len();
    // Two laps each way: the first finds the last partition of `member` before the start, the
    // second records. `since` is the distance back (or forward) to the nearest one seen.
    let mut since = q;
    for step in 0..2 * q {
        let p = step % q;
        since = if owner[p] == Some(member) {
            0
        } else {
            (since + 1).min(q)
        };
        if step >= q {
            out[p] = since;
        }
    }
    since = q;
    for step in 0..2 * q {
        let p = q - 1 - step % q;
        since = if owner[p] == Some(member) {
            0
        } else {
            (since + 1).min(q)
        };
        if step >= q {
            out[p] = out[p].min(since);
        }
    }
}

/// Whether the owner of `p` also owns another partition less than `window` away.
fn crowded(owner: &[Option<usize>], p: usize, window: usize) -> bool {
    let q = owner.len();
    (1..window).any(|d| owner[(p + d) % q] == owner[p] || owner[(p + q - d) % q] == owner[p])
}

/// New owners for a changed member set, moving as few partitions as the balance targets allow.
///
/// `members` is the new member set, sorted by id; `replicas` is N. Partitions of departed owners
/// ("orphans") must move; a member above its [`targets`] gives up exactly its excess; a member
/// below receives exactly its deficit; nobody else is touched. The number of moves is the sum of
/// the deficits, the least any balanced result can reach from `owners`.
///
/// Which partitions move is chosen to keep each node's partitions spread out. The receiver with
/// the largest remaining deficit takes, among the orphans and the partitions of members still
/// above target, the one that ranks highest by, in turn:
/// 1. its distance to the receiver's nearest partition, up to N (so the receiver does not appear
///    twice among N consecutive owners when it can avoid it);
/// 2. whether it is an orphan or sits less than N from another partition of its donor (taking those
///    heals crowding left by earlier changes, at no extra moves);
/// 3. its distance to the receiver's nearest partition, beyond N (a joining node's partitions end
///    up evenly spread);
/// 4. the donor's remaining excess (take from the most loaded), orphans first;
/// 5. the lowest partition.
///
/// A leave has no choice of partitions, only of receivers, and with stripes every orphan's
/// neighbours are the same few members; when their share must grow, some crowding is the price
/// of moving nothing else.
pub(crate) fn rebalance(owners: &[NodeId], members: &[NodeId], replicas: usize) -> Vec<NodeId> {
    let partitions = owners.len();
    let n = members.len();
    let window = replicas.min(partitions);
    let mut owner: Vec<Option<usize>> = owners
        .iter()
        .map(|id| members.binary_search(id).ok())
        .collect();
    let mut counts = vec![0; n];
    for &i in owner.iter().flatten() {
        counts[i] += 1;
    }
    let target = targets(&counts, partitions);
    let mut excess: Vec<usize> = (0..n)
        .map(|i| counts[i].saturating_sub(target[i]))
        .collect();
    let mut deficit: Vec<usize> = (0..n)
        .map(|i| target[i].saturating_sub(counts[i]))
        .collect();
    let mut distance = vec![0; partitions];

    // Targets sum to Q = orphans + owned partitions, so the deficits always equal the orphans
    // plus the excesses: every receiver finds a candidate, and when the deficits reach zero no
    // orphan and no excess is left.
    while let Some(receiver) = (0..n)
        .filter(|&i| deficit[i] > 0)
        .max_by_key(|&i| (deficit[i], Reverse(i)))
    {
        distances_to(&owner, receiver, &mut distance);
        let mut best: Option<((usize, bool, usize, usize), usize)> = None;
        for (p, from) in owner.iter().enumerate() {
            let (relieves, donor_rank) = match *from {
                None => (true, usize::MAX),
                Some(i) if excess[i] > 0 => (crowded(&owner, p, window), excess[i]),
                Some(_) => continue,
            };
            let key = (distance[p].min(window), relieves, distance[p], donor_rank);
            // Strictly greater: among equal keys the lowest partition wins.
            if best.is_none_or(|(k, _)| key > k) {
                best = Some((key, p));
            }
        }
        let (_, p) = best.expect("deficits equal orphans plus excesses");
        if let Some(donor) = owner[p] {
            excess[donor] -= 1;
        }
        owner[p] = Some(receiver);
        deficit[receiver] -= 1;
    }
    owner
        .into_iter()
        .map(|o| members[o.expect("every orphan was given an owner")])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smallest cyclic distance between two partitions of the same slot (Q when each slot owns
    /// one: it meets itself again after a full lap).
    fn min_gap(slots: &[usize]) -> usize {
        let q = slots.len();
        let mut last_seen: std::collections::HashMap<usize, usize> = Default::default();
        let mut gap = usize::MAX;
        // Two laps so every gap, including the one closing the circle, is seen.
        for i in 0..2 * q {
            if let Some(prev) = last_seen.insert(slots[i % q], i) {
                gap = gap.min(i - prev);
            }
        }
        gap
    }

    /// The best minimum gap any balanced claim can reach (see `stripes`).
    fn optimal_gap(q: usize, n: usize) -> usize {
        n.min(q / q.div_ceil(n))
    }

    #[test]
    fn stripes_are_balanced_and_reach_the_optimal_gap() {
        for q in (0..=10).map(|b| 1usize << b) {
            for n in 1..=q.min(70) {
                let slots = stripes(q, n);
                let mut counts = vec![0; n];
                for &s in &slots {
                    counts[s] += 1;
                }
                let (lo, hi) = (q / n, q.div_ceil(n));
                assert!(
                    counts.iter().all(|&c| c == lo || c == hi),
                    "Q={q} n={n}: {counts:?}"
                );
                assert_eq!(min_gap(&slots), optimal_gap(q, n), "Q={q} n={n}: {slots:?}");
            }
        }
    }

    #[test]
    fn stripes_table() {
        #[track_caller]
        fn check(q: usize, n: usize, expected: &[usize]) {
            assert_eq!(stripes(q, n), expected);
        }
        check(8, 1, &[0; 8]);
        check(8, 4, &[0, 1, 2, 3, 0, 1, 2, 3]);
        // Two heavy slots, one light: the light slot sits out the first round. The best gap is
        // 2 (0 and 1 own three partitions each); plain striping would reach it too.
        check(8, 3, &[0, 1, 0, 1, 2, 0, 1, 2]);
        // Tight case: gap 4 for everyone, which plain striping (0 1 2 3 4 0 1 2) misses.
        check(8, 5, &[0, 1, 2, 3, 0, 1, 2, 4]);
        check(8, 8, &[0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn claim_order_interleaves_zones_largest_first() {
        #[track_caller]
        fn check(zone_of: &[u32], expected: &[usize]) {
            assert_eq!(claim_order(zone_of), expected);
        }
        check(&[0, 1, 2], &[0, 1, 2]);
        // Zone 0 = {0, 3, 5}, zone 1 = {1}, zone 2 = {2, 4}.
        check(&[0, 1, 2, 0, 2, 0], &[0, 2, 1, 3, 4, 5]);
        check(&[0, 0, 0], &[0, 1, 2]);
    }

    #[test]
    fn targets_favour_the_most_loaded() {
        #[track_caller]
        fn check(counts: &[usize], q: usize, expected: &[usize]) {
            assert_eq!(targets(counts, q), expected);
        }
        check(&[3, 3, 2], 8, &[3, 3, 2]);
        check(&[3, 3, 2, 0], 8, &[2, 2, 2, 2]);
        check(&[2, 3, 3], 8, &[2, 3, 3]);
        check(&[4, 4], 10, &[5, 5]);
        check(&[0, 0, 0], 8, &[3, 3, 2]);
    }

    #[test]
    fn distances_wrap_around() {
        let mut owner = vec![None; 16];
        owner[2] = Some(0);
        owner[10] = Some(0);
        owner[5] = Some(1);
        let mut out = vec![0; 16];
        distances_to(&owner, 0, &mut out);
        assert_eq!(out, [2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3]);
        distances_to(&owner, 2, &mut out);
        assert_eq!(out, [16; 16]);
    }

    #[test]
    fn crowded_looks_both_ways_within_the_window() {
        let owner: Vec<Option<usize>> = [0, 1, 0, 2, 3, 4, 5, 1].map(Some).to_vec();
        assert!(crowded(&owner, 0, 3));
        assert!(!crowded(&owner, 0, 2));
        // Partition 7 and partition 1 are two apart across the wrap.
        assert!(crowded(&owner, 1, 3));
        assert!(crowded(&owner, 7, 3));
        assert!(!crowded(&owner, 3, 7));
    }
}
