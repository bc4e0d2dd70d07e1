//! Multi-node clusters over real QUIC on loopback: quorums through a dead node, hinted handoff,
//! read repair, and siblings visible from every node.

use std::time::Duration;

use cairn_client::ClientError;
use cairn_node::engine::Write;
use cairn_node::version::{Payload, VClock};
use cairn_proto::{Context, ErrorReply, ReadOptions};
use cairn_tests::cluster::{eventually, eventually_not_up, r, w, TestCluster};

fn values(reply: &cairn_proto::GetReply) -> Vec<Vec<u8>> {
    let mut v: Vec<_> = reply.siblings.iter().map(|s| s.value.clone()).collect();
    v.sort();
    v
}

/// The live values node `k` holds locally for `key`.
async fn local_values(cluster: &TestCluster, k: usize, key: &[u8]) -> Vec<Vec<u8>> {
    let obj = cluster.node(k).engine().get(key).unwrap();
    let mut v: Vec<_> = obj.live().into_iter().map(|(_, v)| v.to_vec()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_w3_but_not_w2_and_gets_its_hints_back() {
    let mut cluster = TestCluster::start(3, 3, 16).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    c1.put(b"before", b"v0", &Context::empty(), &w(3))
        .await
        .unwrap();

    cluster.stop(3).await.unwrap();
    // W=2 succeeds through the dead node (the first try may spend its time discovering it).
    c1.put(b"k", b"v1", &Context::empty(), &w(2)).await.unwrap();
    let err = c1
        .put(b"k2", b"v2", &Context::empty(), &w(3))
        .await
        .unwrap_err();
    match err {
        ClientError::Node(ErrorReply::QuorumNotReached {
            needed,
            got,
            failed,
            ..
        }) => {
            assert_eq!((needed, got), (3, 2));
            assert!(failed.iter().any(|f| f.node == "node3"), "{failed:?}");
        }
        other => panic!("W=3 with a dead node answered {other:?}"),
    }
    let status = c1.status().await.unwrap();
    let me = status.members.iter().find(|m| m.name == "node1").unwrap();
    assert!(me.hints_pending.unwrap() >= 1, "{status:?}");

    cluster.restart(3).await.unwrap();
    // Hints arrive: node3 holds the values it missed, and node1's hints drain.
    eventually(
        "node3 to receive its hints",
        Duration::from_secs(30),
        || async {
            local_values(&cluster, 3, b"k").await == vec![b"v1".to_vec()]
                && local_values(&cluster, 3, b"k2").await == vec![b"v2".to_vec()]
        },
    )
    .await;
    eventually("hints to drain", Duration::from_secs(30), || async {
        let mut pending = 0;
        for k in 1..=3 {
            pending += cluster.node(k).engine().hint_counts().values().sum::<u64>();
        }
        pending == 0
    })
    .await;
    let c3 = cluster.client(3).await.unwrap();
    assert_eq!(
        values(&c3.get(b"k", &r(3)).await.unwrap()),
        vec![b"v1".to_vec()]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_repairs_a_stale_replica() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    c1.put(b"k", b"old", &Context::empty(), &w(3))
        .await
        .unwrap();
    // Make node2's copy newer behind everyone's back: node1 and node3 are now stale.
    let ctx = cluster.node(2).engine().get(b"k").unwrap().join();
    cluster
        .node(2)
        .engine()
        .apply(
            b"k".to_vec(),
            Write::Update {
                ctx,
                payload: Payload::Value(b"new".to_vec()),
            },
        )
        .await
        .unwrap();
    assert_eq!(local_values(&cluster, 1, b"k").await, vec![b"old".to_vec()]);

    let read = c1.get(b"k", &r(3)).await.unwrap();
    assert_eq!(values(&read), vec![b"new".to_vec()]);
    for k in [1, 3] {
        eventually(
            &format!("read repair of node{k}"),
            Duration::from_secs(20),
            || async { local_values(&cluster, k, b"k").await == vec![b"new".to_vec()] },
        )
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_coordinators_are_siblings_everywhere() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    let c2 = cluster.client(2).await.unwrap();
    c1.put(b"k", b"from-1", &Context::empty(), &w(3))
        .await
        .unwrap();
    c2.put(b"k", b"from-2", &Context::empty(), &w(3))
        .await
        .unwrap();

    let mut context = Context::empty();
    for k in 1..=3 {
        let c = cluster.client(k).await.unwrap();
        let read = c.get(b"k", &r(3)).await.unwrap();
        assert_eq!(
            values(&read),
            vec![b"from-1".to_vec(), b"from-2".to_vec()],
            "via node{k}"
        );
        context = read.context;
    }
    let c3 = cluster.client(3).await.unwrap();
    c3.put(b"k", b"merged", &context, &w(3)).await.unwrap();
    for k in 1..=3 {
        assert_eq!(
            local_values(&cluster, k, b"k").await,
            vec![b"merged".to_vec()]
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_place_three_replicas_and_forward() {
    let cluster = TestCluster::start(5, 3, 32).await.unwrap();
    let c = cluster.client(4).await.unwrap();
    for i in 0..40 {
        let key = format!("key{i}");
        c.put(key.as_bytes(), b"v", &Context::empty(), &w(3))
            .await
            .unwrap();
    }
    for i in 0..40 {
        let key = format!("key{i}");
        let holders = (1..=5)
            .filter(|k| {
                !cluster
                    .node(*k)
                    .engine()
                    .get(key.as_bytes())
                    .unwrap()
                    .is_empty()
            })
            .count();
        assert_eq!(holders, 3, "{key} is on {holders} nodes, not N=3");
        let c5 = cluster.client(5).await.unwrap();
        assert_eq!(
            values(&c5.get(key.as_bytes(), &r(3)).await.unwrap()),
            vec![b"v".to_vec()]
        );
    }
    // Impossible options are refused up front.
    let err = c.get(b"key0", &r(4)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Node(ErrorReply::BadOptions { .. })),
        "{err}"
    );
    let _ = VClock::new();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_survive_a_restart_of_the_node_holding_them() {
    let mut cluster = TestCluster::start(3, 3, 16).await.unwrap();
    cluster.stop(3).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    c1.put(b"k", b"kept", &Context::empty(), &w(2))
        .await
        .unwrap();
    c1.close().await;
    // W=2 may be acknowledged before node1 finds node3 gone; the hint follows the failure.
    eventually(
        "node1 to hold a hint for node3",
        Duration::from_secs(20),
        || async { cluster.node(1).engine().hint_counts().values().sum::<u64>() >= 1 },
    )
    .await;

    // The holder restarts before the target is back: its hints are on disk, not in memory.
    cluster.stop(1).await.unwrap();
    cluster.restart(1).await.expect("restart node1");
    let held: u64 = cluster.node(1).engine().hint_counts().values().sum();
    assert!(held >= 1, "node1 lost its hint across a restart");

    cluster.restart(3).await.expect("restart node3");
    eventually(
        "node3 to receive the hinted write",
        Duration::from_secs(30),
        || async { local_values(&cluster, 3, b"k").await == vec![b"kept".to_vec()] },
    )
    .await;
    cluster.shutdown().await;
}

/// A local read answers with the asked node's own copy only, repairs nothing, and needs an
/// admin certificate: it is how an operator (or the nemesis) compares replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_read_shows_one_replica_as_stored_and_needs_an_admin_certificate() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    // Only node2 holds the key, behind everyone's back.
    cluster
        .node(2)
        .engine()
        .apply(
            b"k".to_vec(),
            Write::Update {
                ctx: VClock::default(),
                payload: Payload::Value(b"only-on-2".to_vec()),
            },
        )
        .await
        .unwrap();
    let local = ReadOptions {
        local: Some(true),
        ..Default::default()
    };
    let admin = |k: usize| {
        let addr = cluster.addr(k);
        let identity = cluster.dir.admin_identity().unwrap();
        async move {
            cairn_client::Client::connect(addr, &identity)
                .await
                .unwrap()
        }
    };
    for k in [1, 3, 2] {
        let reply = admin(k).await.get(b"k", &local).await.unwrap();
        let expected = if k == 2 {
            vec![b"only-on-2".to_vec()]
        } else {
            Vec::new()
        };
        assert_eq!(values(&reply), expected, "node{k}'s own copy");
    }
    // Nothing was repaired by those reads: node1 and node3 still lack the key.
    assert!(local_values(&cluster, 1, b"k").await.is_empty());
    assert!(local_values(&cluster, 3, b"k").await.is_empty());
    // A data certificate is refused, naming the role it needs.
    let refused = cluster.client(1).await.unwrap().get(b"k", &local).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::Node(ErrorReply::Forbidden {
                needed: cairn_proto::Role::Admin,
                ..
            }))
        ),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

/// Issue 11 item 4: a fallback that handed a hinted key to its primary drops its own copy (by
/// compare-and-delete), so once hints are delivered every key is on its N primaries only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_drops_its_copy_once_the_hint_is_delivered() {
    const KEYS: usize = 24;
    let mut cluster = TestCluster::start(4, 3, 16).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    let ring = c1.ring().await.unwrap();
    let config = cairn_ring::RingConfig {
        partitions: 16,
        replicas: 3,
    };
    let primaries = |key: &[u8]| -> Vec<usize> {
        let p = config.partition_of(key) as usize;
        ring.partitions[p]
            .primaries
            .iter()
            .map(|name| name.trim_start_matches("node").parse().unwrap())
            .collect()
    };
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("fk{i}").into_bytes()).collect();
    // Copies on nodes that are not among the key's primaries.
    let strays = |cluster: &TestCluster, live: &[usize]| -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for key in &keys {
            let owners = primaries(key);
            for k in live.iter().copied().filter(|k| !owners.contains(k)) {
                if !cluster.node(k).engine().get(key).unwrap().is_empty() {
                    out.push((String::from_utf8_lossy(key).into_owned(), k));
                }
            }
        }
        out
    };

    cluster.stop(4).await.unwrap();
    // Fallbacks are chosen for primaries the coordinator knows are down.
    eventually_not_up(&c1, "node4", Duration::from_secs(30)).await;
    for key in &keys {
        c1.put(key, b"v", &Context::empty(), &w(2)).await.unwrap();
    }
    // Keys owned by node4 went to the one live node that is not their primary, with a hint.
    eventually(
        "fallbacks to hold hinted copies",
        Duration::from_secs(30),
        || async { !strays(&cluster, &[1, 2, 3]).is_empty() },
    )
    .await;

    cluster.restart(4).await.unwrap();
    eventually(
        "hints to drain and fallback copies to go",
        Duration::from_secs(60),
        || async {
            let pending: u64 = (1..=4)
                .map(|k| cluster.node(k).engine().hint_counts().values().sum::<u64>())
                .sum();
            pending == 0 && strays(&cluster, &[1, 2, 3, 4]).is_empty()
        },
    )
    .await;
    // Nothing was lost: every primary holds its keys and a quorum read of all three answers.
    let c4 = cluster.client(4).await.unwrap();
    for key in &keys {
        for k in primaries(key) {
            assert_eq!(local_values(&cluster, k, key).await, vec![b"v".to_vec()]);
        }
        assert_eq!(
            values(&c4.get(key, &r(3)).await.unwrap()),
            vec![b"v".to_vec()]
        );
    }
    cluster.shutdown().await;
}

/// Issue 11 item 3: once a leave settles (node4's partitions pushed to their new owners and the
/// old layout version retired), node4 holds none of the keys any more, and every key still reads
/// back from its new owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_drops_the_keys_it_no_longer_replicates() {
    const KEYS: usize = 40;
    let cluster = TestCluster::start(4, 3, 16).await.unwrap();
    cluster.wait_all_up().await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("lk{i}").into_bytes()).collect();
    for key in &keys {
        c1.put(key, b"v", &Context::empty(), &w(3)).await.unwrap();
    }
    let held = |k: usize| {
        let mut n = 0;
        cluster
            .node(k)
            .engine()
            .store()
            .scan_objects(None, &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    };
    assert!(
        held(4) > 0,
        "node4 replicates some of the keys before it leaves"
    );

    let ca_pem = &cluster.dir.ca().pem().cert_pem;
    let issued = cluster.dir.ca().issue_admin("ops").unwrap();
    let admin = cairn_net::Identity::from_pem(ca_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let admin = cairn_client::Client::connect(cluster.addr(4), &admin)
        .await
        .unwrap();
    admin.leave(false).await.unwrap();
    eventually(
        "node4 to drop every key once the leave settled",
        Duration::from_secs(90),
        || async { held(4) == 0 },
    )
    .await;
    for key in &keys {
        assert_eq!(
            values(&c1.get(key, &r(3)).await.unwrap()),
            vec![b"v".to_vec()]
        );
        let holders = (1..=3)
            .filter(|k| !cluster.node(*k).engine().get(key).unwrap().is_empty())
            .count();
        assert_eq!(holders, 3, "{key:?} lives on every remaining node");
    }
    cluster.shutdown().await;
}

/// Issue 11 item 4: a hint held for a node that is then removed from the layout is not kept for
/// it forever: once the removal retired the version the hint was made under, the hint goes to
/// the key's owners in the current layout, and the key reads back from a new owner alone.
/// Anti-entropy is off and the key is written on the fallback alone, with its hint, behind
/// everyone's back, so only the redirected hint can bring it to the owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_for_a_removed_node_is_delivered_to_the_new_owners() {
    let mut cluster = TestCluster::start_with(5, 3, 16, |c| c.anti_entropy.enabled = false)
        .await
        .unwrap();
    let c1 = cluster.client(1).await.unwrap();
    let names = |entry: &cairn_proto::PartitionEntry| -> Vec<usize> {
        entry
            .primaries
            .iter()
            .map(|name| name.trim_start_matches("node").parse().unwrap())
            .collect()
    };
    let config = cairn_ring::RingConfig {
        partitions: 16,
        replicas: 3,
    };
    let ring = c1.ring().await.unwrap();
    // A key node5 replicates and node1 does not: node1 holds it as node5's fallback.
    let key = (0..10_000)
        .map(|i| format!("hk{i}").into_bytes())
        .find(|k| {
            let owners = names(&ring.partitions[config.partition_of(k) as usize]);
            owners.contains(&5) && !owners.contains(&1)
        })
        .unwrap();
    let p = config.partition_of(&key) as usize;

    cluster.stop(5).await.unwrap();
    let engine = cluster.node(1).engine();
    engine
        .apply(
            key.clone(),
            Write::Update {
                ctx: VClock::default(),
                payload: Payload::Value(b"hinted".to_vec()),
            },
        )
        .await
        .unwrap();
    let node5 = cairn_proto::NodeId::from_name("node5");
    engine
        .apply(key.clone(), Write::AddHint { target: node5 })
        .await
        .unwrap();
    assert_eq!(engine.hint_counts().get(&node5), Some(&1));

    eventually_not_up(&c1, "node5", Duration::from_secs(30)).await;
    let admin =
        cairn_client::Client::connect(cluster.addr(1), &cluster.dir.admin_identity().unwrap())
            .await
            .unwrap();
    admin.remove("node5", false).await.unwrap();
    // The removal settles: the ring no longer names node5.
    eventually(
        "the removal to retire the old version",
        Duration::from_secs(60),
        || async {
            let ring = c1.ring().await.unwrap();
            ring.partitions
                .iter()
                .all(|e| !e.primaries.iter().any(|n| n == "node5"))
        },
    )
    .await;
    let owners = names(&c1.ring().await.unwrap().partitions[p]);
    eventually(
        "the hint for node5 to reach the key's new owners",
        Duration::from_secs(60),
        || async {
            let mut all = true;
            for &k in &owners {
                all &= local_values(&cluster, k, &key).await == vec![b"hinted".to_vec()];
            }
            all && (1..=4).all(|k| cluster.node(k).engine().hint_counts().is_empty())
        },
    )
    .await;

    // A new owner alone answers it: every other node stopped.
    let alone = *owners.iter().find(|&&k| k != 1).unwrap();
    for k in (1..=4).filter(|&k| k != alone) {
        cluster.stop(k).await.unwrap();
    }
    let c = cluster.client(alone).await.unwrap();
    assert_eq!(
        values(&c.get(&key, &r(1)).await.unwrap()),
        vec![b"hinted".to_vec()]
    );
    cluster.shutdown().await;
}

/// A node stopped while writes it coordinates are in flight frees its port and its database by
/// the time shutdown returns: it starts again on both at once (`TestCluster::restart` tries
/// once), three times running, and every write acknowledged before a stop is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_under_load_restarts_on_its_port_and_data_at_once() {
    const BURST: usize = 40;
    let mut cluster = TestCluster::start(3, 3, 16).await.unwrap();
    let mut acked = Vec::new();
    for round in 0..3u8 {
        let c2 = std::sync::Arc::new(cluster.client(2).await.unwrap());
        let (done_tx, mut done) = tokio::sync::mpsc::channel(BURST);
        for i in 0..BURST as u8 {
            let (c2, done_tx) = (c2.clone(), done_tx.clone());
            tokio::spawn(async move {
                let key = vec![b'k', round, i];
                let put = c2.put(&key, b"v", &Context::empty(), &w(2)).await;
                let _ = done_tx.send(put.is_ok().then_some(key)).await;
            });
        }
        drop(done_tx);
        // Stopped once the first write is acknowledged, the rest of the burst in flight:
        // shutdown lets it finish (or fail), then must let go of everything.
        let mut finished = 0;
        while let Some(put) = done.recv().await {
            finished += 1;
            if let Some(key) = put {
                acked.push(key);
                break;
            }
        }
        cluster.stop(2).await.unwrap();
        while let Some(put) = done.recv().await {
            finished += 1;
            acked.extend(put);
        }
        assert_eq!(finished, BURST, "every put of round {round} answered");
        cluster.restart(2).await.unwrap();
    }
    let c1 = cluster.client(1).await.unwrap();
    for key in &acked {
        let read = c1.get(key, &r(3)).await.unwrap();
        assert_eq!(values(&read), vec![b"v".to_vec()], "key {key:?}");
    }
    cluster.shutdown().await;
}
