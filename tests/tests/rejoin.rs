//! A node removed from the layout while it was dead, started again with its old data directory,
//! is refused when it asks to join: the tombstones reaped while it was gone no longer cover its
//! copies, and anti-entropy or read repair would bring deleted values back from them (Riak's
//! "doomstone" family of resurrections). The refusal names what to do, and changes nothing.

use std::time::Duration;

use cairn_proto::Context;

use cairn_tests::cluster::{eventually, eventually_not_up, w, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_with_its_old_data_is_refused_when_it_joins_again() {
    let mut cluster = TestCluster::start(4, 3, 16).await.unwrap();
    let c1 = cluster.client(1).await.unwrap();
    // Every key on three of the four nodes: node4 holds about three quarters of them.
    for i in 0..20 {
        let key = format!("k{i}");
        c1.put(key.as_bytes(), b"v", &Context::empty(), &w(3))
            .await
            .unwrap();
    }
    cluster.stop(4).await.unwrap();
    eventually_not_up(&c1, "node4", Duration::from_secs(30)).await;
    let admin =
        cairn_client::Client::connect(cluster.addr(1), &cluster.dir.admin_identity().unwrap())
            .await
            .unwrap();
    let removed = admin.remove("node4", false).await.unwrap();
    assert!(removed.applied, "{removed:?}");
    eventually("the removal to settle", Duration::from_secs(60), || async {
        let layout = c1.status().await.unwrap().layout.unwrap();
        layout.transition.is_none() && !layout.members.iter().any(|m| m == "node4")
    })
    .await;
    let settled = c1.status().await.unwrap().layout.unwrap().version;

    // node4 comes back with its old data and is asked to join through node1.
    cluster.start_again(4).await.unwrap();
    let admin4 =
        cairn_client::Client::connect(cluster.addr(4), &cluster.dir.admin_identity().unwrap())
            .await
            .unwrap();
    let seed = cluster.addr(1).to_string();
    for dry_run in [true, false] {
        let err = admin4.join(&seed, dry_run).await.unwrap_err().to_string();
        assert!(
            err.contains("node4 was a member of this cluster and is not any more")
                && err.contains("empty its data directory"),
            "{err}"
        );
    }
    // Nothing changed: node1 still holds the settled layout without node4.
    let layout = c1.status().await.unwrap().layout.unwrap();
    assert_eq!(layout.version, settled);
    assert!(!layout.members.iter().any(|m| m == "node4"), "{layout:?}");
    cluster.shutdown().await;
}
