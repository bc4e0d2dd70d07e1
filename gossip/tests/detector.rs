//! The phi-accrual detector on its own: no conviction under jitter, conviction at the predicted
//! time, the minimum-samples rule, ignored long intervals, the bounded window and the pause guard.

use std::time::{Duration, Instant};

use cairn_gossip::limits::{ARRIVAL_WINDOW_MAX, PHI_SAMPLES_MIN, PHI_THRESHOLD_DEFAULT};
use cairn_gossip::ArrivalWindow;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Reports `count` arrivals `interval` apart from `start`; returns the last arrival's time.
fn feed(w: &mut ArrivalWindow, start: Instant, interval: Duration, count: usize) -> Instant {
    let mut t = start;
    for _ in 0..count {
        t += interval;
        w.report(t);
    }
    t
}

/// The first time (in 1 ms steps) phi exceeds `threshold` after `from`.
fn conviction_after(w: &ArrivalWindow, from: Instant, threshold: f64) -> Duration {
    let mut silence = Duration::ZERO;
    while w.phi(from + silence) <= threshold {
        silence += Duration::from_millis(1);
        assert!(silence < Duration::from_secs(3600), "never convicted");
    }
    silence
}

/// 10 000 heartbeats with intervals uniform in 0.8 s..1.2 s (±20%): phi just before each arrival
/// never comes near the threshold (it peaks at about 1.2 · log10(e) ≈ 0.52).
#[test]
fn jittered_heartbeats_never_reach_the_threshold() {
    let seed = 21;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = ArrivalWindow::new(Duration::from_secs(2));
    let mut t = Instant::now();
    w.report(t);
    let mut max_phi: f64 = 0.0;
    for _ in 0..10_000 {
        let interval = Duration::from_secs_f64(rng.gen_range(0.8..=1.2));
        t += interval;
        max_phi = max_phi.max(w.phi(t));
        w.report(t);
    }
    assert!(max_phi < 0.6, "seed {seed}: phi reached {max_phi}");
    assert!(max_phi < PHI_THRESHOLD_DEFAULT);
    assert_eq!(w.len(), ARRIVAL_WINDOW_MAX);
}

/// Silence convicts when `phi = Δt / mean · log10(e)` crosses the threshold: after
/// `threshold / log10(e) · mean`. With a mean of 1 s and threshold 8 that is 18.421 s.
#[test]
fn silence_convicts_at_the_predicted_time() {
    #[track_caller]
    fn check(mean_ms: u64, threshold: f64, expected_ms: u64) {
        let mut w = ArrivalWindow::new(Duration::from_millis(mean_ms * 2));
        let last = feed(
            &mut w,
            Instant::now(),
            Duration::from_millis(mean_ms),
            ARRIVAL_WINDOW_MAX + 1,
        );
        let silence = conviction_after(&w, last, threshold);
        let expected = Duration::from_millis(expected_ms);
        assert!(
            silence.abs_diff(expected) <= Duration::from_millis(1),
            "mean {mean_ms} ms, threshold {threshold}: convicted after {silence:?}, \
             expected {expected:?}"
        );
        assert!(w.time_to_phi(threshold).abs_diff(expected) <= Duration::from_millis(1));
    }
    // threshold / log10(e) = threshold · ln(10) = threshold · 2.302585...
    check(1000, 8.0, 18_421);
    check(500, 8.0, 9_210);
    check(2000, 8.0, 36_841);
    check(1000, 1.0, 2_303);
    check(1000, 12.0, 27_631);
}

/// Until `PHI_SAMPLES_MIN` intervals are in, the mean is `interval_max` (errs towards waiting);
/// from then on it is the window's mean.
#[test]
fn few_samples_use_the_conservative_mean() {
    let max = Duration::from_secs(2);
    let mut w = ArrivalWindow::new(max);
    let start = Instant::now();
    assert_eq!(w.phi(start), 0.0, "no arrival yet: no suspicion");
    w.report(start);
    assert_eq!(w.mean(), max);
    let last = feed(
        &mut w,
        start,
        Duration::from_millis(500),
        PHI_SAMPLES_MIN - 1,
    );
    assert_eq!(w.mean(), max, "{} samples", PHI_SAMPLES_MIN - 1);
    assert_eq!(
        conviction_after(&w, last, 8.0),
        Duration::from_millis(36_842)
    );
    let last = feed(&mut w, last, Duration::from_millis(500), 1);
    assert_eq!(w.mean(), Duration::from_millis(500));
    assert_eq!(
        conviction_after(&w, last, 8.0),
        Duration::from_millis(9_211)
    );
}

/// Intervals longer than `interval_max` (downtime, not rhythm) are not recorded, but the arrival
/// still resets the silence.
#[test]
fn long_intervals_are_ignored() {
    let mut w = ArrivalWindow::new(Duration::from_secs(2));
    let start = Instant::now();
    w.report(start);
    let last = feed(&mut w, start, Duration::from_secs(1), 10);
    let late = last + Duration::from_secs(30);
    w.report(late);
    assert_eq!(w.len(), 10);
    assert_eq!(w.mean(), Duration::from_secs(1));
    assert_eq!(w.last_arrival(), Some(late));
    assert_eq!(w.phi(late), 0.0);
}

/// The window keeps the last `ARRIVAL_WINDOW_MAX` intervals: a new rhythm replaces the old one
/// completely.
#[test]
fn the_window_slides() {
    let mut w = ArrivalWindow::new(Duration::from_secs(2));
    let start = Instant::now();
    w.report(start);
    let last = feed(&mut w, start, Duration::from_secs(1), ARRIVAL_WINDOW_MAX);
    assert_eq!(w.mean(), Duration::from_secs(1));
    let last = feed(
        &mut w,
        last,
        Duration::from_millis(400),
        ARRIVAL_WINDOW_MAX / 2,
    );
    assert_eq!(w.mean(), Duration::from_millis(700));
    feed(
        &mut w,
        last,
        Duration::from_millis(400),
        ARRIVAL_WINDOW_MAX / 2,
    );
    assert_eq!(w.len(), ARRIVAL_WINDOW_MAX);
    assert_eq!(w.mean(), Duration::from_millis(400));
}

/// The pause guard's primitive: forgiving silence moves the last arrival without recording an
/// interval, so phi restarts from zero and the mean is untouched.
#[test]
fn forgiving_a_pause_restarts_phi() {
    let mut w = ArrivalWindow::new(Duration::from_secs(2));
    let start = Instant::now();
    w.report(start);
    let last = feed(&mut w, start, Duration::from_secs(1), 100);
    let woke = last + Duration::from_secs(30);
    assert!(w.phi(woke) > PHI_THRESHOLD_DEFAULT);
    w.forgive(woke);
    assert_eq!(w.phi(woke), 0.0);
    assert_eq!(w.len(), 100);
    assert_eq!(w.mean(), Duration::from_secs(1));
    // A window with no arrival has nothing to forgive.
    let mut empty = ArrivalWindow::new(Duration::from_secs(2));
    empty.forgive(woke);
    assert_eq!(empty.last_arrival(), None);
}
