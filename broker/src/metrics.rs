//! Prometheus metrics, served at `GET /metrics`.
//!
//! Hot-path counts (messages and bytes delivered) are kept per connection and
//! added here once per write batch, so a delivery costs no shared atomic.

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use starling_protocol::{CloseCode, ErrorCode};

use crate::process_metrics::ProcessCollector;

/// The `code` label of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    code: &'static str,
}

/// The `source` label of the published-messages counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    source: &'static str,
}

/// The `code` label of close counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseLabel {
    code: u16,
}

/// Where a published message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A WebSocket `publish` frame.
    WebSocket,
    /// `POST /api/publish`.
    Http,
    /// The broker itself (`$sys` topics).
    Broker,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::WebSocket => "ws",
            Source::Http => "http",
            Source::Broker => "broker",
        }
    }
}

/// The `version` label of `starling_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// The broker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `process_*` metrics, without the prefix.
    process: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_total: Counter,
    pub(crate) connections_refused: Counter,
    pub(crate) subscriptions: Gauge,
    pub(crate) topics: Gauge,
    pub(crate) history_messages: Gauge,
    pub(crate) history_bytes: Gauge,
    pub(crate) history_resets: Counter,
    pub(crate) history_expired: Counter,
    pub(crate) presence_members: Gauge,
    pub(crate) presence_sessions: Gauge,
    pub(crate) presence_events: Counter,
    pub(crate) sse_streams: Gauge,
    pub(crate) presence_store_requests: Counter,
    pub(crate) presence_store_failures: Counter,
    published: Family<SourceLabel, Counter>,
    published_total: Counter,
    pub(crate) delivered: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) lagged_events: Counter,
    pub(crate) lagged_messages: Counter,
    errors: Family<CodeLabel, Counter>,
    closes: Family<CloseLabel, Counter>,
    pub(crate) relayed_out: Counter,
    pub(crate) relayed_in: Counter,
    pub(crate) relay_failed: Counter,
    pub(crate) relay_queue_full: Counter,
    pub(crate) relay_queue_bytes: Gauge,
    pub(crate) relay_rejected: Counter,
    pub(crate) redis_reconnects: Counter,
    pub(crate) history_store_requests: Counter,
    pub(crate) history_store_failures: Counter,
    pub(crate) relay_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered under the `starling_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("starling");
        let m = Metrics {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            subscriptions: Gauge::default(),
            topics: Gauge::default(),
            history_messages: Gauge::default(),
            history_bytes: Gauge::default(),
            history_resets: Counter::default(),
            history_expired: Counter::default(),
            presence_members: Gauge::default(),
            presence_sessions: Gauge::default(),
            presence_events: Counter::default(),
            sse_streams: Gauge::default(),
            presence_store_requests: Counter::default(),
            presence_store_failures: Counter::default(),
            published: Family::default(),
            published_total: Counter::default(),
            delivered: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            lagged_events: Counter::default(),
            lagged_messages: Counter::default(),
            errors: Family::default(),
            closes: Family::default(),
            relayed_out: Counter::default(),
            relayed_in: Counter::default(),
            relay_failed: Counter::default(),
            relay_queue_full: Counter::default(),
            relay_queue_bytes: Gauge::default(),
            relay_rejected: Counter::default(),
            redis_reconnects: Counter::default(),
            history_store_requests: Counter::default(),
            history_store_failures: Counter::default(),
            // 50 µs to about 6.5 s.
            relay_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            registry: Registry::default(),
            process: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused (connection limit or shutdown)",
            m.connections_refused.clone(),
        );
        registry.register(
            "subscriptions",
            "Live subscriptions",
            m.subscriptions.clone(),
        );
        registry.register(
            "topics",
            "Topics and patterns with subscribers",
            m.topics.clone(),
        );
        registry.register(
            "history_messages",
            "Messages retained in topic histories",
            m.history_messages.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of messages (payload and topic) retained in topic histories",
            m.history_bytes.clone(),
        );
        registry.register(
            "history_resets",
            "Subscriptions whose resume position was void (another epoch, or an offset beyond the latest)",
            m.history_resets.clone(),
        );
        registry.register(
            "history_expired",
            "Topic histories dropped by --history-ttl",
            m.history_expired.clone(),
        );
        registry.register(
            "presence_members",
            "Members of presence topics (an identity per topic, its sessions folded)",
            m.presence_members.clone(),
        );
        registry.register(
            "presence_sessions",
            "Subscriptions to presence topics",
            m.presence_sessions.clone(),
        );
        registry.register(
            "presence_events",
            "join and leave events delivered on this node (each once per topic, whatever its subscribers)",
            m.presence_events.clone(),
        );
        registry.register(
            "sse_streams",
            "Server-Sent Events streams open (GET /sse)",
            m.sse_streams.clone(),
        );
        registry.register(
            "presence_store_requests",
            "Commands and scripts sent to Redis for presence (writes, reads, heartbeats, reaping)",
            m.presence_store_requests.clone(),
        );
        registry.register(
            "presence_store_failures",
            "Presence commands Redis did not answer, or answered with an error",
            m.presence_store_failures.clone(),
        );
        registry.register(
            "messages_published",
            "Messages published",
            m.published.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages written to subscribers",
            m.delivered.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes of WebSocket messages received",
            m.bytes_in.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes of WebSocket messages sent",
            m.bytes_out.clone(),
        );
        registry.register(
            "lagged_events",
            "Times a subscriber fell behind and was sent `lagged`",
            m.lagged_events.clone(),
        );
        registry.register(
            "lagged_messages",
            "Messages dropped for subscribers that fell behind",
            m.lagged_messages.clone(),
        );
        registry.register(
            "errors",
            "Error frames and HTTP errors sent, by code",
            m.errors.clone(),
        );
        registry.register(
            "closes",
            "Connections closed by the broker, by close code",
            m.closes.clone(),
        );
        registry.register(
            "cluster_relayed_out",
            "Messages sent to other nodes through Redis",
            m.relayed_out.clone(),
        );
        registry.register(
            "cluster_relayed_in",
            "Messages received from other nodes through Redis",
            m.relayed_in.clone(),
        );
        registry.register(
            "cluster_relay_failed",
            "Messages that could not be relayed to other nodes (Redis down or too slow)",
            m.relay_failed.clone(),
        );
        registry.register(
            "cluster_relay_queue_full",
            "Messages not relayed because the relay queue was full (in messages or bytes); \
             also counted as failed",
            m.relay_queue_full.clone(),
        );
        registry.register(
            "cluster_relay_queue_bytes",
            "Bytes of messages waiting to be relayed to Redis",
            m.relay_queue_bytes.clone(),
        );
        registry.register(
            "cluster_relay_rejected",
            "Messages from Redis dropped on arrival: undecodable, or not of their channel's topic",
            m.relay_rejected.clone(),
        );
        registry.register(
            "cluster_redis_reconnects",
            "Times the Redis subscription link was restored",
            m.redis_reconnects.clone(),
        );
        registry.register(
            "history_store_requests",
            "Scripts sent to the history store in Redis (appends and reads)",
            m.history_store_requests.clone(),
        );
        registry.register(
            "history_store_failures",
            "Appends and reads the history store in Redis did not answer (each got error internal)",
            m.history_store_failures.clone(),
        );
        registry.register(
            "cluster_relay_latency_seconds",
            "Time from publish on the origin node to receipt on this node",
            m.relay_latency.clone(),
        );
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The broker's version, as a label", build);
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            process,
            ..m
        }
    }

    /// Counts one published message.
    pub(crate) fn published(&self, source: Source) {
        self.published
            .get_or_create(&SourceLabel {
                source: source.label(),
            })
            .inc();
        self.published_total.inc();
    }

    /// Messages published since start, from every source.
    pub fn published_total(&self) -> u64 {
        self.published_total.get()
    }

    /// Counts one error answered with `code`.
    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts one close sent with `code`.
    pub(crate) fn close(&self, code: CloseCode) {
        self.closes
            .get_or_create(&CloseLabel { code: code.code() })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        let written = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &self.process))
            .and_then(|()| text::encode_eof(&mut out));
        written.expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let m = Metrics::new();
        m.published(Source::Http);
        m.error(ErrorCode::InvalidTopic);
        m.delivered.inc_by(3);
        let text = m.encode();
        assert!(
            text.contains("starling_messages_published_total{source=\"http\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_errors_total{code=\"invalid_topic\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_messages_delivered_total 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
