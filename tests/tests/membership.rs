//! Membership of in-process nodes over real QUIC: nodes started alone join into one cluster with
//! one ring and one layout, a join survives restarts, generations rise on every start, and
//! malformed gossip from a peer is refused without harm.

use std::time::Duration;

use cairn_client::Client;
use cairn_net::Identity;
use cairn_node::{ClusterConfig, Node, NodeConfig};
use cairn_proto::{ErrorReply, MemberStatus, PeerRequest, Request, StatusReply};
use cairn_tests::cluster::{eventually, TEST_GOSSIP_INTERVAL_MS};
use cairn_tests::TestDir;

const SETTLE: Duration = Duration::from_secs(20);

fn config(dir: &TestDir, name: &str) -> NodeConfig {
    let mut config = dir.node_config(name).unwrap();
    config.cluster = Some(ClusterConfig {
        gossip_interval_ms: TEST_GOSSIP_INTERVAL_MS,
        ..ClusterConfig::default()
    });
    config
}

/// An operator's client: an admin certificate, since these tests join and leave.
async fn client(dir: &TestDir, node: &Node) -> Client {
    Client::connect(node.local_addr(), &dir.admin_identity().unwrap())
        .await
        .unwrap()
}

fn member<'a>(status: &'a StatusReply, name: &str) -> Option<&'a MemberStatus> {
    status.members.iter().find(|m| m.name == name)
}

/// Whether `status` shows exactly `names`, all up.
fn all_up(status: &StatusReply, names: &[&str]) -> bool {
    status.members.len() == names.len()
        && names
            .iter()
            .all(|n| member(status, n).is_some_and(|m| m.status == "up"))
}

#[tokio::test]
async fn nodes_started_alone_join_into_one_cluster_and_the_join_survives_a_restart() {
    let dir = TestDir::new().unwrap();
    // The transfer crawls (one key per batch, one byte per second) and a holds keys to push,
    // so the change this test inspects stays in transition throughout.
    let slow = |mut config: NodeConfig| {
        config.transfer = cairn_node::config::TransferSection {
            batch_keys: 1,
            batch_bytes: 1,
            partitions_concurrent: 1,
            bytes_per_sec: 1,
        };
        config
    };
    let a = Node::start(slow(config(&dir, "a"))).await.unwrap();
    // Port 0: b comes back from its restart on another port, which gossip must carry to a.
    let b_config = slow(config(&dir, "b"));
    let b = Node::start(b_config.clone()).await.unwrap();
    let (ca, cb) = (client(&dir, &a).await, client(&dir, &b).await);
    for i in 0..16 {
        ca.put(
            format!("key{i}").as_bytes(),
            b"v",
            &cairn_proto::Context::empty(),
            &cairn_proto::WriteOptions::default(),
        )
        .await
        .unwrap();
    }
    // Each is a cluster of its own, owning every partition.
    for (c, name) in [(&ca, "a"), (&cb, "b")] {
        let s = c.status().await.unwrap();
        assert!(all_up(&s, &[name]), "{s:?}");
        assert_eq!(s.members[0].partitions, 64);
        assert!(s.members[0].this_node);
    }
    assert!(matches!(
        cb.join(&b.local_addr().to_string(), false).await,
        Err(cairn_client::ClientError::Node(
            ErrorReply::Membership { .. }
        ))
    ));

    // A dry run plans adding b to a's layout and changes nothing.
    let plan = cb.join(&a.local_addr().to_string(), true).await.unwrap();
    assert_eq!(
        (plan.from_version, plan.to_version, plan.applied),
        (1, 2, false)
    );
    assert!(!plan.moves.is_empty(), "{plan:?}");
    let s = cb.status().await.unwrap();
    assert_eq!(s.layout.as_ref().unwrap().members, ["b"], "{s:?}");

    // b takes a's layout and adds itself: version 2, spread to a by gossip.
    let plan = cb.join(&a.local_addr().to_string(), false).await.unwrap();
    assert_eq!((plan.to_version, plan.applied), (2, true), "{plan:?}");
    for c in [&ca, &cb] {
        eventually(
            "both nodes to see both up, at layout version 2",
            SETTLE,
            || async {
                let s = c.status().await.unwrap();
                all_up(&s, &["a", "b"])
                    && s.layout.as_ref().is_some_and(|l| {
                        l.version == 2 && l.members == ["a", "b"] && l.transition.is_some()
                    })
            },
        )
        .await;
    }
    let ring = ca.ring().await.unwrap();
    assert_eq!(ring, cb.ring().await.unwrap(), "one ring");
    // The change waits for its (throttled) transfer, so a keeps every partition until the data
    // has moved.
    let s = ca.status().await.unwrap();
    let owned: Vec<u32> = s.members.iter().map(|m| m.partitions).collect();
    assert_eq!(owned, [64, 0], "{s:?}");

    // b restarts on a new port: its generation rises, it rejoins through the seed it was told
    // about (kept on disk, not in its config), a learns its new address, and b's layout is
    // the one it persisted.
    let old_generation = member(&s, "b").unwrap().generation;
    cb.close().await;
    b.shutdown().await.unwrap();
    let b = Node::start(b_config).await.unwrap();
    let cb = client(&dir, &b).await;
    for c in [&ca, &cb] {
        eventually("b to be up again everywhere", SETTLE, || async {
            let s = c.status().await.unwrap();
            all_up(&s, &["a", "b"])
                && member(&s, "b").unwrap().generation > old_generation
                && member(&s, "b").unwrap().addr == b.local_addr().to_string()
        })
        .await;
    }
    assert_eq!(cb.status().await.unwrap().layout.unwrap().version, 2);
    assert_eq!(ca.ring().await.unwrap(), ring, "a restart moves nothing");

    // A second change waits for the first.
    let err = ca.leave(true).await.unwrap_err().to_string();
    assert!(err.contains("still being transferred"), "{err}");
    cb.close().await;
    ca.close().await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// A connection to `node` with a node certificate issued to `name`, as a peer would have.
async fn connect_as_node(dir: &TestDir, node: &Node, name: &str) -> Client {
    dir.node_config(name).unwrap();
    let p = dir.path().join(name);
    let identity = Identity::load(
        &dir.path().join("ca.pem"),
        &p.join("node.pem"),
        &p.join("node.key"),
    )
    .unwrap();
    Client::connect(node.local_addr(), &identity).await.unwrap()
}

#[tokio::test]
async fn malformed_gossip_from_a_peer_is_refused_and_changes_nothing() {
    let dir = TestDir::new().unwrap();
    let node = Node::start(config(&dir, "a")).await.unwrap();
    // A node certificate (so the request is a peer's), sending bytes that are not gossip.
    let conn = connect_as_node(&dir, &node, "mallory").await;
    for garbage in [vec![], vec![0xff; 64], b"SYN please".to_vec()] {
        let resp = conn
            .request(&Request::Peer(PeerRequest::Gossip(garbage)))
            .await;
        assert!(
            matches!(&resp, Err(cairn_client::ClientError::Node(ErrorReply::Malformed { reason })) if reason.starts_with("gossip:")),
            "{resp:?}"
        );
    }
    let c = client(&dir, &node).await;
    let s = c.status().await.unwrap();
    assert!(all_up(&s, &["a"]), "{s:?}");
    c.close().await;
    conn.close().await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_membership_file_stops_the_start_with_its_path_and_is_left_alone() {
    let dir = TestDir::new().unwrap();
    let config = config(&dir, "a");
    let node = Node::start(config.clone()).await.unwrap();
    let c = client(&dir, &node).await;
    let generation = c.status().await.unwrap().members[0].generation;
    c.close().await;
    node.shutdown().await.unwrap();
    let file = config.data_dir.join(cairn_node::membership::STATE_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("generation = {generation}")),
        "the generation in use is on disk: {text}"
    );

    std::fs::write(&file, "generation = \"soon\"\n").unwrap();
    let err = match Node::start(config.clone()).await {
        Ok(_) => panic!("a node started over a corrupt membership file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("membership.toml"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "generation = \"soon\"\n",
        "nothing overwrote the file"
    );
}

#[tokio::test]
async fn a_node_not_among_the_initial_members_takes_the_layout_from_gossip_and_owns_nothing() {
    let dir = TestDir::new().unwrap();
    let a = Node::start(config(&dir, "a")).await.unwrap();
    let mut b_config = config(&dir, "b");
    b_config.cluster = Some(ClusterConfig {
        seeds: vec![a.local_addr().to_string()],
        initial_members: vec!["a".into()],
        gossip_interval_ms: TEST_GOSSIP_INTERVAL_MS,
        ..ClusterConfig::default()
    });
    let b = Node::start(b_config).await.unwrap();
    let (ca, cb) = (client(&dir, &a).await, client(&dir, &b).await);
    let a_layout = ca.status().await.unwrap().layout.unwrap();
    eventually("b to hold a's layout", SETTLE, || async {
        cb.status().await.unwrap().layout.as_deref() == Some(&*a_layout)
    })
    .await;
    let s = cb.status().await.unwrap();
    assert_eq!(member(&s, "b").unwrap().partitions, 0, "{s:?}");
    assert_eq!(member(&s, "a").unwrap().partitions, 64, "{s:?}");
    assert_eq!(ca.ring().await.unwrap(), cb.ring().await.unwrap());
    // b owns nothing, yet serves clients: it forwards to the owner.
    let opts = Default::default();
    cb.put(b"k", b"v", &cairn_proto::Context::empty(), &opts)
        .await
        .unwrap();
    let got = ca.get(b"k", &Default::default()).await.unwrap();
    assert_eq!(got.siblings[0].value, b"v");
    for c in [ca, cb] {
        c.close().await;
    }
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_layout_file_stops_the_start_with_its_path_and_is_never_replaced() {
    let dir = TestDir::new().unwrap();
    let config = config(&dir, "a");
    let node = Node::start(config.clone()).await.unwrap();
    let c = client(&dir, &node).await;
    let layout = c.status().await.unwrap().layout.unwrap();
    assert_eq!(
        (layout.version, layout.members.clone()),
        (1, vec!["a".to_owned()])
    );
    c.close().await;
    node.shutdown().await.unwrap();
    let file = config.data_dir.join(cairn_node::layout::LAYOUT_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    for _ in 0..2 {
        let err = match Node::start(config.clone()).await {
            Ok(_) => panic!("a node started over a corrupt layout file"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("layout.bin") && err.contains("corrupt") && err.contains("checksum"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "nothing overwrote the file"
        );
    }
}

#[tokio::test]
async fn a_wildcard_listen_address_needs_an_advertised_one() {
    let dir = TestDir::new().unwrap();
    let mut config = config(&dir, "a");
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = match Node::start(config.clone()).await {
        Ok(_) => panic!("a node advertised 0.0.0.0 to its peers"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("set `advertise`"), "{err}");
    // With an address peers can reach, the same node starts.
    config.advertise = Some("127.0.0.1:7999".parse().unwrap());
    let node = Node::start(config).await.unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_cannot_gossip_in_another_nodes_name() {
    use cairn_gossip::{Gossip, GossipConfig, NodeState, Status};
    let dir = TestDir::new().unwrap();
    let node = Node::start(config(&dir, "a")).await.unwrap();
    let conn = connect_as_node(&dir, &node, "mallory").await;
    // A well-formed SYN from `name`, as that node's gossip would send it to a seed.
    let syn = |name: &str| {
        let now = std::time::Instant::now();
        let config = GossipConfig {
            seeds: vec![node.local_addr().to_string()],
            ..GossipConfig::default()
        };
        let state = NodeState {
            status: Status::Up,
            ..NodeState::joining("127.0.0.1:9")
        };
        let mut g =
            Gossip::new(cairn_proto::NodeId::from_name(name), config, state, 1, now).unwrap();
        g.handle_tick(now + Duration::from_secs(1), &mut rand::thread_rng());
        g.poll_transmit()
            .expect("a SYN to the seed")
            .message
            .encode()
    };
    // In its own name, mallory is answered with an ACK...
    let own = conn
        .request(&Request::Peer(PeerRequest::Gossip(syn("mallory"))))
        .await
        .unwrap();
    assert!(
        matches!(
            &own,
            cairn_proto::Response::Peer(cairn_proto::PeerResponse::Gossip(Some(_)))
        ),
        "{own:?}"
    );
    // ...but a SYN claiming to be node "a" itself, or anyone else, is refused.
    for victim in ["a", "b"] {
        let forged = conn
            .request(&Request::Peer(PeerRequest::Gossip(syn(victim))))
            .await;
        assert!(
            matches!(&forged, Err(cairn_client::ClientError::Node(ErrorReply::Malformed { reason })) if reason.contains("sent by")),
            "{forged:?}"
        );
    }
    conn.close().await;
    node.shutdown().await.unwrap();
}
