//! The load generator (`cairn_client::bench`) against an in-process cluster: its workers share
//! the contexts they see, so a key's siblings come only from writes in flight together, and
//! the report counts the siblings its reads returned; a sequential load writes every key once;
//! a rate paces the workers.

use std::sync::Arc;
use std::time::Duration;

use cairn_client::bench::{BenchConfig, BenchProgress, KeyDistribution};
use cairn_tests::cluster::{r, w, TestCluster};

/// Workers, and keys few enough that every worker writes every key many times.
const WORKERS: usize = 8;
const KEYS: u64 = 16;
const OPS: u64 = 1_600;

/// A 3-node cluster, up, and a client of each node.
async fn cluster_and_clients() -> (TestCluster, Vec<Arc<cairn_client::Client>>) {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    cluster.wait_all_up().await.unwrap();
    let mut clients = Vec::new();
    for k in 1..=3 {
        clients.push(Arc::new(cluster.client(k).await.unwrap()));
    }
    (cluster, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_contexts_so_keys_keep_few_siblings() {
    let (cluster, clients) = cluster_and_clients().await;
    let cfg = BenchConfig {
        read_opts: r(2),
        write_opts: w(2),
        clients: WORKERS,
        ops: Some(OPS),
        duration: Some(Duration::from_secs(120)),
        value_size: 64,
        keys: KEYS,
        read_ratio: 0.5,
        distribution: KeyDistribution::Uniform,
        seed: 11,
        rate: None,
    };
    let report = cairn_client::bench::run(clients, cfg, Arc::new(BenchProgress::default()))
        .await
        .unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.ok, OPS);
    let per_read = report.siblings_per_read().expect("the run read");
    // Each worker writes each key about 50 times. With contexts kept per worker, its first
    // write to a key was blind and each key ended up holding a sibling per worker (about 8,
    // and reads averaged several); shared, a write supersedes everything read or written
    // before it, and only writes in flight together (at most WORKERS) leave siblings behind.
    assert!(
        per_read < 2.0,
        "{per_read:.2} siblings per read: the workers' writes do not carry what others saw"
    );
    // And the count is what the reads returned: afterwards, every key holds a value.
    let client = cluster.client(1).await.unwrap();
    for k in 0..KEYS {
        let reply = client
            .get(format!("bench:{k}").as_bytes(), &r(3))
            .await
            .unwrap();
        assert!(!reply.siblings.is_empty(), "bench:{k} has no value");
    }
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_load_writes_every_key_once() {
    const LOAD_KEYS: u64 = 200;
    let (cluster, clients) = cluster_and_clients().await;
    let cfg = BenchConfig {
        read_opts: r(2),
        write_opts: w(3),
        clients: WORKERS,
        ops: Some(LOAD_KEYS),
        duration: Some(Duration::from_secs(120)),
        value_size: 16,
        keys: LOAD_KEYS,
        read_ratio: 0.0,
        distribution: KeyDistribution::Sequential,
        seed: 3,
        rate: None,
    };
    let report = cairn_client::bench::run(clients, cfg, Arc::new(BenchProgress::default()))
        .await
        .unwrap();
    assert_eq!(
        (report.ok, report.errors),
        (LOAD_KEYS, 0),
        "{:?}",
        report.first_error
    );
    // Every key once: each holds one value (a key written twice by two workers that had not
    // seen each other's write would hold two), and the next key was never written.
    let client = cluster.client(2).await.unwrap();
    for k in 0..LOAD_KEYS {
        let reply = client
            .get(format!("bench:{k}").as_bytes(), &r(3))
            .await
            .unwrap();
        assert_eq!(reply.siblings.len(), 1, "bench:{k}");
    }
    let past = client
        .get(format!("bench:{LOAD_KEYS}").as_bytes(), &r(3))
        .await
        .unwrap();
    assert!(past.siblings.is_empty(), "a key past --keys was written");
    drop(client);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_paces_the_workers() {
    let (cluster, clients) = cluster_and_clients().await;
    // 20 operations at 10 per second over 2 workers: each worker's 10 are due 0.2 s apart,
    // the second worker's 0.1 s after the first's, so the last is due at 1.9 s (unpaced, they
    // take a few milliseconds).
    let cfg = BenchConfig {
        read_opts: r(1),
        write_opts: w(1),
        clients: 2,
        ops: Some(20),
        duration: Some(Duration::from_secs(120)),
        value_size: 16,
        keys: 10,
        read_ratio: 0.5,
        distribution: KeyDistribution::Uniform,
        seed: 5,
        rate: Some(10.0),
    };
    let report = cairn_client::bench::run(clients, cfg.clone(), Arc::new(BenchProgress::default()))
        .await
        .unwrap();
    assert_eq!(
        (report.ok, report.errors),
        (20, 0),
        "{:?}",
        report.first_error
    );
    assert!(
        report.elapsed >= Duration::from_millis(1900),
        "20 operations at 10/s took only {:?}",
        report.elapsed
    );
    let bad = BenchConfig {
        rate: Some(0.0),
        ..cfg
    };
    let refused = cairn_client::bench::run(Vec::new(), bad, Arc::new(BenchProgress::default()))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--rate"), "{refused}");
    cluster.shutdown().await;
}
