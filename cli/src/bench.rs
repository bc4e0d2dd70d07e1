//! `cairn bench`: a load generator over `cairn_client::bench`, with a progress bar while it runs
//! and throughput and latency percentiles (HDR histograms) at the end.

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_client::bench::{
    BenchConfig, BenchError, BenchProgress, BenchReport, KeyDistribution, BENCH_CLIENTS_MAX,
};
use cairn_client::Client;
use cairn_proto::{ReadOptions, WriteOptions};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::limits::{BENCH_DURATION_DEFAULT, BENCH_PROGRESS_INTERVAL};
use crate::target::{parse_seconds, ClientArgs, Target};
use crate::{Outcome, UsageError};

/// The Zipf exponent of `--distribution zipfian` (YCSB's).
const ZIPF_EXPONENT: f64 = 0.99;

/// `cairn bench`
#[derive(Debug, Args)]
#[command(after_help = "\
Keys are bench:0 .. bench:K-1. Reads use R, writes use W and carry the context last seen for
the key by any worker, as the threads of an application that share what they read would, so
siblings come only from writes in flight together (the report shows siblings per read). Latencies are of successful operations; --json prints
them in microseconds. A progress bar runs on stderr when it is a terminal (not with --json).
Exit status 3 when no operation succeeded.")]
pub struct BenchArgs {
    /// Concurrent workers, spread evenly over the nodes.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CLIENTS_MAX as i64))]
    clients: u32,
    /// Stop after this many operations in total.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    ops: Option<u64>,
    /// Stop after this many seconds (with --ops too: whichever comes first) [default: 10 when
    /// --ops is not given].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Bytes per written value.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, value_name = "K", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Fraction of operations that are reads, from 0 to 1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5, value_parser = parse_ratio)]
    read_ratio: f64,
    /// How keys are chosen: every key equally likely, a few hot ones (Zipf, exponent 0.99), or
    /// each in turn (`--ops K --keys K` writes every key once: a load).
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Replies each read waits for [default: the node's, a majority of N].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u8).range(1..))]
    r: Option<u8>,
    /// Durable acks each write waits for [default: the node's, a majority of N].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u8).range(1..))]
    w: Option<u8>,
    /// Operations per second over all workers, each issuing its share at even intervals
    /// [default: as fast as answers come]. Latencies then count from when an operation was
    /// due, so a backlog shows.
    #[arg(long, value_name = "OPS_PER_SEC")]
    rate: Option<f64>,
    /// Seed of the workers' random choices [default: from the clock; the report shows it].
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `--distribution`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 0.99: a few keys take most operations.
    Zipfian,
    /// Each operation takes the next key (bench:0, bench:1, ...), wrapping at --keys.
    Sequential,
}

impl Distribution {
    fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Sequential => "sequential",
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction from 0 to 1")),
    }
}

/// `cairn bench`
pub async fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let duration = match (args.ops, args.duration) {
        (None, None) => Some(BENCH_DURATION_DEFAULT),
        (_, d) => d,
    };
    let cfg = BenchConfig {
        read_opts: ReadOptions {
            r: args.r,
            timeout_ms: args.client.timeout_ms(),
            ..ReadOptions::default()
        },
        write_opts: WriteOptions {
            w: args.w,
            timeout_ms: args.client.timeout_ms(),
            ..WriteOptions::default()
        },
        clients: args.clients as usize,
        ops: args.ops,
        duration,
        value_size: args.value_size,
        keys: args.keys,
        read_ratio: args.read_ratio,
        rate: args.rate,
        distribution: match args.distribution {
            Distribution::Uniform => KeyDistribution::Uniform,
            Distribution::Zipfian => KeyDistribution::Zipfian(ZIPF_EXPONENT),
            Distribution::Sequential => KeyDistribution::Sequential,
        },
        seed,
    };
    let (nodes, clients) = connect_all(&args.client).await?;

    let progress = Arc::new(BenchProgress::default());
    let bar = progress_bar(&cfg, args.client.json);
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        let (ops, started) = (cfg.ops, Instant::now());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BENCH_PROGRESS_INTERVAL);
            loop {
                tick.tick().await;
                let done = progress.done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let rate = format!("{:.0} ops/s", done as f64 / secs.max(f64::EPSILON));
                match ops {
                    Some(_) => {
                        bar.set_position(done);
                        bar.set_message(rate);
                    }
                    None => {
                        bar.set_position((secs * 1e3) as u64);
                        bar.set_message(format!("{done} ops, {rate}"));
                    }
                }
            }
        })
    };
    let result = cairn_client::bench::run(clients.clone(), cfg.clone(), progress).await;
    ticker.abort();
    bar.finish_and_clear();
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
        }
    }
    let report = match result {
        Ok(report) => report,
        Err(e @ BenchError::Invalid(_)) => return Err(UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };

    let summary = Summary::new(&nodes, &cfg, args.distribution, &report);
    if args.client.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.text(&cfg));
    }
    if report.ok == 0 && report.errors > 0 {
        bail!(
            "no operation succeeded; the first error: {}",
            report.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(Outcome::Done)
}

/// A seed that differs from run to run.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One connection per node: every node of the cluster directory that answers (a warning names
/// those that do not), or only --node.
async fn connect_all(args: &ClientArgs) -> anyhow::Result<(Vec<String>, Vec<Arc<Client>>)> {
    let identity = args.identity()?;
    let targets = args.targets()?;
    let attempts = targets.iter().map(|target| {
        let (target, identity, timeout) = (target.clone(), identity.clone(), args.timeout());
        tokio::spawn(async move {
            let result = async {
                let client = target.connect(&identity, timeout).await?;
                client.ping().await.map(|name| (name, client))
            }
            .await;
            (target, result)
        })
    });
    let attempts: Vec<_> = attempts.collect();
    let (mut names, mut clients, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for attempt in attempts {
        let (target, result): (Target, _) = attempt.await?;
        match result {
            Ok((name, mut client)) => {
                client.set_timeout(args.request_timeout());
                names.push(name);
                clients.push(Arc::new(client));
            }
            Err(e) => failures.push(format!("{}: {}", target.label(), target.explain(&e))),
        }
    }
    if clients.is_empty() {
        bail!(
            "no node to benchmark: {}",
            failures.first().map_or("none listed", String::as_str)
        );
    }
    for failure in &failures {
        eprintln!("warning: leaving out {failure}");
    }
    Ok((names, clients))
}

fn progress_bar(cfg: &BenchConfig, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (len, template) = match (cfg.ops, cfg.duration) {
        (Some(ops), _) => (
            ops,
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} ops, {msg}",
        ),
        (None, d) => (
            d.unwrap_or(BENCH_DURATION_DEFAULT).as_millis() as u64,
            "{elapsed_precise} [{bar:40}] {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Latency percentiles of one kind of operation, microseconds; `None` when there were none.
#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50: Option<u64>,
    p90: Option<u64>,
    p99: Option<u64>,
    #[serde(rename = "p99.9")]
    p99_9: Option<u64>,
    max: Option<u64>,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        Latency {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            max: (!h.is_empty()).then(|| h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Latencies {
    read: Latency,
    write: Latency,
    all: Latency,
}

/// What a benchmark reports; `--json` prints it as is.
#[derive(Debug, Serialize)]
struct Summary {
    nodes: Vec<String>,
    clients: usize,
    keys: u64,
    distribution: &'static str,
    value_size: usize,
    read_ratio: f64,
    /// The `--rate` asked for, operations per second; `None`: as fast as answers came.
    rate: Option<f64>,
    r: Option<u8>,
    w: Option<u8>,
    seed: u64,
    ops: u64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    throughput_ops_s: f64,
    /// Values per successful read (1 when no writes were concurrent); `None` without reads.
    siblings_per_read: Option<f64>,
    latency_us: Latencies,
}

impl Summary {
    fn new(
        nodes: &[String],
        cfg: &BenchConfig,
        distribution: Distribution,
        report: &BenchReport,
    ) -> Summary {
        let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
        Summary {
            nodes: nodes.to_vec(),
            clients: cfg.clients,
            keys: cfg.keys,
            distribution: distribution.name(),
            value_size: cfg.value_size,
            read_ratio: cfg.read_ratio,
            rate: cfg.rate,
            r: cfg.read_opts.r,
            w: cfg.write_opts.w,
            seed: cfg.seed,
            ops: report.ok + report.errors,
            ok: report.ok,
            errors: report.errors,
            first_error: report.first_error.clone(),
            elapsed_s: round(report.elapsed.as_secs_f64(), 3),
            throughput_ops_s: round(report.throughput(), 1),
            siblings_per_read: report.siblings_per_read().map(|s| round(s, 2)),
            latency_us: Latencies {
                read: Latency::of(&report.reads),
                write: Latency::of(&report.writes),
                all: Latency::of(&report.all()),
            },
        }
    }

    fn text(&self, cfg: &BenchConfig) -> String {
        let quorum = |q: Option<u8>| q.map_or_else(|| "default".to_owned(), |q| q.to_string());
        let mut out = format!(
            "bench: {} node{} ({}), {} clients, {} keys {}, {}-byte values, {}% reads, r={} w={}, seed {}\n",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            self.nodes.join(" "),
            self.clients,
            self.keys,
            self.distribution,
            self.value_size,
            (cfg.read_ratio * 100.0).round(),
            quorum(self.r),
            quorum(self.w),
            self.seed,
        );
        out.push_str(&format!(
            "{} ops in {:.2} s: {:.1} ops/s, {} errors{}\n",
            self.ok,
            self.elapsed_s,
            self.throughput_ops_s,
            self.errors,
            self.siblings_per_read
                .map_or_else(String::new, |s| format!(", {s:.2} siblings per read"))
        ));
        out.push_str(&format!(
            "{:<10}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            "latency ms", "count", "p50", "p90", "p99", "p99.9", "max"
        ));
        let ms = |us: Option<u64>| {
            us.map_or_else(|| "-".to_owned(), |us| format!("{:.2}", us as f64 / 1e3))
        };
        for (name, l) in [
            ("read", &self.latency_us.read),
            ("write", &self.latency_us.write),
            ("all", &self.latency_us.all),
        ] {
            out.push_str(&format!(
                "{:<10}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
                name,
                l.count,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9),
                ms(l.max)
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_fractions() {
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }

    #[test]
    fn latencies_of_no_operations_are_absent() {
        let empty = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let l = Latency::of(&empty);
        assert_eq!((l.count, l.p50, l.max), (0, None, None));
        let mut h = empty.clone();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50, Some(500));
        assert_eq!(l.max, Some(1000));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["p99.9"], 999);
    }
}
