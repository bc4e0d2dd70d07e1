//! Limits that never split replicas, over real QUIC: replicas that each took writes up to the
//! client limits still converge when merged (read repair here), client writes stay refused at
//! the limit until a write with the context resolves the key, and a read whose merged answer
//! would not fit a frame gets an error naming the limit, not a transport error, and marks no
//! node down.

use std::time::Duration;

use cairn_client::ClientError;
use cairn_node::engine::Write;
use cairn_node::version::{Payload, VClock};
use cairn_proto::limits::{SIBLINGS_MAX, VALUE_BYTES_MAX};
use cairn_proto::{Context, ErrorReply, LimitError, ReadOptions, WriteOptions};
use cairn_tests::cluster::{eventually, TestCluster};

fn r(n: u8) -> ReadOptions {
    ReadOptions {
        r: Some(n),
        ..Default::default()
    }
}

/// Writes `count` concurrent values to node `k`'s own store only (no replication), as a node on
/// its own side of a partition would have accepted them.
async fn write_alone(cluster: &TestCluster, k: usize, key: &[u8], count: usize, value: &[u8]) {
    for i in 0..count {
        let mut v = value.to_vec();
        v.extend_from_slice(format!("-{k}-{i}").as_bytes());
        cluster
            .node(k)
            .engine()
            .apply(
                key.to_vec(),
                Write::Update {
                    ctx: VClock::new(),
                    payload: Payload::Value(v),
                },
            )
            .await
            .unwrap();
    }
}

fn siblings_on(cluster: &TestCluster, k: usize, key: &[u8]) -> usize {
    cluster.node(k).engine().get(key).unwrap().live().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_the_client_limits_converge_and_client_writes_wait_for_a_resolve() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    // Two sides of a partition, each at the client limit less one: the merge holds more than
    // SIBLINGS_MAX siblings.
    let each = SIBLINGS_MAX - 1;
    write_alone(&cluster, 1, b"k", each, b"one").await;
    write_alone(&cluster, 2, b"k", each, b"two").await;
    let c1 = cluster.client(1).await.unwrap();
    let read = c1.get(b"k", &r(3)).await.unwrap();
    assert_eq!(read.siblings.len(), 2 * each, "the read merges both sides");
    // Read repair brings every replica to the merge, over the client limit: before, each
    // replica refused it and the key's replicas stayed apart for good.
    eventually(
        "every replica to hold the merge",
        Duration::from_secs(20),
        || async { (1..=3).all(|k| siblings_on(&cluster, k, b"k") == 2 * each) },
    )
    .await;

    // A client write that would add a sibling is refused, naming the limit...
    let blind = c1
        .put(b"k", b"blind", &Context::empty(), &WriteOptions::default())
        .await;
    assert!(
        matches!(
            blind,
            Err(ClientError::Node(ErrorReply::Limit(
                LimitError::TooManySiblings { .. }
            )))
        ),
        "{blind:?}"
    );
    // ...and one with the read's context resolves the key, on every replica.
    let w3 = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let resolved = c1.put(b"k", b"merged", &read.context, &w3).await.unwrap();
    assert_eq!(resolved.siblings.len(), 1);
    for k in 1..=3 {
        assert_eq!(siblings_on(&cluster, k, b"k"), 1, "node{k}");
    }
    c1.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_too_large_for_a_frame_is_an_error_naming_the_limit_and_marks_no_node_down() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    // Each replica alone holds three values of almost VALUE_BYTES_MAX (within its client
    // limits); merged, nine of them do not fit FRAME_BYTES_MAX (8 MiB).
    let big = vec![b'x'; VALUE_BYTES_MAX - 4096];
    for k in 1..=3 {
        write_alone(&cluster, k, b"big", 3, &big).await;
    }
    let mut c1 = cluster.client(1).await.unwrap();
    c1.set_timeout(Duration::from_secs(60));
    match c1.get(b"big", &r(3)).await {
        Err(ClientError::Node(ErrorReply::Limit(LimitError::FrameTooLarge {
            len, max, ..
        }))) => {
            assert!(len > max, "{len} > {max}")
        }
        other => panic!(
            "expected FrameTooLarge, got {:?}",
            other.map(|r| r.siblings.len())
        ),
    }
    // One replica's answer fits.
    assert_eq!(c1.get(b"big", &r(1)).await.unwrap().siblings.len(), 3);
    // No node took the oversized answer (or the oversized read repair it caused) for a failure.
    let status = c1.status().await.unwrap();
    for m in &status.members {
        assert_eq!(m.status, "up", "{} after the oversized read", m.name);
    }
    c1.put(
        b"small",
        b"v",
        &Context::empty(),
        &WriteOptions {
            w: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect("the cluster serves on");
    c1.close().await;
    cluster.shutdown().await;
}
