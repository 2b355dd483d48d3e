//! The last minutes of capture, one sample a second: status, lag and rows per second for
//! the page's chart, plus each table's change rate over a short window. The sampler task
//! owns the writing; readers copy samples out under a short lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::capture::{CaptureStatus, CaptureStatusSnapshot};
use crate::changes::{Changes, TableName};

/// One sample a second.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Ten minutes of samples.
pub const KEEP_SAMPLES: usize = 600;
/// Table change rates are averaged over this many seconds.
const RATE_WINDOW: usize = 10;

/// One second of capture, as the chart draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Increases by one per sample; the stream sends each sample once.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub t: i64,
    pub connected: bool,
    /// `None` before the first row was read.
    pub lag_ms: Option<u64>,
    pub rows_per_sec: f64,
}

/// Samples and table rates; written by [`Sampler::observe`].
#[derive(Debug, Default)]
pub struct Sampler {
    samples: VecDeque<Sample>,
    next_seq: u64,
    /// (time ms, rows read) of the previous sample.
    last_rows: Option<(i64, u64)>,
    /// Per-table totals at each of the last `RATE_WINDOW + 1` samples.
    totals: VecDeque<(i64, HashMap<TableName, u64>)>,
    table_rates: HashMap<TableName, f64>,
}

fn per_second(delta: u64, ms: i64) -> f64 {
    if ms <= 0 {
        0.0
    } else {
        delta as f64 * 1000.0 / ms as f64
    }
}

impl Sampler {
    /// Records one sample at `now_ms` from the capture status (`None` without a database)
    /// and the per-table change totals.
    pub fn observe(
        &mut self,
        now_ms: i64,
        capture: Option<&CaptureStatusSnapshot>,
        totals: HashMap<TableName, u64>,
    ) {
        if let Some(c) = capture {
            let rows_per_sec = match self.last_rows {
                Some((t, rows)) => per_second(c.rows_read.saturating_sub(rows), now_ms - t),
                None => 0.0,
            };
            self.last_rows = Some((now_ms, c.rows_read));
            self.next_seq += 1;
            self.samples.push_back(Sample {
                seq: self.next_seq,
                t: now_ms,
                connected: c.connected,
                lag_ms: c.lag_ms,
                rows_per_sec,
            });
            while self.samples.len() > KEEP_SAMPLES {
                self.samples.pop_front();
            }
        }
        self.totals.push_back((now_ms, totals));
        while self.totals.len() > RATE_WINDOW + 1 {
            self.totals.pop_front();
        }
        self.table_rates = match (self.totals.front(), self.totals.back()) {
            (Some((t0, first)), Some((t1, last))) if t1 > t0 => last
                .iter()
                .map(|(name, n)| {
                    let before = first.get(name).copied().unwrap_or(0);
                    (name.clone(), per_second(n.saturating_sub(before), t1 - t0))
                })
                .collect(),
            _ => HashMap::new(),
        };
    }

    /// Samples newer than `after_seq`, oldest first.
    pub fn samples_after(&self, after_seq: u64) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.seq > after_seq)
            .cloned()
            .collect()
    }

    /// The newest sample's rows per second.
    pub fn rows_per_sec(&self) -> f64 {
        self.samples.back().map_or(0.0, |s| s.rows_per_sec)
    }

    /// Changes per second of `table` over the last few seconds.
    pub fn table_rate(&self, table: &TableName) -> f64 {
        self.table_rates.get(table).copied().unwrap_or(0.0)
    }
}

/// The shared history: the sampler task writes, the page's requests read.
#[derive(Debug, Default)]
pub struct History {
    /// Short-held, never across an await.
    inner: Mutex<Sampler>,
}

impl History {
    pub fn read<T>(&self, f: impl FnOnce(&Sampler) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self, f: impl FnOnce(&mut Sampler)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Samples once a second until `stop`.
    pub async fn run_sampler(
        self: Arc<Self>,
        capture: Option<Arc<CaptureStatus>>,
        changes: Changes,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let snapshot = capture.as_ref().map(|c| c.snapshot());
            let totals = changes.stats().change_totals();
            let now = chrono::Utc::now().timestamp_millis();
            self.write(|s| s.observe(now, snapshot.as_ref(), totals));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(rows_read: u64, lag_ms: Option<u64>) -> CaptureStatusSnapshot {
        CaptureStatusSnapshot {
            connected: true,
            cursor: None,
            rows_read,
            rows_ahead: 0,
            waiting: "read",
            batches: 0,
            reconnects: 0,
            last_error: None,
            last_commit_ts: None,
            lag_ms,
        }
    }

    fn name(t: &str) -> TableName {
        ("public".into(), t.into())
    }

    #[test]
    fn rows_per_second_is_the_difference_between_samples() {
        let mut s = Sampler::default();
        s.observe(0, Some(&capture(10, None)), HashMap::new());
        s.observe(2_000, Some(&capture(30, Some(5))), HashMap::new());
        let samples = s.samples_after(0);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].rows_per_sec, 0.0);
        assert_eq!(samples[1].rows_per_sec, 10.0);
        assert_eq!(samples[1].lag_ms, Some(5));
        assert_eq!(s.rows_per_sec(), 10.0);
        assert_eq!(s.samples_after(samples[0].seq), vec![samples[1].clone()]);
    }

    #[test]
    fn only_the_last_ten_minutes_are_kept() {
        let mut s = Sampler::default();
        for i in 0..(KEEP_SAMPLES as i64 + 5) {
            s.observe(i * 1000, Some(&capture(0, Some(0))), HashMap::new());
        }
        let samples = s.samples_after(0);
        assert_eq!(samples.len(), KEEP_SAMPLES);
        assert_eq!(samples[0].seq, 6, "the five oldest were dropped");
    }

    #[test]
    fn table_rates_average_over_the_window() {
        let mut s = Sampler::default();
        for i in 0..=20i64 {
            let totals = HashMap::from([(name("jobs"), (i * 3) as u64)]);
            s.observe(i * 1000, None, totals);
        }
        assert_eq!(s.table_rate(&name("jobs")), 3.0);
        assert_eq!(s.table_rate(&name("other")), 0.0);
        assert!(s.samples_after(0).is_empty(), "no capture, no samples");
    }
}
