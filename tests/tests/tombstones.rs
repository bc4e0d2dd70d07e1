//! Tombstone reaping on a real cluster (in-process nodes, real QUIC on loopback, real redb): a
//! delete while one replica is down keeps its tombstone on the others past the grace period,
//! until that replica is back and has it; then every node reaps it, the Merkle trees forget
//! the key, and the deleted value never comes back — not through hints, read repair or
//! anti-entropy — while a new write of the key works.

use std::time::Duration;

use cairn_proto::Context;
use cairn_tests::cluster::{eventually, eventually_not_up, r, w, TestCluster};

/// What node `k` stores for `key`: nothing, a tombstone, or live values.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Nothing,
    Tombstone,
    Values(Vec<Vec<u8>>),
}

fn stored(cluster: &TestCluster, k: usize, key: &[u8]) -> Stored {
    let obj = cluster.node(k).engine().get(key).unwrap();
    if obj.is_empty() {
        return Stored::Nothing;
    }
    let live: Vec<Vec<u8>> = obj.live().into_iter().map(|(_, v)| v.to_vec()).collect();
    if live.is_empty() {
        Stored::Tombstone
    } else {
        Stored::Values(live)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_while_a_replica_is_down_is_reaped_only_once_it_has_the_tombstone() {
    let key = b"doomed".to_vec();
    let mut cluster = TestCluster::start_with(3, 3, 16, |c| {
        c.tombstones.grace_secs = 1;
        c.tombstones.interval_ms = 200;
        // Fast exchanges, so anti-entropy would bring a value back if anything still held it.
        c.anti_entropy.interval_ms = 500;
    })
    .await
    .unwrap();
    let c1 = cluster.client(1).await.unwrap();
    c1.put(&key, b"v1", &Context::empty(), &w(3)).await.unwrap();

    cluster.stop(3).await.unwrap();
    eventually_not_up(&c1, "node3", Duration::from_secs(30)).await;
    let read = c1.get(&key, &r(2)).await.unwrap();
    c1.delete(&key, &read.context, &w(2)).await.unwrap();

    // A round past the grace period ran on node2 (it waited for node3) and reaped nothing.
    let c2 = cluster.client(2).await.unwrap();
    eventually(
        "node2's reaper to wait for node3",
        Duration::from_secs(30),
        || async {
            let t = c2.status().await.unwrap().tombstones;
            // Blocked, or (were the rules broken) reaped: either way the round is over.
            t.waiting_on == vec!["node3".to_owned()] && (t.blocked >= 1 || t.reaped >= 1)
        },
    )
    .await;
    for k in [1, 2] {
        assert_eq!(
            stored(&cluster, k, &key),
            Stored::Tombstone,
            "node{k} reaped the tombstone while node3, which holds v1, was down"
        );
    }
    let t = c2.status().await.unwrap().tombstones;
    assert!(t.enabled && t.held == 1 && t.reaped == 0, "{t:?}");

    // Node3 comes back with v1; its hint (from node1) gives it the tombstone, and then every
    // node reaps it.
    cluster.restart(3).await.unwrap();
    eventually(
        "every node to reap the tombstone",
        Duration::from_secs(60),
        || async { (1..=3).all(|k| stored(&cluster, k, &key) == Stored::Nothing) },
    )
    .await;
    for k in 1..=3 {
        let client = cluster.client(k).await.unwrap();
        let t = client.status().await.unwrap().tombstones;
        assert!(t.reaped >= 1, "node{k}: {t:?}");
        assert_eq!(t.held, 0, "node{k}: {t:?}");
        // The Merkle tree forgot the key: it holds no object at all any more.
        let ae = client.status().await.unwrap().anti_entropy;
        assert_eq!(ae.keys, 0, "node{k}'s trees still hold the key");
    }

    // The value never comes back: over several anti-entropy rounds and reads with read
    // repair through every node, no node stores anything for the key again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        for k in 1..=3 {
            let client = cluster.client(k).await.unwrap();
            let reply = client.get(&key, &r(3)).await.unwrap();
            assert!(reply.siblings.is_empty(), "node{k} read {reply:?}");
        }
        for k in 1..=3 {
            assert_eq!(stored(&cluster, k, &key), Stored::Nothing, "node{k}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // And the key can be written again, from any node, with what a read hands out.
    let c3 = cluster.client(3).await.unwrap();
    let read = c3.get(&key, &r(3)).await.unwrap();
    c3.put(&key, b"v2", &read.context, &w(3)).await.unwrap();
    for k in 1..=3 {
        let client = cluster.client(k).await.unwrap();
        let reply = client.get(&key, &r(3)).await.unwrap();
        let values: Vec<_> = reply.siblings.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, vec![b"v2".to_vec()], "node{k}");
    }
    cluster.shutdown().await;
}
