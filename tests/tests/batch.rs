//! Replica requests batched per peer (`PeerRequest::Batch`): a coordinator's concurrent
//! replicates and reads to one peer travel together in one frame, each caller still gets its own
//! answer, and a receiver answers a batch item by item (a batch holds only replicates and reads, and
//! it leaves out copies that would not fit one answer frame, which the sender then asks for alone).

use std::sync::Arc;

use cairn_client::{Client, ClientError};
use cairn_proto::{
    BatchAnswer, BatchItem, Context, ErrorReply, LimitError, PeerRequest, PeerResponse,
    ReadOptions, Request, Response, WriteOptions,
};
use cairn_tests::cluster::TestCluster;

/// Concurrent writes at one coordinator: enough that its replicates queue for each peer while
/// earlier batches are in flight.
const CONCURRENT_WRITES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_reach_each_peer_in_batches_and_every_write_is_on_every_replica() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    cluster.wait_all_up().await.unwrap();
    let client = Arc::new(cluster.client(1).await.unwrap());
    let w3 = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT_WRITES {
        let (client, w3) = (client.clone(), w3.clone());
        writes.spawn(async move {
            let key = format!("batch:{i}");
            client
                .put(key.as_bytes(), key.as_bytes(), &Context::empty(), &w3)
                .await
                .map_err(|e| format!("{key}: {e}"))
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }
    // W = 3: every replica acknowledged every write, so each holds each value now.
    for k in 1..=3 {
        for i in 0..CONCURRENT_WRITES {
            let key = format!("batch:{i}");
            let obj = cluster.node(k).engine().get(key.as_bytes()).unwrap();
            let live: Vec<_> = obj.live().into_iter().map(|(_, v)| v.to_vec()).collect();
            assert_eq!(live, vec![key.clone().into_bytes()], "node{k} {key}");
        }
    }
    let (batches, requests) = cluster.node(1).peers().batches_sent();
    assert!(
        batches > 0 && requests > batches,
        "node1 sent {requests} replicates in {batches} batches of two or more: none were batched"
    );
    eprintln!(
        "{requests} replicates in {batches} batches ({:.1} per batch)",
        requests as f64 / batches as f64
    );
    // Reads at R = 3 go to both peers too, and come back right.
    let r3 = ReadOptions {
        r: Some(3),
        ..Default::default()
    };
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT_WRITES {
        let (client, r3) = (client.clone(), r3.clone());
        reads.spawn(async move {
            let key = format!("batch:{i}");
            let reply = client.get(key.as_bytes(), &r3).await.unwrap();
            let values: Vec<_> = reply.siblings.iter().map(|s| s.value.clone()).collect();
            assert_eq!(values, vec![key.into_bytes()]);
        });
    }
    while let Some(done) = reads.join_next().await {
        done.unwrap();
    }
    drop(client);
    cluster.shutdown().await;
}

/// A peer's answer to `req`, or the error it sent.
async fn ask(client: &Client, req: PeerRequest) -> Result<PeerResponse, ErrorReply> {
    match client.request(&Request::Peer(req)).await {
        Ok(Response::Peer(resp)) => Ok(resp),
        Err(ClientError::Node(e)) => Err(e),
        Err(ClientError::Limit(e)) => Err(ErrorReply::Limit(e)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_item_by_item_in_order() {
    let dir = cairn_tests::TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let issued = dir.ca().issue_node("peer", &[]).unwrap();
    let peer =
        cairn_net::Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem)
            .unwrap();
    let client = Client::connect(node.local_addr(), &peer).await.unwrap();
    let data = dir.client_identity().unwrap();
    let data = Client::connect(node.local_addr(), &data).await.unwrap();
    let stored = data
        .put(b"there", b"v0", &Context::empty(), &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(stored.siblings.len(), 1);
    // An object to replicate: the one node1 holds for "there", under another key.
    let object = node.engine().get(b"there").unwrap().encode();

    let answers = ask(
        &client,
        PeerRequest::Batch(vec![
            BatchItem::Replicate {
                key: b"new".to_vec(),
                object: object.clone(),
                hint_for: None,
            },
            BatchItem::Read {
                key: b"there".to_vec(),
            },
            BatchItem::Read {
                key: b"absent".to_vec(),
            },
            BatchItem::Replicate {
                key: b"bad".to_vec(),
                object: vec![0xff; 3],
                hint_for: None,
            },
        ]),
    )
    .await;
    let Ok(PeerResponse::Batch(answers)) = answers else {
        panic!("a batch answered {answers:?}");
    };
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert_eq!(answers[0], Ok(BatchAnswer::Ack));
    assert_eq!(answers[1], Ok(BatchAnswer::Object(object.clone())));
    assert_eq!(answers[2], Ok(BatchAnswer::Object(Vec::new())));
    assert!(
        matches!(&answers[3], Err(ErrorReply::Malformed { reason }) if reason.contains("bad object")),
        "a bad object in a batch: {:?}",
        answers[3]
    );
    // The replicated item is durable and readable: the same siblings (the stored object may
    // also record a history-only actor entry for the receiving node, see the writer's per-key
    // actors, so its bytes can differ from the sent ones).
    let stored = node.engine().get(b"new").unwrap();
    let sent = cairn_core::version::Object::decode(&object).unwrap();
    assert_eq!(stored.siblings(), sent.siblings());
    assert!(node.engine().get(b"bad").unwrap().is_empty());

    // Too many items: refused as a whole, by the limit's name.
    let read = BatchItem::Read {
        key: b"there".to_vec(),
    };
    let too_many = ask(
        &client,
        PeerRequest::Batch(vec![
            read.clone();
            cairn_proto::limits::PEER_BATCH_ITEMS_MAX + 1
        ]),
    )
    .await;
    assert!(
        matches!(
            too_many,
            Err(ErrorReply::Limit(LimitError::TooManyBatchItems { .. }))
        ),
        "{too_many:?}"
    );

    // Copies that together exceed the answer's room: the largest are left out with
    // `FrameTooLarge` (the sender asks for them alone), the rest answered.
    let big = vec![b'x'; cairn_proto::limits::VALUE_BYTES_MAX];
    let keys: Vec<Vec<u8>> = (0..6).map(|i| format!("big:{i}").into_bytes()).collect();
    for key in &keys {
        data.put(key, &big, &Context::empty(), &WriteOptions::default())
            .await
            .unwrap();
    }
    let reads = keys
        .iter()
        .map(|key| BatchItem::Read { key: key.clone() })
        .collect();
    let Ok(PeerResponse::Batch(answers)) = ask(&client, PeerRequest::Batch(reads)).await else {
        panic!("a batch of large reads was not answered as a batch");
    };
    let left_out = answers
        .iter()
        .filter(|a| matches!(a, Err(ErrorReply::Limit(LimitError::FrameTooLarge { .. }))))
        .count();
    let copies = answers
        .iter()
        .filter(|a| matches!(a, Ok(BatchAnswer::Object(b)) if b.len() > big.len()))
        .count();
    assert!(
        left_out > 0,
        "six 1 MiB copies all in one answer: {left_out}"
    );
    assert_eq!(left_out + copies, keys.len(), "every item answered");
    // Asked alone, a left-out copy comes back.
    let alone = ask(
        &client,
        PeerRequest::Read {
            key: keys[0].clone(),
        },
    )
    .await;
    assert!(
        matches!(&alone, Ok(PeerResponse::Object(b)) if b.len() > big.len()),
        "a large copy asked alone"
    );
    drop((client, data));
    node.shutdown().await.unwrap();
}
