//! Counters and latency histograms, kept by the thread that measures them
//! and read once at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// The largest latency the histograms track, in microseconds (60 s); larger
/// values are recorded as 60 s.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Nanoseconds since the UNIX epoch: the clock of send and receive stamps
/// (publisher and subscribers run on the same machine).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The measured window, by send timestamp in nanoseconds: `[start, end)`.
/// Messages sent during the warmup (or before the window was set) fall outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

impl Window {
    /// A window no timestamp falls in.
    pub(crate) const NONE: Window = Window {
        start_ns: u64::MAX,
        end_ns: u64::MAX,
    };

    /// Whether a message sent at `t` is measured.
    pub(crate) fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && t < self.end_ns
    }
}

/// A latency histogram with microsecond resolution, up to 60 s.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    pub(crate) fn new() -> Self {
        Latency(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("1 us to 60 s at 3 significant digits is a valid histogram"),
        )
    }

    /// Records the time from `sent_ns` to `received_ns`.
    pub(crate) fn record(&mut self, sent_ns: u64, received_ns: u64) {
        let us = received_ns.saturating_sub(sent_ns) / 1_000;
        self.0.saturating_record(us);
    }

    /// Adds every value of `other`.
    pub(crate) fn add(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms of the same bounds add up");
    }

    /// The usual percentiles, or `None` when nothing was recorded.
    pub(crate) fn percentiles(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let q = |q: f64| self.0.value_at_quantile(q);
        Some(Percentiles {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.0.max(),
            mean: self.0.mean(),
        })
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

/// Counts by kind: error codes, close codes, failure reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally(BTreeMap<String, u64>);

impl Tally {
    pub(crate) fn add(&mut self, kind: impl Into<String>) {
        self.add_n(kind, 1);
    }

    pub(crate) fn add_n(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.0.entry(kind.into()).or_default() += n;
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        for (kind, n) in &other.0 {
            self.add_n(kind.clone(), *n);
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl fmt::Display for Tally {
    /// `none`, or `kind: n, kind: n` largest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let mut entries: Vec<_> = self.0.iter().collect();
        entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (kind, n)) in entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{kind}: {n}")?;
        }
        Ok(())
    }
}

/// What the subscriber connections saw, all together.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberStats {
    /// Every `message` frame received, measured or not.
    pub(crate) received_total: u64,
    /// `message` frames whose send timestamp is in the window.
    pub(crate) received: u64,
    /// `message` frames without a timestamp the scan could find.
    pub(crate) unstamped: u64,
    /// Delivery latency of the measured messages.
    pub(crate) latency: Latency,
    /// `lagged` frames.
    pub(crate) lagged_frames: u64,
    /// Sum of `missed` over all `lagged` frames.
    pub(crate) missed: u64,
    /// `error` frames by code.
    pub(crate) errors: Tally,
    /// Close codes the broker sent of its own accord (not answering ours).
    pub(crate) closes: Tally,
    /// Connections that ended without a close frame, by reason.
    pub(crate) disconnects: Tally,
    /// Frames that did not decode.
    pub(crate) undecodable: u64,
}

impl SubscriberStats {
    pub(crate) fn new() -> Self {
        SubscriberStats {
            received_total: 0,
            received: 0,
            unstamped: 0,
            latency: Latency::new(),
            lagged_frames: 0,
            missed: 0,
            errors: Tally::default(),
            closes: Tally::default(),
            disconnects: Tally::default(),
            undecodable: 0,
        }
    }

    /// One delivery sent at `sent_ns` (if stamped) and received at `received_ns`.
    pub(crate) fn delivery(&mut self, window: Window, sent_ns: Option<u64>, received_ns: u64) {
        self.received_total += 1;
        match sent_ns {
            Some(t) if window.contains(t) => {
                self.received += 1;
                self.latency.record(t, received_ns);
            }
            Some(_) => {}
            None => self.unstamped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_outside_the_window_are_not_measured() {
        let w = Window {
            start_ns: 1_000_000,
            end_ns: 2_000_000,
        };
        let mut s = SubscriberStats::new();
        s.delivery(w, Some(999_999), 3_000_000);
        s.delivery(w, Some(1_000_000), 1_250_000);
        s.delivery(w, Some(2_000_000), 2_000_100);
        s.delivery(w, None, 2_000_100);
        assert_eq!(s.received_total, 4);
        assert_eq!(s.received, 1);
        assert_eq!(s.unstamped, 1);
        assert_eq!(s.latency.percentiles().unwrap().max, 250);
    }

    #[test]
    fn latency_saturates_at_60s_and_clamps_clock_skew() {
        let mut l = Latency::new();
        l.record(0, 3_600_000_000_000);
        l.record(10, 5);
        let p = l.percentiles().unwrap();
        assert_eq!(p.p50, 0);
        assert!(p.max >= MAX_LATENCY_US && p.max < MAX_LATENCY_US + MAX_LATENCY_US / 100);
        assert_eq!(Latency::new().percentiles(), None);
    }

    #[test]
    fn tally_counts_and_prints_largest_first() {
        let mut t = Tally::default();
        assert_eq!(t.to_string(), "none");
        t.add("4008");
        t.add_n("1000", 3);
        t.add_n("never", 0);
        let mut u = Tally::default();
        u.add("4008");
        t.merge(&u);
        assert_eq!(t.total(), 5);
        assert_eq!(t.to_string(), "1000: 3, 4008: 2");
        assert_eq!(t.to_json(), serde_json::json!({"1000": 3, "4008": 2}));
    }
}
