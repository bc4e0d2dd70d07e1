//! Transport tests over real QUIC on loopback: mutual TLS refuses strangers, and malformed,
//! oversized or foreign-version frames get an error without disturbing anyone else.

use std::sync::Arc;

use cairn_client::{Client, ClientError};
use cairn_net::{ClusterCa, Identity, NetError};
use cairn_proto::{
    limits::FRAME_BYTES_MAX, Context, ErrorReply, Request, Response, Role, ALPN, PROTOCOL_VERSION,
};
use cairn_tests::TestDir;

async fn raw_connection(addr: std::net::SocketAddr, id: &Identity) -> quinn::Connection {
    let ep = cairn_net::client_endpoint(id, addr).unwrap();
    ep.connect(addr, cairn_net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// Sends raw bytes as one request stream and reads the response frame.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<Response, NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    cairn_net::read_frame(&mut recv).await
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();

    let stranger_ca = ClusterCa::generate("other").unwrap();
    let issued = stranger_ca.issue_client("mallory").unwrap();
    // Trusts the real CA (so the node's certificate checks out) but presents a foreign client
    // certificate: the node must refuse it.
    let id =
        Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let result = async {
        let client = Client::connect(node.local_addr(), &id).await?;
        client.ping().await
    }
    .await;
    assert!(
        result.is_err(),
        "a foreign client certificate got through: {result:?}"
    );

    // The node still serves its own clients.
    let client = Client::connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    assert_eq!(client.ping().await.unwrap(), "node1");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    let ca_der =
        rustls::pki_types::CertificateDer::from_pem_slice(dir.ca().pem().cert_pem.as_bytes())
            .unwrap();
    roots.add(ca_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let result = async {
        let conn = ep
            .connect(node.local_addr(), cairn_net::SERVER_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&cairn_proto::encode_frame(&Request::Ping)?)
            .await?;
        send.finish()?;
        let resp: Response = cairn_net::read_frame(&mut recv).await?;
        Ok::<_, anyhow::Error>(resp)
    }
    .await;
    assert!(
        result.is_err(),
        "a client without a certificate got an answer: {result:?}"
    );
    node.shutdown().await.unwrap();
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn bad_frames_get_errors_and_the_node_keeps_serving() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let id = dir.client_identity().unwrap();
    let conn = raw_connection(node.local_addr(), &id).await;

    // A length prefix over the limit: refused before any body is read.
    let oversized = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
    match send_raw(&conn, &oversized).await.unwrap() {
        Response::Error(ErrorReply::Malformed { reason }) => {
            assert!(reason.contains("FRAME_BYTES_MAX"), "{reason}")
        }
        other => panic!("oversized frame answered with {other:?}"),
    }

    // Garbage where a message should be.
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        send_raw(&conn, &garbage).await.unwrap(),
        Response::Error(ErrorReply::Malformed { .. })
    ));

    // Another protocol version.
    let mut frame = cairn_proto::encode_frame(&Request::Ping).unwrap();
    frame[4..6].copy_from_slice(&(PROTOCOL_VERSION + 7).to_be_bytes());
    assert_eq!(
        send_raw(&conn, &frame).await.unwrap(),
        Response::Error(ErrorReply::UnsupportedVersion {
            got: PROTOCOL_VERSION + 7,
            supported: PROTOCOL_VERSION
        })
    );

    // A truncated frame (stream finished early) gets no answer, and breaks nothing.
    let truncated = &cairn_proto::encode_frame(&Request::Ping).unwrap()[..5];
    assert!(send_raw(&conn, truncated).await.is_err());

    // The same connection and a new client both still work.
    let ok = cairn_proto::encode_frame(&Request::Ping).unwrap();
    assert_eq!(
        send_raw(&conn, &ok).await.unwrap(),
        Response::Pong {
            node: "node1".into()
        }
    );
    let client = Client::connect(node.local_addr(), &id).await.unwrap();
    client
        .put(b"k", b"v", &Context::empty(), &Default::default())
        .await
        .unwrap();
    assert_eq!(
        client
            .get(b"k", &Default::default())
            .await
            .unwrap()
            .siblings
            .len(),
        1
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_are_enforced_by_the_node_not_only_the_client() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let conn = raw_connection(node.local_addr(), &dir.client_identity().unwrap()).await;
    let big = Request::Put {
        key: b"k".to_vec(),
        value: vec![7; cairn_proto::limits::VALUE_BYTES_MAX + 1],
        context: Context::empty(),
        opts: Default::default(),
    };
    match send_raw(&conn, &cairn_proto::encode_frame(&big).unwrap())
        .await
        .unwrap()
    {
        Response::Error(ErrorReply::Limit(l)) => {
            assert!(l.to_string().contains("VALUE_BYTES_MAX"), "{l}")
        }
        other => panic!("oversized value answered with {other:?}"),
    }
    let client = Client::connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    assert!(client
        .get(b"k", &Default::default())
        .await
        .unwrap()
        .siblings
        .is_empty());
    // The client library refuses it before sending.
    assert!(matches!(
        client
            .put(
                b"k",
                &vec![0; cairn_proto::limits::VALUE_BYTES_MAX + 1],
                &Context::empty(),
                &Default::default(),
            )
            .await,
        Err(ClientError::Limit(_))
    ));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_cannot_send_peer_requests() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let conn = raw_connection(node.local_addr(), &dir.client_identity().unwrap()).await;
    // A client pretending to be a replica, trying to plant an object.
    let forged = Request::Peer(cairn_proto::PeerRequest::Read { key: b"k".to_vec() });
    assert_eq!(
        send_raw(&conn, &cairn_proto::encode_frame(&forged).unwrap())
            .await
            .unwrap(),
        Response::Error(ErrorReply::Forbidden {
            what: "a peer request".into(),
            needed: Role::Node,
            held: Role::Data
        })
    );
    node.shutdown().await.unwrap();
}

/// The frame that once aborted every node: `Request::Peer(PeerRequest::Forward(…))` nested
/// 200,000 deep (`PEER_REQUEST_TAG 01` repeated, then `00`) under the current protocol version.
fn nested_forward_frame() -> Vec<u8> {
    let mut body = PROTOCOL_VERSION.to_be_bytes().to_vec();
    for _ in 0..200_000 {
        body.extend_from_slice(&[cairn_proto::PEER_REQUEST_TAG, 0x01]);
    }
    body.push(0x00);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test]
async fn a_deeply_nested_forward_gets_an_error_and_the_node_keeps_serving() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let issued = dir.ca().issue_node("node2", &[]).unwrap();
    let node_id =
        Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let client_id = dir.client_identity().unwrap();
    let frame = nested_forward_frame();

    // A client certificate: refused by the peer tag, before anything of it is decoded.
    let conn = raw_connection(node.local_addr(), &client_id).await;
    assert!(matches!(
        send_raw(&conn, &frame).await.unwrap(),
        Response::Error(ErrorReply::Forbidden {
            needed: Role::Node,
            ..
        })
    ));
    // A node certificate: the forward's content is not a key operation.
    let peer = raw_connection(node.local_addr(), &node_id).await;
    match send_raw(&peer, &frame).await.unwrap() {
        Response::Error(ErrorReply::Malformed { reason }) => {
            assert!(reason.contains("malformed message"), "{reason}")
        }
        other => panic!("nested forward from a node answered with {other:?}"),
    }

    // Both connections, and a new client, are still served.
    let ping = cairn_proto::encode_frame(&Request::Ping).unwrap();
    for conn in [&conn, &peer] {
        assert_eq!(
            send_raw(conn, &ping).await.unwrap(),
            Response::Pong {
                node: "node1".into()
            }
        );
    }
    let client = Client::connect(node.local_addr(), &client_id)
        .await
        .unwrap();
    client
        .put(b"k", b"v", &Context::empty(), &Default::default())
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn peer_requests_from_nodes_are_held_to_their_limits() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let issued = dir.ca().issue_node("node2", &[]).unwrap();
    let node_id =
        Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let peer = raw_connection(node.local_addr(), &node_id).await;
    let oversized_key = Request::Peer(cairn_proto::PeerRequest::Replicate {
        key: vec![b'k'; cairn_proto::limits::KEY_BYTES_MAX + 1],
        object: Vec::new(),
        hint_for: None,
    });
    let forwarded_value =
        Request::Peer(cairn_proto::PeerRequest::Forward(cairn_proto::KeyOp::Put {
            key: b"k".to_vec(),
            value: vec![0; cairn_proto::limits::VALUE_BYTES_MAX + 1],
            context: Context::empty(),
            opts: Default::default(),
        }));
    let too_many_hashes = Request::Peer(cairn_proto::PeerRequest::Keys {
        partition: 0,
        key_hashes: vec![[0; 32]; cairn_proto::limits::KEY_HASHES_PER_REQUEST_MAX + 1],
    });
    for (req, limit) in [
        (oversized_key, "KEY_BYTES_MAX"),
        (forwarded_value, "VALUE_BYTES_MAX"),
        (too_many_hashes, "KEY_HASHES_PER_REQUEST_MAX"),
    ] {
        match send_raw(&peer, &cairn_proto::encode_frame(&req).unwrap())
            .await
            .unwrap()
        {
            Response::Error(ErrorReply::Limit(l)) => {
                assert!(l.to_string().contains(limit), "{l}")
            }
            other => panic!("a peer request over {limit} answered with {other:?}"),
        }
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_admin_certificates_change_membership_and_only_nodes_send_peer_requests() {
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let ca_pem = &dir.ca().pem().cert_pem;
    let identity = |issued: cairn_net::Issued| {
        Identity::from_pem(ca_pem, &issued.cert_pem, &issued.key_pem).unwrap()
    };
    let data = Client::connect(node.local_addr(), &dir.client_identity().unwrap())
        .await
        .unwrap();
    let admin = identity(dir.ca().issue_admin("ops").unwrap());
    let admin = Client::connect(node.local_addr(), &admin).await.unwrap();
    let peer = identity(dir.ca().issue_node("node2", &[]).unwrap());
    let peer = Client::connect(node.local_addr(), &peer).await.unwrap();

    // A data certificate may read and write, not change membership; the error names the role.
    data.put(b"k", b"v", &Context::empty(), &Default::default())
        .await
        .unwrap();
    match data.leave(false).await {
        Err(ClientError::Node(e @ ErrorReply::Forbidden { .. })) => {
            assert_eq!(
                e,
                ErrorReply::Forbidden {
                    what: "leave".into(),
                    needed: Role::Admin,
                    held: Role::Data
                }
            );
            let text = e.to_string();
            assert!(text.contains("needs an admin certificate"), "{text}");
            assert!(text.contains("--role admin"), "{text}");
        }
        other => panic!("a data certificate's leave answered {other:?}"),
    }
    assert!(matches!(
        data.join("127.0.0.1:1", false).await,
        Err(ClientError::Node(ErrorReply::Forbidden {
            needed: Role::Admin,
            ..
        }))
    ));
    // A node certificate is not an admin either.
    assert!(matches!(
        peer.leave(false).await,
        Err(ClientError::Node(ErrorReply::Forbidden {
            needed: Role::Admin,
            held: Role::Node,
            ..
        }))
    ));
    // An admin may read, and may not send peer requests.
    assert_eq!(
        admin
            .get(b"k", &Default::default())
            .await
            .unwrap()
            .siblings
            .len(),
        1
    );
    assert!(matches!(
        admin
            .request(&Request::Peer(cairn_proto::PeerRequest::Read {
                key: b"k".to_vec()
            }))
            .await,
        Err(ClientError::Node(ErrorReply::Forbidden {
            needed: Role::Node,
            held: Role::Admin,
            ..
        }))
    ));
    // The admin's leave passes the role check and is planned; the layout refuses it, since a
    // cluster cannot lose its last node.
    match admin.leave(false).await {
        Err(ClientError::Node(ErrorReply::Membership { reason })) => {
            assert!(reason.contains("last member"), "{reason}")
        }
        other => panic!("a lone node's leave answered {other:?}"),
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn random_and_truncated_frames_from_clients_and_nodes_leave_the_node_serving() {
    use rand::{Rng as _, SeedableRng as _};
    let dir = TestDir::new().unwrap();
    let node = dir.start_node("node1").await.unwrap();
    let issued = dir.ca().issue_node("node2", &[]).unwrap();
    let node_id =
        Identity::from_pem(&dir.ca().pem().cert_pem, &issued.cert_pem, &issued.key_pem).unwrap();
    let conns = [
        raw_connection(node.local_addr(), &dir.client_identity().unwrap()).await,
        raw_connection(node.local_addr(), &node_id).await,
    ];
    // Seeded, so a failure replays; printed so it can be found.
    let seed: u64 = rand::random();
    println!("random frames seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..200 {
        let conn = &conns[i % 2];
        // A correct length and version over random bytes, or random bytes altogether, sometimes
        // cut short.
        let len = rng.gen_range(0..2048);
        let mut frame = ((len + 2) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend((0..len).map(|_| rng.gen::<u8>()));
        if rng.gen_bool(0.2) {
            frame.iter_mut().take(4).for_each(|b| *b = rng.gen());
        }
        if rng.gen_bool(0.2) {
            frame.truncate(rng.gen_range(0..frame.len()));
        }
        // Whatever the node answers (an error, or nothing for a truncated frame), it answers
        // only on that stream; a frame that happens to be a request is answered like one.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(10), send_raw(conn, &frame)).await;
    }
    let ping = cairn_proto::encode_frame(&Request::Ping).unwrap();
    for conn in &conns {
        assert_eq!(
            send_raw(conn, &ping).await.unwrap(),
            Response::Pong {
                node: "node1".into()
            },
            "seed {seed}"
        );
    }
    node.shutdown().await.unwrap();
}
