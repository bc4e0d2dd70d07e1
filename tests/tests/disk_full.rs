//! A real full disk under a node's data directory: a small tmpfs the test mounts (the test
//! machines run tests as root) and removes. Writes fail with an error saying the disk is full,
//! the engine reports itself degraded, nothing acknowledged is lost, and once space is freed
//! the engine recovers by itself, without a restart (its writer's probe reopens redb, which
//! refuses commits after a failed one, and replays the log), and writes again; a restarted one
//! does too. In a cluster, the node with the full disk is shown degraded at every node and
//! routed around until space is freed, then up again, never restarted.

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
    open_with_store(dir).0
}

/// The engine and its store (to ask the store how large its log is).
fn open_with_store(dir: &Path) -> (Engine, Arc<RedbStore>) {
    let store = Arc::new(RedbStore::open(dir).unwrap());
    let engine = Engine::open(
        store.clone(),
        NodeId::from_name("node1"),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    (engine, store)
}

/// Fills the disk under `engine` with writes of 256 KiB until one is refused; returns the keys
/// acknowledged before and the refusal.
async fn fill(engine: &Engine, max: usize) -> (Vec<Vec<u8>>, String) {
    let mut acknowledged = Vec::new();
    for i in 0..max {
        let key = format!("k{i}").into_bytes();
        match engine.apply(key.clone(), put(i)).await {
            Ok(_) => acknowledged.push(key),
            Err(e @ EngineError::Store(_)) => {
                return (acknowledged, ErrorReply::from(e).to_string())
            }
            Err(other) => panic!("write {i}: {other}"),
        }
    }
    panic!("the disk did not fill within {max} writes of 256 KiB");
}

/// Free bytes on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("running df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Issue 12: once space is freed the engine recovers in place — no restart — and nothing it
/// acknowledged is lost. Fails without the writer's probe: the store refuses every commit after
/// the failed one, so the engine stays degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_recovers_in_place_once_space_is_freed_and_loses_nothing_acknowledged() {
    let fs = Tmpfs::mount("64m");
    let data = fs.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 48 << 20]).unwrap();
    let (engine, store) = open_with_store(&data);
    let (acknowledged, refusal) = fill(&engine, 200).await;
    assert!(refusal.contains("disk of this node is full"), "{refusal}");
    assert!(!acknowledged.is_empty());
    assert!(engine.stats().degraded().is_some());
    // Still full: probes fail, it stays degraded (give it several attempts).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        engine.stats().degraded().is_some(),
        "recovered on a full disk"
    );
    let log = store.log_bytes();

    std::fs::remove_file(&filler).unwrap();
    let free = free_bytes(&fs.dir);
    eventually(
        "the engine to recover without a restart",
        Duration::from_secs(30),
        || async { engine.stats().degraded().is_none() },
    )
    .await;
    eprintln!(
        "recovered in place with {} MiB free for a {} MiB log",
        free >> 20,
        log >> 20
    );
    assert_eq!(
        engine
            .stats()
            .recoveries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
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
        .expect("writes after space was freed, without a restart");
    // And what it holds now survives a restart too.
    drop(engine);
    drop(store);
    eprintln!(
        "before the restart: {} MiB free, redb {} MiB, log {} KiB",
        free_bytes(&fs.dir) >> 20,
        std::fs::metadata(data.join("cairn.redb")).unwrap().len() >> 20,
        std::fs::metadata(data.join("cairn.log")).unwrap().len() >> 10
    );
    let engine = open(&data);
    for key in acknowledged.iter().chain([&b"after".to_vec()]) {
        assert_eq!(engine.get(key).unwrap().live().len(), 1);
    }
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
/// them succeed at W=3 (a fallback takes node3's place) and W=2. Space freed, node3 recovers
/// by itself, without a restart (its writer reopens redb and replays the log): it is up
/// everywhere again, every key it held is still there, and it writes at W=3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_full_disk_is_shown_degraded_and_routed_around_until_space_is_freed() {
    // 16 MiB free to fill, and much more once the filler is gone: with 48 MiB freed (the test
    // above) node3's restart failed with ENOSPC, its redb file having grown to 35 MiB next to a
    // 16 MiB log.
    let fs = Tmpfs::mount("160m");
    let data = fs.dir.join("data");
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 144 << 20]).unwrap();
    let cluster = TestCluster::start_with(4, 3, 16, |config| {
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

    // What node3 itself holds (acknowledged to its coordinators) before space is freed.
    let held: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("fill-{i}").into_bytes())
        .filter(|k| !cluster.node(3).engine().get(k).unwrap().is_empty())
        .collect();
    assert!(
        !held.is_empty(),
        "node3 stored some writes before its disk filled"
    );

    // Space freed: node3 recovers in place, is shown up everywhere again, and nothing it held
    // is lost.
    std::fs::remove_file(&filler).unwrap();
    eventually("node3 to recover without a restart", DEADLINE, || async {
        cluster.node(3).engine().stats().degraded().is_none()
    })
    .await;
    eventually("node3 shown up everywhere again", DEADLINE, || {
        shown_as(&cluster, &[1, 2, 3, 4], "node3", "up")
    })
    .await;
    for key in &held {
        assert!(
            !cluster.node(3).engine().get(key).unwrap().is_empty(),
            "node3 lost {}",
            String::from_utf8_lossy(key)
        );
    }
    let c3 = cluster.client(3).await.unwrap();
    let mut written_here = 0;
    for i in 0..8 {
        let key = format!("after-recovery-{i}");
        c3.put(key.as_bytes(), b"v", &Context::default(), &w(3))
            .await
            .expect("a W=3 write through node3 after it recovered, not restarted");
        if !cluster
            .node(3)
            .engine()
            .get(key.as_bytes())
            .unwrap()
            .is_empty()
        {
            written_here += 1;
        }
    }
    assert!(written_here > 0, "node3 stores writes again");
    drop(c3);
    drop(c1);
    cluster.shutdown().await;
}
