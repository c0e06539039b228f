//! The run's summary: a small aligned table for people and one JSON line
//! for machines.

use std::fmt::Write as _;

use serde_json::{Value, json};
use starling_protocol::Codec;

use crate::stats::{Percentiles, Tally};

/// Everything a run reports.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) scenario: &'static str,
    pub(crate) url: String,
    pub(crate) codec: Codec,
    pub(crate) subscribers: SubscriberFigures,
    /// For the scenarios that publish.
    pub(crate) load: Option<LoadFigures>,
    /// For `idle`.
    pub(crate) hold_secs: Option<f64>,
    /// With `--broker-pid`.
    pub(crate) broker: Option<BrokerFigures>,
    /// This process's CPU over the window (or hold), % of one core.
    pub(crate) bench_cpu_percent: Option<f64>,
    /// Anything worth a second look.
    pub(crate) notes: Vec<String>,
}

/// The subscriber connections.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberFigures {
    pub(crate) subscriptions_planned: u64,
    pub(crate) connections_planned: u64,
    pub(crate) topics: u64,
    pub(crate) connected: u64,
    pub(crate) connect_failures: Tally,
    pub(crate) connect_secs: f64,
    pub(crate) subscriptions: u64,
    pub(crate) refused: Tally,
    pub(crate) errors: Tally,
    pub(crate) closes: Tally,
    pub(crate) disconnects: Tally,
    pub(crate) closed_cleanly: u64,
    pub(crate) lagged_frames: u64,
    pub(crate) missed: u64,
}

/// The publishing and the deliveries.
#[derive(Debug, Clone)]
pub(crate) struct LoadFigures {
    pub(crate) publisher_codec: Codec,
    pub(crate) publishers: u64,
    pub(crate) publisher_failures: Tally,
    /// `Some(rate)` at a fixed rate, `None` when saturating.
    pub(crate) rate: Option<f64>,
    pub(crate) in_flight: Option<u64>,
    /// When a message stopped counting as in flight: "delivered" or "acked".
    pub(crate) in_flight_until: Option<&'static str>,
    pub(crate) payload_bytes: usize,
    pub(crate) warmup_secs: f64,
    pub(crate) window_secs: f64,
    pub(crate) published_total: u64,
    pub(crate) published: u64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) received_total: u64,
    pub(crate) unstamped: u64,
    pub(crate) latency: Option<Percentiles>,
    pub(crate) acks: u64,
    pub(crate) unacked: u64,
    pub(crate) ack_latency: Option<Percentiles>,
    pub(crate) publisher_errors: Tally,
    pub(crate) publisher_closes: Tally,
    pub(crate) publisher_disconnects: Tally,
    pub(crate) max_backlog: u64,
    pub(crate) drained_secs: f64,
}

impl LoadFigures {
    fn delivered_ratio(&self) -> Option<f64> {
        (self.expected > 0).then(|| self.received as f64 / self.expected as f64)
    }

    fn deliveries_per_sec(&self) -> f64 {
        self.received as f64 / self.window_secs
    }
}

/// The broker process, from /proc.
#[derive(Debug, Clone)]
pub(crate) struct BrokerFigures {
    pub(crate) pid: u32,
    /// CPU over the measured window (or the hold, for `idle`), % of one core.
    pub(crate) cpu_percent: Option<f64>,
    /// CPU while the subscribers connected, % of one core.
    pub(crate) connect_cpu_percent: Option<f64>,
    /// RSS before the bench connected anything.
    pub(crate) rss_before: u64,
    /// RSS once every subscriber was subscribed.
    pub(crate) rss_subscribed: Option<u64>,
    /// RSS at the end of the window (or hold).
    pub(crate) rss_end: Option<u64>,
}

impl BrokerFigures {
    /// Growth from before connecting to subscribed, per connection.
    fn rss_per_connection(&self, connections: u64) -> Option<f64> {
        let after = self.rss_subscribed?;
        (connections > 0).then(|| (after as f64 - self.rss_before as f64) / connections as f64)
    }
}

pub(crate) fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "json",
        Codec::MsgPack => "msgpack",
    }
}

/// Microseconds, in the unit that reads best.
pub(crate) fn micros(us: u64) -> String {
    match us {
        0..=9_999 => format!("{us} us"),
        10_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// Bytes, in binary units.
pub(crate) fn bytes(n: f64) -> String {
    let (sign, n) = if n < 0.0 { ("-", -n) } else { ("", n) };
    if n < 1024.0 {
        format!("{sign}{n:.0} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{sign}{:.1} KiB", n / 1024.0)
    } else {
        format!("{sign}{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

fn count_with(n: u64, of: u64) -> String {
    if n == of {
        n.to_string()
    } else {
        format!("{n} of {of}")
    }
}

impl Summary {
    /// The human table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let s = &self.subscribers;

        row(
            "subscribers",
            format!(
                "{} subscriptions on {} connections ({}), {} topic{}",
                s.subscriptions_planned,
                s.connections_planned,
                codec_name(self.codec),
                s.topics,
                if s.topics == 1 { "" } else { "s" }
            ),
        );
        let rate = if s.connect_secs > 0.0 {
            format!(" ({:.0} conn/s)", s.connected as f64 / s.connect_secs)
        } else {
            String::new()
        };
        row(
            "connected",
            format!(
                "{} ok, {} failed in {:.2} s{rate}",
                s.connected,
                s.connect_failures.total(),
                s.connect_secs
            ),
        );
        if !s.connect_failures.is_empty() {
            row("connect failures", s.connect_failures.to_string());
        }
        row(
            "subscriptions acked",
            format!("{}{}", s.subscriptions, refused(&s.refused)),
        );

        if let Some(l) = &self.load {
            let how = match (l.rate, l.in_flight) {
                (Some(rate), _) => format!("{rate} msg/s"),
                (None, Some(k)) => format!(
                    "{k} in flight until {}",
                    l.in_flight_until.unwrap_or("delivered")
                ),
                (None, None) => "?".to_owned(),
            };
            row(
                "publishers",
                format!(
                    "{} ({}), {how}, payload {} B",
                    count_with(l.publishers, l.publishers + l.publisher_failures.total()),
                    codec_name(l.publisher_codec),
                    l.payload_bytes
                ),
            );
            row(
                "window",
                format!("{:.1} s after {:.1} s warmup", l.window_secs, l.warmup_secs),
            );
            row(
                "published",
                format!(
                    "{} ({:.1} msg/s)",
                    l.published,
                    l.published as f64 / l.window_secs
                ),
            );
            if l.in_flight.is_some() {
                row(
                    "acks",
                    format!("{} ({} unacked at the end)", l.acks, l.unacked),
                );
            }
            row("deliveries expected", l.expected.to_string());
            row(
                "deliveries received",
                match l.delivered_ratio() {
                    Some(r) => format!("{} ({:.3} %)", l.received, 100.0 * r),
                    None => l.received.to_string(),
                },
            );
            row("deliveries/s", format!("{:.0}", l.deliveries_per_sec()));
            match &l.latency {
                Some(p) => {
                    row("latency p50", micros(p.p50));
                    row("latency p90", micros(p.p90));
                    row("latency p99", micros(p.p99));
                    row("latency p99.9", micros(p.p999));
                    row("latency max", micros(p.max));
                }
                None => row("latency", "no measured delivery".to_owned()),
            }
            if let Some(p) = &l.ack_latency {
                row(
                    "ack latency",
                    format!(
                        "p50 {}, p99 {}, max {}",
                        micros(p.p50),
                        micros(p.p99),
                        micros(p.max)
                    ),
                );
            }
        }
        if let Some(hold) = self.hold_secs {
            row("held", format!("{hold:.1} s"));
        }
        row(
            "lagged",
            format!("{} frames, {} missed", s.lagged_frames, s.missed),
        );
        let mut errors = s.errors.clone();
        let mut closes = s.closes.clone();
        let mut disconnects = s.disconnects.clone();
        if let Some(l) = &self.load {
            errors.merge(&l.publisher_errors);
            closes.merge(&l.publisher_closes);
            disconnects.merge(&l.publisher_disconnects);
        }
        row("errors", errors.to_string());
        row("close codes seen", closes.to_string());
        row("disconnects", disconnects.to_string());
        row(
            "closed with 1000",
            format!("{} of {}", s.closed_cleanly, s.connected),
        );

        if let Some(b) = &self.broker {
            let cpu = |c: Option<f64>| c.map_or("n/a".to_owned(), |c| format!("{c:.1} %"));
            let what = if self.hold_secs.is_some() {
                "hold"
            } else {
                "window"
            };
            row(
                "broker CPU",
                format!(
                    "{} of one core ({what}); {} while connecting",
                    cpu(b.cpu_percent),
                    cpu(b.connect_cpu_percent)
                ),
            );
            let rss = |r: Option<u64>| r.map_or("n/a".to_owned(), |r| bytes(r as f64));
            row(
                "broker RSS",
                format!(
                    "{} before, {} subscribed, {} at end",
                    bytes(b.rss_before as f64),
                    rss(b.rss_subscribed),
                    rss(b.rss_end)
                ),
            );
            if let Some(per) = b.rss_per_connection(s.connected) {
                row("broker RSS/conn", bytes(per));
            }
        }

        if let Some(c) = self.bench_cpu_percent {
            row("bench CPU", format!("{c:.1} % of one core"));
        }

        render(self.scenario, &self.url, &rows, &self.notes)
    }

    /// The JSON summary, one object.
    pub(crate) fn json(&self) -> Value {
        let s = &self.subscribers;
        let mut v = json!({
            "scenario": self.scenario,
            "url": self.url,
            "codec": codec_name(self.codec),
            "subscriptions_planned": s.subscriptions_planned,
            "connections_planned": s.connections_planned,
            "topics": s.topics,
            "connected": s.connected,
            "connect_failures": s.connect_failures.to_json(),
            "connect_secs": s.connect_secs,
            "subscriptions": s.subscriptions,
            "subscribe_refused": s.refused.to_json(),
            "lagged_frames": s.lagged_frames,
            "missed": s.missed,
            "errors": s.errors.to_json(),
            "close_codes": s.closes.to_json(),
            "disconnects": s.disconnects.to_json(),
            "closed_cleanly": s.closed_cleanly,
            "bench_cpu_percent": self.bench_cpu_percent,
            "notes": self.notes,
        });
        let obj = v.as_object_mut().expect("json! of an object is an object");
        if let Some(hold) = self.hold_secs {
            obj.insert("hold_secs".into(), json!(hold));
        }
        if let Some(l) = &self.load {
            let pct = |p: &Option<Percentiles>| {
                p.map_or(Value::Null, |p| {
                    json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999,
                           "max": p.max, "mean": p.mean})
                })
            };
            let load = json!({
                "publisher_codec": codec_name(l.publisher_codec),
                "publishers": l.publishers,
                "publisher_connect_failures": l.publisher_failures.to_json(),
                "rate": l.rate,
                "in_flight": l.in_flight,
                "in_flight_until": l.in_flight_until,
                "payload_bytes": l.payload_bytes,
                "warmup_secs": l.warmup_secs,
                "window_secs": l.window_secs,
                "published_total": l.published_total,
                "published": l.published,
                "deliveries_expected": l.expected,
                "deliveries_received": l.received,
                "deliveries_received_total": l.received_total,
                "delivered_ratio": l.delivered_ratio(),
                "deliveries_per_sec": l.deliveries_per_sec(),
                "unstamped": l.unstamped,
                "latency_us": pct(&l.latency),
                "acks": l.acks,
                "unacked": l.unacked,
                "ack_latency_us": pct(&l.ack_latency),
                "publisher_errors": l.publisher_errors.to_json(),
                "publisher_close_codes": l.publisher_closes.to_json(),
                "publisher_disconnects": l.publisher_disconnects.to_json(),
                "max_backlog": l.max_backlog,
                "drained_secs": l.drained_secs,
            });
            for (k, val) in load.as_object().expect("an object").clone() {
                obj.insert(k, val);
            }
        }
        if let Some(b) = &self.broker {
            obj.insert(
                "broker".into(),
                json!({
                    "pid": b.pid,
                    "cpu_percent": b.cpu_percent,
                    "connect_cpu_percent": b.connect_cpu_percent,
                    "rss_before_bytes": b.rss_before,
                    "rss_subscribed_bytes": b.rss_subscribed,
                    "rss_end_bytes": b.rss_end,
                    "rss_per_connection_bytes": b.rss_per_connection(s.connected),
                }),
            );
        }
        v
    }
}

/// A report as people read it: a title line, the rows with their values
/// aligned, then the notes.
pub(crate) fn render(
    scenario: &str,
    url: &str,
    rows: &[(String, String)],
    notes: &[String],
) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("starling-bench {scenario} -> {url}\n");
    for (k, v) in rows {
        writeln!(out, "  {k:<width$}  {v}").expect("writing to a String cannot fail");
    }
    for note in notes {
        writeln!(out, "  note: {note}").expect("writing to a String cannot fail");
    }
    out
}

fn refused(t: &Tally) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!(" (refused: {t})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            scenario: "fanout",
            url: "ws://127.0.0.1:7070/ws".into(),
            codec: Codec::Json,
            subscribers: SubscriberFigures {
                subscriptions_planned: 10,
                connections_planned: 10,
                topics: 1,
                connected: 10,
                connect_failures: Tally::default(),
                connect_secs: 0.5,
                subscriptions: 10,
                refused: Tally::default(),
                errors: Tally::default(),
                closes: Tally::default(),
                disconnects: Tally::default(),
                closed_cleanly: 10,
                lagged_frames: 0,
                missed: 0,
            },
            load: Some(LoadFigures {
                publisher_codec: Codec::MsgPack,
                publishers: 1,
                publisher_failures: Tally::default(),
                rate: Some(100.0),
                in_flight: None,
                in_flight_until: None,
                payload_bytes: 64,
                warmup_secs: 1.0,
                window_secs: 2.0,
                published_total: 300,
                published: 200,
                expected: 2000,
                received: 1999,
                received_total: 2999,
                unstamped: 0,
                latency: Some(Percentiles {
                    p50: 120,
                    p90: 200,
                    p99: 15_000,
                    p999: 16_000,
                    max: 2_500_000,
                    mean: 150.0,
                }),
                acks: 0,
                unacked: 0,
                ack_latency: None,
                publisher_errors: Tally::default(),
                publisher_closes: Tally::default(),
                publisher_disconnects: Tally::default(),
                max_backlog: 0,
                drained_secs: 0.01,
            }),
            hold_secs: None,
            broker: Some(BrokerFigures {
                pid: 1,
                cpu_percent: Some(12.5),
                connect_cpu_percent: None,
                rss_before: 1024 * 1024,
                rss_subscribed: Some(2 * 1024 * 1024),
                rss_end: None,
            }),
            bench_cpu_percent: Some(30.0),
            notes: vec![],
        }
    }

    #[test]
    fn table_is_aligned_and_has_the_figures() {
        let table = summary().table();
        assert!(table.contains("1999 (99.950 %)"), "{table}");
        assert!(table.contains("deliveries/s         1000"), "{table}");
        assert!(table.contains("latency p99          15.0 ms"), "{table}");
        assert!(table.contains("latency max          2.50 s"), "{table}");
        assert!(table.contains("12.5 % of one core"), "{table}");
        assert!(table.contains("broker RSS/conn      102.4 KiB"), "{table}");
        // The longest label is 19 characters: values start at column 23.
        for line in table.lines().skip(1).filter(|l| !l.contains("note:")) {
            let b = line.as_bytes();
            assert!(b[22] == b' ' && b[23] != b' ', "misaligned: {line:?}");
        }
    }

    #[test]
    fn json_has_the_figures_on_one_line() {
        let v = summary().json();
        assert_eq!(v["deliveries_expected"], 2000);
        assert_eq!(v["delivered_ratio"], 0.9995);
        assert_eq!(v["latency_us"]["p99"], 15_000);
        assert_eq!(v["broker"]["rss_per_connection_bytes"], 104_857.6);
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn units_read_well() {
        assert_eq!(micros(999), "999 us");
        assert_eq!(micros(12_345), "12.3 ms");
        assert_eq!(micros(60_000_000), "60.00 s");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(-2048.0), "-2.0 KiB");
        assert_eq!(bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
    }
}
