//! Anti-entropy between in-process nodes over real QUIC, with read repair switched off so only
//! anti-entropy can have repaired anything: a replica that missed writes (and whose hints sit on
//! a node that stays down) catches up, a replica cut off by a real partition (UDP relays
//! dropping its traffic, hinted handoff off) catches up once it heals, and concurrent values
//! written on different replicas end up as siblings on every replica, nothing dropped.

use std::time::Duration;

use cairn_node::engine::Write;
use cairn_node::version::{Payload, VClock};
use cairn_node::NodeConfig;
use cairn_proto::{Context, ReadOptions, WriteOptions};
use cairn_tests::cluster::{eventually, TestCluster};

/// How long anti-entropy may take to repair the tests' few hundred keys: rounds every 100 ms,
/// and a peer that restarted is seen up again within the probes' 4 s backoff.
const REPAIR_DEADLINE: Duration = Duration::from_secs(60);

/// Fast rounds, read repair off.
fn anti_entropy_only(config: &mut NodeConfig) {
    config.read_repair = false;
    config.anti_entropy.interval_ms = 100;
    config.anti_entropy.repair_keys_per_sec = 10_000;
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// The live values node `k` holds locally for `key`.
fn local_values(cluster: &TestCluster, k: usize, key: &[u8]) -> Vec<Vec<u8>> {
    let obj = cluster.node(k).engine().get(key).unwrap();
    let mut v: Vec<_> = obj.live().into_iter().map(|(_, v)| v.to_vec()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_writes_catches_up_through_anti_entropy_alone() {
    const KEYS: usize = 300;
    let mut cluster = TestCluster::start_with(3, 3, 16, anti_entropy_only)
        .await
        .unwrap();
    cluster.stop(3).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    let w2 = WriteOptions {
        w: Some(2),
        ..Default::default()
    };
    for i in 0..KEYS {
        c1.put(&key(i), &value(i), &Context::empty(), &w2)
            .await
            .unwrap();
    }
    // node1 coordinated every write and keeps the hints for node3. It stays down from now on,
    // so hints cannot be what repairs node3: only node2's anti-entropy can.
    // (A hint for a replica that failed after the write reached W is made durable a moment
    // after the reply.)
    eventually(
        "node1 to hold a hint per key for node3",
        REPAIR_DEADLINE,
        || async { cluster.node(1).engine().hint_counts().values().sum::<u64>() == KEYS as u64 },
    )
    .await;
    drop(c1);
    cluster.stop(1).await.unwrap();
    cluster.restart(3).await.unwrap();
    let restarted = std::time::Instant::now();

    eventually(
        "anti-entropy to bring every key to node3",
        REPAIR_DEADLINE,
        || async { cluster.node(3).anti_entropy().keys == KEYS as u64 },
    )
    .await;
    eprintln!(
        "anti-entropy repaired node3 {:.1} s after it was back",
        restarted.elapsed().as_secs_f64()
    );
    // Each key was repaired by whichever side started an exchange of its partition, sometimes
    // by both at once. The initiator counts a repair once it sees it succeed, a moment after
    // the key is in node3's tree, so the counters catch up rather than being there at once.
    eventually("every repair to be counted", REPAIR_DEADLINE, || async {
        let counted = cluster.node(2).anti_entropy().keys_repaired
            + cluster.node(3).anti_entropy().keys_repaired;
        counted >= KEYS as u64
    })
    .await;
    let node2 = cluster.node(2).anti_entropy();
    let node3 = cluster.node(3).anti_entropy();
    assert!(node3.trees_ready && node3.enabled, "{node3:?}");
    assert!(node2.exchanges + node3.exchanges > 0);
    assert!(node2.bytes_sent > 0);

    // node3 alone: every value comes from its own store.
    cluster.stop(2).await.unwrap();
    let c3 = cluster.client(3).await.unwrap();
    let r1 = ReadOptions {
        r: Some(1),
        ..Default::default()
    };
    for i in 0..KEYS {
        let reply = c3.get(&key(i), &r1).await.unwrap();
        let values: Vec<_> = reply.siblings.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, [value(i)], "key {i} on node3 alone");
    }
    drop(c3);
    cluster.shutdown().await;
}

/// Waits until every node of `cluster` (3 nodes, N = 3, Q = 16: each node starts 16 exchanges a
/// round) finished `rounds` more rounds.
async fn wait_rounds(cluster: &TestCluster, rounds: u64) {
    let done = |k: usize| {
        let ae = cluster.node(k).anti_entropy();
        ae.exchanges + ae.exchanges_failed
    };
    let targets: Vec<u64> = (1..=3).map(|k| done(k) + rounds * 16).collect();
    eventually("more anti-entropy rounds", REPAIR_DEADLINE, || {
        let targets = targets.clone();
        async move { (1..=3).all(|k| done(k) >= targets[k - 1]) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_values_on_different_replicas_become_siblings_everywhere() {
    let cluster = TestCluster::start_with(3, 3, 16, anti_entropy_only)
        .await
        .unwrap();
    // Local writes straight into the engines, as if each node had coordinated a write while cut
    // off from the others: no replication, no hints.
    let update = |v: &str| Write::Update {
        ctx: VClock::new(),
        payload: Payload::Value(v.as_bytes().to_vec()),
    };
    cluster
        .node(1)
        .engine()
        .apply(b"cart".to_vec(), update("apple"))
        .await
        .unwrap();
    cluster
        .node(3)
        .engine()
        .apply(b"cart".to_vec(), update("pear"))
        .await
        .unwrap();
    cluster
        .node(2)
        .engine()
        .apply(b"only-on-2".to_vec(), update("x"))
        .await
        .unwrap();
    // A delete on one replica is an object too, and travels like one.
    let on1 = cluster
        .node(1)
        .engine()
        .apply(b"gone".to_vec(), update("soon deleted"))
        .await
        .unwrap();
    cluster
        .node(1)
        .engine()
        .apply(
            b"gone".to_vec(),
            Write::Update {
                ctx: on1.join(),
                payload: Payload::Tombstone,
            },
        )
        .await
        .unwrap();

    let both = vec![b"apple".to_vec(), b"pear".to_vec()];
    eventually(
        "every replica to hold both siblings",
        REPAIR_DEADLINE,
        || {
            let cluster = &cluster;
            let both = both.clone();
            async move {
                (1..=3).all(|k| {
                    local_values(cluster, k, b"cart") == both
                        && local_values(cluster, k, b"only-on-2") == [b"x".to_vec()]
                        && !cluster.node(k).engine().get(b"gone").unwrap().is_empty()
                })
            }
        },
    )
    .await;
    for k in 1..=3 {
        assert!(
            local_values(&cluster, k, b"gone").is_empty(),
            "the tombstone reached node{k}, not the deleted value"
        );
    }
    // Converged: the trees agree, so later rounds repair nothing more. Exchanges that started
    // before convergence may still be repairing; two more rounds on every node see them out.
    wait_rounds(&cluster, 2).await;
    let repaired: Vec<u64> = (1..=3)
        .map(|k| cluster.node(k).anti_entropy().keys_repaired)
        .collect();
    wait_rounds(&cluster, 1).await;
    let after: Vec<u64> = (1..=3)
        .map(|k| cluster.node(k).anti_entropy().keys_repaired)
        .collect();
    assert_eq!(repaired, after, "nothing left to repair once converged");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_requests_that_break_the_protocol_are_refused_and_the_node_serves_on() {
    use cairn_antientropy::limits::{DEPTH, FANOUT};
    use cairn_antientropy::{Digest, KeyHash, Message};
    use cairn_client::{Client, ClientError};
    use cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX;
    use cairn_proto::{ErrorReply, NodeId, PeerRequest, PeerResponse, Request, Response};

    let dir = cairn_tests::TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let mut off = dir.node_config("node2").unwrap();
    off.anti_entropy.enabled = false;
    let off = cairn_node::Node::start(off).await.unwrap();
    eventually("node1's trees to be rebuilt", REPAIR_DEADLINE, || async {
        node.anti_entropy().trees_ready
    })
    .await;
    let issued = dir.ca().issue_node("peer", &[]).unwrap();
    let peer =
        cairn_net::Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem)
            .unwrap();
    let client = Client::connect(node.local_addr(), &peer).await.unwrap();
    let from = NodeId::from_name("peer");
    // The peer's answer, or the error it sent.
    async fn ask_at(client: &Client, req: PeerRequest) -> Result<PeerResponse, ErrorReply> {
        match client.request(&Request::Peer(req)).await {
            Ok(Response::Peer(resp)) => Ok(resp),
            Err(ClientError::Node(e)) => Err(e),
            other => panic!("{other:?}"),
        }
    }
    let ask = |req: PeerRequest| ask_at(&client, req);
    let exchange =
        |partition: u32, session: u64, message: Option<Vec<u8>>| PeerRequest::AntiEntropy {
            from,
            partition,
            session,
            message,
        };
    let malformed = |resp: Result<PeerResponse, ErrorReply>, what: &str| {
        assert!(
            matches!(resp, Err(ErrorReply::Malformed { .. })),
            "{what}: {resp:?}"
        );
    };
    let root = |fanout: usize, digest: Digest| {
        Message::Root {
            fanout: fanout as u8,
            depth: DEPTH as u8,
            digest,
        }
        .encode()
        .unwrap()
    };

    malformed(
        ask(exchange(0, 1, Some(b"not a message".to_vec()))).await,
        "garbage",
    );
    malformed(ask(exchange(0, 2, None)).await, "a pull for no session");
    malformed(
        ask(exchange(1 << 20, 3, Some(root(FANOUT, Digest::ZERO)))).await,
        "a partition beyond Q",
    );
    malformed(
        ask(exchange(0, 4, Some(root(FANOUT / 2, Digest::ZERO)))).await,
        "a tree of another shape",
    );
    // A step out of order: the responder waits for the root, not for entries.
    let entries = Message::Entries {
        chunks: Vec::new(),
        last: true,
    }
    .encode()
    .unwrap();
    malformed(ask(exchange(0, 5, Some(entries))).await, "entries first");
    // Refused by the peer request's limits, before anti-entropy sees it.
    let resp = ask(PeerRequest::Keys {
        partition: 0,
        key_hashes: vec![[0; 32]; KEY_HASHES_PER_REQUEST_MAX + 1],
    })
    .await;
    assert!(
        matches!(
            resp,
            Err(ErrorReply::Limit(
                cairn_proto::LimitError::TooManyKeyHashes { .. }
            ))
        ),
        "too many key hashes: {resp:?}"
    );
    let stray = (0u32..)
        .map(|i| KeyHash::of_key(&i.to_le_bytes()))
        .find(|k| k.0[0] >= 0x80)
        .unwrap();
    malformed(
        ask(PeerRequest::Keys {
            partition: 0,
            key_hashes: vec![stray.0],
        })
        .await,
        "a key hash of another partition",
    );

    // A well-formed exchange still works: identical (empty) trees end after the root.
    match ask(exchange(0, 6, Some(root(FANOUT, Digest::ZERO)))).await {
        Ok(PeerResponse::AntiEntropy {
            message: Some(bytes),
        }) => assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Nodes {
                level: 1,
                nodes: Vec::new(),
                last: true
            }
        ),
        other => panic!("{other:?}"),
    }
    // A node with anti-entropy off says so.
    let to_off = Client::connect(off.local_addr(), &peer).await.unwrap();
    let resp = ask_at(&to_off, exchange(0, 7, Some(root(FANOUT, Digest::ZERO)))).await;
    assert!(matches!(resp, Err(ErrorReply::Refused { .. })), "{resp:?}");
    assert!(!off.anti_entropy().trees_ready && off.anti_entropy().keys == 0);

    // The node serves on.
    let c = dir.client_identity().unwrap();
    let c = Client::connect(node.local_addr(), &c).await.unwrap();
    c.put(b"k", b"v", &Context::empty(), &WriteOptions::default())
        .await
        .unwrap();
    eventually(
        "the write to reach node1's tree",
        REPAIR_DEADLINE,
        || async { node.anti_entropy().keys == 1 },
    )
    .await;
    drop((client, to_off, c));
    node.shutdown().await.unwrap();
    off.shutdown().await.unwrap();
}

/// Whether node `k` shows `name` with `status`.
async fn sees(cluster: &TestCluster, k: usize, name: &str, status: &str) -> bool {
    let Ok(client) = cluster.client(k).await else {
        return false;
    };
    let seen = client.status().await.is_ok_and(|s| {
        s.members
            .iter()
            .any(|m| m.name == name && m.status == status)
    });
    client.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_catches_up_after_the_partition_heals_through_anti_entropy_alone() {
    const KEYS: usize = 300;
    // Read repair off, and hints kept but never handed off: only anti-entropy can repair.
    let cluster = TestCluster::start_partitionable(3, 3, 16, |config| {
        anti_entropy_only(config);
        config.hinted_handoff = false;
    })
    .await
    .unwrap();
    // A real partition: every datagram between node3 and the others is dropped.
    cluster.relays().partition(&[&[0, 1], &[2]]);
    for (k, name) in [(1, "node3"), (2, "node3"), (3, "node1"), (3, "node2")] {
        eventually(
            &format!("node{k} to see {name} down"),
            REPAIR_DEADLINE,
            || sees(&cluster, k, name, "down"),
        )
        .await;
    }
    let c1 = cluster.client(1).await.unwrap();
    let w2 = WriteOptions {
        w: Some(2),
        ..Default::default()
    };
    for i in 0..KEYS {
        c1.put(&key(i), &value(i), &Context::empty(), &w2)
            .await
            .unwrap();
    }
    assert!(
        (0..KEYS).all(|i| local_values(&cluster, 3, &key(i)).is_empty()),
        "the partition kept every write from node3"
    );

    cluster.relays().heal();
    let healed = std::time::Instant::now();
    for k in 1..=3 {
        for name in ["node1", "node2", "node3"] {
            eventually(
                &format!("node{k} to see {name} up"),
                REPAIR_DEADLINE,
                || sees(&cluster, k, name, "up"),
            )
            .await;
        }
    }
    eventually(
        "anti-entropy to bring every key to node3",
        REPAIR_DEADLINE,
        || async { (0..KEYS).all(|i| local_values(&cluster, 3, &key(i)) == [value(i)]) },
    )
    .await;
    eprintln!(
        "node3 caught up {:.1} s after the partition healed",
        healed.elapsed().as_secs_f64()
    );
    // The hints are all still there: handoff did not do it, and nobody read a key.
    let hints: u64 = (1..=2)
        .map(|k| cluster.node(k).engine().hint_counts().values().sum::<u64>())
        .sum();
    assert!(hints >= KEYS as u64, "hints still held: {hints}");
    // Counted by the initiators once they see each repair succeed, just after it lands.
    eventually("every repair to be counted", REPAIR_DEADLINE, || async {
        let counted: u64 = (1..=3)
            .map(|k| cluster.node(k).anti_entropy().keys_repaired)
            .sum();
        counted >= KEYS as u64
    })
    .await;
    drop(c1);
    cluster.shutdown().await;
}
