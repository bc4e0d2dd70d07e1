//! Availability at the onset of a fault: when one node of a 5-node cluster (N=3) goes silent,
//! the other nodes keep answering within the client's deadline.
//!
//! Reproduction of the container nemesis' "3–7 s stall at every fault": a node that was not a
//! replica of a key forwarded the request to the key's first replica and waited for the
//! forward's own 65 s timeout, even after it had marked that replica down a second or two
//! later; the client gave up first, though the other two replicas were alive.

use std::time::{Duration, Instant};

use cairn_proto::{Context, ReadOptions, WriteOptions};
use cairn_ring::RingConfig;
use cairn_tests::cluster::{eventually, TestCluster};

const NODES: usize = 5;
const REPLICAS: u8 = 3;
const PARTITIONS: u32 = 16;
/// Keys each of two healthy nodes puts and gets (W=2, R=2), all right after node3 goes silent.
const KEYS_PER_NODE: usize = 20;
/// The client's deadline: three times the coordinator's own (the requests use its default),
/// so a loaded machine has ample margin, while the bug made such requests wait 65 s.
const CLIENT_TIMEOUT: Duration =
    Duration::from_secs(3 * cairn_node::coordinator::REQUEST_TIMEOUT_DEFAULT.as_secs());

/// Key names tried when looking for keys with a given placement.
const KEY_CANDIDATES_MAX: u32 = 100_000;

/// Keys whose first replica is `first` and that `via` does not replicate, so `via` forwards
/// them to `first`.
fn forwarded_keys(ring: &cairn_proto::RingReply, first: &str, via: &str, n: usize) -> Vec<Vec<u8>> {
    let config = RingConfig {
        partitions: PARTITIONS,
        replicas: REPLICAS.into(),
    };
    (0..KEY_CANDIDATES_MAX)
        .map(|i| format!("stall-{via}-{i}").into_bytes())
        .filter(|key| {
            let entry = &ring.partitions[config.partition_of(key) as usize];
            entry.primaries.first().is_some_and(|p| p == first)
                && !entry.primaries.iter().any(|p| p == via)
        })
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_forwarded_to_a_node_that_goes_silent_answer_within_the_deadline() {
    let cluster = TestCluster::start_partitionable(NODES, REPLICAS, PARTITIONS, |_| {})
        .await
        .unwrap();
    let ring = cluster.client(1).await.unwrap().ring().await.unwrap();
    let w2 = WriteOptions {
        w: Some(2),
        ..Default::default()
    };
    let r2 = ReadOptions {
        r: Some(2),
        ..Default::default()
    };
    // Two healthy nodes that forward some keys to node3 (the ring decides which do).
    let vias: Vec<(usize, Vec<Vec<u8>>)> = [1, 2, 4, 5]
        .into_iter()
        .map(|via| {
            let keys = forwarded_keys(&ring, "node3", &format!("node{via}"), KEYS_PER_NODE);
            (via, keys)
        })
        .filter(|(_, keys)| keys.len() == KEYS_PER_NODE)
        .take(2)
        .collect();
    assert_eq!(vias.len(), 2, "two nodes forwarding to node3 in {ring:?}");
    let mut clients = Vec::new();
    for (via, keys) in vias {
        let mut client = cluster.client(via).await.unwrap();
        client.set_timeout(CLIENT_TIMEOUT);
        // Warm the forwarding connection, as a busy cluster has it.
        client
            .put(&keys[0], b"before", &Context::empty(), &w2)
            .await
            .unwrap();
        clients.push((via, std::sync::Arc::new(client), keys));
    }

    // node3 goes silent to the other nodes, as a kill -9 or a partition makes it: its peers
    // still believe it up and forward to it.
    cluster.relays().partition(&[&[0, 1, 3, 4], &[2]]);
    let mut requests = tokio::task::JoinSet::new();
    for (via, client, keys) in clients {
        for key in keys {
            let name = String::from_utf8_lossy(&key).into_owned();
            let (c, k, n, w2) = (client.clone(), key.clone(), name.clone(), w2.clone());
            requests.spawn(async move {
                let started = Instant::now();
                let result = c.put(&k, b"during", &Context::empty(), &w2).await;
                (via, format!("put {n}"), result.map(drop), started.elapsed())
            });
            let (c, r2) = (client.clone(), r2.clone());
            requests.spawn(async move {
                let started = Instant::now();
                let result = c.get(&key, &r2).await;
                (
                    via,
                    format!("get {name}"),
                    result.map(drop),
                    started.elapsed(),
                )
            });
        }
    }
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    let mut indeterminate = 0;
    while let Some(joined) = requests.join_next().await {
        let (via, what, result, took) = joined.unwrap();
        slowest = slowest.max(took);
        if let Err(e) = result {
            let e = e.to_string();
            // A put whose forward reached node3 before it went silent may have been applied
            // there, so it is not coordinated again (that would make one write two siblings):
            // the client is told so, at once. That is an answer; a hang is not.
            if what.starts_with("put") && e.contains("may have been applied") {
                indeterminate += 1;
            } else {
                failures.push(format!("{what} via node{via} after {took:?}: {e}"));
            }
        }
    }
    eprintln!(
        "slowest request while node3 went silent: {slowest:?}; {indeterminate} puts answered \"may have been applied\""
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed (two of three replicas were alive):\n{}",
        failures.len(),
        4 * KEYS_PER_NODE,
        failures.join("\n")
    );

    // The partition was real: node1 saw node3 go down.
    eventually("node1 to see node3 down", CLIENT_TIMEOUT, || async {
        let status = cluster.client(1).await.unwrap().status().await.unwrap();
        status
            .members
            .iter()
            .any(|m| m.name == "node3" && m.status != "up")
    })
    .await;
    cluster.shutdown().await;
}
