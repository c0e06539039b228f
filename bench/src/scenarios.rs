//! The scenarios: who subscribes to what, who publishes how, and when the
//! broker is sampled. The main thread runs this; the subscribers and the
//! publishers each have their own thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use starling_protocol::{Codec, Topic};

use crate::cli::{Common, IdleArgs, Load, Scenario, Subscribers as SubscriberArgs, Until};
use crate::procfs::ProcSample;
use crate::publisher::{Mode, Progress, PublisherPlan, Publishers, Schedule};
use crate::report::{BrokerFigures, LoadFigures, SubscriberFigures, Summary};
use crate::stats::{Window, now_ns};
use crate::subscribers::{Ready, SubscriberPlan, SubscriberReport, Subscribers};
use crate::ws::{self, Dialer};

/// File descriptors kept free beyond one per connection.
const SPARE_FDS: u64 = 64;

/// Runs one scenario to the end.
pub(crate) fn run(scenario: &Scenario) -> Result<Summary> {
    let name = scenario.name();
    match scenario {
        Scenario::Fanout(a) => run_load(LoadSpec {
            name,
            topics: vec![topic(&a.common, "fanout")?],
            publishers: 1,
            mode: Mode::Rate(a.rate),
            common: &a.common,
            load: &a.load,
            subs: &a.subs,
        }),
        Scenario::Saturate(a) => run_load(LoadSpec {
            name,
            topics: vec![topic(&a.common, "saturate")?],
            publishers: 1,
            mode: Mode::Saturate {
                in_flight: a.in_flight as usize,
                until: a.until,
            },
            common: &a.common,
            load: &a.load,
            subs: &a.subs,
        }),
        Scenario::Topics(a) => run_load(LoadSpec {
            name,
            topics: (0..a.topics)
                .map(|i| topic(&a.common, &format!("topics.{i}")))
                .collect::<Result<_>>()?,
            publishers: a.publishers as usize,
            mode: Mode::Rate(a.rate),
            common: &a.common,
            load: &a.load,
            subs: &a.subs,
        }),
        Scenario::Idle(a) => run_idle(name, a),
        Scenario::Soak(_) => bail!("soak has a runner of its own (soak::run)"),
    }
}

/// `<prefix>.<rest>`, validated.
fn topic(common: &Common, rest: &str) -> Result<String> {
    let name = format!("{}.{rest}", common.topic_prefix);
    Topic::new(&name)
        .with_context(|| format!("--topic-prefix gives the invalid topic {name:?}"))?;
    Ok(name)
}

/// Spreads `subscriptions` over `connections` and `topics`: subscription i is
/// on connection c = i mod `connections`, in round r = i div `connections`,
/// and on topic (c + r) mod `topics`. Every round spreads evenly over the
/// topics, and a connection's subscriptions are on distinct topics as long as
/// there are enough topics. A connection subscribes to each of its topics once
/// (the broker would deliver a repeated subscription once anyway); returns
/// how many repeats were dropped.
pub(crate) fn spread(
    subscriptions: usize,
    connections: usize,
    topics: usize,
) -> (Vec<Vec<usize>>, u64) {
    let connections = connections.max(1);
    let topics = topics.max(1);
    let mut per_connection = vec![Vec::new(); connections];
    for i in 0..subscriptions {
        let (c, round) = (i % connections, i / connections);
        per_connection[c].push((c + round) % topics);
    }
    let mut repeats = 0;
    for list in &mut per_connection {
        let before = list.len();
        list.sort_unstable();
        list.dedup();
        repeats += (before - list.len()) as u64;
    }
    (per_connection, repeats)
}

/// Raises this process's open file limit to hold `connections`.
fn raise_nofile(connections: u64) -> Result<()> {
    let want = connections + SPARE_FDS;
    let got = rlimit::increase_nofile_limit(want).context("cannot raise RLIMIT_NOFILE")?;
    if got < want {
        bail!(
            "{connections} connections need {want} open files but RLIMIT_NOFILE allows only {got}: \
             raise the hard limit (ulimit -Hn, or LimitNOFILE= for a service)"
        );
    }
    Ok(())
}

/// Samples the broker, if there is one to sample; a failure is noted once.
pub(crate) fn sample(pid: Option<u32>, notes: &mut Vec<String>) -> Option<ProcSample> {
    match ProcSample::take(pid?) {
        Ok(s) => Some(s),
        Err(e) => {
            let note = format!("broker sampling failed: {e:#}");
            if !notes.contains(&note) {
                notes.push(note);
            }
            None
        }
    }
}

fn own_sample() -> Option<ProcSample> {
    ProcSample::take(std::process::id()).ok()
}

fn cpu(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(a?.cpu_percent_until(&b?))
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn subscriber_figures(
    subscriptions_planned: u64,
    plan: &SubscriberPlan,
    ready: &Ready,
    report: &SubscriberReport,
) -> SubscriberFigures {
    SubscriberFigures {
        subscriptions_planned,
        connections_planned: plan.per_connection.len() as u64,
        topics: plan.topics.len() as u64,
        connected: ready.connected,
        connect_failures: ready.failures.clone(),
        connect_secs: ready.took.as_secs_f64(),
        subscriptions: ready.subscriptions,
        refused: ready.refused.clone(),
        errors: report.stats.errors.clone(),
        closes: report.stats.closes.clone(),
        disconnects: report.stats.disconnects.clone(),
        closed_cleanly: report.closed_cleanly,
        lagged_frames: report.stats.lagged_frames,
        missed: report.stats.missed,
    }
}

/// Notes about the subscribers that hold for every scenario.
fn subscriber_notes(ready: &Ready, report: &SubscriberReport, notes: &mut Vec<String>) {
    if !ready.failures.is_empty() {
        notes.push(format!(
            "{} subscriber connections failed: {}",
            ready.failures.total(),
            ready.failures
        ));
    }
    if report.close_timeouts > 0 {
        notes.push(format!(
            "{} connections did not complete the closing handshake within 2 s",
            report.close_timeouts
        ));
    }
    if report.stats.undecodable > 0 {
        notes.push(format!(
            "{} frames from the broker did not decode",
            report.stats.undecodable
        ));
    }
    if let Some(limits) = &ready.limits {
        let most = ready.per_topic.len().min(ready.subscriptions as usize) as u64;
        if !ready.refused.is_empty() && most > limits.max_subscriptions {
            notes.push(format!(
                "the broker allows {} subscriptions per connection",
                limits.max_subscriptions
            ));
        }
    }
}

/// Over this share of its two threads' core, the bench may be what limits the run.
const BENCH_BUSY_PERCENT: f64 = 90.0;

fn bench_note(cpu: Option<f64>, notes: &mut Vec<String>) {
    if let Some(c) = cpu.filter(|c| *c >= BENCH_BUSY_PERCENT) {
        notes.push(format!(
            "the bench used {c:.0} % of a core: it may be the bottleneck (give it a core of its own)"
        ));
    }
}

struct LoadSpec<'a> {
    name: &'static str,
    topics: Vec<String>,
    publishers: usize,
    mode: Mode,
    common: &'a Common,
    load: &'a Load,
    subs: &'a SubscriberArgs,
}

impl Common {
    /// The URLs subscriber connections go to.
    fn subscriber_urls(&self) -> Vec<String> {
        if self.subscriber_urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.subscriber_urls.clone()
        }
    }

    /// What the connections to `urls` (checked) present.
    fn dialer(&self, urls: &[String]) -> Result<Dialer> {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Dialer::new(self.token.as_deref(), &self.ca_files, &urls)
    }
}

/// One connection [`probe`] opens.
struct Probe<'a> {
    url: &'a str,
    codec: Codec,
    subscribe_to: Option<&'a str>,
    publish_to: Option<&'a str>,
}

/// Opens one connection per distinct URL before the load ([`ws::probe`]):
/// a refused token, an untrusted certificate or missing permissions end the
/// run at once, with the broker's words.
fn probe(dialer: &Dialer, probes: &[Probe<'_>]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the probe's runtime")?;
    runtime.block_on(async {
        for (i, p) in probes.iter().enumerate() {
            // Subscriber URLs repeated for their share of connections.
            if probes[..i]
                .iter()
                .any(|q| q.url == p.url && q.publish_to == p.publish_to)
            {
                continue;
            }
            ws::probe(dialer, p.url, p.codec, p.subscribe_to, p.publish_to).await?;
        }
        Ok(())
    })
}

fn run_load(spec: LoadSpec<'_>) -> Result<Summary> {
    let common = spec.common;
    let subscriber_urls = common.subscriber_urls();
    let mut urls = subscriber_urls.clone();
    urls.push(common.url.clone());
    let dialer = common.dialer(&urls)?;
    let subscriptions = spec.subs.subscribers as usize;
    let connections = spec.subs.connections.unwrap_or(spec.subs.subscribers) as usize;
    raise_nofile((connections + spec.publishers) as u64)?;
    let codec = Codec::from(common.codec);
    let publisher_codec = spec.load.publisher_codec.map_or(codec, Codec::from);
    let topics = Arc::new(spec.topics);
    let mut probes: Vec<Probe<'_>> = subscriber_urls
        .iter()
        .map(|url| Probe {
            url,
            codec,
            subscribe_to: Some(&topics[0]),
            publish_to: None,
        })
        .collect();
    probes.push(Probe {
        url: &common.url,
        codec: publisher_codec,
        subscribe_to: None,
        publish_to: Some(&topics[0]),
    });
    probe(&dialer, &probes)?;
    let (per_connection, repeats) = spread(subscriptions, connections, topics.len());
    let mut notes = Vec::new();
    if repeats > 0 {
        notes.push(format!(
            "{repeats} subscriptions repeat a topic on the same connection and count once \
             (the broker delivers once per connection and topic)"
        ));
    }

    let pid = common.broker_pid;
    let before = match pid {
        Some(pid) => Some(ProcSample::take(pid)?),
        None => None,
    };
    eprintln!(
        "connecting {connections} subscriber connections ({subscriptions} subscriptions on {} topics)...",
        topics.len()
    );
    let progress = Arc::new(Progress::default());
    let plan = SubscriberPlan {
        urls: subscriber_urls,
        dialer: dialer.clone(),
        codec,
        topics: topics.clone(),
        per_connection,
        concurrency: common.connect_concurrency as usize,
        read_buffer_bytes: common.read_buffer_bytes,
        progress: progress.clone(),
    };
    let (subscribers, ready) = Subscribers::start(plan.clone())?;
    // Each message reaches the subscribers of its topic (on average over topics).
    progress.set_fanout(ready.subscriptions / topics.len().max(1) as u64);
    let subscribed = sample(pid, &mut notes);
    eprintln!(
        "  {} connected, {} failed in {:.2} s",
        ready.connected,
        ready.failures.total(),
        ready.took.as_secs_f64()
    );
    if ready.connected == 0 {
        let _ = subscribers.finish(0);
        bail!(
            "no subscriber connection could be opened: {}",
            ready.failures
        );
    }

    let (publishers, publisher_ready) = Publishers::start(PublisherPlan {
        url: common.url.clone(),
        dialer,
        codec: publisher_codec,
        payload_bytes: spec.load.payload_bytes,
        topics,
        publishers: spec.publishers,
        mode: spec.mode,
        progress,
    })?;
    if publisher_ready.connected == 0 {
        let _ = subscribers.finish(0);
        bail!(
            "no publisher connection could be opened: {}",
            publisher_ready.failures
        );
    }

    let warmup = spec.load.warmup;
    let duration = spec.load.duration;
    let begin = Instant::now();
    let begin_ns = now_ns();
    let window = Window {
        start_ns: begin_ns + warmup.as_nanos() as u64,
        end_ns: begin_ns + (warmup + duration).as_nanos() as u64,
    };
    subscribers.measure(window);
    let running = publishers.go(Schedule {
        begin,
        end: begin + warmup + duration,
        window,
    });
    eprintln!(
        "publishing: {:.1} s warmup, then {:.1} s measured...",
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );
    sleep_until(begin + warmup);
    let at_start = sample(pid, &mut notes);
    let own_start = own_sample();
    sleep_until(begin + warmup + duration);
    let at_end = sample(pid, &mut notes);
    let own_end = own_sample();

    let published = running.join()?;
    let expected: u64 = published
        .in_window
        .iter()
        .zip(&ready.per_topic)
        .map(|(messages, subscribers)| messages * subscribers)
        .sum();
    let report = subscribers.finish(expected)?;

    let stats = &report.stats;
    let window_secs = duration.as_secs_f64();
    let load = LoadFigures {
        publisher_codec,
        publishers: publisher_ready.connected,
        publisher_failures: publisher_ready.failures.clone(),
        rate: match spec.mode {
            Mode::Rate(rate) => Some(rate),
            Mode::Saturate { .. } => None,
        },
        in_flight: match spec.mode {
            Mode::Rate(_) => None,
            Mode::Saturate { in_flight, .. } => Some(in_flight as u64),
        },
        in_flight_until: match spec.mode {
            Mode::Rate(_) => None,
            Mode::Saturate { until, .. } => Some(match until {
                Until::Delivered => "delivered",
                Until::Acked => "acked",
            }),
        },
        payload_bytes: published.payload_len,
        warmup_secs: warmup.as_secs_f64(),
        window_secs,
        published_total: published.published,
        published: published.measured(),
        expected,
        received: stats.received,
        received_total: stats.received_total,
        unstamped: stats.unstamped,
        latency: stats.latency.percentiles(),
        acks: published.acks,
        unacked: published.unacked,
        ack_latency: published.ack_latency.percentiles(),
        publisher_errors: published.errors.clone(),
        publisher_closes: published.closes.clone(),
        publisher_disconnects: published.disconnects.clone(),
        max_backlog: published.max_backlog,
        drained_secs: report.drained_in.as_secs_f64(),
    };

    if !publisher_ready.failures.is_empty() {
        notes.push(format!(
            "{} publisher connections failed: {}",
            publisher_ready.failures.total(),
            publisher_ready.failures
        ));
    }
    subscriber_notes(&ready, &report, &mut notes);
    if let Mode::Rate(rate) = spec.mode {
        let achieved = load.published as f64 / window_secs;
        if achieved < 0.99 * rate {
            notes.push(format!(
                "the publishers reached {achieved:.1} of {rate} msg/s (up to {} messages behind \
                 schedule): the broker or this machine could not take the rate",
                load.max_backlog
            ));
        }
    }
    if load.published == 0 {
        notes.push("nothing was published in the measured window".into());
    }
    if load.received < expected {
        let missing = expected - load.received;
        if stats.lagged_frames == 0 {
            notes.push(format!(
                "{missing} deliveries missing with no lagged frame (lost or later than 2 s)"
            ));
        } else if report.drained_in >= Duration::from_secs(2) {
            notes.push(format!(
                "{missing} deliveries still missing 2 s after the last publish"
            ));
        }
    }
    if load.received > expected {
        notes.push(format!(
            "{} more deliveries than expected (duplicates?)",
            load.received - expected
        ));
    }
    if load.unstamped > 0 {
        notes.push(format!(
            "{} deliveries carried no timestamp (another publisher on the bench's topics?)",
            load.unstamped
        ));
    }
    let bench_cpu_percent = cpu(own_start, own_end);
    bench_note(bench_cpu_percent, &mut notes);

    Ok(Summary {
        scenario: spec.name,
        url: common.url.clone(),
        codec,
        subscribers: subscriber_figures(subscriptions as u64, &plan, &ready, &report),
        load: Some(load),
        hold_secs: None,
        bench_cpu_percent,
        broker: before.map(|before| BrokerFigures {
            pid: pid.expect("sampled, so given"),
            cpu_percent: cpu(at_start, at_end),
            connect_cpu_percent: cpu(Some(before), subscribed),
            rss_before: before.rss_bytes,
            rss_subscribed: subscribed.map(|s| s.rss_bytes),
            rss_end: at_end.map(|s| s.rss_bytes),
        }),
        notes,
    })
}

fn run_idle(name: &'static str, args: &IdleArgs) -> Result<Summary> {
    let common = &args.common;
    let urls = common.subscriber_urls();
    let dialer = common.dialer(&urls)?;
    let connections = args.connections as usize;
    raise_nofile(connections as u64)?;
    let codec = Codec::from(common.codec);
    let topics: Vec<String> = if args.distinct_topics {
        (0..connections)
            .map(|i| topic(common, &format!("idle.{i}")))
            .collect::<Result<_>>()?
    } else {
        vec![topic(common, "idle")?]
    };
    let per_connection = (0..connections)
        .map(|i| vec![if args.distinct_topics { i } else { 0 }])
        .collect();
    let probes: Vec<Probe<'_>> = urls
        .iter()
        .map(|url| Probe {
            url,
            codec,
            subscribe_to: Some(&topics[0]),
            publish_to: None,
        })
        .collect();
    probe(&dialer, &probes)?;
    let plan = SubscriberPlan {
        urls,
        dialer,
        codec,
        topics: Arc::new(topics),
        per_connection,
        concurrency: common.connect_concurrency as usize,
        read_buffer_bytes: common.read_buffer_bytes,
        progress: Arc::default(),
    };

    let mut notes = Vec::new();
    let pid = common.broker_pid;
    let before = match pid {
        Some(pid) => Some(ProcSample::take(pid)?),
        None => None,
    };
    eprintln!(
        "connecting {connections} idle connections ({} topics)...",
        plan.topics.len()
    );
    let (subscribers, ready) = Subscribers::start(plan.clone())?;
    let subscribed = sample(pid, &mut notes);
    let own_start = own_sample();
    eprintln!(
        "  {} connected, {} failed in {:.2} s; holding {:.1} s...",
        ready.connected,
        ready.failures.total(),
        ready.took.as_secs_f64(),
        args.hold.as_secs_f64()
    );
    std::thread::sleep(args.hold);
    let at_end = sample(pid, &mut notes);
    let own_end = own_sample();
    let report = subscribers.finish(0)?;

    subscriber_notes(&ready, &report, &mut notes);
    let bench_cpu_percent = cpu(own_start, own_end);
    if ready.connected == 0 {
        bail!("no connection could be opened: {}", ready.failures);
    }
    Ok(Summary {
        scenario: name,
        url: common.url.clone(),
        codec,
        subscribers: subscriber_figures(connections as u64, &plan, &ready, &report),
        load: None,
        hold_secs: Some(args.hold.as_secs_f64()),
        bench_cpu_percent,
        broker: before.map(|before| BrokerFigures {
            pid: pid.expect("sampled, so given"),
            cpu_percent: cpu(subscribed, at_end),
            connect_cpu_percent: cpu(Some(before), subscribed),
            rss_before: before.rss_bytes,
            rss_subscribed: subscribed.map(|s| s.rss_bytes),
            rss_end: at_end.map(|s| s.rss_bytes),
        }),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_per_connection_by_default() {
        let (plan, repeats) = spread(4, 4, 1);
        assert_eq!(plan, vec![vec![0]; 4]);
        assert_eq!(repeats, 0);
    }

    #[test]
    fn subscriptions_spread_over_fewer_connections_and_topics() {
        let (plan, repeats) = spread(6, 2, 3);
        assert_eq!(plan, vec![vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(repeats, 0);
    }

    #[test]
    fn a_connection_gets_distinct_topics_when_there_are_enough() {
        // 4 subscriptions per connection; 500 is a multiple of 50.
        let (plan, repeats) = spread(2000, 500, 50);
        assert_eq!(repeats, 0);
        assert!(plan.iter().all(|topics| topics.len() == 4));
        let mut per_topic = vec![0; 50];
        for topic in plan.iter().flatten() {
            per_topic[*topic] += 1;
        }
        assert!(per_topic.iter().all(|n| *n == 40), "{per_topic:?}");
    }

    #[test]
    fn repeated_topics_on_a_connection_count_once() {
        let (plan, repeats) = spread(10, 2, 1);
        assert_eq!(plan, vec![vec![0], vec![0]]);
        assert_eq!(repeats, 8);
    }
}
