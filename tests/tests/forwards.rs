//! Forwarded writes applied at most once, over real QUIC with a node certificate: a forward whose
//! reply is lost (the forwarder's connection closes before it reads it) and that is sent again
//! with the same id is answered with the first outcome, and the key holds one sibling, not two;
//! a retry the node has no record of, just after it started, is refused rather than applied.

use std::time::Duration;

use cairn_net::Identity;
use cairn_proto::{
    encode_frame, Context, ErrorReply, KeyOp, KeyOpReply, PeerRequest, PeerResponse, Request,
    Response,
};
use cairn_tests::cluster::eventually;
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
