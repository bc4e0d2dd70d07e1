//! A load generator over the client library: concurrent workers issue reads and context-carrying
//! writes, latencies go into HDR histograms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::Context;
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::{Client, ClientError};

/// Most concurrent workers one benchmark runs.
pub const BENCH_CLIENTS_MAX: usize = 4096;
/// Highest `--rate`, operations per second over all workers.
pub const BENCH_RATE_MAX: f64 = 10_000_000.0;
/// Highest latency the histograms record; slower operations are clamped to it.
pub const BENCH_LATENCY_MAX: Duration = Duration::from_secs(60);

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys (Zipf with this exponent, YCSB uses 0.99).
    Zipfian(f64),
    /// Each operation takes the next key in turn over all workers (`bench:0`, `bench:1`, ...),
    /// wrapping at `keys`: `ops == keys` writes every key once, to load a store.
    Sequential,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Quorum choices for reads.
    pub read_opts: cairn_proto::ReadOptions,
    /// Quorum choices for writes.
    pub write_opts: cairn_proto::WriteOptions,
    /// Concurrent workers.
    pub clients: usize,
    /// Stop after this many operations in total…
    pub ops: Option<u64>,
    /// …or after this long (whichever is set; both: whichever comes first).
    pub duration: Option<Duration>,
    /// Bytes per written value.
    pub value_size: usize,
    /// Number of distinct keys.
    pub keys: u64,
    /// Fraction of operations that are reads, 0.0..=1.0.
    pub read_ratio: f64,
    /// Key choice.
    pub distribution: KeyDistribution,
    /// Seed for the workers' random choices.
    pub seed: u64,
    /// Operations per second over all workers, each worker issuing its share at even
    /// intervals; `None` issues the next operation as soon as the last is answered. With a
    /// rate, a latency counts from when its operation was due, so a backlog behind a slow
    /// answer shows in the percentiles (no coordinated omission).
    pub rate: Option<f64>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A parameter is out of range.
    #[error("invalid benchmark: {0}")]
    Invalid(String),
    /// A worker task panicked or was cancelled.
    #[error("benchmark worker failed: {0}")]
    WorkerFailed(String),
}

/// What a benchmark measured.
#[derive(Debug)]
pub struct BenchReport {
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed, with the first error seen.
    pub errors: u64,
    /// First error, for the report.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency of successful reads, microseconds.
    pub reads: Histogram<u64>,
    /// Latency of successful writes, microseconds.
    pub writes: Histogram<u64>,
    /// Siblings returned by the successful reads, summed: divided by the reads, how many
    /// values a read carried (more than one when writes were concurrent).
    pub read_siblings: u64,
}

impl BenchReport {
    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Siblings per successful read; `None` without reads.
    pub fn siblings_per_read(&self) -> Option<f64> {
        (!self.reads.is_empty()).then(|| self.read_siblings as f64 / self.reads.len() as f64)
    }

    /// Reads and writes together.
    pub fn all(&self) -> Histogram<u64> {
        let mut all = self.reads.clone();
        all.add(&self.writes).expect("same bounds");
        all
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, BENCH_LATENCY_MAX.as_micros() as u64, 3).expect("valid bounds")
}

impl BenchConfig {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        if self.clients == 0 || self.clients > BENCH_CLIENTS_MAX {
            return bad(format!("--clients must be 1..={BENCH_CLIENTS_MAX}"));
        }
        if self.ops.is_none() && self.duration.is_none() {
            return bad("give --ops or --duration".into());
        }
        if self.keys == 0 {
            return bad("--keys must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return bad("--read-ratio must be between 0 and 1".into());
        }
        if self.value_size > cairn_proto::limits::VALUE_BYTES_MAX {
            return bad(format!(
                "--value-size must be at most VALUE_BYTES_MAX ({})",
                cairn_proto::limits::VALUE_BYTES_MAX
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= BENCH_RATE_MAX) {
                return bad(format!(
                    "--rate must be above 0 and at most {BENCH_RATE_MAX}"
                ));
            }
        }
        if let KeyDistribution::Zipfian(s) = self.distribution {
            if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return bad("zipfian exponent must be positive".into());
            }
        }
        Ok(())
    }
}

/// Progress shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct BenchProgress {
    /// Operations finished (ok or not).
    pub done: AtomicU64,
}

/// Runs the benchmark; worker `i` uses `clients[i % clients.len()]`.
pub async fn run(
    clients: Vec<Arc<Client>>,
    cfg: BenchConfig,
    progress: Arc<BenchProgress>,
) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    if clients.is_empty() {
        return Err(BenchError::Invalid("no node to send to".into()));
    }
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let issued = Arc::new(AtomicU64::new(0));
    let next_key = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'x'; cfg.value_size];
    // The context last seen for each key, by any worker: writes carry it, as the threads of an
    // application that share what they read would, so a key's siblings stay bounded by the
    // writes really in flight together. (Per-worker contexts made every worker's first write
    // to a key blind: with 64 workers a key held about one sibling per worker that wrote it,
    // and reads then moved ten 1 KiB values instead of one.)
    let contexts: Arc<Mutex<HashMap<u64, Context>>> = Arc::default();
    let mut workers = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let client = clients[i % clients.len()].clone();
        let cfg = cfg.clone();
        let next_key = next_key.clone();
        let (issued, stop, progress, value, contexts) = (
            issued.clone(),
            stop.clone(),
            progress.clone(),
            value.clone(),
            contexts.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(i as u64));
            // With a rate: this worker's interval, its first operation staggered by its index
            // so the workers' operations interleave evenly.
            let interval = cfg
                .rate
                .map(|rate| Duration::from_secs_f64(cfg.clients as f64 / rate));
            let mut due = interval.map(|iv| started + iv.mul_f64(i as f64 / cfg.clients as f64));
            let zipf = match cfg.distribution {
                KeyDistribution::Zipfian(s) => Some(Zipf::new(cfg.keys, s).expect("validated")),
                KeyDistribution::Uniform | KeyDistribution::Sequential => None,
            };
            let (mut reads, mut writes) = (histogram(), histogram());
            let mut read_siblings = 0u64;
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Some(max) = cfg.ops {
                    if issued.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                }
                let k = match (&zipf, cfg.distribution) {
                    (Some(z), _) => z.sample(&mut rng) as u64 - 1,
                    (None, KeyDistribution::Sequential) => {
                        next_key.fetch_add(1, Ordering::Relaxed) % cfg.keys
                    }
                    (None, _) => rng.gen_range(0..cfg.keys),
                };
                let key = format!("bench:{k}").into_bytes();
                let read = rng.gen_bool(cfg.read_ratio);
                let t = match (&mut due, interval) {
                    (Some(due), Some(iv)) => {
                        tokio::time::sleep_until((*due).into()).await;
                        let t = *due;
                        *due += iv;
                        t
                    }
                    _ => Instant::now(),
                };
                let result: Result<_, ClientError> = if read {
                    client.get(&key, &cfg.read_opts).await
                } else {
                    let ctx = contexts
                        .lock()
                        .expect("contexts lock")
                        .get(&k)
                        .cloned()
                        .unwrap_or_default();
                    client.put(&key, &value, &ctx, &cfg.write_opts).await
                };
                let micros =
                    (t.elapsed().as_micros() as u64).clamp(1, BENCH_LATENCY_MAX.as_micros() as u64);
                match result {
                    Ok(reply) => {
                        if read {
                            read_siblings += reply.siblings.len() as u64;
                        }
                        contexts
                            .lock()
                            .expect("contexts lock")
                            .insert(k, reply.context);
                        ok += 1;
                        let h = if read { &mut reads } else { &mut writes };
                        h.record(micros).expect("clamped into bounds");
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            (reads, writes, read_siblings, ok, errors, first_error)
        }));
    }
    let mut report = BenchReport {
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        reads: histogram(),
        writes: histogram(),
        read_siblings: 0,
    };
    for w in workers {
        let (reads, writes, read_siblings, ok, errors, first_error) = match w.await {
            Ok(r) => r,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(BenchError::WorkerFailed(e.to_string()));
            }
        };
        report.reads.add(&reads).expect("same bounds");
        report.writes.add(&writes).expect("same bounds");
        report.read_siblings += read_siblings;
        report.ok += ok;
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
