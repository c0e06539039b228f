//! Broker configuration: every setting is a command-line flag and an
//! environment variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use starling_protocol::Limits;

use crate::proxy::TrustedNet;

/// What happens to a subscriber that falls behind by more than its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Drop the oldest messages for it and tell it with a `lagged` frame.
    Lagged,
    /// Close the connection with 4008.
    Disconnect,
}

/// Where topic histories are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryStore {
    /// In the broker's memory: lost when it stops (a new epoch then).
    Memory,
    /// In Redis (`--redis-url`), as streams: shared by a cluster's nodes,
    /// kept across broker restarts.
    Redis,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A secret setting (a JWT secret, an API key): kept out of logs and
/// `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// The broker's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling: a pub/sub message broker over WebSockets"
)]
pub struct Config {
    /// Address to listen on, for WebSocket (`/ws`) and HTTP alike.
    #[arg(long, env = "STARLING_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Connections the kernel may hold completed but not yet accepted (the
    /// `listen` backlog; the kernel caps it at `net.core.somaxconn`). A short
    /// queue makes a burst of clients reconnecting at once wait for SYN
    /// retries, a second or more each.
    #[arg(long, env = "STARLING_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Threads that run connections (default: one per core the process may
    /// use, as `taskset` or a container's CPU set allows). With one, the
    /// broker runs tokio's single-threaded scheduler: connections take turns
    /// strictly in order and nothing is shared between threads, which is the
    /// fastest way to use a single core.
    #[arg(long, env = "STARLING_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// This node's id, sent in `welcome` (default: generated at start).
    #[arg(long, env = "STARLING_NODE_ID")]
    pub node_id: Option<String>,

    /// Largest WebSocket message a client may send, in bytes, as encoded.
    /// A message over it gets `message_too_large`; one over twice it is closed with 1009.
    #[arg(long, env = "STARLING_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most subscriptions one connection may hold.
    #[arg(long, env = "STARLING_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,

    /// Most of one connection's subscriptions that may be patterns (`*`,
    /// `>`): a publish reaches each matching pattern as one more delivery,
    /// so many overlapping patterns multiply one message.
    #[arg(long, env = "STARLING_MAX_PATTERNS", default_value_t = 64)]
    pub max_patterns: usize,

    /// Most concurrent connections, WebSocket and HTTP (an open keep-alive
    /// connection counts); more are refused with HTTP 503.
    #[arg(long, env = "STARLING_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Messages a subscriber may fall behind on a topic before it lags
    /// (the capacity of each topic's broadcast ring).
    #[arg(long, env = "STARLING_SUBSCRIBER_BUFFER", default_value_t = 1024)]
    pub subscriber_buffer: usize,

    /// Bytes of messages (payload and topic) a subscriber may fall behind on
    /// a topic before it lags: with `--subscriber-buffer`, what each topic's
    /// broadcast ring holds at most for its slowest subscriber.
    #[arg(long, env = "STARLING_SUBSCRIBER_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub subscriber_buffer_bytes: usize,

    /// Bytes written to a connection and not yet taken by its socket before the
    /// broker stops pulling more messages for it (its outbound queue bound).
    #[arg(long, env = "STARLING_OUTBOUND_QUEUE_BYTES", default_value_t = 64 * 1024)]
    pub outbound_queue_bytes: usize,

    /// How many bytes a connection reads from its socket at a time. The read
    /// buffer exists only while there is input to parse: a quiet connection
    /// holds none, a frame larger than this is read in one buffer of its size.
    #[arg(long, env = "STARLING_READ_BUFFER_BYTES", default_value_t = 4096)]
    pub read_buffer_bytes: usize,

    /// What to do with a subscriber that falls behind.
    #[arg(long, env = "STARLING_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumerPolicy::Lagged)]
    pub slow_consumer: SlowConsumerPolicy,

    /// A connection whose socket takes nothing for this long while messages
    /// wait is closed with 4008, in milliseconds.
    #[arg(long, env = "STARLING_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// Interval of the broker's WebSocket pings, in milliseconds (0: none).
    #[arg(long, env = "STARLING_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// A peer that sends nothing (not even a pong) for this long is closed
    /// with 4000, in milliseconds (0: never).
    #[arg(long, env = "STARLING_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Frames per second one connection may send (0: unlimited). Over it a
    /// frame gets `rate_limited`; a connection that keeps going is closed with 4029.
    /// The same rate applies to `POST /api/publish` per HTTP connection (429).
    #[arg(long, env = "STARLING_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// How long shutdown waits for clients to take their close frames, in milliseconds.
    #[arg(long, env = "STARLING_SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,

    /// Messages each topic keeps for clients that subscribe with `since`
    /// (0: none). Offsets start at 1 and grow by one per message.
    #[arg(long, env = "STARLING_HISTORY", default_value_t = 0)]
    pub history: usize,

    /// Refines `--history` for topics starting with a prefix: `PREFIX=N`
    /// (repeat the flag; the longest matching prefix wins), e.g. `chat.=100`.
    #[arg(long = "history-prefix", env = "STARLING_HISTORY_PREFIX", value_delimiter = ',', value_parser = parse_prefix_rule)]
    pub history_prefixes: Vec<(String, usize)>,

    /// Most topics that keep history: a new topic beyond it takes the place
    /// of the topics used least recently (their history and offsets go).
    #[arg(long, env = "STARLING_HISTORY_TOPICS", default_value_t = 100_000)]
    pub history_topics: usize,

    /// Most bytes of messages (payload and topic) all histories together
    /// keep: beyond it, the oldest messages of the topics used least
    /// recently are dropped.
    #[arg(long, env = "STARLING_HISTORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Seconds a topic's history is kept after its last message (0: for as
    /// long as the bounds allow). An expired topic starts a new epoch.
    #[arg(
        long,
        env = "STARLING_HISTORY_TTL",
        default_value_t = 0,
        value_name = "SECONDS"
    )]
    pub history_ttl: u64,

    /// Where histories are kept (default: `redis` with `--redis-url`, else
    /// `memory`). A cluster keeps them in Redis, so that offsets agree on
    /// every node; a single node with `--redis-url` keeps them across its
    /// restarts.
    #[arg(long, env = "STARLING_HISTORY_STORE", value_enum)]
    pub history_store: Option<HistoryStore>,

    /// Keep presence (who is subscribed: `presence`, `join`, `leave`) on
    /// topics starting with this prefix, e.g. `chat.` (repeat the flag or
    /// separate with commas).
    #[arg(
        long = "presence",
        env = "STARLING_PRESENCE",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    pub presence_prefixes: Vec<String>,

    /// How long a member whose last session ended stays a member before
    /// its `leave` is announced, in milliseconds (a session that comes back
    /// within it announces nothing).
    #[arg(long, env = "STARLING_PRESENCE_GRACE_MS", default_value_t = 5_000)]
    pub presence_grace_ms: u64,

    /// Keep presence as counts only on topics starting with this prefix
    /// (for very large rooms): `presence` answers `count` without
    /// `members`, and no `join` or `leave` is sent (repeatable).
    #[arg(
        long = "presence-counts",
        env = "STARLING_PRESENCE_COUNTS",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    pub presence_counts_prefixes: Vec<String>,

    /// Redis to cluster through, e.g. `redis://127.0.0.1:6379` or, over TLS,
    /// `rediss://redis.internal:6380` (default:
    /// none, a single node).
    #[arg(long, env = "STARLING_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of the Redis channels this cluster uses (clusters sharing one
    /// Redis need different prefixes).
    #[arg(long, env = "STARLING_REDIS_PREFIX", default_value = "starling")]
    pub redis_prefix: String,

    /// Relay through sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) of a Redis
    /// Cluster (Redis 7+): each topic's traffic goes to one shard only.
    /// Patterns are then served from their own node's publishers only.
    #[arg(long, env = "STARLING_REDIS_SHARDED", requires = "redis_url")]
    pub redis_sharded: bool,

    /// PEM root certificates that a `rediss://` Redis's certificate must
    /// chain to (a private authority); default: the system's roots.
    #[arg(long, env = "STARLING_REDIS_CA", requires = "redis_url")]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate for a Redis that requires one
    /// (`tls-auth-clients yes`), with `--redis-client-key`.
    #[arg(
        long,
        env = "STARLING_REDIS_CLIENT_CERT",
        requires_all = ["redis_url", "redis_client_key"]
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// The PEM private key of `--redis-client-cert`.
    #[arg(
        long,
        env = "STARLING_REDIS_CLIENT_KEY",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// Turns authentication on with HS256 tokens signed with this secret.
    #[arg(
        long,
        env = "STARLING_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<Secret>,

    /// Turns authentication on with RS256 or ES256 tokens, verified with
    /// this PEM public key (RSA or EC P-256).
    #[arg(long, env = "STARLING_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Clock-skew leeway for a token's `exp` and `nbf`, in seconds.
    #[arg(long, env = "STARLING_JWT_LEEWAY_S", default_value_t = 5)]
    pub jwt_leeway_s: u64,

    /// Web origins (besides the broker's own) whose pages may open a
    /// WebSocket: `https://app.example.com`, `https://*.example.com`, or `*`
    /// for any. Repeat the flag, or separate with commas.
    #[arg(
        long = "allowed-origin",
        env = "STARLING_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Peers that are reverse proxies (an address or a CIDR network; repeat
    /// the flag or separate with commas): from them, the client's address
    /// is taken from `X-Forwarded-For` (for logs) and its scheme from
    /// `X-Forwarded-Proto` (for the same-origin check). Nobody else's
    /// headers are believed.
    #[arg(
        long = "trusted-proxy",
        env = "STARLING_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxies: Vec<TrustedNet>,

    /// Every `/api/...` request must carry `Authorization: Bearer KEY`.
    #[arg(long, env = "STARLING_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Serves `wss://` and `https://` only, with this PEM certificate chain
    /// (the server's certificate first). Reloaded on SIGHUP.
    #[arg(long, env = "STARLING_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "STARLING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "STARLING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["starling"])
    }
}

impl Config {
    /// A configuration for tests and embedding: listens on an ephemeral
    /// loopback port, otherwise the defaults.
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes as u64,
            max_subscriptions: self.max_subscriptions as u64,
            max_topic_bytes: starling_protocol::MAX_TOPIC_BYTES as u64,
            subscriber_buffer: self.subscriber_buffer as u64,
            ping_interval_ms: self.ping_interval_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            max_frame_bytes: self.hard_message_limit() as u64,
            outbound_queue_bytes: self.outbound_queue_bytes as u64,
            rate_limit: u64::from(self.rate_limit),
            max_connections: self.max_connections as u64,
            max_patterns: self.max_patterns as u64,
            subscriber_buffer_bytes: self.subscriber_buffer_bytes as u64,
        }
    }

    /// The hard cap on an incoming message: over it the connection is closed with 1009.
    pub(crate) fn hard_message_limit(&self) -> usize {
        self.max_message_bytes.saturating_mul(2)
    }

    /// The async runtime the binary serves on: `--worker-threads`, or one
    /// worker per available core; a single worker gets the current-thread
    /// scheduler.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let workers = self.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        );
        let mut builder = if workers == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        };
        builder.enable_all().build()
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Whether clients must present a token.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }
}

/// Parses `PREFIX=N`.
fn parse_prefix_rule(rule: &str) -> Result<(String, usize), String> {
    let (prefix, n) = rule
        .split_once('=')
        .ok_or_else(|| format!("expected PREFIX=N, got {rule:?}"))?;
    let n = n.trim().parse().map_err(|e| format!("{rule:?}: {e}"))?;
    Ok((prefix.trim().to_owned(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.limits().max_message_bytes, 1024 * 1024);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Lagged);
    }

    #[test]
    fn zero_worker_threads_is_refused() {
        let e = Config::try_parse_from(["starling", "--worker-threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("--worker-threads"), "{e}");
    }

    #[test]
    fn flags_parse() {
        let c = Config::parse_from([
            "starling",
            "--listen",
            "0.0.0.0:9000",
            "--slow-consumer",
            "disconnect",
            "--max-subscriptions",
            "3",
            "--history",
            "10",
            "--history-prefix",
            "chat.=100",
            "--history-prefix",
            "metrics.=0",
            "--worker-threads",
            "1",
            "--listen-backlog",
            "512",
        ]);
        assert_eq!(c.worker_threads, Some(1));
        assert_eq!(c.listen_backlog, 512);
        assert_eq!(c.history, 10);
        assert_eq!(
            c.history_prefixes,
            vec![("chat.".to_owned(), 100), ("metrics.".to_owned(), 0)]
        );
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Disconnect);
        assert_eq!(c.max_subscriptions, 3);
    }
}
