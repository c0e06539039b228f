//! Sampling the broker process from /proc: CPU time from `/proc/PID/stat`
//! and resident memory (`VmRSS`) from `/proc/PID/status`.

use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`).
/// The kernel reports them in `USER_HZ`, which is 100 on every mainstream
/// Linux architecture whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// One look at the broker process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    /// When it was taken.
    pub(crate) at: Instant,
    /// User plus system CPU time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Resident set size, in bytes.
    pub(crate) rss_bytes: u64,
}

impl ProcSample {
    /// Samples process `pid`.
    pub(crate) fn take(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat (is the broker pid right?)"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        Ok(ProcSample {
            at: Instant::now(),
            cpu_ticks: parse_stat_cpu_ticks(&stat)
                .with_context(|| format!("unexpected /proc/{pid}/stat"))?,
            rss_bytes: parse_status_rss_kib(&status)
                .with_context(|| format!("unexpected /proc/{pid}/status"))?
                * 1024,
        })
    }

    /// The CPU the process used between `self` and `later`, in percent of one
    /// core (200 % is two cores busy).
    pub(crate) fn cpu_percent_until(&self, later: &ProcSample) -> f64 {
        let wall = later.at.saturating_duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cpu = later.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / USER_HZ;
        100.0 * cpu / wall
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line.
///
/// The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted after the last `)`.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    let close = stat.rfind(')').context("no `)` after the command name")?;
    // After the name: field 3 (state) is the first.
    let fields: Vec<&str> = stat[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let raw = fields
            .get(n - 3)
            .with_context(|| format!("field {n} missing"))?;
        raw.parse()
            .with_context(|| format!("field {n} is not a number: {raw:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
pub(crate) fn parse_status_rss_kib(status: &str) -> Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let mut parts = rest.split_ascii_whitespace();
            let value = parts.next().context("VmRSS has no value")?;
            match parts.next() {
                Some("kB") | None => {}
                Some(unit) => bail!("VmRSS in unexpected unit {unit:?}"),
            }
            return value
                .parse()
                .with_context(|| format!("VmRSS is not a number: {value:?}"));
        }
    }
    bail!("no VmRSS line (a zombie or kernel thread?)")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const STAT: &str = "4242 (starling) S 1 4242 4242 0 -1 4194560 2345 0 0 0 \
                        1234 567 0 0 20 0 9 0 123456 1234567890 3456 18446744073709551615 \
                        1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn stat_gives_user_plus_system_ticks() {
        assert_eq!(parse_stat_cpu_ticks(STAT).unwrap(), 1234 + 567);
    }

    #[test]
    fn stat_survives_spaces_and_parens_in_the_name() {
        let odd = STAT.replace("(starling)", "(tokio (rt) worker)");
        assert_eq!(parse_stat_cpu_ticks(&odd).unwrap(), 1801);
    }

    #[test]
    fn short_or_garbled_stat_is_an_error() {
        assert!(parse_stat_cpu_ticks("4242 (starling) S 1 2").is_err());
        assert!(parse_stat_cpu_ticks("no parens here").is_err());
        let garbled = STAT.replace(" 1234 ", " x ");
        assert!(parse_stat_cpu_ticks(&garbled).is_err());
    }

    #[test]
    fn status_gives_vmrss() {
        let status = "Name:\tstarling\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss_kib(status).unwrap(), 12345);
        assert!(parse_status_rss_kib("Name:\tkthreadd\nThreads:\t1\n").is_err());
        assert!(parse_status_rss_kib("VmRSS:\t 1 MB\n").is_err());
    }

    #[test]
    fn own_process_can_be_sampled() {
        let me = ProcSample::take(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
    }

    #[test]
    fn cpu_percent_is_ticks_over_wall_time() {
        let a = ProcSample {
            at: Instant::now(),
            cpu_ticks: 100,
            rss_bytes: 0,
        };
        let b = ProcSample {
            at: a.at + Duration::from_secs(2),
            cpu_ticks: 200,
            rss_bytes: 0,
        };
        assert!((a.cpu_percent_until(&b) - 50.0).abs() < 1e-9);
        assert_eq!(b.cpu_percent_until(&a), 0.0);
    }
}
