//! `soak`: a hostile or careless crowd against the broker for a bounded
//! time, all at once, while a bystander checks that it loses nothing and the
//! broker's resident memory is sampled.
//!
//! | module | what |
//! | --- | --- |
//! | `plan` | the topics, sizes and paces every role shares; the stop signal |
//! | `counts` | what each role did, counted as it happens |
//! | `conn` | one connection: open, count what arrives, drain, close |
//! | `churn` | churners |
//! | `readers` | slow and stalled readers of the flood topic |
//! | `writers` | flooders, the history publisher, replayers |
//! | `bystander` | the well-behaved pair and its sequence check |
//! | `report` | the table and the JSON line |
//!
//! The crowd runs as tasks of one tokio runtime on the calling thread, the
//! bystander on a thread of its own. Every await that waits on the broker
//! ends when the load ends, and every close is bounded, so the command ends
//! within the load's duration plus about ten seconds whatever the broker does.

mod bystander;
mod churn;
mod conn;
mod counts;
mod plan;
mod readers;
mod report;
mod writers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinSet;

use self::bystander::{Bystander, BystanderReport};
use self::counts::Shared;
use self::plan::{Plan, Stop};
use self::report::{BrokerSeries, RoleFigures, SoakSummary};
use self::writers::Pace;
use crate::cli::SoakArgs;
use crate::procfs::ProcSample;
use crate::scenarios::sample;
use crate::ws;

/// How long the setup before the load may take: the check (one connection
/// that subscribes and publishes) and the bystander's subscription.
const SETUP_WAIT: Duration = Duration::from_secs(5);

/// How long the roles get to close their connections once the load ends.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// How long the broker is left alone after the closes, before the last
/// sample of its memory.
const SETTLE: Duration = Duration::from_secs(2);

/// How often the broker's memory is sampled for its peak.
const PEAK_EVERY: Duration = Duration::from_millis(250);

/// Over this share of a core, the bench may be what limits the run.
const BENCH_BUSY_PERCENT: f64 = 90.0;

/// Runs the soak to its end.
pub(crate) fn run(args: &SoakArgs) -> Result<SoakSummary> {
    let plan = Arc::new(Plan::new(args)?);
    let pid = args.common.broker_pid;
    let mut notes = Vec::new();
    // Before the bench connects anything.
    let start = sample(pid, &mut notes);
    if let Some(pid) = pid
        && start.is_none()
    {
        return Err(anyhow!("cannot sample the broker's process {pid}"));
    }
    let tasks = [
        args.churners,
        args.slow_readers,
        args.stalled_readers,
        args.flooders,
        args.replayers,
    ]
    .iter()
    .map(|n| u64::from(*n))
    .sum::<u64>();
    // Each task holds one connection at a time, plus the bystander's two,
    // the history publisher and what closing sockets still hold.
    rlimit::increase_nofile_limit(2 * tasks + 64).context("cannot raise RLIMIT_NOFILE")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the soak's runtime")?;
    let (stop_tx, stop) = Stop::new();
    let bench_start = ProcSample::take(std::process::id()).ok();

    let result = runtime.block_on(async {
        let probe = ws::probe(
            &plan.dialer,
            &plan.url,
            plan.codec,
            Some(&plan.topics.flood),
            Some(&plan.topics.bystander),
        );
        let setup_ends = Instant::now() + SETUP_WAIT;
        tokio::time::timeout(SETUP_WAIT, probe)
            .await
            .map_err(|_| anyhow!("{}: no answer within {} s", plan.url, SETUP_WAIT.as_secs()))??;
        // Its own thread: blocking here for its setup is fine.
        let wait = setup_ends
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let bystander = Bystander::start(plan.clone(), stop.clone(), wait)?;
        let mut crowd = Crowd::start(&plan, args, &stop);
        eprintln!(
            "soak: {} tasks against {} for {:.0} s",
            crowd.tasks.len(),
            plan.url,
            args.duration.as_secs_f64()
        );
        let load = sample_load(pid, args, start.map_or(0, |s| s.rss_bytes), &mut notes).await;
        let _ = stop_tx.send(true);
        crowd.wind_down().await;
        Ok::<_, anyhow::Error>((bystander, crowd.figures(), load))
    });
    // Whatever the crowd left running goes with its runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (bystander, roles, load) = result?;
    let bystander = bystander.join().unwrap_or_else(|| {
        notes.push("the bystander did not finish in time: its figures are missing".to_owned());
        BystanderReport::default()
    });
    let bench_end = ProcSample::take(std::process::id()).ok();

    std::thread::sleep(SETTLE);
    let end = sample(pid, &mut notes);
    let settle_secs = load.ended.elapsed().as_secs_f64();

    let history = roles
        .iter()
        .find(|r| r.name == "history_publisher")
        .map(|r| &r.counts);
    let history_kept = history.and_then(writers::history_kept);
    notes_for(args, &roles, history_kept, &bystander, &mut notes);
    let bench_cpu_percent = match (bench_start, bench_end) {
        (Some(a), Some(b)) => Some(a.cpu_percent_until(&b)),
        _ => None,
    };
    if let Some(c) = bench_cpu_percent.filter(|c| *c >= BENCH_BUSY_PERCENT) {
        notes.push(format!(
            "the bench used {c:.0} % of a core: it may be the bottleneck (give it a core of its own)"
        ));
    }
    let broker = start.map(|start| {
        let rss_end = end.map(|e| e.rss_bytes);
        BrokerSeries {
            pid: pid.expect("a sample means a pid"),
            cpu_percent: load.cpu_percent,
            rss_start: start.rss_bytes,
            rss_peak: load.rss_peak.max(rss_end.unwrap_or(0)),
            rss_end,
            series: load.series,
            interval_secs: args.sample_interval.as_secs_f64(),
        }
    });
    if broker.is_none() {
        notes.push("no --broker-pid: the broker's memory and CPU were not sampled".to_owned());
    }
    Ok(SoakSummary {
        url: plan.url.clone(),
        codec: plan.codec,
        load_secs: load.secs,
        settle_secs,
        payload_bytes: plan.large.payload_len(),
        roles,
        history_kept,
        bystander,
        broker,
        bench_cpu_percent,
        notes,
    })
}

/// The crowd's tasks, by role.
struct Crowd {
    tasks: JoinSet<()>,
    roles: Vec<(&'static str, u32, Shared)>,
}

impl Crowd {
    /// Spawns every role's tasks on the current runtime.
    fn start(plan: &Arc<Plan>, args: &SoakArgs, stop: &Stop) -> Self {
        let mut crowd = Crowd {
            tasks: JoinSet::new(),
            roles: Vec::new(),
        };
        crowd.spawn("churners", args.churners, |i, counts| {
            churn::churner(i, plan.clone(), counts, stop.clone())
        });
        crowd.spawn("slow_readers", args.slow_readers, |_, counts| {
            readers::slow_reader(plan.clone(), counts, stop.clone())
        });
        crowd.spawn("stalled_readers", args.stalled_readers, |_, counts| {
            readers::stalled_reader(plan.clone(), counts, stop.clone())
        });
        let in_flight = Pace::InFlight(plan.flood_in_flight);
        crowd.spawn("flooders", args.flooders, |_, counts| {
            let flood = plan.topics.flood.clone();
            writers::publisher(plan.clone(), flood, in_flight, counts, stop.clone())
        });
        crowd.spawn("replayers", args.replayers, |_, counts| {
            writers::replayer(plan.clone(), counts, stop.clone())
        });
        let history_publishers = u32::from(plan.history_rate > 0.0);
        let rate = Pace::Rate(plan.history_rate);
        crowd.spawn("history_publisher", history_publishers, |_, counts| {
            let history = plan.topics.history.clone();
            writers::publisher(plan.clone(), history, rate, counts, stop.clone())
        });
        crowd
    }

    /// Spawns `n` tasks of one role, which share its counts.
    fn spawn<F, Fut>(&mut self, name: &'static str, n: u32, mut task: F)
    where
        F: FnMut(usize, Shared) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let counts = Shared::default();
        for i in 0..n {
            self.tasks.spawn(task(i as usize, counts.clone()));
        }
        self.roles.push((name, n, counts));
    }

    /// Waits (at most [`WIND_DOWN`]) for every task to close its
    /// connection, and stops those that have not.
    async fn wind_down(&mut self) {
        let deadline = tokio::time::Instant::now() + WIND_DOWN;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }

    /// Every role's figures, once its tasks are done.
    fn figures(&self) -> Vec<RoleFigures> {
        self.roles
            .iter()
            .map(|(name, n, counts)| RoleFigures {
                name,
                tasks: u64::from(*n),
                counts: counts.snapshot(),
            })
            .collect()
    }
}

/// What the sampling through the load saw.
struct LoadSamples {
    /// When the load ended.
    ended: Instant,
    secs: f64,
    cpu_percent: Option<f64>,
    rss_peak: u64,
    series: Vec<u64>,
}

/// Samples the broker through the load: its memory every
/// `--sample-interval` for the series and four times a second for the
/// peak, its CPU from the first sample to the last.
async fn sample_load(
    pid: Option<u32>,
    args: &SoakArgs,
    rss_start: u64,
    notes: &mut Vec<String>,
) -> LoadSamples {
    let began = Instant::now();
    let first = sample(pid, notes);
    let mut series: Vec<u64> = first.iter().map(|s| s.rss_bytes).collect();
    let mut rss_peak = rss_start.max(first.map_or(0, |s| s.rss_bytes));
    let mut next_point = began + args.sample_interval;
    let end = began + args.duration;
    let mut last = first;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let wake = (now + PEAK_EVERY).min(next_point).min(end);
        tokio::time::sleep_until(wake.into()).await;
        let Some(s) = sample(pid, notes) else {
            continue;
        };
        rss_peak = rss_peak.max(s.rss_bytes);
        if Instant::now() >= next_point {
            series.push(s.rss_bytes);
            next_point += args.sample_interval;
        }
        last = Some(s);
    }
    let ended = Instant::now();
    let cpu_percent = match (first, last) {
        (Some(a), Some(b)) => Some(a.cpu_percent_until(&b)),
        _ => None,
    };
    LoadSamples {
        ended,
        secs: ended.duration_since(began).as_secs_f64(),
        cpu_percent,
        rss_peak,
        series,
    }
}

/// What is worth a second look: the bystander's losses, a broker without
/// history for the replayers, roles that never got a connection.
fn notes_for(
    args: &SoakArgs,
    roles: &[RoleFigures],
    history_kept: Option<bool>,
    bystander: &BystanderReport,
    notes: &mut Vec<String>,
) {
    if bystander.lost > 0 {
        notes.push(format!(
            "the bystander lost {} of {} messages",
            bystander.lost, bystander.publisher.published
        ));
    }
    if args.replayers > 0 {
        match history_kept {
            Some(false) => notes.push(
                "the broker keeps no history on the history topic (its publish acks carry no \
                 offset): the replay requests cost it nothing; start it with --history N"
                    .to_owned(),
            ),
            None if args.history_rate == 0.0 => notes.push(
                "--history-rate 0: the replayers ask for whatever history the topic holds"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    for role in roles {
        if role.tasks > 0 && role.counts.connections == 0 {
            notes.push(format!(
                "no {} connection opened: {}",
                role.name.replace('_', " "),
                role.counts.connect_failures
            ));
        }
    }
}
