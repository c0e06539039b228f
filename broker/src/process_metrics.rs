//! The standard `process_*` metrics of a Prometheus client: CPU time,
//! memory, file descriptors, threads, start time. Read from `/proc/self` at
//! each scrape (Linux); elsewhere none are reported.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux architecture the broker builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    open_fds: i64,
    max_fds: i64,
}

/// The process collector, registered without the `starling_` prefix.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(sample) = read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(sample.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                sample.start_time_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                sample.virtual_bytes as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                sample.threads as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                sample.max_fds as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Reads the process's figures; `None` where `/proc` is not there.
fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as i64);
    parse(&stat, &status, &limits, &boot, open_fds)
}

/// The sample in the texts of `/proc/self/stat`, `/proc/self/status`,
/// `/proc/self/limits` and `/proc/stat`.
fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: i64) -> Option<Sample> {
    // The command name, in parentheses, may hold spaces: fields follow the
    // last `)`. Field 3 (state) is the first after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let kib = |key: &str| -> i64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let boot_time: f64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0);
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        resident_bytes: kib("VmRSS:") * 1024,
        virtual_bytes: kib("VmSize:") * 1024,
        threads: kib("Threads:"),
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse_into_the_sample() {
        let stat = "4242 (star ling) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 123400 1000000 500 18446744073709551615";
        let status = "Name:\tstarling\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            65536                524288               files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        assert_eq!(
            parse(stat, status, limits, boot, 12),
            Some(Sample {
                cpu_seconds: 3.0,
                start_time_seconds: 1_700_001_234.0,
                resident_bytes: 10 * 1024 * 1024,
                virtual_bytes: 200 * 1024 * 1024,
                threads: 9,
                open_fds: 12,
                max_fds: 65536,
            })
        );
    }

    #[test]
    fn this_process_reads() {
        let sample = read().expect("a Linux /proc");
        assert!(sample.resident_bytes > 0 && sample.open_fds > 0 && sample.threads > 0);
        assert!(sample.start_time_seconds > 1.6e9);
    }
}
