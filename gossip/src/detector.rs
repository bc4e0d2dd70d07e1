//! The phi-accrual failure detector of one observed node: a sliding window of heartbeat
//! inter-arrival intervals and Cassandra's exponential phi.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::limits::{ARRIVAL_WINDOW_MAX, PHI_SAMPLES_MIN};

/// log10(e): phi for an exponential distribution of intervals is `Δt / mean · log10(e)`.
const LOG10_E: f64 = std::f64::consts::LOG10_E;

/// Heartbeat arrivals from one node, as one observer saw them (Hayashibara et al.'s phi accrual
/// detector with Cassandra's exponential model, CASSANDRA-2597).
///
/// The window keeps the last `ARRIVAL_WINDOW_MAX` intervals between arrivals. Intervals longer
/// than `interval_max` are not recorded: they are the node's or the observer's downtime, not the
/// rhythm of its heartbeats, and would teach the detector to wait forever. Until
/// `PHI_SAMPLES_MIN` intervals are in, the mean is taken to be `interval_max`, which errs towards
/// waiting longer.
///
/// `phi(now) = (now - last arrival) / mean · log10(e)`: minus the base-10 logarithm of the
/// probability that an exponentially distributed interval of that mean lasts this long. So a
/// threshold of 8 convicts after `8 / log10(e) ≈ 18.42` mean intervals of silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivalWindow {
    intervals: VecDeque<Duration>,
    /// Sum of `intervals`, kept exactly (integer nanoseconds) so a long run does not drift.
    sum: Duration,
    last: Option<Instant>,
    interval_max: Duration,
}

impl ArrivalWindow {
    /// An empty window that ignores intervals above `interval_max`.
    pub fn new(interval_max: Duration) -> ArrivalWindow {
        ArrivalWindow {
            intervals: VecDeque::new(),
            sum: Duration::ZERO,
            last: None,
            interval_max,
        }
    }

    /// Records a heartbeat arrival at `now`.
    pub fn report(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let interval = now.saturating_duration_since(last);
            if interval <= self.interval_max {
                if self.intervals.len() == ARRIVAL_WINDOW_MAX {
                    let oldest = self.intervals.pop_front().expect("a full window");
                    self.sum -= oldest;
                }
                self.intervals.push_back(interval);
                self.sum += interval;
            }
        }
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
    }

    /// Forgets the silence up to `now` without recording an interval: the local pause guard.
    /// Silence the observer could not have seen heartbeats in says nothing about the node.
    pub fn forgive(&mut self, now: Instant) {
        if let Some(last) = &mut self.last {
            *last = (*last).max(now);
        }
    }

    /// The mean interval phi assumes: the window's mean once it holds `PHI_SAMPLES_MIN`
    /// intervals, `interval_max` before.
    pub fn mean(&self) -> Duration {
        if self.intervals.len() < PHI_SAMPLES_MIN {
            return self.interval_max;
        }
        self.sum / self.intervals.len() as u32
    }

    /// Suspicion that the node is down, at `now`; 0 before the first arrival.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let mean = self.mean().as_secs_f64();
        if mean <= 0.0 {
            // Every recorded interval was zero (arrivals in one instant): any silence at all is
            // infinitely unlikely, but zero silence is not suspicious.
            return if now > last { f64::INFINITY } else { 0.0 };
        }
        now.saturating_duration_since(last).as_secs_f64() / mean * LOG10_E
    }

    /// How long phi takes to reach `threshold` after an arrival, with the current mean.
    pub fn time_to_phi(&self, threshold: f64) -> Duration {
        // Saturates instead of panicking for absurd thresholds or negative input.
        Duration::try_from_secs_f64(self.mean().as_secs_f64() * threshold / LOG10_E)
            .unwrap_or(Duration::MAX)
    }

    /// When the last heartbeat arrived (or the last pause was forgiven).
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last
    }

    /// Intervals in the window.
    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    /// Whether the window holds no interval yet.
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }
}
