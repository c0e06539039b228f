//! What the classic and the sharded Redis relays share: the subscriptions a
//! node holds in Redis, the wait while Redis is away, and the inbound path
//! from a relayed message to local subscribers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use starling_protocol::Topic;
use tokio::sync::mpsc;
use tracing::warn;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::registry::{Interest, TopicRegistry};
use crate::relay::wire::{self, Names, Subscription};

/// How many relayed messages may wait for Redis before new ones are dropped.
pub(crate) const RELAY_QUEUE: usize = 65_536;
/// How many bytes of relayed messages (as encoded for Redis) may wait for
/// Redis before new ones are dropped.
pub(crate) const RELAY_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// How many messages go to Redis in one pipeline.
pub(crate) const RELAY_BATCH: usize = 512;
/// How long one Redis operation may take before the link counts as down.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two warnings of one kind about single messages.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Backoff before reconnect attempt `attempt`: 100 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Lets a warning about single messages through at most once per
/// [`WARN_EVERY`], so that a flood of them does not flood the log (they are
/// counted in the metrics).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last_us: AtomicU64,
}

impl Throttle {
    /// Whether to warn now.
    pub(crate) fn allow(&self) -> bool {
        let now = now_us().max(1);
        let last = self.last_us.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_micros() as u64 {
            return false;
        }
        self.last_us
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// A change to make to the node's Redis subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Subscribe: the first local filter behind it arrived.
    Subscribe(Subscription),
    /// Unsubscribe: the last local filter behind it left.
    Unsubscribe(Subscription),
}

/// What this node is subscribed to in Redis, with how many local filters
/// are behind each subscription (`a.>` and `a.*` share the glob `a.*`).
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    subscriptions: HashMap<Subscription, usize>,
}

impl Wanted {
    /// Records an interest change; returns the Redis change it needs, if any.
    pub(crate) fn apply(&mut self, names: &Names, interest: &Interest) -> Option<Change> {
        match interest {
            Interest::Watch(filter) => {
                let subscription = names.subscription(filter);
                let count = self.subscriptions.entry(subscription.clone()).or_insert(0);
                *count += 1;
                (*count == 1).then_some(Change::Subscribe(subscription))
            }
            Interest::Unwatch(filter) => {
                let subscription = names.subscription(filter);
                let count = self.subscriptions.get_mut(&subscription)?;
                *count = count.saturating_sub(1);
                if *count > 0 {
                    return None;
                }
                self.subscriptions.remove(&subscription);
                Some(Change::Unsubscribe(subscription))
            }
        }
    }

    /// Every subscription the node holds.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.subscriptions.len()
    }
}

/// Waiting out a backoff while Redis is unreachable.
pub(crate) struct Offline<'a> {
    pub(crate) pause: Duration,
    pub(crate) wanted: &'a mut Wanted,
    pub(crate) names: &'a Names,
    pub(crate) metrics: &'a Metrics,
}

impl Offline<'_> {
    /// Keeps track of interest changes meanwhile (and, when given the relay
    /// queue, drops what waits to be relayed, counted as failed). Returns
    /// false when the broker is gone.
    pub(crate) async fn wait(
        self,
        interest: &mut mpsc::UnboundedReceiver<Interest>,
        mut outbound: Option<(&mut OutboundReceiver, &mut Vec<Queued>)>,
    ) -> bool {
        let pause = tokio::time::sleep(self.pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => return true,
                change = interest.recv() => match change {
                    Some(change) => {
                        self.wanted.apply(self.names, &change);
                    }
                    None => return false,
                },
                n = async {
                    match outbound.as_mut() {
                        Some((queue, batch)) => queue.recv_many(batch, RELAY_BATCH).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if n == 0 {
                        return false;
                    }
                    if let Some((_, batch)) = outbound.as_mut() {
                        self.metrics.relay_failed.inc_by(batch.len() as u64);
                        batch.clear();
                    }
                }
            }
        }
    }
}

/// A message on its way to the other nodes, encoded for Redis once.
pub(crate) struct Queued {
    pub(crate) topic: Topic,
    pub(crate) message: Vec<u8>,
}

/// The relay-out queue: at most [`RELAY_QUEUE`] messages and
/// [`RELAY_QUEUE_BYTES`] bytes wait for Redis; what comes when it is full
/// is dropped. The bytes waiting are the gauge `bytes`.
pub(crate) fn outbound(bytes: Gauge) -> (OutboundSender, OutboundReceiver) {
    let (sender, receiver) = mpsc::channel(RELAY_QUEUE);
    (
        OutboundSender {
            queue: sender,
            bytes: bytes.clone(),
            limit: RELAY_QUEUE_BYTES as i64,
        },
        OutboundReceiver {
            queue: receiver,
            bytes,
        },
    )
}

/// Where the publishing side queues messages for Redis.
#[derive(Debug)]
pub(crate) struct OutboundSender {
    queue: mpsc::Sender<Queued>,
    bytes: Gauge,
    limit: i64,
}

impl OutboundSender {
    /// Queues `queued`; never waits. Returns false, and drops it, when the
    /// queue is full in messages or in bytes.
    pub(crate) fn send(&self, queued: Queued) -> bool {
        let size = queued.message.len() as i64;
        if self.bytes.inc_by(size) + size > self.limit {
            self.bytes.dec_by(size);
            return false;
        }
        if self.queue.try_send(queued).is_err() {
            self.bytes.dec_by(size);
            return false;
        }
        true
    }
}

/// Where the relay task takes the messages for Redis.
#[derive(Debug)]
pub(crate) struct OutboundReceiver {
    queue: mpsc::Receiver<Queued>,
    bytes: Gauge,
}

impl OutboundReceiver {
    /// Waits for messages and moves up to `limit` of them to `batch`;
    /// returns how many, or 0 when the publishing side is gone.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Queued>, limit: usize) -> usize {
        let start = batch.len();
        let n = self.queue.recv_many(batch, limit).await;
        let size: usize = batch[start..].iter().map(|q| q.message.len()).sum();
        self.bytes.dec_by(size as i64);
        n
    }

    /// Drops every message that waits; returns how many.
    pub(crate) fn discard(&mut self) -> u64 {
        let mut dropped = 0;
        while let Ok(queued) = self.queue.try_recv() {
            self.bytes.dec_by(queued.message.len() as i64);
            dropped += 1;
        }
        dropped
    }
}

/// Delivers what other nodes relay to this node's subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    pub(crate) registry: Arc<TopicRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) node: Arc<str>,
    pub(crate) names: Names,
    /// Warnings about messages dropped on arrival.
    pub(crate) rejected: Arc<Throttle>,
}

impl Inbound {
    /// Delivers one relayed message that came on Redis channel `channel`,
    /// through the Redis glob `glob` when it came through a pattern
    /// subscription. A message that does not decode, or whose topic is not
    /// the one of its channel, is dropped and counted.
    pub(crate) fn receive(&self, bytes: &[u8], channel: &str, glob: Option<&str>) {
        let Some(relayed) = wire::decode(bytes) else {
            self.reject(channel, "undecodable relay message");
            return;
        };
        if relayed.origin == &*self.node {
            return;
        }
        // Only a topic's own channel may carry its messages: whoever can
        // publish on one channel cannot reach the subscribers of another.
        if self.names.topic_of(channel) != Some(relayed.topic) {
            self.reject(
                channel,
                "relay message for another topic than its channel's",
            );
            return;
        }
        let (Ok(topic), Some(payload)) = (Topic::new(relayed.topic), relayed.payload()) else {
            self.reject(channel, "invalid relay message");
            return;
        };
        self.metrics.relayed_in.inc();
        let latency = now_us().saturating_sub(relayed.sent_at_us);
        self.metrics.relay_latency.observe(latency as f64 / 1e6);
        let delivery = Delivery::new(topic, payload, None, relayed.origin.into())
            .with_from(relayed.from.map(Into::into));
        // A message matching both a channel and a glob arrives once for each:
        // a channel message goes to the topic's subscribers, a glob message to
        // the patterns behind that glob, so each subscription gets it once.
        match glob {
            Some(glob) => {
                let glob = self.names.topic_of(glob).unwrap_or_default();
                self.registry
                    .publish_to_patterns(delivery, |pattern| wire::relayed_through(pattern, glob));
            }
            None => {
                self.registry.publish_to_topic(delivery);
            }
        }
    }

    fn reject(&self, channel: &str, why: &str) {
        self.metrics.relay_rejected.inc();
        if self.rejected.allow() {
            warn!(
                %channel,
                "{why}: dropped (starling_cluster_relay_rejected_total counts them)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::Filter;

    #[test]
    fn interest_is_counted_per_redis_subscription() {
        let names = Names::new("st");
        let mut wanted = Wanted::default();
        let f = |s: &str| Filter::new(s).unwrap();
        // `a.>` and `a.*` share the glob `a.*`: one Redis subscription.
        assert!(wanted.apply(&names, &Interest::Watch(f("a.>"))).is_some());
        assert!(wanted.apply(&names, &Interest::Watch(f("a.*"))).is_none());
        assert!(wanted.apply(&names, &Interest::Unwatch(f("a.>"))).is_none());
        assert_eq!(
            wanted.apply(&names, &Interest::Unwatch(f("a.*"))),
            Some(Change::Unsubscribe(Subscription::Glob("st:t:a.*".into())))
        );
        assert_eq!(wanted.len(), 0);
        assert_eq!(
            wanted.apply(&names, &Interest::Watch(f("a.b"))),
            Some(Change::Subscribe(Subscription::Channel("st:t:a.b".into())))
        );
    }

    #[test]
    fn a_throttle_lets_one_warning_through_per_interval() {
        let throttle = Throttle::default();
        assert!(throttle.allow());
        assert!(!throttle.allow());
        throttle.last_us.store(
            now_us() - WARN_EVERY.as_micros() as u64 - 1,
            Ordering::Relaxed,
        );
        assert!(throttle.allow());
        assert!(!throttle.allow());
    }

    fn queued(bytes: usize) -> Queued {
        Queued {
            topic: Topic::new("t").unwrap(),
            message: vec![0; bytes],
        }
    }

    #[tokio::test]
    async fn the_relay_queue_is_bounded_in_bytes() {
        let gauge = Gauge::default();
        let (sender, mut receiver) = outbound(gauge.clone());
        let mib = 1024 * 1024;
        for _ in 0..RELAY_QUEUE_BYTES / mib {
            assert!(sender.send(queued(mib)));
        }
        assert_eq!(gauge.get(), RELAY_QUEUE_BYTES as i64);
        assert!(!sender.send(queued(1)), "full in bytes");
        assert_eq!(gauge.get(), RELAY_QUEUE_BYTES as i64);
        let mut batch = Vec::new();
        assert_eq!(receiver.recv_many(&mut batch, 2).await, 2);
        assert_eq!(gauge.get(), (RELAY_QUEUE_BYTES - 2 * mib) as i64);
        assert!(sender.send(queued(mib)));
        assert!(sender.send(queued(mib)));
        assert!(!sender.send(queued(mib)));
        assert_eq!(receiver.discard(), (RELAY_QUEUE_BYTES / mib) as u64);
        assert_eq!(gauge.get(), 0);
        // And in messages.
        for _ in 0..RELAY_QUEUE {
            assert!(sender.send(queued(1)));
        }
        assert!(!sender.send(queued(1)), "full in messages");
        assert_eq!(gauge.get(), RELAY_QUEUE as i64);
    }
}
