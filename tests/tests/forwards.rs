//! Forwarded writes applied at most once, over real QUIC with a node certificate: a forward whose
//! reply is lost (the forwarder's connection closes before it reads it) and that is sent again
//! with the same id is answered with the first outcome, and the key holds one sibling, not two;
//! a retry the node has no record of, just after it started, is refused rather than applied;
//! and, end to end in a cluster, a node whose forward's reply was lost asks again with the same
//! id once the replica is judged up, and the client's one write is one sibling.

use std::time::Duration;

use cairn_net::Identity;
use cairn_proto::{
    encode_frame, Context, ErrorReply, KeyOp, KeyOpReply, PeerRequest, PeerResponse, Request,
    Response,
};
use cairn_tests::cluster::{eventually, eventually_not_up, r, TestCluster};
use cairn_tests::TestDir;

async fn connect_as_node(dir: &TestDir, addr: std::net::SocketAddr) -> quinn::Connection {
    let issued = dir.ca().issue_node("node2", &[]).unwrap();
    let id =
        Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let ep = cairn_net::client_endpoint(&id, addr).unwrap();
    ep.connect(addr, cairn_net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

fn forward(id: u64, retry: bool, value: &[u8]) -> Vec<u8> {
    encode_frame(&Request::Peer(PeerRequest::Forward {
        id,
        retry,
        op: KeyOp::Put {
            key: b"k".to_vec(),
            value: value.to_vec(),
            context: Context::empty(),
            opts: Default::default(),
        },
    }))
    .unwrap()
}

async fn ask(conn: &quinn::Connection, frame: &[u8]) -> KeyOpReply {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(frame).await.unwrap();
    let _ = send.finish();
    match cairn_net::read_frame::<Response>(&mut recv).await.unwrap() {
        Response::Peer(PeerResponse::Forwarded(reply)) => reply,
        other => panic!("a forward answered with {other:?}"),
    }
}

#[tokio::test]
async fn a_forward_retried_after_its_reply_was_lost_is_applied_once() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let addr = node.local_addr();

    // The first attempt arrives and is applied, but its reply is lost: the forwarder's
    // connection goes away before it reads it.
    let lost = connect_as_node(&dir, addr).await;
    let (mut send, _recv) = lost.open_bi().await.unwrap();
    send.write_all(&forward(42, false, b"once")).await.unwrap();
    let _ = send.finish();
    eventually(
        "the write to be applied",
        Duration::from_secs(20),
        || async { !node.engine().get(b"k").unwrap().is_empty() },
    )
    .await;
    lost.close(0u32.into(), b"reply lost");

    // The retry, on a new connection, with the same id: the first outcome, nothing applied.
    let conn = connect_as_node(&dir, addr).await;
    let first = match ask(&conn, &forward(42, true, b"once")).await {
        KeyOpReply::Written(reply) => reply,
        other => panic!("the retry answered with {other:?}"),
    };
    assert_eq!(first.siblings.len(), 1);
    assert_eq!(first.siblings[0].value, b"once");
    let again = ask(&conn, &forward(42, true, b"once")).await;
    assert_eq!(again, KeyOpReply::Written(first.clone()));
    let stored = node.engine().get(b"k").unwrap();
    assert_eq!(stored.live().len(), 1, "one client write, one sibling");

    // Another id is another write (a concurrent blind one: a second sibling).
    match ask(&conn, &forward(43, false, b"other")).await {
        KeyOpReply::Written(reply) => assert_eq!(reply.siblings.len(), 2),
        other => panic!("{other:?}"),
    }
    conn.close(0u32.into(), b"done");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_a_restarted_node_has_no_record_of_is_not_applied() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let conn = connect_as_node(&dir, node.local_addr()).await;
    // Just after the start, an earlier attempt may have reached the node's previous process.
    match ask(&conn, &forward(7, true, b"maybe twice")).await {
        KeyOpReply::Error(ErrorReply::Unreachable { reason, .. }) => {
            assert!(reason.contains("may have been applied"), "{reason}")
        }
        other => panic!("an unknown retry answered with {other:?}"),
    }
    assert!(node.engine().get(b"k").unwrap().is_empty());
    conn.close(0u32.into(), b"done");
    node.shutdown().await.unwrap();
}

/// The forwarder's side, in a cluster over real QUIC: node1 forwards a put to node2, the key's
/// only replica; node2 applies it, but its answer never reaches node1 (the link drops node2's
/// datagrams to node1, not node1's to node2), so node1's attempt fails and node1 judges node2
/// down. The link heals only after that, so the answer that reaches the client comes from
/// node1's second attempt, which carries the same id: node2 answers it with the first outcome
/// instead of applying the write again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_whose_reply_was_lost_is_asked_again_and_applied_once() {
    const PARTITIONS: u32 = 16;
    let cluster = TestCluster::start_partitionable(3, 1, PARTITIONS, |_| {})
        .await
        .unwrap();
    let mut c1 = cluster.client(1).await.unwrap();
    // Longer than the forward's two attempts and the wait between them.
    c1.set_timeout(Duration::from_secs(60));
    let ring = c1.ring().await.unwrap();
    let config = cairn_ring::RingConfig {
        partitions: PARTITIONS,
        replicas: 1,
    };
    let mut node2s = (0..)
        .map(|i| format!("fw{i}").into_bytes())
        .filter(|k| ring.partitions[config.partition_of(k) as usize].primaries == ["node2"]);
    let (warm, key) = (node2s.next().unwrap(), node2s.next().unwrap());
    // A forward first, so node1 holds a connection to node2: once the link is cut a new one
    // cannot be made, and a forward that was never sent is coordinated at node1 instead.
    c1.put(&warm, b"warm", &Context::empty(), &Default::default())
        .await
        .unwrap();

    cluster.relays().block(1, 0);
    let opts = cairn_proto::WriteOptions {
        // The shortest attempt: the request's timeout plus the forward margin.
        timeout_ms: Some(1000),
        ..Default::default()
    };
    let put = {
        let (c1, key) = (&c1, key.clone());
        async move { c1.put(&key, b"once", &Context::empty(), &opts).await }
    };
    let watch = async {
        eventually(
            "node2 to apply the forward",
            Duration::from_secs(30),
            || async { !cluster.node(2).engine().get(&key).unwrap().is_empty() },
        )
        .await;
        // Judged down ends the first attempt (its answer, if it ever came, is not read).
        eventually_not_up(&c1, "node2", Duration::from_secs(30)).await;
        cluster.relays().heal();
    };
    let (reply, ()) = tokio::join!(put, watch);
    let reply = reply.expect("the retry is answered with the first outcome");
    assert_eq!(reply.siblings.len(), 1, "{reply:?}");
    assert_eq!(reply.siblings[0].value, b"once");
    let stored = cluster.node(2).engine().get(&key).unwrap();
    assert_eq!(stored.live().len(), 1, "one client write, one sibling");
    let read = c1.get(&key, &r(1)).await.unwrap();
    assert_eq!(read.siblings.len(), 1, "{read:?}");
    cluster.shutdown().await;
}
