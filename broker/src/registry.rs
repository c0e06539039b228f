//! The topic registry: one broadcast channel per topic (and per pattern) with
//! subscribers, and the node's interest: which topics and patterns have
//! local subscribers, reported to the relay as it changes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use starling_protocol::{Filter, Topic};

use crate::delivery::Delivery;
use crate::interest::{Interest, InterestQueue};
use crate::metrics::Metrics;
use crate::ring;

/// The receiving end of a subscription.
pub type DeliveryReceiver = ring::Receiver<Arc<Delivery>>;

#[derive(Debug)]
struct Channel {
    tx: ring::Sender<Arc<Delivery>>,
    subscribers: usize,
}

/// Every topic and pattern that has subscribers, with its broadcast channel.
///
/// A channel is created on the first subscribe and removed when its last
/// subscriber leaves, so topics nobody listens to cost nothing. A publish is
/// one `send` per channel it reaches, whatever the number of subscribers.
#[derive(Debug)]
pub struct TopicRegistry {
    topics: DashMap<Topic, Channel>,
    patterns: DashMap<Filter, Channel>,
    pattern_count: AtomicUsize,
    capacity: usize,
    metrics: Arc<Metrics>,
    /// Told when a topic or pattern gains its first or loses its last local
    /// subscriber, when a relay follows interest.
    interest: OnceLock<Arc<InterestQueue>>,
}

impl TopicRegistry {
    /// A registry whose channels hold `capacity` messages per subscriber.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        TopicRegistry {
            topics: DashMap::new(),
            patterns: DashMap::new(),
            pattern_count: AtomicUsize::new(0),
            capacity: capacity.max(1),
            metrics,
            interest: OnceLock::new(),
        }
    }

    /// Reports interest changes to the relay from now on, starting with
    /// every topic and pattern that already has subscribers.
    /// (Called before the broker serves: each filter is told once.)
    pub(crate) fn report_interest(&self, queue: Arc<InterestQueue>) {
        for entry in self.topics.iter() {
            Self::tell(&queue, Interest::Watch(entry.key().clone().into()));
        }
        for entry in self.patterns.iter() {
            Self::tell(&queue, Interest::Watch(entry.key().clone()));
        }
        let _ = self.interest.set(queue);
    }

    /// Tells `queue` of a change; never waits, since it is called under the
    /// lock of the filter's entry.
    fn tell(queue: &InterestQueue, interest: Interest) {
        let filter = match &interest {
            Interest::Watch(f) | Interest::Unwatch(f) => f,
        };
        // Broker topics are per node.
        if !filter.as_str().starts_with('$') {
            queue.tell(interest);
        }
    }

    /// Registers one subscriber of `filter` and returns its receiver, which
    /// sees every message published from now on.
    pub(crate) fn subscribe(&self, filter: &Filter) -> DeliveryReceiver {
        self.subscribe_shared(&mut filter.clone())
    }

    /// [`TopicRegistry::subscribe`], and `filter` becomes the registry's own
    /// copy, so that the subscribers of a topic share one name in memory.
    pub(crate) fn subscribe_shared(&self, filter: &mut Filter) -> DeliveryReceiver {
        let rx = match filter.as_topic() {
            Some(topic) => {
                self.add_subscriber(&self.topics, topic, filter, |key| Filter::from(key.clone()))
            }
            None => {
                let rx = self.add_subscriber(&self.patterns, filter.clone(), filter, Clone::clone);
                self.pattern_count
                    .store(self.patterns.len(), Ordering::Relaxed);
                rx
            }
        };
        self.metrics.subscriptions.inc();
        rx
    }

    fn add_subscriber<K: std::hash::Hash + Eq>(
        &self,
        map: &DashMap<K, Channel>,
        key: K,
        filter: &mut Filter,
        shared: impl FnOnce(&K) -> Filter,
    ) -> DeliveryReceiver {
        let mut channel = map.entry(key).or_insert_with(|| {
            self.metrics.topics.inc();
            // Told under the entry's lock, so watch and unwatch of one filter
            // reach the relay in the order they happened.
            if let Some(queue) = self.interest.get() {
                Self::tell(queue, Interest::Watch(filter.clone()));
            }
            Channel {
                tx: ring::channel(self.capacity),
                subscribers: 0,
            }
        });
        *filter = shared(channel.key());
        channel.subscribers += 1;
        channel.tx.subscribe()
    }

    /// Removes one subscriber of `filter`; the channel goes when it was the last.
    pub(crate) fn unsubscribe(&self, filter: &Filter) {
        match filter.as_topic() {
            Some(topic) => self.remove_subscriber(&self.topics, &topic, filter),
            None => {
                self.remove_subscriber(&self.patterns, filter, filter);
                self.pattern_count
                    .store(self.patterns.len(), Ordering::Relaxed);
            }
        }
        self.metrics.subscriptions.dec();
    }

    fn remove_subscriber<K: std::hash::Hash + Eq>(
        &self,
        map: &DashMap<K, Channel>,
        key: &K,
        filter: &Filter,
    ) {
        if let Some(mut channel) = map.get_mut(key) {
            channel.subscribers = channel.subscribers.saturating_sub(1);
        }
        let removed = map.remove_if(key, |_, channel| {
            let last = channel.subscribers == 0;
            if last && let Some(queue) = self.interest.get() {
                Self::tell(queue, Interest::Unwatch(filter.clone()));
            }
            last
        });
        if removed.is_some() {
            self.metrics.topics.dec();
        }
    }

    /// Sends `delivery` to the subscribers of its topic and of every pattern
    /// that matches it. Returns how many subscriptions it reached.
    pub(crate) fn publish(&self, delivery: Delivery) -> usize {
        self.publish_shared(Arc::new(delivery))
    }

    /// [`TopicRegistry::publish`] for a delivery that is shared already (kept
    /// in the topic's history too).
    pub(crate) fn publish_shared(&self, delivery: Arc<Delivery>) -> usize {
        let mut reached = 0;
        if self.pattern_count.load(Ordering::Relaxed) > 0 {
            for entry in self.patterns.iter() {
                if entry.key().matches(delivery.topic.as_str()) {
                    let through = delivery.through_pattern(entry.key().clone());
                    reached += entry.tx.send(Arc::new(through));
                }
            }
        }
        if let Some(channel) = self.topics.get(delivery.topic.as_str()) {
            reached += channel.tx.send(delivery);
        }
        reached
    }

    /// Delivers `delivery` to the subscribers of its topic only, not to
    /// the patterns (a message from another node that came for the topic).
    pub(crate) fn publish_to_topic(&self, delivery: Delivery) -> usize {
        match self.topics.get(delivery.topic.as_str()) {
            Some(channel) => channel.tx.send(Arc::new(delivery)),
            None => 0,
        }
    }

    /// Delivers `delivery` to the patterns that match its topic and that
    /// `route` picks, not to the topic's own subscribers (a message from
    /// another node that came for some of the patterns).
    pub(crate) fn publish_to_patterns(
        &self,
        delivery: Delivery,
        route: impl Fn(&Filter) -> bool,
    ) -> usize {
        let mut reached = 0;
        for entry in self.patterns.iter() {
            if route(entry.key()) && entry.key().matches(delivery.topic.as_str()) {
                let through = delivery.through_pattern(entry.key().clone());
                reached += entry.tx.send(Arc::new(through));
            }
        }
        reached
    }

    /// Whether a message on `topic` would reach anyone on this node.
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic.as_str())
            || (self.pattern_count.load(Ordering::Relaxed) > 0
                && self
                    .patterns
                    .iter()
                    .any(|e| e.key().matches(topic.as_str())))
    }

    /// How many topics and patterns have subscribers.
    pub fn len(&self) -> usize {
        self.topics.len() + self.patterns.len()
    }

    /// Whether no topic has subscribers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many subscribers `filter` has on this node.
    pub fn subscribers(&self, filter: &Filter) -> usize {
        match filter.as_topic() {
            Some(topic) => self.topics.get(&topic).map_or(0, |c| c.subscribers),
            None => self.patterns.get(filter).map_or(0, |c| c.subscribers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::Payload;

    fn registry() -> TopicRegistry {
        TopicRegistry::new(16, Arc::new(Metrics::new()))
    }

    fn delivery(topic: &str) -> Delivery {
        Delivery::new(
            Topic::new(topic).unwrap(),
            Payload::from_json("1").unwrap(),
            None,
            "n".into(),
        )
    }

    #[test]
    fn empty_topics_are_removed() {
        let r = registry();
        let f = Filter::new("a.b").unwrap();
        let _rx1 = r.subscribe(&f);
        let _rx2 = r.subscribe(&f);
        assert_eq!((r.len(), r.subscribers(&f)), (1, 2));
        r.unsubscribe(&f);
        assert_eq!(r.len(), 1);
        r.unsubscribe(&f);
        assert!(r.is_empty());
        assert_eq!(r.metrics.topics.get(), 0);
        assert_eq!(r.metrics.subscriptions.get(), 0);
    }

    #[test]
    fn publish_reaches_topic_and_matching_patterns() {
        let r = registry();
        let mut exact = r.subscribe(&Filter::new("m.cpu").unwrap());
        let mut star = r.subscribe(&Filter::new("m.*").unwrap());
        let mut other = r.subscribe(&Filter::new("x.*").unwrap());
        assert_eq!(r.publish(delivery("m.cpu")), 2);
        let first = |rx: &mut DeliveryReceiver| {
            let mut got = None;
            rx.drain(1, |d| got = d.ok().map(|d| d.sub.clone()));
            got
        };
        assert_eq!(first(&mut exact), Some(None));
        assert_eq!(first(&mut star), Some(Some(Filter::new("m.*").unwrap())));
        assert_eq!(first(&mut other), None);
        assert_eq!(r.publish(delivery("nobody.here")), 0);
    }
}
