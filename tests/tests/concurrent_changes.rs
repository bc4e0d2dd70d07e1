//! Two layout changes applied at two nodes against the same version: the layout's merge keeps one
//! of them, so a command must not say "applied" as if its change were sure to stand. After it
//! applies a change, a node sends its layout to every member at once: a member that does not
//! answer is named in the reply (`unconfirmed`), and a command whose change met a rival that
//! won is told it was superseded. Here a partition keeps the two changes apart, so both
//! commands name the side they could not reach, and once it heals one change survives
//! everywhere.

use std::time::Duration;

use cairn_tests::cluster::{eventually, eventually_not_up, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_applied_on_both_sides_of_a_partition_name_the_members_they_could_not_reach() {
    let mut cluster = TestCluster::start_partitionable(5, 2, 16, |_| {})
        .await
        .unwrap();
    // node4 and node5 die; the three others see them down.
    cluster.stop(4).await.unwrap();
    cluster.stop(5).await.unwrap();
    let admin = |k: usize| {
        let (addr, identity) = (cluster.addr(k), cluster.dir.admin_identity().unwrap());
        async move {
            cairn_client::Client::connect(addr, &identity)
                .await
                .unwrap()
        }
    };
    let (c1, c2) = (admin(1).await, admin(2).await);
    for c in [&c1, &c2] {
        for dead in ["node4", "node5"] {
            eventually_not_up(c, dead, Duration::from_secs(30)).await;
        }
    }
    let version = c1.status().await.unwrap().layout.unwrap().version;

    // node1 apart from node2 and node3: each side removes another dead node.
    cluster.relays().partition(&[&[0], &[1, 2]]);
    let a = c1.remove("node4", false).await.unwrap();
    assert!(a.applied, "{a:?}");
    assert_eq!((a.from_version, a.to_version), (version, version + 1));
    // node4 left the layout with this change; node5 is dead and the others are cut off.
    assert_eq!(a.unconfirmed, ["node2", "node3", "node5"], "{a:?}");
    let b = c2.remove("node5", false).await.unwrap();
    assert!(b.applied, "{b:?}");
    assert_eq!((b.from_version, b.to_version), (version, version + 1));
    assert_eq!(b.unconfirmed, ["node1", "node4"], "{b:?}");

    // Healed: the merge keeps one of the two everywhere.
    cluster.relays().heal();
    let newest = |status: &cairn_proto::StatusReply| {
        status
            .layout
            .as_ref()
            .map(|l| (l.version, l.members.clone()))
    };
    let views = || async {
        let mut seen = Vec::new();
        for k in 1..=3 {
            let status = cluster.client(k).await.unwrap().status().await.unwrap();
            seen.push(newest(&status));
        }
        seen
    };
    eventually(
        "one of the two changes everywhere",
        Duration::from_secs(60),
        || async {
            let seen = views().await;
            seen[0].is_some() && seen.iter().all(|s| *s == seen[0])
        },
    )
    .await;
    let agreed = views().await.swap_remove(0);
    let (at, mut members) = agreed.unwrap();
    members.sort();
    assert_eq!(at, version + 1);
    let kept_a = members == ["node1", "node2", "node3", "node5"];
    let kept_b = members == ["node1", "node2", "node3", "node4"];
    assert!(kept_a != kept_b, "exactly one change survives: {members:?}");
    cluster.shutdown().await;
}
