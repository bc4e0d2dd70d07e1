//! Anti-entropy between real `cairn` processes: a node whose data directory was deleted gets
//! every key back without any client reading them, shown by `cairn status` and proved by reading
//! every key from that node alone.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Client;
use cairn_net::Identity;
use cairn_node::NodeConfig;
use cairn_proto::{Context, ReadOptions, WriteOptions};
use common::{kill, wait_for, Dev};
use rustix::process::Signal;
use serde_json::Value;

/// Keys written before node3 loses its data.
const KEYS: usize = 10_000;
/// Client requests in flight at once while writing and reading them.
const CLIENT_CONCURRENCY: usize = 32;
/// How long anti-entropy may take to bring all `KEYS` back to node3 after it restarted empty:
/// rounds every 200 ms (see `FAST_ANTI_ENTROPY`), the others see node3 up again within their
/// probes' 4 s backoff, and a repair moves hundreds of keys per batch (about 5 s on a 2-core
/// machine; the bound leaves room for a loaded CI machine).
const REPAIR_DEADLINE: Duration = Duration::from_secs(120);
/// How long the nodes may take to see a killed node down.
const DOWN_DEADLINE: Duration = Duration::from_secs(15);

/// The `[anti_entropy]` section the test gives every node: short rounds and a rate high enough
/// that 10,000 keys take seconds, still bounded.
const FAST_ANTI_ENTROPY: &str = "
[anti_entropy]
interval_ms = 200
sessions_max = 4
repair_keys_per_sec = 20000
repair_batch_keys = 256
";

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value {i} written at W=3").into_bytes()
}

fn identity(dir: &Path) -> Identity {
    Identity::load(
        &dir.join("ca.pem"),
        &dir.join("client/client.pem"),
        &dir.join("client/client.key"),
    )
    .expect("client identity")
}

fn addr(dir: &Path, node: &str) -> SocketAddr {
    NodeConfig::load(&dir.join(node).join("node.toml"))
        .expect("node config")
        .listen
}

/// Runs `op(i)` for every key with `CLIENT_CONCURRENCY` requests in flight over one client.
async fn for_every_key<F, Fut>(client: Arc<Client>, op: F)
where
    F: Fn(Arc<Client>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CLIENT_CONCURRENCY {
        let client = client.clone();
        let op = op.clone();
        tasks.spawn(async move {
            for i in (worker..KEYS).step_by(CLIENT_CONCURRENCY) {
                op(client.clone(), i).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client task panicked");
    }
}

/// node3's own anti-entropy counters, as `cairn status --json` asked through node3 shows them.
fn node3_anti_entropy(dev: &Dev) -> Value {
    let status = dev.status("node3");
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == "node3")
        .expect("node3 in status")["anti_entropy"]
        .clone()
}

#[test]
fn a_node_that_lost_its_data_directory_gets_every_key_back_through_anti_entropy() {
    let dir = tempfile::tempdir().unwrap();
    // The first run lays out the cluster; every node then gets fast anti-entropy rounds.
    Dev::start(dir.path(), None).stop();
    for node in ["node1", "node2", "node3"] {
        let path = dir.path().join(node).join("node.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(FAST_ANTI_ENTROPY);
        std::fs::write(&path, config).unwrap();
    }
    let dev = Dev::start(dir.path(), None);
    let identity = identity(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let written = Instant::now();
    runtime.block_on(async {
        let client = Arc::new(
            Client::connect(addr(dir.path(), "node1"), &identity)
                .await
                .unwrap(),
        );
        for_every_key(client, |client, i| async move {
            let w3 = WriteOptions {
                w: Some(3),
                ..Default::default()
            };
            client
                .put(&key(i), &value(i), &Context::empty(), &w3)
                .await
                .unwrap_or_else(|e| panic!("put key {i}: {e}"));
        })
        .await;
    });
    eprintln!(
        "{KEYS} keys written at W=3 in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    assert_eq!(node3_anti_entropy(&dev)["keys"], KEYS as u64);

    // node3 loses everything. Nobody holds hints for it: every write reached all three nodes.
    kill(dev.node_pid("node3"), Signal::KILL);
    dev.wait_member("node1", "node3", "down", DOWN_DEADLINE);
    std::fs::remove_dir_all(dir.path().join("node3/data")).unwrap();
    let _node3 = dev.restart_node("node3");
    let restarted = Instant::now();

    // No client reads a key from here on until node3 is alone: only anti-entropy can repair.
    let ae = wait_for("node3 to hold every key again", REPAIR_DEADLINE, || {
        let ae = node3_anti_entropy(&dev);
        (ae["keys"] == KEYS as u64).then_some(ae)
    });
    eprintln!(
        "anti-entropy brought {KEYS} keys back to node3 in {:.1} s; node3 reports {ae}",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(ae["enabled"], true, "{ae}");
    assert_eq!(ae["trees_ready"], true, "{ae}");
    // Each key was repaired at least once, counted by the initiator once it saw the repair
    // succeed: a moment after the key landed, so the counters may still be catching up.
    let repaired_by = wait_for("every repair to be counted", DOWN_DEADLINE, || {
        let counted: u64 = ["node1", "node2", "node3"]
            .iter()
            .map(|n| {
                dev.status(n)["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == *n)
                    .unwrap()["anti_entropy"]["keys_repaired"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        (counted >= KEYS as u64).then_some(counted)
    });
    eprintln!("keys repaired, counted by the initiators: {repaired_by}");
    let text = dev.run(&["status", "--node", "node3"]).ok();
    assert!(
        text.lines()
            .any(|l| l.starts_with("NAME") && l.contains("ANTI-ENTROPY")),
        "{text}"
    );

    // node3 alone answers every key from its own store.
    for node in ["node1", "node2"] {
        kill(dev.node_pid(node), Signal::KILL);
    }
    // Reads go to every replica node3 believes up and wait for them (for read repair), so
    // node3 must first notice the others are gone, as a coordinator whose replicas die does.
    wait_for("node3 to see node1 and node2 down", DOWN_DEADLINE, || {
        let status = dev.status("node3");
        let members = status["members"].as_array().unwrap().clone();
        members
            .iter()
            .filter(|m| m["name"] != "node3")
            .all(|m| m["status"] == "down")
            .then_some(())
    });
    let read = Instant::now();
    runtime.block_on(async {
        let client = Arc::new(
            Client::connect(addr(dir.path(), "node3"), &identity)
                .await
                .unwrap(),
        );
        for_every_key(client, |client, i| async move {
            let r1 = ReadOptions {
                r: Some(1),
                ..Default::default()
            };
            let reply = client
                .get(&key(i), &r1)
                .await
                .unwrap_or_else(|e| panic!("get key {i} from node3 alone: {e}"));
            let values: Vec<&[u8]> = reply.siblings.iter().map(|s| &s.value[..]).collect();
            assert_eq!(values, [&value(i)[..]], "key {i} on node3 alone");
        })
        .await;
    });
    eprintln!(
        "{KEYS} keys read from node3 alone in {:.1} s",
        read.elapsed().as_secs_f64()
    );
}
