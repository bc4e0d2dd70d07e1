//! A real full disk under a node's data directory: a small tmpfs the test mounts (the test
//! machines run tests as root) and removes. Writes fail with an error saying the disk is full,
//! the engine reports itself degraded, nothing acknowledged is lost, and once space is freed a
//! restarted engine (reopening redb, which refuses commits after a failed one) writes again.
//! In a cluster, the node with the full disk is shown degraded at every node and routed around
//! until it restarts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_node::engine::{Engine, EngineError, Write};
use cairn_node::store::RedbStore;
use cairn_node::version::{Payload, VClock};
use cairn_proto::{Context, ErrorReply, NodeId, WriteOptions};
use cairn_tests::cluster::{eventually, TestCluster};
use rand::{rngs::StdRng, SeedableRng};

/// How long gossip may take to spread a node's storage state (200 ms checks, 250 ms rounds).
const DEADLINE: Duration = Duration::from_secs(30);

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap().keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}); this test needs root",
            dir.display()
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a test that panicked may still have a node holding files open here, and the
        // mount must not outlive the test.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn open(dir: &Path) -> Engine {
    let store = RedbStore::open(dir).unwrap();
    Engine::open(
        Arc::new(store),
        NodeId::from_name("node1"),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap()
}

fn put(i: usize) -> Write {
    let mut value = vec![b'v'; 256 * 1024];
    value[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Write::Update {
        ctx: VClock::new(),
        payload: Payload::Value(value),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged() {
    let fs = Tmpfs::mount("64m");
    let data = fs.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Space to free later. Replaying the commit log at the restart needs more room than the
    // log holds (redb's copy-on-write checkpoint): with as much freed as the log held (a 24 MiB
    // disk, 12 MiB filler) the restart itself failed with ENOSPC; three times as much is enough.
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 48 << 20]).unwrap();

    let engine = open(&data);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        let key = format!("k{i}").into_bytes();
        match engine.apply(key.clone(), put(i)).await {
            Ok(_) => acknowledged.push(key),
            Err(e @ EngineError::Store(_)) => {
                refusal = Some(ErrorReply::from(e).to_string());
                break;
            }
            Err(other) => panic!("write {i}: {other}"),
        }
    }
    let refusal =
        refusal.expect("a 64 MiB disk with 48 MiB taken fills within 200 writes of 256 KiB");
    assert!(refusal.contains("disk of this node is full"), "{refusal}");
    assert!(!acknowledged.is_empty());
    let fault = engine
        .stats()
        .degraded()
        .expect("degraded after the failed commit");
    assert!(fault.disk_full, "{fault:?}");
    // Reads still answer, from what was acknowledged.
    for key in &acknowledged {
        assert_eq!(engine.get(key).unwrap().live().len(), 1);
    }
    drop(engine);

    // Space again, and the node restarted: every acknowledged write is there, and it writes.
    std::fs::remove_file(&filler).unwrap();
    let engine = open(&data);
    assert_eq!(engine.stats().degraded(), None);
    for key in &acknowledged {
        assert_eq!(
            engine.get(key).unwrap().live().len(),
            1,
            "{} lost",
            String::from_utf8_lossy(key)
        );
    }
    engine
        .apply(b"after".to_vec(), put(999))
        .await
        .expect("writes after space was freed");
    drop(engine);
}

/// Whether every node of `askers` shows `name` as `status` in its `cairn status`.
async fn shown_as(cluster: &TestCluster, askers: &[usize], name: &str, status: &str) -> bool {
    for &k in askers {
        let Ok(client) = cluster.client(k).await else {
            return false;
        };
        let Ok(reply) = client.status().await else {
            return false;
        };
        if !reply
            .members
            .iter()
            .any(|m| m.name == name && m.status == status)
        {
            return false;
        }
    }
    true
}

/// A cluster of four (N=3) whose node3 keeps its data on a small tmpfs: once node3's disk is
/// full, node3 gossips itself degraded, node1, node2 and node4 show it so, and writes through
/// them succeed at W=3 (a fallback takes node3's place) and W=2. Space freed, node3 stays
/// degraded — redb refuses every commit after a failed one — until it restarts; then it is up
/// everywhere and writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_full_disk_is_shown_degraded_and_routed_around_until_it_restarts() {
    // 16 MiB free to fill, and much more once the filler is gone: with 48 MiB freed (the test
    // above) node3's restart failed with ENOSPC, its redb file having grown to 35 MiB next to a
    // 16 MiB log.
    let fs = Tmpfs::mount("160m");
    let data = fs.dir.join("data");
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 144 << 20]).unwrap();
    let mut cluster = TestCluster::start_with(4, 3, 16, |config| {
        if config.name == "node3" {
            config.data_dir = data.clone();
        }
    })
    .await
    .unwrap();
    let w = |w| WriteOptions {
        w: Some(w),
        ..Default::default()
    };
    let value = vec![b'v'; 256 * 1024];

    // Fill node3's disk through node1, at W=2. A write node3 coordinates (node1 forwards to
    // it) before node1 has heard that node3 is degraded fails with node3's clear error; any
    // other failure fails the test.
    let c1 = cluster.client(1).await.unwrap();
    let mut filled = false;
    for i in 0..400 {
        let key = format!("fill-{i}");
        if let Err(e) = c1
            .put(key.as_bytes(), &value, &Context::default(), &w(2))
            .await
        {
            assert!(
                e.to_string().contains("disk of this node is full"),
                "W=2 write {key} while node3 fills: {e}"
            );
        }
        if cluster.node(3).engine().stats().degraded().is_some() {
            filled = true;
            break;
        }
    }
    assert!(
        filled,
        "16 MiB free on node3 fill within 400 writes of 256 KiB"
    );
    let fault = cluster.node(3).engine().stats().degraded().unwrap();
    assert!(fault.disk_full, "{fault:?}");

    eventually("node3 shown degraded everywhere", DEADLINE, || {
        shown_as(&cluster, &[1, 2, 3, 4], "node3", "degraded")
    })
    .await;
    // Routed around: W=3 is met for every key, a fallback standing in where node3 is a
    // replica (without routing around, the keys node3 replicates, three in four, would fail
    // at W=3). Through node3 too: it forwards to a replica that can write.
    for k in [1, 2, 3, 4] {
        let client = cluster.client(k).await.unwrap();
        for i in 0..20 {
            let key = format!("while-degraded-{k}-{i}");
            client
                .put(key.as_bytes(), b"small", &Context::default(), &w(3))
                .await
                .unwrap_or_else(|e| panic!("W=3 write {key} through node{k}: {e}"));
            let key = format!("{key}-w2");
            client
                .put(key.as_bytes(), b"small", &Context::default(), &w(2))
                .await
                .unwrap_or_else(|e| panic!("W=2 write {key} through node{k}: {e}"));
        }
    }

    // Space freed: redb still refuses commits after the failed one, so node3 stays degraded
    // (no reopen in place yet) ...
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(cluster.node(3).engine().stats().degraded().is_some());
    assert!(
        shown_as(&cluster, &[1, 2, 3, 4], "node3", "degraded").await,
        "node3 degraded until it restarts"
    );
    // ... and a restart clears it: up everywhere (restart waits for that), writes at W=3
    // again.
    cluster.stop(3).await.unwrap();
    cluster.restart(3).await.unwrap();
    assert_eq!(cluster.node(3).engine().stats().degraded(), None);
    assert!(shown_as(&cluster, &[1, 2, 3, 4], "node3", "up").await);
    let c3 = cluster.client(3).await.unwrap();
    c3.put(b"after-restart", b"v", &Context::default(), &w(3))
        .await
        .expect("a W=3 write through node3 after its restart");
    drop(c3);
    drop(c1);
    cluster.shutdown().await;
}
