//! Prometheus metrics: request counters and latency histograms recorded where requests enter the
//! node, storage commits recorded where the writer commits, and — read at scrape time from the
//! status the node already keeps — hints, anti-entropy and gossip membership.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_proto::{ErrorReply, Request, Response, StatusReply};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::EngineStats;
use crate::limits::WRITE_BATCH_MAX;

/// Request latency buckets, seconds: from a cached local read to a write that waited for a
/// timeout.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Writes per group commit, up to `WRITE_BATCH_MAX`.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const _: () = assert!(WRITE_BATCH_MAX <= 512);

/// Statuses a member can have in `status`; each is rendered (zero when nobody has it) so a
/// dashboard's series do not come and go.
const MEMBER_STATUSES: &[&str] = &["joining", "up", "down", "leaving", "left"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder the first time a node starts (every node of a process
/// shares it; a deployment runs one node per process) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("cairn_storage_batch_writes".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed; /metrics shows only scrape-time values"
            );
        }
        describe();
        // Registered at zero, so a dashboard sees the series before the first event.
        counter!("cairn_forwards_total").absolute(0);
        counter!("cairn_hints_delivered_total").absolute(0);
        counter!("cairn_copies_dropped_total").absolute(0);
        for op in ["get", "put", "delete"] {
            counter!("cairn_quorum_failures_total", "op" => op).absolute(0);
        }
        handle
    })
}

fn describe() {
    describe_counter!(
        "cairn_requests_total",
        "Client requests answered, by front end, operation and outcome."
    );
    describe_histogram!(
        "cairn_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer, by front end, operation and outcome."
    );
    describe_counter!(
        "cairn_quorum_failures_total",
        "Gets, puts and deletes that failed because too few replicas answered, by operation."
    );
    describe_counter!(
        "cairn_forwards_total",
        "Client requests this node forwarded to a replica of their key."
    );
    describe_counter!(
        "cairn_merges_over_client_limits_total",
        "Merges from peers accepted although they leave a key over a client limit (siblings, \
         version vector or bytes), by outcome: accepted (within the hard limits) or refused."
    );
    describe_counter!(
        "cairn_hints_delivered_total",
        "Hints handed to their target node after it came back."
    );
    describe_counter!(
        "cairn_copies_dropped_total",
        "Keys this node dropped by compare-and-delete because it no longer replicates them \
         (a fallback's copy after its hint was delivered)."
    );
    describe_counter!(
        "cairn_storage_commits_total",
        "Write transactions the storage engine committed (group commits)."
    );
    describe_histogram!(
        "cairn_storage_commit_seconds",
        metrics::Unit::Seconds,
        "Time one commit took, fsync included."
    );
    describe_histogram!(
        "cairn_storage_batch_writes",
        metrics::Unit::Count,
        "Writes folded into one commit."
    );
    describe_gauge!(
        "cairn_connections_open",
        "Client connections open now, by front end."
    );
}

/// The operation a request names, as a metric label.
pub fn op(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Get { .. } => "get",
        Request::Put { .. } => "put",
        Request::Delete { .. } => "delete",
        Request::Status => "status",
        Request::Ring => "ring",
        Request::Join { .. } => "join",
        Request::Leave { .. } => "leave",
        Request::Remove { .. } => "remove",
        Request::Replace { .. } => "replace",
        Request::LayoutForce { .. } => "layout_force",
        Request::Peer(_) => "peer",
    }
}

/// How a request ended, as a metric label.
pub fn outcome(resp: &Response) -> &'static str {
    match resp {
        Response::Value(v) if v.siblings.is_empty() => "not_found",
        Response::Error(e) => error_kind(e),
        _ => "ok",
    }
}

fn error_kind(e: &ErrorReply) -> &'static str {
    match e {
        ErrorReply::Limit(_) => "limit",
        ErrorReply::BadContext { .. } => "bad_context",
        ErrorReply::Malformed { .. } => "malformed",
        ErrorReply::UnsupportedVersion { .. } => "unsupported_version",
        ErrorReply::Storage { .. } => "storage",
        ErrorReply::Overloaded { .. } => "overloaded",
        ErrorReply::ShuttingDown => "shutting_down",
        ErrorReply::QuorumNotReached { .. } => "quorum_not_reached",
        ErrorReply::BadOptions { .. } => "bad_options",
        ErrorReply::Unreachable { .. } => "unreachable",
        ErrorReply::Forbidden { .. } => "forbidden",
        ErrorReply::NoRing { .. } => "no_ring",
        ErrorReply::Membership { .. } => "membership",
        ErrorReply::Refused { .. } => "refused",
    }
}

/// Records one answered request at the front end it came through (`quic`, `resp`, `http`).
pub fn record_request(frontend: &'static str, op: &'static str, resp: &Response, started: Instant) {
    let outcome = outcome(resp);
    let labels = [("frontend", frontend), ("op", op), ("outcome", outcome)];
    counter!("cairn_requests_total", &labels).increment(1);
    histogram!("cairn_request_duration_seconds", &labels).record(started.elapsed());
    if outcome == "quorum_not_reached" {
        counter!("cairn_quorum_failures_total", "op" => op).increment(1);
    }
}

/// Records that a client request was forwarded to a replica of its key.
pub fn record_forward() {
    counter!("cairn_forwards_total").increment(1);
}

/// Records a merge from a peer that left (`accepted`) or would have left (`refused`) a key over
/// a client limit; the key is logged where this is called.
pub fn record_merge_over_client_limits(accepted: bool) {
    let outcome = if accepted { "accepted" } else { "refused" };
    counter!("cairn_merges_over_client_limits_total", "outcome" => outcome).increment(1);
}

/// Records that a hint reached its target.
pub fn record_hint_delivered() {
    counter!("cairn_hints_delivered_total").increment(1);
}

/// Records that this node dropped its copy of a key it no longer needs.
pub fn record_copy_dropped() {
    counter!("cairn_copies_dropped_total").increment(1);
}

/// Runs the writer's commit of a batch of `writes` writes, recording its duration and size.
pub fn timed_commit<T>(writes: usize, commit: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = commit();
    histogram!("cairn_storage_commit_seconds").record(started.elapsed());
    histogram!("cairn_storage_batch_writes").record(writes as f64);
    counter!("cairn_storage_commits_total").increment(1);
    result
}

/// Counts a connection of `frontend` as open until the guard is dropped.
pub struct ConnectionGuard(&'static str);

impl ConnectionGuard {
    /// A connection of `frontend` opened.
    pub fn open(frontend: &'static str) -> ConnectionGuard {
        gauge!("cairn_connections_open", "frontend" => frontend).increment(1.0);
        ConnectionGuard(frontend)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        gauge!("cairn_connections_open", "frontend" => self.0).decrement(1.0);
    }
}

/// How often the recorder's histograms are drained when nobody scrapes, so they stay bounded.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Drains the recorder's histograms every `UPKEEP_INTERVAL`, forever.
pub async fn upkeep() {
    let handle = install();
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// The whole `/metrics` page: what was recorded, then what this node's status says now.
pub fn render(status: &StatusReply, engine: &EngineStats) -> String {
    let mut out = install().render();
    scrape_time(&mut out, status, engine);
    out
}

fn scrape_time(out: &mut String, status: &StatusReply, engine: &EngineStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {}", prom_float(*value));
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "cairn_node_info",
        "gauge",
        "Always 1; its label names the node.",
        &[(format!("{{node=\"{}\"}}", escape(&status.node)), 1.0)],
    );
    let fault = engine.degraded();
    metric(
        "cairn_storage_degraded",
        "gauge",
        "1 while this node's last commit failed (its disk refuses writes), else 0; the label says whether the disk is full.",
        &[(
            format!(
                "{{disk_full=\"{}\"}}",
                fault.as_ref().is_some_and(|f| f.disk_full)
            ),
            f64::from(u8::from(fault.is_some())),
        )],
    );
    let me = status.members.iter().find(|m| m.this_node);
    let hints = me.and_then(|m| m.hints_pending).unwrap_or(0);
    metric(
        "cairn_hints_pending",
        "gauge",
        "Hints this node holds for other nodes, not yet delivered.",
        &one(hints as f64),
    );
    let by_status: Vec<(String, f64)> = MEMBER_STATUSES
        .iter()
        .map(|s| {
            let n = status.members.iter().filter(|m| m.status == *s).count();
            (format!("{{status=\"{s}\"}}"), n as f64)
        })
        .collect();
    metric(
        "cairn_members",
        "gauge",
        "Cluster members by status, as this node sees them.",
        &by_status,
    );
    let phi: Vec<(String, f64)> = status
        .members
        .iter()
        .filter(|m| !m.this_node)
        .map(|m| (format!("{{member=\"{}\"}}", escape(&m.name)), m.phi))
        .collect();
    metric(
        "cairn_member_phi",
        "gauge",
        "The failure detector's suspicion (phi) of each other member.",
        &phi,
    );
    let ae = &status.anti_entropy;
    metric(
        "cairn_anti_entropy_exchanges_total",
        "counter",
        "Anti-entropy exchanges this node started that completed.",
        &one(ae.exchanges as f64),
    );
    metric(
        "cairn_anti_entropy_exchanges_failed_total",
        "counter",
        "Anti-entropy exchanges this node started that failed.",
        &one(ae.exchanges_failed as f64),
    );
    metric(
        "cairn_anti_entropy_keys_repaired_total",
        "counter",
        "Keys repaired by exchanges this node started.",
        &one(ae.keys_repaired as f64),
    );
    metric(
        "cairn_anti_entropy_sent_bytes_total",
        "counter",
        "Bytes of anti-entropy messages and repaired objects this node sent.",
        &one(ae.bytes_sent as f64),
    );
    metric(
        "cairn_anti_entropy_trees_ready",
        "gauge",
        "1 once the Merkle trees are rebuilt after the start.",
        &one(if ae.trees_ready { 1.0 } else { 0.0 }),
    );
    metric(
        "cairn_stored_keys",
        "gauge",
        "Keys this node stores, tombstones included (as its Merkle trees count them).",
        &one(ae.keys as f64),
    );
    metric(
        "cairn_storage_writes_total",
        "counter",
        "Writes the storage engine acknowledged.",
        &one(engine.writes.load(Relaxed) as f64),
    );
}

/// A sample value in the text format's spelling (`+Inf`, not Rust's `inf`).
fn prom_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format asks.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_spelled_as_the_text_format_wants() {
        assert_eq!(prom_float(f64::INFINITY), "+Inf");
        assert_eq!(prom_float(0.5), "0.5");
        assert_eq!(prom_float(3.0), "3");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
