//! What the classic and the sharded Redis relays share: the subscriptions a
//! node holds in Redis, the back-off while Redis fails, the relay-out queue,
//! and the inbound path from a relayed message to local subscribers.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use starling_protocol::{Codec, Envelope, Filter, Topic};
use tokio::sync::mpsc;
use tracing::warn;

use crate::delivery::Delivery;
use crate::interest::{Interest, InterestQueue};
use crate::metrics::Metrics;
use crate::registry::TopicRegistry;
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
/// How often a live link is checked with a `PING`.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// The ceiling of the first pause after a failure; it doubles with each
/// failure in a row, up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The least time between two warnings of one kind about single messages.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The longest pause after `failures` failures in a row before this one:
/// [`BACKOFF_BASE`] doubling up to [`BACKOFF_CAP`].
fn backoff_ceiling(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << failures.min(16))
        .min(BACKOFF_CAP)
}

/// 64 random bits: SipHash, keyed at random once per process, of a counter
/// and the time. Enough to spread the retries of many nodes apart.
fn random_u64() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(now_us());
    hasher.finish()
}

/// A random duration between zero and `max`, both included.
fn jitter(max: Duration) -> Duration {
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    let nanos = (u128::from(random_u64()) * (u128::from(max) + 1)) >> 64;
    Duration::from_nanos(nanos as u64)
}

/// Exponential back-off with full jitter over the failures in a row of one
/// kind of Redis operation: after the `n`th, a pause drawn at random from
/// `[0, min(5 s, 100 ms × 2ⁿ⁻¹)]`, so that nodes that lost Redis together
/// come back spread out rather than all at once.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts a failure; returns how long to wait before trying again.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = jitter(backoff_ceiling(self.failures));
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// Counts a success: the next failure starts from the shortest pause.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// How many failures in a row there have been.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
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

/// Changes to make to the node's Redis subscriptions; a subscription is in
/// one of the two lists at most.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Subscriptions to make: the first local filter behind each arrived.
    pub(crate) subscribe: Vec<Subscription>,
    /// Subscriptions to drop: the last local filter behind each left.
    pub(crate) unsubscribe: Vec<Subscription>,
}

impl Changes {
    /// Whether there is nothing to change.
    pub(crate) fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

/// What this node is subscribed to in Redis: the filters with local
/// subscribers, and how many of them are behind each Redis subscription
/// (`a.>` and `a.*` share the glob `a.*`).
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    filters: HashSet<Filter>,
    subscriptions: HashMap<Subscription, usize>,
}

impl Wanted {
    /// Records interest changes (a watch of a filter already watched, or an
    /// unwatch of one that is not, changes nothing); returns the Redis
    /// changes they need, net: a subscription dropped and made again within
    /// `interest` is left alone.
    pub(crate) fn apply(
        &mut self,
        names: &Names,
        interest: impl IntoIterator<Item = Interest>,
    ) -> Changes {
        // Whether each subscription touched was held before.
        let mut touched: HashMap<Subscription, bool> = HashMap::new();
        for change in interest {
            let (filter, watch) = match change {
                Interest::Watch(filter) => (filter, true),
                Interest::Unwatch(filter) => (filter, false),
            };
            let changed = if watch {
                self.filters.insert(filter.clone())
            } else {
                self.filters.remove(&filter)
            };
            if !changed {
                continue;
            }
            let subscription = names.subscription(&filter);
            touched
                .entry(subscription.clone())
                .or_insert_with(|| self.subscriptions.contains_key(&subscription));
            let count = self.subscriptions.entry(subscription).or_insert(0);
            if watch {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
            }
        }
        self.subscriptions.retain(|_, count| *count > 0);
        let mut changes = Changes::default();
        for (subscription, before) in touched {
            match (before, self.subscriptions.contains_key(&subscription)) {
                (false, true) => changes.subscribe.push(subscription),
                (true, false) => changes.unsubscribe.push(subscription),
                _ => {}
            }
        }
        changes
    }

    /// Every subscription the node holds, as changes to make on a new link.
    pub(crate) fn all(&self) -> Changes {
        Changes {
            subscribe: self.subscriptions.keys().cloned().collect(),
            unsubscribe: Vec::new(),
        }
    }

    /// How many Redis subscriptions the node holds.
    pub(crate) fn len(&self) -> usize {
        self.subscriptions.len()
    }
}

/// Waits out `pause` while Redis is unreachable, keeping `wanted` up to date
/// with the interest meanwhile (the next link is made with all of it).
pub(crate) async fn wait_offline(
    pause: Duration,
    interest: &InterestQueue,
    wanted: &mut Wanted,
    names: &Names,
) {
    let pause = tokio::time::sleep(pause);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            () = &mut pause => return,
            () = interest.changed() => {
                wanted.apply(names, interest.take());
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
    ///
    /// A message of a topic with history in Redis comes numbered (see
    /// [`streams`](super::streams)), and comes to every node, its origin
    /// included: that is how its subscribers get it, in offset order.
    pub(crate) fn receive(&self, bytes: &[u8], channel: &str, glob: Option<&str>) {
        if let Some(event) = wire::split_event(bytes) {
            // Presence events go to the topic's own subscribers only.
            if glob.is_none() {
                self.presence_event(event, channel);
            }
            return;
        }
        let (numbered, bytes) = match wire::split_numbered(bytes) {
            Some((offset, epoch, rest)) => (Some((offset, epoch)), rest),
            None => (None, bytes),
        };
        let Some(relayed) = wire::decode(bytes) else {
            self.reject(channel, "undecodable relay message");
            return;
        };
        if numbered.is_none() && relayed.origin == &*self.node {
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
        let mut delivery = Delivery::new(topic, payload, None, relayed.origin.into())
            .with_from(relayed.from.map(Into::into));
        if let Some((offset, epoch)) = numbered {
            delivery = delivery.with_epoch(epoch.into());
            delivery.offset = Some(offset);
        }
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

    /// Delivers a `join` or `leave` decided in Redis (see
    /// [`shared_presence`](super::shared_presence)) to the topic's
    /// subscribers on this node.
    fn presence_event(&self, bytes: &[u8], channel: &str) {
        let event = match Codec::Json.decode_bytes(bytes) {
            Ok(event @ (Envelope::Join { .. } | Envelope::Leave { .. })) => event,
            _ => return self.reject(channel, "undecodable presence event"),
        };
        let (Envelope::Join { topic, .. } | Envelope::Leave { topic, .. }) = &event else {
            return;
        };
        if self.names.topic_of(channel) != Some(topic.as_str()) {
            return self.reject(
                channel,
                "presence event for another topic than its channel's",
            );
        }
        self.metrics.presence_events.inc();
        let delivery = Delivery::event(topic.clone(), event.clone(), self.node.clone());
        self.registry.publish_to_topic(delivery);
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

    fn f(s: &str) -> Filter {
        Filter::new(s).unwrap()
    }

    fn channel(name: &str) -> Subscription {
        Subscription::Channel(name.into())
    }

    fn glob(name: &str) -> Subscription {
        Subscription::Glob(name.into())
    }

    #[test]
    fn interest_is_counted_per_redis_subscription() {
        let names = Names::new("st");
        let mut wanted = Wanted::default();
        let mut apply = |change| wanted.apply(&names, [change]);
        // `a.>` and `a.*` share the glob `a.*`: one Redis subscription.
        assert_eq!(
            apply(Interest::Watch(f("a.>"))).subscribe,
            [glob("st:t:a.*")]
        );
        assert!(apply(Interest::Watch(f("a.*"))).is_empty());
        assert!(apply(Interest::Unwatch(f("a.>"))).is_empty());
        assert_eq!(
            apply(Interest::Unwatch(f("a.*"))).unsubscribe,
            [glob("st:t:a.*")]
        );
        assert_eq!(
            apply(Interest::Watch(f("a.b"))).subscribe,
            [channel("st:t:a.b")]
        );
        // A watch of what is watched, an unwatch of what is not: nothing.
        assert!(apply(Interest::Watch(f("a.b"))).is_empty());
        assert!(apply(Interest::Unwatch(f("x"))).is_empty());
        assert_eq!(wanted.len(), 1);
    }

    #[test]
    fn changes_taken_together_are_net() {
        let names = Names::new("st");
        let mut wanted = Wanted::default();
        wanted.apply(&names, [Interest::Watch(f("a.>")), Interest::Watch(f("b"))]);
        // `a.>` leaves and `a.*` arrives: the glob stays; `b` leaves.
        let changes = wanted.apply(
            &names,
            [
                Interest::Unwatch(f("a.>")),
                Interest::Watch(f("a.*")),
                Interest::Unwatch(f("b")),
                Interest::Watch(f("c")),
            ],
        );
        assert_eq!(
            changes,
            Changes {
                subscribe: vec![channel("st:t:c")],
                unsubscribe: vec![channel("st:t:b")],
            }
        );
        let mut all = wanted.all().subscribe;
        all.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(all, [channel("st:t:c"), glob("st:t:a.*")]);
    }

    #[test]
    fn backoff_is_full_jitter_below_a_doubling_ceiling() {
        let ceilings: Vec<u64> = (0..10)
            .map(|n| backoff_ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
        let mut backoff = Backoff::default();
        for n in 0..40 {
            let pause = backoff.failed();
            assert!(pause <= backoff_ceiling(n), "{pause:?} after {n} failures");
        }
        assert_eq!(backoff.failures(), 40);
        backoff.succeeded();
        assert!(backoff.failed() <= BACKOFF_BASE);

        // Spread over the whole range, not bunched at one end.
        let max = Duration::from_millis(1_000);
        let pauses: Vec<Duration> = (0..2_000).map(|_| jitter(max)).collect();
        assert!(pauses.iter().all(|p| *p <= max));
        let low = pauses.iter().filter(|p| **p < max / 10).count();
        let high = pauses.iter().filter(|p| **p > max * 9 / 10).count();
        assert!(
            (100..=300).contains(&low),
            "{low} of 2000 in the lowest tenth"
        );
        assert!(
            (100..=300).contains(&high),
            "{high} of 2000 in the highest tenth"
        );
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
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
