//! Command-line interface: one subcommand per scenario, with the flags they
//! share flattened into each.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use starling_protocol::Codec;

/// Load generator for a Starling broker.
#[derive(Debug, Parser)]
#[command(
    name = "starling-bench",
    version,
    about = "Load generator for a Starling broker: fan-out, saturation, many topics, idle connections, soak",
    long_about = "Load generator for a Starling broker: fan-out, saturation, many topics, idle connections, soak.\n\n\
                  Run it against your own deployment, preferably with the broker and the bench pinned \
                  to different cores (taskset), and pass --broker-pid to see the broker's CPU and memory."
)]
pub(crate) struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// One publisher at a fixed rate to one topic with N subscribers.
    Fanout(FanoutArgs),
    /// One publisher keeping K messages in flight end to end (not yet received
    /// by every subscriber) as fast as the broker delivers, to one topic with N
    /// subscribers.
    Saturate(SaturateArgs),
    /// Many topics: subscribers spread across them, publishers round-robin.
    Topics(TopicsArgs),
    /// Many idle connections, each subscribed to one topic: connection cost
    /// and broker memory per connection.
    Idle(IdleArgs),
    /// A hostile crowd for a bounded time (churning connections, slow and
    /// stalled readers, flooders, replay requests that are never read) while
    /// a bystander checks that it loses nothing; the broker's memory over time.
    Soak(SoakArgs),
}

impl Scenario {
    /// The scenario's name, as in the report.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout(_) => "fanout",
            Scenario::Saturate(_) => "saturate",
            Scenario::Topics(_) => "topics",
            Scenario::Idle(_) => "idle",
            Scenario::Soak(_) => "soak",
        }
    }
}

/// A codec on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CodecArg {
    /// `starling.v1.json`: text frames.
    Json,
    /// `starling.v1.msgpack`: binary frames.
    Msgpack,
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Self {
        match c {
            CodecArg::Json => Codec::Json,
            CodecArg::Msgpack => Codec::MsgPack,
        }
    }
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The broker's WebSocket URL, ws:// or wss://. Nothing else is ever
    /// connected to.
    #[arg(
        long,
        env = "STARLING_BENCH_URL",
        default_value = "ws://127.0.0.1:7070/ws"
    )]
    pub(crate) url: String,

    /// Where subscriber connections go, round-robin (repeat the flag, e.g. one
    /// per cluster node); default: `--url`. Publishers always use `--url`.
    #[arg(long = "subscriber-url", value_name = "URL")]
    pub(crate) subscriber_urls: Vec<String>,

    /// A JWT every connection presents (`Authorization: Bearer`), for a
    /// broker with auth on. It must allow subscribing and publishing to the
    /// bench's topics (`<topic-prefix>.>`).
    #[arg(
        long,
        env = "STARLING_BENCH_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    pub(crate) token: Option<String>,

    /// A PEM file of certificate authorities that `wss://` connections
    /// trust besides the system's (repeat the flag for more), for a broker
    /// whose certificate a private authority signed.
    #[arg(long = "ca-file", value_name = "PEM_FILE")]
    pub(crate) ca_files: Vec<PathBuf>,

    /// Codec of the subscriber connections (and of publishers unless --publisher-codec).
    #[arg(long, value_enum, default_value_t = CodecArg::Json)]
    pub(crate) codec: CodecArg,

    /// The broker's process id: sample its CPU time and resident memory from /proc.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,

    /// Also print one machine-readable JSON summary line (after the table).
    #[arg(long)]
    pub(crate) json: bool,

    /// How many connection handshakes run at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connect_concurrency: u32,

    /// First token of every topic the bench uses.
    #[arg(long, default_value = "bench")]
    pub(crate) topic_prefix: String,

    /// Read buffer of the subscriber connections, in bytes: each connection's
    /// while it connects and subscribes, then the one buffer all are read into.
    #[arg(long, default_value_t = 16 * 1024)]
    pub(crate) read_buffer_bytes: usize,
}

/// Flags of the scenarios that publish.
#[derive(Debug, Clone, Args)]
pub(crate) struct Load {
    /// Codec of the publisher connections (default: --codec), to mix codecs.
    #[arg(long, value_enum)]
    pub(crate) publisher_codec: Option<CodecArg>,

    /// Size of each encoded payload, in bytes: a send timestamp plus padding.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,

    /// Seconds of publishing before the measured window, excluded from the stats.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub(crate) warmup: Duration,

    /// Seconds of the measured window.
    #[arg(long, default_value = "10", value_parser = parse_positive_secs)]
    pub(crate) duration: Duration,
}

/// How many subscriptions, on how many connections.
#[derive(Debug, Clone, Args)]
pub(crate) struct Subscribers {
    /// Number of subscriptions.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) subscribers: u32,

    /// Number of subscriber connections the subscriptions are spread over
    /// (default: one per subscription).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connections: Option<u32>,
}

/// `fanout`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) load: Load,
    #[command(flatten)]
    pub(crate) subs: Subscribers,
    /// Messages per second published.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub(crate) rate: f64,
}

/// `saturate`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SaturateArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) load: Load,
    #[command(flatten)]
    pub(crate) subs: Subscribers,
    /// Messages kept in flight: published and not yet received by every
    /// subscriber (and not yet acked).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) in_flight: u32,
    /// When a message stops counting as in flight.
    #[arg(long, value_enum, default_value_t = Until::Delivered)]
    pub(crate) until: Until,
}

/// When a message stops counting as in flight, in `saturate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Until {
    /// Once every subscriber has received it (and it is acked): the rate the
    /// broker sustains end to end.
    Delivered,
    /// Once the broker has acked it, as a publisher that sees only its own
    /// connection does. The broker may then queue deliveries; the report
    /// shows whether subscribers kept up (lagged, delivered ratio).
    Acked,
}

/// `topics`.
#[derive(Debug, Clone, Args)]
pub(crate) struct TopicsArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) load: Load,
    #[command(flatten)]
    pub(crate) subs: Subscribers,
    /// Number of topics.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) topics: u32,
    /// Number of publisher connections; message k goes to topic k mod T.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) publishers: u32,
    /// Messages per second published, over all publishers.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub(crate) rate: f64,
}

/// `idle`.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of idle connections, each subscribed to one topic.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connections: u32,
    /// Give each connection its own topic (default: all on one topic).
    #[arg(long)]
    pub(crate) distinct_topics: bool,
    /// Seconds to hold the connections open once all are subscribed.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub(crate) hold: Duration,
}

/// `soak`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Seconds of load; then everything stops and closes.
    #[arg(long, default_value = "60", value_parser = parse_positive_secs)]
    pub(crate) duration: Duration,
    /// Seconds between two samples of the broker's resident memory in the
    /// series.
    #[arg(long, default_value = "5", value_parser = parse_positive_secs)]
    pub(crate) sample_interval: Duration,
    /// Connections that connect, subscribe (a pattern too), publish a few
    /// small messages and close (cleanly or by dropping the socket), over
    /// and over.
    #[arg(long, default_value_t = 16)]
    pub(crate) churners: u32,
    /// Milliseconds a churner waits between two connections.
    #[arg(long, default_value_t = 100)]
    pub(crate) churn_pause_ms: u64,
    /// Subscribers of the flood topic that read one frame every
    /// --read-every-ms.
    #[arg(long, default_value_t = 8)]
    pub(crate) slow_readers: u32,
    /// Milliseconds a slow reader waits between two frames.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) read_every_ms: u64,
    /// Subscribers of the flood topic that never read their socket; when the
    /// broker drops them they connect and stall again.
    #[arg(long, default_value_t = 8)]
    pub(crate) stalled_readers: u32,
    /// Publishers to the flood topic, as fast as the broker acks.
    #[arg(long, default_value_t = 2)]
    pub(crate) flooders: u32,
    /// Publishes each flooder keeps unacknowledged.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) flood_in_flight: u32,
    /// Encoded size of the flood and history payloads, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) payload_bytes: usize,
    /// Connections that send subscribe (since 0) and unsubscribe pairs for
    /// the history topic and never read (needs a broker with --history).
    #[arg(long, default_value_t = 4)]
    pub(crate) replayers: u32,
    /// Milliseconds a replayer waits after each subscribe and each
    /// unsubscribe.
    #[arg(long, default_value_t = 10)]
    pub(crate) replay_pause_ms: u64,
    /// Messages per second published to the history topic (0: none).
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate_or_zero)]
    pub(crate) history_rate: f64,
    /// Messages per second the bystander publishes to its own topic.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub(crate) bystander_rate: f64,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{secs} s is out of range (0 to 86400)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if d.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a rate in messages per second"))?;
    if !(rate > 0.0 && rate <= 1e8) {
        return Err(format!(
            "{rate} msg/s is out of range (above 0, at most 1e8)"
        ));
    }
    Ok(rate)
}

fn parse_rate_or_zero(s: &str) -> Result<f64, String> {
    if s.parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    parse_rate(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn readme_fanout_command_parses() {
        let cli = Cli::parse_from([
            "starling-bench",
            "fanout",
            "--subscribers",
            "1000",
            "--rate",
            "200",
            "--duration",
            "20",
            "--broker-pid",
            "42",
        ]);
        let Scenario::Fanout(args) = cli.scenario else {
            panic!("fanout parses as fanout")
        };
        assert_eq!(args.subs.subscribers, 1000);
        assert_eq!(args.rate, 200.0);
        assert_eq!(args.load.duration, Duration::from_secs(20));
        assert_eq!(args.common.broker_pid, Some(42));
        assert_eq!(args.common.url, "ws://127.0.0.1:7070/ws");
        assert_eq!(args.common.token, None);
        assert!(args.common.ca_files.is_empty());
    }

    #[test]
    fn takes_a_token_and_ca_files() {
        let cli = Cli::parse_from([
            "starling-bench",
            "saturate",
            "--url",
            "wss://broker.example:443/ws",
            "--token",
            "a.b.c",
            "--ca-file",
            "one.pem",
            "--ca-file",
            "two.pem",
        ]);
        let Scenario::Saturate(args) = cli.scenario else {
            panic!("saturate parses as saturate")
        };
        assert_eq!(args.common.token.as_deref(), Some("a.b.c"));
        assert_eq!(
            args.common.ca_files,
            [PathBuf::from("one.pem"), PathBuf::from("two.pem")]
        );
    }

    #[test]
    fn saturate_counts_in_flight_until_delivered_unless_told() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["starling-bench", "saturate", "--in-flight", "16"];
            argv.extend_from_slice(extra);
            let Scenario::Saturate(args) = Cli::parse_from(argv).scenario else {
                panic!("saturate parses as saturate")
            };
            (args.in_flight, args.until)
        };
        assert_eq!(parse(&[]), (16, Until::Delivered));
        assert_eq!(parse(&["--until", "acked"]), (16, Until::Acked));
    }

    #[test]
    fn idle_takes_connections_and_distinct_topics() {
        let cli = Cli::parse_from([
            "starling-bench",
            "idle",
            "--connections",
            "10000",
            "--distinct-topics",
            "--hold",
            "2.5",
        ]);
        let Scenario::Idle(args) = cli.scenario else {
            panic!("idle parses as idle")
        };
        assert_eq!(args.connections, 10_000);
        assert!(args.distinct_topics);
        assert_eq!(args.hold, Duration::from_millis(2500));
    }

    #[test]
    fn soak_has_defaults_for_a_long_run() {
        let cli = Cli::parse_from([
            "starling-bench",
            "soak",
            "--duration",
            "600",
            "--broker-pid",
            "42",
        ]);
        let Scenario::Soak(args) = cli.scenario else {
            panic!("soak parses as soak")
        };
        assert_eq!(args.duration, Duration::from_secs(600));
        assert_eq!(args.sample_interval, Duration::from_secs(5));
        assert_eq!(args.common.broker_pid, Some(42));
        assert_eq!(
            (args.churners, args.slow_readers, args.stalled_readers),
            (16, 8, 8)
        );
        assert_eq!(
            (args.flooders, args.flood_in_flight, args.replayers),
            (2, 8, 4)
        );
        assert_eq!(args.payload_bytes, 65_536);
        assert_eq!(args.read_every_ms, 20);
        assert_eq!(args.history_rate, 20.0);
        assert_eq!(args.bystander_rate, 100.0);
        // Without --duration: one minute.
        let Scenario::Soak(args) = Cli::parse_from(["starling-bench", "soak"]).scenario else {
            panic!("soak parses as soak")
        };
        assert_eq!(args.duration, Duration::from_secs(60));
    }

    #[test]
    fn soak_takes_every_role_count_and_zero_of_any() {
        let cli = Cli::parse_from([
            "starling-bench",
            "soak",
            "--churners",
            "0",
            "--slow-readers",
            "3",
            "--read-every-ms",
            "5",
            "--stalled-readers",
            "2",
            "--flooders",
            "1",
            "--flood-in-flight",
            "4",
            "--payload-bytes",
            "1024",
            "--replayers",
            "0",
            "--history-rate",
            "0",
            "--bystander-rate",
            "250",
            "--sample-interval",
            "0.5",
        ]);
        let Scenario::Soak(args) = cli.scenario else {
            panic!("soak parses as soak")
        };
        assert_eq!((args.churners, args.slow_readers), (0, 3));
        assert_eq!(
            (args.stalled_readers, args.flooders, args.replayers),
            (2, 1, 0)
        );
        assert_eq!((args.read_every_ms, args.flood_in_flight), (5, 4));
        assert_eq!(args.payload_bytes, 1024);
        assert_eq!((args.history_rate, args.bystander_rate), (0.0, 250.0));
        assert_eq!(args.sample_interval, Duration::from_millis(500));
        for bad in [
            ["--read-every-ms", "0"],
            ["--flood-in-flight", "0"],
            ["--bystander-rate", "0"],
            ["--sample-interval", "0"],
        ] {
            let mut argv = vec!["starling-bench", "soak"];
            argv.extend_from_slice(&bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_positive_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert_eq!(parse_rate_or_zero("0"), Ok(0.0));
        assert!(parse_rate_or_zero("-1").is_err());
    }
}
