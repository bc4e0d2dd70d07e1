//! A real full disk under a node's data directory: a small tmpfs the test mounts (the test
//! machines run tests as root) and removes. Writes fail with an error saying the disk is full,
//! the engine reports itself degraded, nothing acknowledged is lost, and once space is freed a
//! restarted engine (reopening redb, which refuses commits after a failed one) writes again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cairn_node::engine::{Engine, EngineError, Write};
use cairn_node::store::RedbStore;
use cairn_node::version::{Payload, VClock};
use cairn_proto::{ErrorReply, NodeId};
use rand::{rngs::StdRng, SeedableRng};

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
        let _ = Command::new("umount").arg(&self.dir).status();
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
