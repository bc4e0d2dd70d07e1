//! One node over real QUIC on loopback: the write → siblings → resolve loop, deletes, and data
//! and causality surviving a restart.

use cairn_proto::Context;
use cairn_tests::{connect, TestDir};

#[tokio::test]
async fn siblings_appear_and_a_write_with_their_context_resolves_them() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let client = connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();

    client
        .put(b"k", b"ann", &Context::empty(), &Default::default())
        .await
        .unwrap();
    let after = client
        .put(b"k", b"bob", &Context::empty(), &Default::default())
        .await
        .unwrap();
    // The write's reply shows what the key now holds, including the concurrent value.
    assert_eq!(after.siblings.len(), 2);

    let read = client.get(b"k", &Default::default()).await.unwrap();
    let mut values: Vec<_> = read.siblings.iter().map(|s| s.value.clone()).collect();
    values.sort();
    assert_eq!(values, vec![b"ann".to_vec(), b"bob".to_vec()]);
    assert_ne!(read.siblings[0].dot, read.siblings[1].dot);

    let resolved = client
        .put(b"k", b"merged", &read.context, &Default::default())
        .await
        .unwrap();
    assert_eq!(resolved.siblings.len(), 1);
    let read = client.get(b"k", &Default::default()).await.unwrap();
    assert_eq!(read.siblings.len(), 1);
    assert_eq!(read.siblings[0].value, b"merged");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_write_with_an_old_context_keeps_what_it_did_not_see() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let client = connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    let first = client
        .put(b"k", b"v1", &Context::empty(), &Default::default())
        .await
        .unwrap();
    client
        .put(b"k", b"v2", &Context::empty(), &Default::default())
        .await
        .unwrap();
    // Written with the context of the first write only: supersedes v1, keeps v2.
    client
        .put(b"k", b"v3", &first.context, &Default::default())
        .await
        .unwrap();
    let mut values: Vec<_> = client
        .get(b"k", &Default::default())
        .await
        .unwrap()
        .siblings
        .into_iter()
        .map(|s| s.value)
        .collect();
    values.sort();
    assert_eq!(values, vec![b"v2".to_vec(), b"v3".to_vec()]);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn deletes_hide_the_key_but_not_concurrent_writes() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let client = connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    let w = client
        .put(b"k", b"v1", &Context::empty(), &Default::default())
        .await
        .unwrap();
    // A write the deleter never saw.
    client
        .put(b"k", b"concurrent", &Context::empty(), &Default::default())
        .await
        .unwrap();
    client
        .delete(b"k", &w.context, &Default::default())
        .await
        .unwrap();
    let read = client.get(b"k", &Default::default()).await.unwrap();
    assert_eq!(read.siblings.len(), 1);
    assert_eq!(read.siblings[0].value, b"concurrent");

    client
        .delete(b"k", &read.context, &Default::default())
        .await
        .unwrap();
    let read = client.get(b"k", &Default::default()).await.unwrap();
    assert!(read.siblings.is_empty(), "deleted key reads as not found");

    // A write with the not-found read's context supersedes the tombstone: one value, no ghost.
    client
        .put(b"k", b"again", &read.context, &Default::default())
        .await
        .unwrap();
    let read = client.get(b"k", &Default::default()).await.unwrap();
    assert_eq!(read.siblings.len(), 1);
    assert_eq!(read.siblings[0].value, b"again");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn data_and_causality_survive_a_restart() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    let node = cairn_node::Node::start(config.clone()).await.unwrap();
    let id = dir.client_identity().unwrap();
    let client = connect(node.local_addr(), &id).await.unwrap();
    let before = client
        .put(b"k", b"before", &Context::empty(), &Default::default())
        .await
        .unwrap();
    client.close().await;
    node.shutdown().await.unwrap();

    config.listen = "127.0.0.1:0".parse().unwrap();
    let node = cairn_node::Node::start(config).await.unwrap();
    let client = connect(node.local_addr(), &id).await.unwrap();
    let read = client.get(b"k", &Default::default()).await.unwrap();
    assert_eq!(read.siblings, before.siblings);
    // A write that did not see "before" is concurrent with it: both survive, distinct dots.
    let after = client
        .put(b"k", b"after", &Context::empty(), &Default::default())
        .await
        .unwrap();
    assert_eq!(after.siblings.len(), 2);
    assert_ne!(after.siblings[0].dot, after.siblings[1].dot);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_forged_context_is_refused() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let client = connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    let err = client
        .put(b"k", b"v", &Context(vec![0xff; 40]), &Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    assert!(client
        .get(b"k", &Default::default())
        .await
        .unwrap()
        .siblings
        .is_empty());
    node.shutdown().await.unwrap();
}

/// Shutdown releases everything the node held: the same UDP port and the same data directory
/// serve again the moment it returns, with no retry, after clients (one still connected),
/// writes and the start-up tree rebuild used them.
#[tokio::test]
async fn a_stopped_node_frees_its_port_and_its_database_at_once() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    let id = dir.client_identity().unwrap();
    let mut node = cairn_node::Node::start(config.clone()).await.unwrap();
    config.listen = node.local_addr();
    for round in 0..5u8 {
        let client = connect(node.local_addr(), &id).await.unwrap();
        let key = [b'k', round];
        client
            .put(&key, b"v", &Context::empty(), &Default::default())
            .await
            .unwrap();
        // Left connected: shutdown closes the connection itself.
        node.shutdown().await.unwrap();
        node = cairn_node::Node::start(config.clone())
            .await
            .unwrap_or_else(|e| panic!("restart {round} on the same port and data: {e}"));
        assert_eq!(node.local_addr(), config.listen);
        drop(client);
        let client = connect(node.local_addr(), &id).await.unwrap();
        let read = client.get(&key, &Default::default()).await.unwrap();
        assert_eq!(read.siblings.len(), 1, "round {round}");
    }
    node.shutdown().await.unwrap();
}
