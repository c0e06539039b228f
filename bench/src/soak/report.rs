//! The soak's summary: the same aligned table and single JSON line as the
//! other scenarios, with a row per role, the bystander's figures and the
//! broker's resident memory over time.

use serde_json::{Value, json};
use starling_protocol::Codec;

use super::bystander::BystanderReport;
use super::counts::Counts;
use crate::report::{bytes, codec_name, micros, render};

/// At most this many values of the memory series go into the table (the
/// JSON has them all).
const TABLE_SERIES_POINTS: usize = 24;

/// One role's figures.
#[derive(Debug, Clone)]
pub(crate) struct RoleFigures {
    /// As in the report: `churners`, `slow_readers`, ...
    pub(crate) name: &'static str,
    /// Its tasks (each one connection at a time).
    pub(crate) tasks: u64,
    pub(crate) counts: Counts,
}

/// The broker's memory and CPU, from /proc.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSeries {
    pub(crate) pid: u32,
    /// CPU over the load, in percent of one core.
    pub(crate) cpu_percent: Option<f64>,
    /// Resident memory before any load.
    pub(crate) rss_start: u64,
    /// The most seen, sampled four times a second through the load and at
    /// the end.
    pub(crate) rss_peak: u64,
    /// After the load, the closes and the settle.
    pub(crate) rss_end: Option<u64>,
    /// One sample per `interval_secs` from the start of the load.
    pub(crate) series: Vec<u64>,
    pub(crate) interval_secs: f64,
}

/// Everything the soak reports.
#[derive(Debug, Clone)]
pub(crate) struct SoakSummary {
    pub(crate) url: String,
    pub(crate) codec: Codec,
    /// Seconds of load, as run.
    pub(crate) load_secs: f64,
    /// Seconds from the end of the load to the last sample.
    pub(crate) settle_secs: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) roles: Vec<RoleFigures>,
    /// Whether the history topic keeps history (its publish acks carry
    /// offsets); `None` when nothing was acked there.
    pub(crate) history_kept: Option<bool>,
    pub(crate) bystander: BystanderReport,
    pub(crate) broker: Option<BrokerSeries>,
    pub(crate) bench_cpu_percent: Option<f64>,
    pub(crate) notes: Vec<String>,
}

/// The memory series as one short line: values in MiB, at most `points` of
/// them (the largest of each run of consecutive samples when there are
/// more), and the time each stands for.
pub(crate) fn series_line(series: &[u64], interval_secs: f64, points: usize) -> String {
    if series.is_empty() {
        return "no sample".to_owned();
    }
    let per = series.len().div_ceil(points.max(1));
    let values: Vec<String> = series
        .chunks(per)
        .map(|chunk| {
            let mib = *chunk.iter().max().expect("chunks are not empty") as f64 / 1048576.0;
            if mib < 100.0 {
                format!("{mib:.1}")
            } else {
                format!("{mib:.0}")
            }
        })
        .collect();
    let step = interval_secs * per as f64;
    let what = if per == 1 { "every" } else { "most per" };
    format!("MiB, {what} {}: {}", secs(step), values.join(" "))
}

/// Seconds, without a fraction when there is none.
fn secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

impl SoakSummary {
    /// The human table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row(
            "load",
            format!(
                "{:.1} s ({}), payload {} B, then {:.1} s to close and settle",
                self.load_secs,
                codec_name(self.codec),
                self.payload_bytes,
                self.settle_secs
            ),
        );
        for role in &self.roles {
            let label = role.name.replace('_', " ");
            row(&label, format!("{} x: {}", role.tasks, role.counts.line()));
            if let Some(ended) = role.counts.ended_by_broker() {
                row(&format!("{label} ended"), ended);
            }
            if !role.counts.errors.is_empty() {
                row(&format!("{label} errors"), role.counts.errors.to_string());
            }
        }
        row(
            "history kept",
            match self.history_kept {
                Some(true) => "yes (publish acks carry offsets)".to_owned(),
                Some(false) => "no (publish acks carry no offset)".to_owned(),
                None => "unknown (no publish to the history topic was acked)".to_owned(),
            },
        );
        let b = &self.bystander;
        row(
            "bystander",
            format!(
                "{} published, {} acked, {} received, {} lost",
                b.publisher.published, b.publisher.acks, b.received, b.lost
            ),
        );
        if b.late + b.repeated + b.unreadable + b.subscriber.lagged_frames > 0 {
            row(
                "bystander oddities",
                format!(
                    "{} late, {} repeated, {} unreadable, {} lagged frames ({} missed)",
                    b.late,
                    b.repeated,
                    b.unreadable,
                    b.subscriber.lagged_frames,
                    b.subscriber.missed
                ),
            );
        }
        row(
            "bystander latency",
            match &b.latency {
                Some(p) => format!(
                    "p50 {}, p99 {}, max {}",
                    micros(p.p50),
                    micros(p.p99),
                    micros(p.max)
                ),
                None => "no delivery".to_owned(),
            },
        );
        let mut ended = b.publisher.clone();
        ended.merge(&b.subscriber);
        if let Some(line) = ended.ended_by_broker() {
            row("bystander ended", line);
        }
        if let Some(br) = &self.broker {
            row(
                "broker CPU",
                br.cpu_percent
                    .map_or("n/a".to_owned(), |c| format!("{c:.1} % of one core (load)")),
            );
            row(
                "broker RSS",
                format!(
                    "{} start, {} peak, {} end",
                    bytes(br.rss_start as f64),
                    bytes(br.rss_peak as f64),
                    br.rss_end.map_or("n/a".to_owned(), |r| bytes(r as f64))
                ),
            );
            row(
                "broker RSS series",
                series_line(&br.series, br.interval_secs, TABLE_SERIES_POINTS),
            );
        }
        if let Some(c) = self.bench_cpu_percent {
            row("bench CPU", format!("{c:.1} % of one core"));
        }
        render("soak", &self.url, &rows, &self.notes)
    }

    /// The JSON summary, one object: a few keys per role, the bystander's
    /// at the top level.
    pub(crate) fn json(&self) -> Value {
        let b = &self.bystander;
        let mut v = json!({
            "scenario": "soak",
            "url": self.url,
            "codec": codec_name(self.codec),
            "duration_secs": self.load_secs,
            "settle_secs": self.settle_secs,
            "payload_bytes": self.payload_bytes,
            "history_kept": self.history_kept,
            "bystander_published": b.publisher.published,
            "bystander_acked": b.publisher.acks,
            "bystander_received": b.received,
            "bystander_lost": b.lost,
            "bystander_late": b.late,
            "bystander_repeated": b.repeated,
            "bystander_unreadable": b.unreadable,
            "bystander_lagged_frames": b.subscriber.lagged_frames,
            "bystander_latency_us": b.latency.map_or(Value::Null, |p| {
                json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999,
                       "max": p.max, "mean": p.mean})
            }),
            "bystander_publisher": b.publisher.to_json(1),
            "bystander_subscriber": b.subscriber.to_json(1),
            "bench_cpu_percent": self.bench_cpu_percent,
            "notes": self.notes,
        });
        let obj = v.as_object_mut().expect("json! of an object is an object");
        for role in &self.roles {
            obj.insert(role.name.into(), role.counts.to_json(role.tasks));
        }
        obj.insert(
            "broker".into(),
            self.broker.as_ref().map_or(Value::Null, |br| {
                json!({
                    "pid": br.pid,
                    "cpu_percent": br.cpu_percent,
                    "rss_start_bytes": br.rss_start,
                    "rss_peak_bytes": br.rss_peak,
                    "rss_end_bytes": br.rss_end,
                    "rss_series_bytes": br.series,
                    "sample_interval_secs": br.interval_secs,
                })
            }),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_short_series_is_printed_whole() {
        let series = [6 * MIB, 40 * MIB + MIB / 2, 120 * MIB];
        assert_eq!(
            series_line(&series, 5.0, 24),
            "MiB, every 5 s: 6.0 40.5 120"
        );
        assert_eq!(series_line(&[], 5.0, 24), "no sample");
    }

    #[test]
    fn a_long_series_keeps_the_largest_of_each_run() {
        // 121 samples every 5 s (ten minutes): runs of 6, 30 s each.
        let series: Vec<u64> = (0..121).map(|i| i * MIB).collect();
        let line = series_line(&series, 5.0, 24);
        assert!(
            line.starts_with("MiB, most per 30 s: 5.0 11.0 17.0 "),
            "{line}"
        );
        assert!(line.ends_with(" 119 120"), "{line}");
        assert_eq!(line.split(": ").nth(1).unwrap().split(' ').count(), 21);
        assert_eq!(
            series_line(&[MIB, 2 * MIB, 3 * MIB], 0.5, 2),
            "MiB, most per 1 s: 2.0 3.0"
        );
    }
}
