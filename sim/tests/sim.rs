//! The whole-cluster simulator's suites (`sim/src/`): seed sweeps judged by the history
//! checker, the proof that a seed replays bit for bit, the proof that the checker catches
//! broken replicas, and the bugs the simulator found. What runs is the node's core
//! (`cairn_core`, the layout, ring, gossip and anti-entropy crates) and its wire messages; the
//! loops around the core's machines are still the simulator's own (see `sim/src/lib.rs`).
//!
//! - `CAIRN_SIM_SEED=<seed>`: run only that seed; its whole trace is written to
//!   `target/tmp/<suite>-seed-<seed>.trace` and printed if it fails.
//! - `CAIRN_SIM_SEEDS=<count>`: sweep that many seeds (default 500), starting at
//!   `CAIRN_SIM_SEED_BASE` (default 0), e.g. `CAIRN_SIM_SEEDS=5000` for a long sweep.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use cairn_sim::{
    run, ExchangeSabotage, ForwardSabotage, Options, ReaperSabotage, Report, Sabotage,
    TransferSabotage,
};

/// Seeds a sweep runs when `CAIRN_SIM_SEEDS` is not set (each suite below runs them all).
const SEEDS_DEFAULT: u64 = 500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// The seeds to run: one from `CAIRN_SIM_SEED`, or a sweep.
fn seeds() -> Vec<u64> {
    if let Some(seed) = env_u64("CAIRN_SIM_SEED") {
        return vec![seed];
    }
    let count = env_u64("CAIRN_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let base = env_u64("CAIRN_SIM_SEED_BASE").unwrap_or(0);
    (base..base + count).collect()
}

/// Runs `seeds` with `opts` on every core. Returns the failing reports (smallest seed first)
/// and how many seeds ran; with `stop_at_first`, stops soon after a failure.
fn sweep(seeds: &[u64], opts: &Options, stop_at_first: bool) -> (Vec<Report>, usize) {
    sweep_until(seeds, opts, &|_| stop_at_first)
}

/// [`sweep`], stopping soon after a failing report for which `stop` holds.
fn sweep_until(
    seeds: &[u64],
    opts: &Options,
    stop_at: &(dyn Fn(&Report) -> bool + Sync),
) -> (Vec<Report>, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let report = run(seed, opts);
                    ran.fetch_add(1, Ordering::Relaxed);
                    if !report.violations.is_empty() {
                        if stop_at(&report) {
                            stop.store(true, Ordering::Relaxed);
                        }
                        failures.lock().unwrap().push(report);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|r| r.seed);
    (failures, ran.into_inner())
}

fn trace_path(suite: &str, seed: u64) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{suite}-seed-{seed}.trace"))
}

/// Replays `seed` with a trace (checking that it fails the same way), writes the whole trace to
/// a file, and returns the failure report: the seed, the broken rules, how to reproduce, and the
/// trace (all of it with `whole_trace`; otherwise the lines about the keys involved and the
/// faults, at most `TRACE_LINES_SHOWN`).
fn explain(suite: &str, failed: &Report, opts: &Options, whole_trace: bool) -> String {
    const TRACE_LINES_SHOWN: usize = 800;
    let seed = failed.seed;
    let traced = run(
        seed,
        &Options {
            trace: true,
            ..opts.clone()
        },
    );
    let path = trace_path(suite, seed);
    let _ = std::fs::write(&path, traced.trace.join("\n"));
    let mut out = format!("simulation FAILED ({suite}): {}\n", traced.summary());
    for v in &traced.violations {
        out.push_str(&format!("  VIOLATION {v}\n"));
    }
    let same = traced.violations.len() == failed.violations.len()
        && traced.events == failed.events
        && traced.virtual_time == failed.virtual_time;
    if !same {
        out.push_str(
            "  WARNING: the traced replay differs from the first run: not deterministic\n",
        );
    }
    out.push_str(&format!(
        "reproduce: CAIRN_SIM_SEED={seed} cargo test -p cairn-sim --test sim {suite}\n\
         full trace ({} lines): {}\n",
        traced.trace.len(),
        path.display()
    ));
    let keys: Vec<String> = traced
        .violations
        .iter()
        .filter(|v| !v.key.is_empty())
        .map(|v| format!(" {}", String::from_utf8_lossy(&v.key)))
        .collect();
    let shown: Vec<&String> = if whole_trace {
        traced.trace.iter().collect()
    } else {
        let marks = [
            " sim ",
            "CRASH",
            "START",
            "PARTITION",
            "healed",
            " is UP",
            " is DOWN",
        ];
        let about: Vec<&String> = traced
            .trace
            .iter()
            .filter(|l| {
                keys.iter().any(|k| l.contains(k.as_str())) || marks.iter().any(|m| l.contains(m))
            })
            .collect();
        let skip = about.len().saturating_sub(TRACE_LINES_SHOWN);
        about.into_iter().skip(skip).collect()
    };
    out.push_str("trace (virtual time, who, event):\n");
    for l in shown {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Sweeps the configured seeds with `opts` and fails with a full explanation of the first
/// failing seed.
fn check_sweep(name: &str, opts: &Options) {
    let seeds = seeds();
    let single = seeds.len() == 1;
    let started = Instant::now();
    let (failures, ran) = sweep(&seeds, opts, false);
    println!(
        "{name}: {ran} seeds in {:.1}s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if single {
        // One seed: keep its trace whether or not it fails, for reading.
        let traced = run(
            seeds[0],
            &Options {
                trace: true,
                ..opts.clone()
            },
        );
        let path = trace_path(name, seeds[0]);
        let _ = std::fs::write(&path, traced.trace.join("\n"));
        println!("{}\ntrace: {}", traced.summary(), path.display());
    }
    if let Some(first) = failures.first() {
        eprintln!("{}", explain(name, first, opts, single));
        let all: Vec<String> = failures.iter().map(|r| r.seed.to_string()).collect();
        panic!(
            "{name}: {} of {ran} seeds failed (seeds {}); first: {}",
            failures.len(),
            all.join(" "),
            first.summary()
        );
    }
}

/// Every seed, driven as `driver.rs` drives the coordinator today, with every fault but the
/// adversarial crash right after an acknowledgement (which finds the known bug below).
#[test]
fn sweep_as_the_node_drives_it() {
    check_sweep(
        "sweep_as_the_node_drives_it",
        &Options {
            crash_after_ack: false,
            ..Options::default()
        },
    );
}

/// Every seed with every fault, including crashes right after acknowledgements. The core's
/// request driver holds each reply until the hints issued before it are durable (bug 1's fix,
/// the node's and the simulator's alike), and `strict_routing` (a policy only this simulator
/// tries, not the node's) coordinates a write only at a node `route` chooses for it. This keeps
/// the adversarial crash timing guarding everything else.
#[test]
fn sweep_with_crashes_right_after_acks() {
    check_sweep(
        "sweep_with_crashes_right_after_acks",
        &Options {
            crash_after_ack: true,
            strict_routing: true,
            ..Options::default()
        },
    );
}

/// KNOWN BUG 1 (node/src/driver.rs with node/src/coordinator.rs), found by this simulator: an
/// acknowledged write is lost when its coordinator is not a primary of the key (a fallback
/// standing in for a down primary, with other primaries no fallback covers) and crashes right
/// after replying.
///
/// The coordinator counts its own durable update as an ack and, with W = 1, answers at once; the
/// hints that are the only way the value reaches a primary come out of `poll_hint` at the same
/// moment, and the driver spawns `engine.apply(Write::AddHint ..)` for them without waiting, so
/// they commit in later transactions than the update. A kill -9 between the reply and that
/// commit leaves the acknowledged value on a non-primary with no hint: no handoff, no read
/// repair (reads ask only the chosen replicas), and later writes that never saw it win.
///
/// Seed 218: `put k4 DEL w=1` (w100) at n2, which stands in for n4 while n1 and n3 are down
/// (n2 is a fallback of k4), is acknowledged with dot n2:54; n2 crashes 0.7 ms later with its
/// three AddHint writes still queued; the final k4 on n4, n1, n3 lacks it. Seed 7281: the same
/// with w164 at n3; seed 9078 with the default options (w118 at n5). Reproduce with
/// `cargo test -p cairn-tests --test sim regression_1` (with the old driver). (Bug 2, a write
/// coordinated off its replicas, is shown in `tests/tests/coordinator.rs`.)
///
/// Fixed: the driver replies only after every hint issued before the outcome is durable; that
/// rule now lives in the core's request driver (`cairn_core::driver`), which the node and this
/// simulator both run. Since the simulator stopped re-enacting the driver, the runs of every
/// seed changed, and putting the old reply order back no longer lost a write in 8,000 seeds
/// (0..8000, with crashes right after acks), so that switch was dropped rather than kept
/// untested; these seeds stay as a regression test.
#[test]
fn regression_1_acks_wait_for_hints() {
    let opts = Options {
        crash_after_ack: true,
        more_faults: false,
        ..Options::default()
    };
    expect_no_failures(
        "regression_1_acks_wait_for_hints",
        &[218, 7281, 9078, 415],
        &opts,
    );
}

/// Bug 4, found by this simulator once the node's own driver ran in it, with a small hint store
/// (seed 106 of `sweep_as_the_node_drives_it`): a node that is only a *fallback* for a key, with
/// every primary down, coordinated a W = 1 write: its own update was the ack, and the hints
/// for the three primaries were refused (hint store full). The driver counted failed hints as
/// done and acknowledged the write, which then sat on the fallback with no hint: nothing ever
/// hands it to a primary (read repair asks the primaries, anti-entropy runs between primaries),
/// and the acknowledged write was lost. The same holds for a real node whose
/// `HINTS_PER_PEER_MAX` is reached.
///
/// Fixed in `cairn_core::driver`: a failed hint is reported (`handle_hint_failed`), and a held
/// acknowledgement for that key at a node that is not its primary becomes an error saying the
/// write may not reach its replicas. `DriverSabotage::AckDespiteFailedHint` puts the bug back,
/// and the checker catches it within `BUG_4_SEEDS_MAX` seeds (at seed 1671 since a simulated
/// node declares a failing disk as the node does, so it and its peers route around it and its
/// hints fail less often; at 1223 since the simulated writer makes group commits as the engine
/// does, the fallback's update and its hints often in one commit; within 300 when each write
/// was a commit of its own).
#[test]
fn regression_4_a_fallback_does_not_ack_a_write_whose_hint_failed() {
    const BUG_4_SEEDS_MAX: u64 = 2500;
    // Without layout changes: hints are what this is about, and the changes' transfers and
    // operator crashes move the runs away from the small hint stores that show it.
    let fixed = Options {
        crash_after_ack: false,
        layout_changes: false,
        ..Options::default()
    };
    expect_no_failures("regression_4", &[106], &fixed);
    let old = Options {
        ack_despite_failed_hint: true,
        ..fixed.clone()
    };
    let seeds: Vec<u64> = (0..BUG_4_SEEDS_MAX).collect();
    let (failures, ran) = sweep_until(&seeds, &old, &|r| {
        r.violations
            .iter()
            .any(|v| v.rule == "1 acknowledged write lost")
    });
    let lost: Vec<u64> = failures
        .iter()
        .filter(|r| {
            r.violations
                .iter()
                .any(|v| v.rule == "1 acknowledged write lost")
        })
        .map(|r| r.seed)
        .collect();
    assert!(
        !lost.is_empty(),
        "with acks despite failed hints, rule 1 caught nothing in {ran} seeds"
    );
    println!("acks despite failed hints lost a write in seeds {lost:?} ({ran} seeds run)");
    expect_no_failures("regression_4", &lost, &fixed);
}

/// Seeds the first 10,000-seed sweep with data-directory loss failed, each a fault in the
/// simulator or its checker rather than in the node: seed 1473 (and 4748, 5625, 5636, 6112,
/// 7175, 9213) lost all three primaries' data directories, while a non-primary that once
/// coordinated a write still held a copy (its hint long delivered): the checker now counts a dot
/// as lost with the disks once every primary that stored it lost its data. Seed 8469 started the
/// final R = N read while a node paused before the heal was still paused: quiet now waits for
/// pauses to end.
#[test]
fn regression_5_data_loss_and_pauses_across_the_heal() {
    expect_no_failures(
        "regression_5",
        &[1473, 4748, 5625, 5636, 6112, 7175, 8469, 9213],
        &Options {
            crash_after_ack: false,
            ..Options::default()
        },
    );
}

/// Known bug 3, found by rule 5 ("one write, two siblings") when it was added: a node that
/// forwarded a write and got no answer in time coordinated it again itself, but the forward had
/// arrived and been applied, so one client write became two siblings (first found as seed 35:
/// w114 applied at n2 as n2:41 and again at n3 as n3:60; seeds shift as the simulated node
/// changes, so this test looks for one).
///
/// Fixed: the forwarder (`cairn_core::forward::Forwarder`, run by `server/dispatch.rs` and by
/// the simulated node) coordinates a forwarded write here only if the forward never left
/// (`PeerError::may_have_arrived`); else it asks the same replica again with the same id (which
/// the replica's `ForwardTable` applies at most once) or answers an error saying the write may
/// have been applied. `ForwardSabotage::CoordinateAfterLostReply` puts the old forward back. The
/// old forward is caught within `BUG_3_SEEDS_MAX` seeds, and those seeds pass with the fix.
#[test]
fn regression_3_a_write_whose_forward_went_out_is_not_applied_again() {
    const BUG_3_SEEDS_MAX: u64 = 600;
    // As `sweep_as_the_node_drives_it` found it.
    let fixed = Options {
        crash_after_ack: false,
        ..Options::default()
    };
    let old = Options {
        forward_sabotage: ForwardSabotage::CoordinateAfterLostReply,
        ..fixed.clone()
    };
    let seeds: Vec<u64> = (0..BUG_3_SEEDS_MAX).collect();
    let (failures, ran) = sweep(&seeds, &old, true);
    let doubled: Vec<u64> = failures
        .iter()
        .filter(|r| {
            r.violations
                .iter()
                .any(|v| v.rule == "5 one write, two siblings")
        })
        .map(|r| r.seed)
        .collect();
    assert!(
        !doubled.is_empty(),
        "with the old forward, rule 5 caught no doubled write in {ran} seeds"
    );
    println!("the old forward doubled a write in seeds {doubled:?} ({ran} seeds run)");
    expect_no_failures("regression_3", &doubled, &fixed);
}

fn expect_no_failures(suite: &str, seeds: &[u64], opts: &Options) {
    let (failures, _) = sweep(seeds, opts, false);
    if let Some(first) = failures.first() {
        eprintln!("{}", explain(suite, first, opts, false));
        panic!(
            "acknowledged writes lost in seeds {:?}",
            failures.iter().map(|r| r.seed).collect::<Vec<_>>()
        );
    }
}

/// The same seed gives the same run, event for event, with or without a trace.
#[test]
fn a_seed_replays_bit_for_bit() {
    for seed in [1, 655, 4242] {
        let traced = |_| {
            run(
                seed,
                &Options {
                    trace: true,
                    ..Options::default()
                },
            )
        };
        let (a, b) = (traced(()), traced(()));
        assert_eq!(a.trace, b.trace, "seed {seed}: two traced runs differ");
        assert!(
            a.trace.len() > 100,
            "seed {seed}: the trace is too short to mean anything"
        );
        let untraced = run(seed, &Options::default());
        assert_eq!(
            (untraced.events, untraced.virtual_time, untraced.counts),
            (a.events, a.virtual_time, a.counts),
            "seed {seed}: tracing changed the run"
        );
    }
}

/// The runs do what a sweep needs to mean something: writes are acknowledged, fail and go
/// unanswered; reads see siblings; nodes crash; hints are made and delivered.
#[test]
fn runs_exercise_the_interesting_paths() {
    let mut acked = 0;
    let mut failed = 0;
    let mut unknown = 0;
    let mut sibling_reads = 0;
    let mut crashes = 0;
    let mut partitions = 0;
    let mut handoffs = 0;
    let mut data_lost = 0;
    let mut disk_failures = 0;
    let mut pauses = 0;
    let mut hints_refused = 0;
    let mut forward_retries = 0;
    let mut retries_answered = 0;
    let mut ae_exchanges = 0;
    let mut ae_sent = 0;
    let mut ae_failed = 0;
    let mut convictions = 0;
    let mut restarts_seen = 0;
    let mut gossip_ups = 0;
    let mut storage_declared = 0;
    let mut storage_recovered = 0;
    let mut routed_around = 0;
    let mut layout_exchanges = 0;
    let mut transfer_batches = 0;
    let mut layout = LayoutCounts::default();
    for seed in 0..20 {
        let r = run(
            seed,
            &Options {
                trace: true,
                ..Options::default()
            },
        );
        acked += r.counts.0;
        failed += r.counts.1;
        unknown += r.counts.2;
        sibling_reads += r
            .history
            .reads
            .iter()
            .filter(|rd| matches!(&rd.result, Some(Ok(o)) if o.siblings.len() > 1))
            .count();
        crashes += r.trace.iter().filter(|l| l.contains("CRASH")).count();
        partitions += r.trace.iter().filter(|l| l.contains("PARTITION")).count();
        handoffs += r
            .trace
            .iter()
            .filter(|l| l.contains("delivered, deleted"))
            .count();
        let count = |what: &str| r.trace.iter().filter(|l| l.contains(what)).count();
        data_lost += count("DATA DIR LOST");
        disk_failures += count("simulated disk write failure");
        pauses += count("PAUSED until");
        hints_refused += count("hint store for node");
        // The forwarder's retries (same id), and the replica's table answering one with the
        // first attempt's outcome or holding it until that outcome is known.
        forward_retries += count("(retry) put");
        retries_answered += count("again: answered as before") + count("again: waits for");
        // Anti-entropy: exchanges that ran to the end, keys one sent the other, and exchanges
        // that failed (a peer crashed or cut off in the middle).
        ae_exchanges += count("keys repaired");
        ae_sent += count("anti-entropy: ");
        // Gossip: the failure detector convicting a silent node, a restart's new generation
        // seen, and a node judged up again by gossip.
        convictions += count("CONVICTED by the failure detector");
        restarts_seen += count("RESTARTED in generation");
        gossip_ups += count("is UP (gossip)");
        // A failing disk: declared in gossip, peers routing around it, recovered in place.
        storage_declared += count("storage declared Degraded");
        storage_recovered += count("storage recovered in place");
        routed_around += count("DOWN (its storage is degraded");
        // Layout exchanges started by gossiped stamps, and transfer batches answered.
        layout_exchanges += count("send layout r");
        transfer_batches += r
            .trace
            .iter()
            .filter(|l| l.contains("send batch r") && l.contains("[ack"))
            .count();
        ae_failed += r
            .trace
            .iter()
            .filter(|l| l.contains("anti-entropy p") && l.contains("failed"))
            .count();
        layout.add(&r.trace);
    }
    println!(
        "acked={acked} failed={failed} unknown={unknown} sibling_reads={sibling_reads} \
         crashes={crashes} partitions={partitions} handoffs={handoffs} data_lost={data_lost} \
         disk_failures={disk_failures} pauses={pauses} hints_refused={hints_refused} \
         forward_retries={forward_retries} retries_answered={retries_answered} \
         ae_exchanges={ae_exchanges} ae_sent={ae_sent} ae_failed={ae_failed} \
         convictions={convictions} restarts_seen={restarts_seen} gossip_ups={gossip_ups} \
         storage_declared={storage_declared} storage_recovered={storage_recovered} \
         routed_around={routed_around} layout_exchanges={layout_exchanges} \
         transfer_batches={transfer_batches}"
    );
    // Rarer faults: each must happen at least once in these seeds.
    println!("{layout:?}");
    for (what, n) in [
        ("data directories lost", data_lost),
        ("failed disk writes", disk_failures),
        ("failing disks declared in gossip", storage_declared),
        ("failed stores recovered in place", storage_recovered),
        ("peers routed around for a degraded disk", routed_around),
        ("pauses", pauses),
        ("hints refused by a full hint store", hints_refused),
        ("forwards asked again after a lost reply", forward_retries),
        (
            "retried forwards answered by the first attempt",
            retries_answered,
        ),
        ("removes of a crashed node", layout.removes),
        ("replaces of a crashed node", layout.replaces),
        (
            "changes applied within a second of the previous one settling",
            layout.in_a_row,
        ),
        (
            "crashes in the middle of a layout change",
            layout.mid_transfer_crashes,
        ),
    ] {
        assert!(n >= 1, "no {what} in 20 seeds");
    }
    for (what, n) in [
        ("joins", layout.joins),
        ("leaves", layout.leaves),
        ("partition pushes recorded", layout.pushes),
        ("old versions retired", layout.retired),
    ] {
        assert!(n >= 5, "only {n} {what} in 20 seeds");
    }
    for (what, n) in [
        ("acknowledged writes", acked),
        ("failed writes", failed),
        ("unanswered writes", unknown),
        ("reads with siblings", sibling_reads),
        ("crashes", crashes),
        ("partitions", partitions),
        ("hints delivered", handoffs),
        ("anti-entropy exchanges", ae_exchanges),
        ("keys sent by anti-entropy", ae_sent),
        ("anti-entropy exchanges cut off", ae_failed),
        ("convictions by gossip's failure detector", convictions),
        ("restarts seen in gossip", restarts_seen),
        ("peers judged up by gossip", gossip_ups),
        ("layout exchanges", layout_exchanges),
        ("transfer batches acknowledged", transfer_batches),
    ] {
        assert!(n >= 10, "only {n} {what} in 20 seeds");
    }
}

/// What the layout changes of some runs did, from their traces.
#[derive(Debug, Default)]
struct LayoutCounts {
    joins: usize,
    leaves: usize,
    removes: usize,
    replaces: usize,
    /// Changes applied less than a second after the previous change retired its old version.
    in_a_row: usize,
    mid_transfer_crashes: usize,
    pushes: usize,
    retired: usize,
}

impl LayoutCounts {
    fn add(&mut self, trace: &[String]) {
        let time = |l: &str| -> f64 {
            l.split_whitespace()
                .next()
                .and_then(|t| t.trim_end_matches('s').parse().ok())
                .unwrap_or(0.0)
        };
        let mut last_retired: Option<f64> = None;
        for l in trace {
            if l.contains("RETIRED") {
                self.retired += 1;
                last_retired = Some(time(l));
            }
            if l.contains("LAYOUT CHANGE ") && !l.contains("refused") {
                for (kind, n) in [
                    ("LAYOUT CHANGE join", &mut self.joins),
                    ("LAYOUT CHANGE leave", &mut self.leaves),
                    ("LAYOUT CHANGE remove", &mut self.removes),
                    ("LAYOUT CHANGE replace", &mut self.replaces),
                ] {
                    if l.contains(kind) {
                        *n += 1;
                    }
                }
                if last_retired.is_some_and(|t| time(l) - t < 1.0) {
                    self.in_a_row += 1;
                }
            }
            if l.contains("CRASH in the middle of a layout change") {
                self.mid_transfer_crashes += 1;
            }
            if l.contains("PUSHED every partition") {
                self.pushes += 1;
            }
        }
    }
}

/// The layout checks are not vacuous: a transfer machine that leaves the first key of every
/// partition out of its batches (`TransferSabotage::SkipFirstKey`) is caught by rule 7 ("a
/// transfer moves every key": when a source records its push, every gaining replica holds
/// every dot the source held for those partitions when the transfer started) within
/// `LAYOUT_SABOTAGE_SEEDS_MAX` seeds.
#[test]
fn the_checker_catches_a_transfer_that_skips_keys() {
    const LAYOUT_SABOTAGE_SEEDS_MAX: u64 = 60;
    let rule = "7 transfer missed a key";
    let opts = Options {
        transfer_sabotage: TransferSabotage::SkipFirstKey,
        crash_after_ack: false,
        ..Options::default()
    };
    let seeds: Vec<u64> = (0..LAYOUT_SABOTAGE_SEEDS_MAX).collect();
    let (failures, ran) = sweep_until(&seeds, &opts, &|r| {
        r.violations.iter().any(|v| v.rule == rule)
    });
    let caught = failures
        .iter()
        .find(|r| r.violations.iter().any(|v| v.rule == rule));
    match caught {
        Some(r) => println!(
            "SkipFirstKey: caught as {rule:?} by seed {} after {ran} seeds: {}",
            r.seed,
            r.violations
                .iter()
                .find(|v| v.rule == rule)
                .expect("found above")
        ),
        None => panic!("a transfer that skips keys was not caught as {rule:?} in {ran} seeds"),
    }
}

/// BUG 6, FIXED (core versioning with the layout cleanup), found by this simulator once it ran
/// layout changes with the cleanup's drops: a node that dropped its copy of a key it no longer
/// replicated (`node/src/cleanup.rs`, `DropIfUnchanged`) and later coordinates a write to that
/// key (it replicates the key again after a further change, or coordinates as a fallback)
/// mints a dot from its node-wide counter on an empty object. The new version vector entry for
/// its actor covers every counter below the new dot, so its own earlier dots of that key, still
/// alive as siblings on the other replicas, read as seen and discarded: merging the new write
/// there silently removes acknowledged writes. The same holds for a fallback that dropped its
/// copy after its hint was delivered (`node/src/handoff.rs`). DVVSet needs the coordinating
/// replica to hold all of its own dots of the key; Riak met this as KV679 and fixed it with
/// per-key actor epochs.
///
/// First found as seed 3: w134 (`c2w134`, dot n4:46, W = 3) acknowledged at 100.95 s; a join
/// retires v9 at 102.65 s and n4 drops k0; after the next join n4 coordinates w149 on k0 with
/// context {n4:30,..}, minting n4:49 with entry n4:49, and the merge at n2 and n6 drops n4:46
/// (seeds shift as the simulation changes).
///
/// Fixed: the mechanism above by the writer's per-key actors (`core/tests/lost_write.rs` holds
/// its pure regressions; the container nemesis had met it through a fallback's drop). What the
/// sweeps with the drops still reported after that fix were the harness's: the checker did not
/// excuse a write superseded by one that was then lost with the data of every node holding it
/// (three data directories lost, seed 23), and the operator's "remove again" of a node gone for
/// good took a three-member cluster below N (seed 279). The sweeps now drop copies, as the node
/// does, and so guard all of it over every seed; this test keeps the drops from being switched
/// off again quietly.
#[test]
fn regression_6_the_sweeps_run_with_the_drops() {
    assert!(
        Options::default().drop_copies,
        "the sweeps must drop copies as node/src/cleanup.rs does (bug 6 hid behind this switch)"
    );
}

/// Bug 7, found by the 10,000-seed sweep: the simulator's hint delivery did not follow the
/// layout (the node's handoff loop hands its policy every layout; the simulator's never did),
/// so a hint for a node removed from the layout was sent to that node for ever. Seed 4592: n3
/// holds hints for n1 (removed in v3) and, after leaving in v4, the only copy of w165 (W = 1,
/// acknowledged by n5, whose data directory is then lost); the hint for n1 keeps n3's copy
/// from the cleanup but never reaches k0's owners in v4, and the write reads as lost. Seeds
/// 2469, 2998, 6801, 8747 and 9638 (and 1821, 3229, 3871 with crashes right after acks) failed
/// the same way or through the stale-tombstone gap the writer now closes (seed 1692).
///
/// Fixed: the core's handoff policy gets the node's layout at each round and answers
/// `Action::Redirect`; the node (`node/src/handoff.rs`) and the simulator both carry it out
/// (the loop around the policy is still each one's own).
#[test]
fn regression_7_hints_follow_the_layout() {
    expect_no_failures(
        "regression_7_hints_follow_the_layout",
        &[2469, 2998, 4592, 6801, 8747, 9638],
        &Options {
            crash_after_ack: false,
            ..Options::default()
        },
    );
    expect_no_failures(
        "regression_7_hints_follow_the_layout (crashes after acks)",
        &[1692, 1821, 3229, 3871, 9638],
        &Options {
            crash_after_ack: true,
            strict_routing: true,
            ..Options::default()
        },
    );
}

/// Found by the 10,000-seed sweeps (session 7), three defects:
///
/// - Seed 8025 (`sweep_as_the_node_drives_it`): a fallback coordinated a W = 2 delete; both of
///   its hints were refused (hint store full) *before* the one primary's acknowledgement came.
///   The driver kept a failed hint only while a reply was held, so it forgot these and
///   acknowledged a write held by the fallback (no hint) and one primary, which then lost its
///   disk; the fallback's cleanup dropped the last copy. Fixed in `cairn_core::driver`: a
///   failure is kept while a request for the key is in flight.
/// - Seed 8025 (`sweep_with_crashes_right_after_acks`): two full hint queues, each hint waiting
///   to be redirected into the other queue after a layout change, never drained. Fixed in
///   `cairn_core::writer`: a redirected hint (`Write::RedirectHint`) is kept over the per-peer
///   limit, which bounds what new writes add.
/// - Seed 2791 (crash sweep), the checker's: a copy sent by a node with an older layout to a node
///   that does not replicate the key carries no hint and is dropped by cleanup; it no longer
///   counts as a holder (`Holding::Stray`), so a W = 1 write whose fallback was removed with its
///   hints is excused as lost with it, as a wiped disk is.
///
/// And two of the harness: every member still in the cluster lost its disk, so no node held a
/// layout to join (seeds 2088 and 8999; a run now keeps one layout holder), and the final read
/// asked a node gone for good whose removal had not spread (seed 9607).
#[test]
fn regression_8_failed_hints_redirects_and_stray_copies() {
    expect_no_failures(
        "regression_8 (node sweep)",
        &[2088, 8025, 8999, 9607],
        &Options {
            crash_after_ack: false,
            ..Options::default()
        },
    );
    expect_no_failures(
        "regression_8 (crashes after acks)",
        &[2088, 2791, 8025],
        &Options {
            crash_after_ack: true,
            strict_routing: true,
            ..Options::default()
        },
    );
}

/// Found once the simulator ran the core's cleanup machine (pages dropped as they are read,
/// sweeps stopped by a newer layout) instead of its own sweep, which changed when copies go:
/// seed 8751 (node sweep), the checker's. A W = 1 write during a transition reached one old
/// replica (which had already pushed its partitions) and one new one; the new one's data was
/// wiped, and the old one dropped its copy when the old version retired. An old owner's drop
/// is its leaving those partitions, so `History::dropped` now excuses a dot as
/// `History::left` does: only when another holder lost its data before.
#[test]
fn regression_9_a_cleanup_drop_after_a_wiped_new_replica() {
    expect_no_failures(
        "regression_9 (node sweep)",
        &[8751],
        &Options {
            crash_after_ack: false,
            ..Options::default()
        },
    );
}

/// The sweeps reap tombstones as the node does, and a reaper that breaks its rule is caught: one
/// that does not wait for a member holding another copy (the value a delete superseded, missed
/// while it was down) reaps while that copy lives, and read repair or a hint then brings the
/// deleted value back (rule 4 or rule 6) within `REAPER_SABOTAGE_SEEDS_MAX` seeds.
///
/// Without anti-entropy: it brings the delete to the member that missed it within a round or two
/// of its return, long before the grace period lets a reaper act, so with it the sabotage went
/// unnoticed in 1,500 seeds. That is anti-entropy narrowing the window, not the bug going away:
/// a member cut off for longer than the grace period still comes back holding the old value.
#[test]
fn the_sweeps_reap_and_the_checker_catches_a_reaper_that_ignores_other_copies() {
    assert!(
        Options::default().reap,
        "the sweeps must reap as the node does"
    );
    let seeds: Vec<u64> = (0..50).collect();
    let reaped: usize = seeds
        .iter()
        .map(|s| run(*s, &Options::default()).history.reaped_count())
        .sum();
    assert!(reaped > 0, "no tombstone was reaped in 50 seeds");

    const REAPER_SABOTAGE_SEEDS_MAX: u64 = 1500;
    let seeds: Vec<u64> = (0..REAPER_SABOTAGE_SEEDS_MAX).collect();
    let opts = Options {
        reaper_sabotage: ReaperSabotage::IgnoreOtherCopies,
        anti_entropy: false,
        ..Options::default()
    };
    let resurrected = |r: &Report| {
        r.violations
            .iter()
            .any(|v| v.rule == "4 deleted value returned" || v.rule.starts_with("6 "))
    };
    let (failures, ran) = sweep_until(&seeds, &opts, &resurrected);
    match failures.iter().find(|r| resurrected(r)) {
        Some(r) => println!(
            "IgnoreOtherCopies caught at seed {} after {ran} seeds: {}",
            r.seed, r.violations[0]
        ),
        None => panic!(
            "a reaper that ignores other copies went unnoticed in {ran} seeds \
             ({} failed otherwise)",
            failures.len()
        ),
    }
}

/// The final repair is anti-entropy's, and the checker judges it rather than trusting it: an
/// exchange that never repairs the keys two replicas hold differently
/// (`ExchangeSabotage::IgnoreDiffering`, only missing keys are copied) leaves replicas apart,
/// and rule 3 reports it within `AE_SABOTAGE_SEEDS_MAX` seeds; the sweeps above pass with the
/// same anti-entropy unbroken.
#[test]
fn the_checker_catches_an_anti_entropy_that_ignores_differing_keys() {
    const AE_SABOTAGE_SEEDS_MAX: u64 = 50;
    let seeds: Vec<u64> = (0..AE_SABOTAGE_SEEDS_MAX).collect();
    let opts = Options {
        exchange_sabotage: ExchangeSabotage::IgnoreDiffering,
        ..Options::default()
    };
    let apart = |r: &Report| r.violations.iter().any(|v| v.rule == "3 replicas differ");
    let (failures, ran) = sweep_until(&seeds, &opts, &apart);
    match failures.iter().find(|r| apart(r)) {
        Some(r) => println!(
            "IgnoreDiffering caught at seed {} after {ran} seeds: {}",
            r.seed, r.violations[0]
        ),
        None => panic!(
            "an anti-entropy that ignores differing keys went unnoticed in {ran} seeds \
             ({} failed otherwise)",
            failures.len()
        ),
    }
}

/// The checker is not vacuous: a writer that breaks a rule on purpose (the core's `sabotage`
/// switches) is caught within `SABOTAGE_SEEDS_MAX` seeds, and the rule it reports is the one
/// broken. Most are caught within the first 6 seeds; `ForgetHints` needs a write only fallbacks
/// took whose copy no primary got otherwise, first at seed 109 since layout exchanges follow
/// gossip rounds (at seed 23 before). (Rule 1 with the driver's `ReplyBeforeHints` is
/// `regression_1`.)
#[test]
fn the_checker_catches_broken_replicas() {
    let cases = [
        // Storing the incoming object instead of merging loses concurrent writes.
        (Sabotage::OverwriteOnMerge, "1 acknowledged write lost"),
        // Without hints, a write only fallbacks took never reaches its primaries.
        (Sabotage::ForgetHints, "1 acknowledged write lost"),
        // Restarting the dot counter at 1 mints dots again (Riak's KV679).
        (Sabotage::ReuseDots, "dot minted twice"),
        // Applying a write twice leaves two siblings of it.
        (Sabotage::ApplyTwice, "5 one write, two siblings"),
        // Dropping tombstones for an incoming stale copy brings the deleted value back.
        (Sabotage::ForgetTombstones, "6 deleted value reappeared"),
        // An update that ignores its context keeps what the client saw beside its write.
        (Sabotage::IgnoreContext, "2 sibling not concurrent"),
        (Sabotage::IgnoreContext, "4 superseded value returned"),
        // A merge acknowledged but not stored leaves the replicas apart after read repair.
        (Sabotage::AckWithoutStoring, "3 replicas differ"),
        // A value nobody wrote.
        (Sabotage::CorruptValue, "phantom sibling"),
        // Removed keys (reaped tombstones, dropped copies) left in the Merkle trees kept
        // from commits: anti-entropy would compare trees that are not the store's.
        (Sabotage::UnreportedRemoves, "Merkle tree out of date"),
    ];
    const SABOTAGE_SEEDS_MAX: u64 = 200;
    let seeds: Vec<u64> = (0..SABOTAGE_SEEDS_MAX).collect();
    for (sabotage, rule) in cases {
        let opts = Options {
            sabotage,
            crash_after_ack: false,
            ..Options::default()
        };
        let (failures, ran) = sweep_until(&seeds, &opts, &|r| {
            r.violations.iter().any(|v| v.rule == rule)
        });
        let caught = failures
            .iter()
            .find(|r| r.violations.iter().any(|v| v.rule == rule));
        match caught {
            Some(r) => println!(
                "{sabotage:?}: caught as {rule:?} by seed {} after {ran} seeds: {}",
                r.seed,
                r.violations
                    .iter()
                    .find(|v| v.rule == rule)
                    .expect("found above")
            ),
            None => panic!(
                "{sabotage:?} was not caught as {rule:?} in {ran} seeds; got {:?}",
                failures
                    .iter()
                    .flat_map(|r| r.violations.iter().map(|v| v.to_string()))
                    .take(3)
                    .collect::<Vec<_>>()
            ),
        }
    }
}
