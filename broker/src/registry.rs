//! The topic registry: one broadcast channel per topic (and per pattern) with
//! subscribers, and the node's interest: which topics and patterns have
//! local subscribers, reported to the relay as it changes.

mod patterns;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use dashmap::DashMap;
use starling_protocol::{Filter, Topic};

use crate::delivery::Delivery;
use crate::interest::{Interest, InterestQueue};
use crate::metrics::Metrics;
use crate::ring::{self, Capacity};
use crate::sync::{read, write};

use self::patterns::PatternIndex;

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
///
/// Patterns are indexed by their tokens (a trie with a branch per literal
/// token and one for `*`), so a publish visits the patterns its topic
/// matches, not all of them. The index is behind one read-write lock:
/// publishes and lookups read it concurrently; subscribing to a pattern and
/// unsubscribing from one write it. Neither holds it across anything but
/// the index and the rings' own short locks.
#[derive(Debug)]
pub struct TopicRegistry {
    topics: DashMap<Topic, Channel>,
    patterns: RwLock<PatternIndex<Channel>>,
    /// How many patterns the index holds, written under its write lock: a
    /// publish that sees 0 skips the index and its lock.
    pattern_count: AtomicUsize,
    capacity: Capacity,
    metrics: Arc<Metrics>,
    /// Told when a topic or pattern gains its first or loses its last local
    /// subscriber, when a relay follows interest.
    interest: OnceLock<Arc<InterestQueue>>,
}

impl TopicRegistry {
    /// A registry whose channels hold `capacity` (messages, and bytes) per
    /// subscriber.
    pub fn new(capacity: impl Into<Capacity>, metrics: Arc<Metrics>) -> Self {
        TopicRegistry {
            topics: DashMap::new(),
            patterns: RwLock::default(),
            pattern_count: AtomicUsize::new(0),
            capacity: capacity.into(),
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
        read(&self.patterns).for_each(|pattern, _| {
            Self::tell(&queue, Interest::Watch(pattern.clone()));
        });
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
            Some(topic) => self.add_topic_subscriber(topic, filter),
            None => self.add_pattern_subscriber(filter),
        };
        self.metrics.subscriptions.inc();
        rx
    }

    fn add_topic_subscriber(&self, topic: Topic, filter: &mut Filter) -> DeliveryReceiver {
        // The channel is made under the entry's lock.
        let mut channel = self
            .topics
            .entry(topic)
            .or_insert_with(|| self.open(filter));
        *filter = Filter::from(channel.key().clone());
        channel.subscribers += 1;
        channel.tx.subscribe()
    }

    fn add_pattern_subscriber(&self, filter: &mut Filter) -> DeliveryReceiver {
        let mut index = write(&self.patterns);
        let (shared, channel) = index.get_or_insert_with(filter, || self.open(filter));
        let shared = shared.clone();
        channel.subscribers += 1;
        let rx = channel.tx.subscribe();
        self.pattern_count.store(index.len(), Ordering::Relaxed);
        *filter = shared;
        rx
    }

    /// The channel of a topic or pattern that gains its first subscriber.
    /// Called under the lock that guards the filter's entry, so that watch
    /// and unwatch of one filter reach the relay in the order they happened.
    fn open(&self, filter: &Filter) -> Channel {
        self.metrics.topics.inc();
        if let Some(sender) = self.interest.get() {
            Self::tell(sender, Interest::Watch(filter.clone()));
        }
        Channel {
            tx: ring::channel(self.capacity),
            subscribers: 0,
        }
    }

    /// Removes one subscriber of `filter`; the channel goes when it was the last.
    pub(crate) fn unsubscribe(&self, filter: &Filter) {
        match filter.as_topic() {
            Some(topic) => self.remove_topic_subscriber(&topic, filter),
            None => self.remove_pattern_subscriber(filter),
        }
        self.metrics.subscriptions.dec();
    }

    fn remove_topic_subscriber(&self, topic: &Topic, filter: &Filter) {
        if let Some(mut channel) = self.topics.get_mut(topic) {
            channel.subscribers = channel.subscribers.saturating_sub(1);
        }
        let removed = self
            .topics
            .remove_if(topic, |_, channel| self.closes(channel, filter));
        if removed.is_some() {
            self.metrics.topics.dec();
        }
    }

    fn remove_pattern_subscriber(&self, filter: &Filter) {
        let removed = {
            let mut index = write(&self.patterns);
            let removed = index.remove_if(filter, |channel| {
                channel.subscribers = channel.subscribers.saturating_sub(1);
                self.closes(channel, filter)
            });
            self.pattern_count.store(index.len(), Ordering::Relaxed);
            removed
        };
        if removed.is_some() {
            self.metrics.topics.dec();
        }
    }

    /// Whether `channel` has lost its last subscriber and goes. Called
    /// under the lock that guards the filter's entry (see [`Self::open`]).
    fn closes(&self, channel: &Channel, filter: &Filter) -> bool {
        let last = channel.subscribers == 0;
        if last && let Some(sender) = self.interest.get() {
            Self::tell(sender, Interest::Unwatch(filter.clone()));
        }
        last
    }

    /// Sends `delivery` to the subscribers of its topic and of every pattern
    /// that matches it. Returns how many subscriptions it reached.
    pub(crate) fn publish(&self, delivery: Delivery) -> usize {
        self.publish_shared(Arc::new(delivery))
    }

    /// [`TopicRegistry::publish`] for a delivery that is shared already (kept
    /// in the topic's history too).
    pub(crate) fn publish_shared(&self, delivery: Arc<Delivery>) -> usize {
        let mut reached = self.publish_to_patterns_shared(&delivery, |_| true);
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
        self.publish_to_patterns_shared(&delivery, route)
    }

    /// Sends `delivery` to the patterns that match its topic and that
    /// `route` picks: a walk of the index, after one load when there is no
    /// pattern at all.
    fn publish_to_patterns_shared(
        &self,
        delivery: &Delivery,
        route: impl Fn(&Filter) -> bool,
    ) -> usize {
        let mut reached = 0;
        if self.pattern_count.load(Ordering::Relaxed) == 0 {
            return reached;
        }
        read(&self.patterns).for_each_match(delivery.topic.as_str(), |pattern, channel| {
            if route(pattern) {
                let through = delivery.through_pattern(pattern.clone());
                reached += channel.tx.send(Arc::new(through));
            }
        });
        reached
    }

    /// Whether a message on `topic` would reach anyone on this node.
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic.as_str())
            || (self.pattern_count.load(Ordering::Relaxed) > 0
                && read(&self.patterns).any_match(topic.as_str()))
    }

    /// How many topics and patterns have subscribers.
    pub fn len(&self) -> usize {
        self.topics.len() + self.pattern_count.load(Ordering::Relaxed)
    }

    /// Whether no topic has subscribers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many subscribers `filter` has on this node.
    pub fn subscribers(&self, filter: &Filter) -> usize {
        match filter.as_topic() {
            Some(topic) => self.topics.get(&topic).map_or(0, |c| c.subscribers),
            None => read(&self.patterns)
                .get(filter)
                .map_or(0, |c| c.subscribers),
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

    #[test]
    fn patterns_are_counted_shared_and_removed() {
        let r = registry();
        let f = Filter::new("a.*.c").unwrap();
        let mut mine = f.clone();
        let _rx1 = r.subscribe_shared(&mut mine);
        let mut theirs = Filter::new("a.*.c").unwrap();
        let _rx2 = r.subscribe_shared(&mut theirs);
        assert!(Arc::ptr_eq(mine.as_arc(), theirs.as_arc()));
        assert_eq!((r.len(), r.subscribers(&f)), (1, 2));
        assert!(r.has_subscribers(&Topic::new("a.b.c").unwrap()));
        assert!(!r.has_subscribers(&Topic::new("a.b").unwrap()));
        r.unsubscribe(&f);
        assert_eq!((r.len(), r.subscribers(&f)), (1, 1));
        r.unsubscribe(&f);
        // Unsubscribing what is not there changes nothing.
        r.unsubscribe(&Filter::new("x.>").unwrap());
        assert_eq!((r.len(), r.subscribers(&f)), (0, 0));
        assert!(!r.has_subscribers(&Topic::new("a.b.c").unwrap()));
        assert_eq!(r.publish(delivery("a.b.c")), 0);
        assert_eq!(r.metrics.topics.get(), 0);
    }

    #[test]
    fn reserved_topics_need_a_named_first_token() {
        let r = registry();
        let _all = r.subscribe(&Filter::new(">").unwrap());
        let _any = r.subscribe(&Filter::new("*.stats").unwrap());
        assert!(!r.has_subscribers(&Topic::new("$sys.stats").unwrap()));
        assert_eq!(r.publish(delivery("$sys.stats")), 0);
        let _sys = r.subscribe(&Filter::new("$sys.>").unwrap());
        assert!(r.has_subscribers(&Topic::new("$sys.stats").unwrap()));
        assert_eq!(r.publish(delivery("$sys.stats")), 1);
        assert_eq!(r.publish(delivery("sys.stats")), 2);
    }

    #[test]
    fn publish_to_patterns_takes_the_routed_matches_only() {
        let r = registry();
        let _topic = r.subscribe(&Filter::new("a.b").unwrap());
        let _star = r.subscribe(&Filter::new("a.*").unwrap());
        let _tail = r.subscribe(&Filter::new("a.>").unwrap());
        let _other = r.subscribe(&Filter::new("b.*").unwrap());
        assert_eq!(r.publish_to_patterns(delivery("a.b"), |_| true), 2);
        assert_eq!(
            r.publish_to_patterns(delivery("a.b"), |p| p.as_str() == "a.>"),
            1
        );
        assert_eq!(
            r.publish_to_patterns(delivery("a.b"), |p| p.as_str() == "b.*"),
            0
        );
        assert_eq!(r.publish_to_topic(delivery("a.b")), 1);
    }

    #[test]
    fn interest_follows_first_and_last_subscribers_of_patterns() {
        let r = registry();
        let f = |s: &str| Filter::new(s).unwrap();
        let _before = r.subscribe(&f("a.*"));
        let _sys = r.subscribe(&f("$sys.*"));
        let queue = Arc::new(InterestQueue::default());
        r.report_interest(queue.clone());
        // Broker topics are not told.
        assert_eq!(queue.take(), [Interest::Watch(f("a.*"))]);
        let _again = r.subscribe(&f("a.*"));
        let _tail = r.subscribe(&f("a.>"));
        assert_eq!(queue.take(), [Interest::Watch(f("a.>"))]);
        r.unsubscribe(&f("a.*"));
        assert_eq!(queue.take(), [], "a.* has a subscriber still");
        r.unsubscribe(&f("a.*"));
        r.unsubscribe(&f("a.>"));
        let mut told = queue.take();
        told.sort_by_key(|interest| format!("{interest:?}"));
        assert_eq!(
            told,
            [Interest::Unwatch(f("a.*")), Interest::Unwatch(f("a.>"))]
        );
    }

    mod churn {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        fn filter() -> impl Strategy<Value = Filter> {
            let token = prop_oneof![Just("a"), Just("b"), Just("*")];
            (
                prop_oneof![Just("a"), Just("*"), Just(">"), Just("$s")],
                proptest::collection::vec(token, 0..3),
                any::<bool>(),
            )
                .prop_map(|(first, mut tokens, wide)| {
                    tokens.insert(0, first);
                    if first == ">" {
                        tokens.truncate(1);
                    } else if wide {
                        tokens.push(">");
                    }
                    Filter::new(&tokens.join(".")).unwrap()
                })
        }

        fn topic() -> impl Strategy<Value = Topic> {
            proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("$s")], 1..5)
                .prop_filter_map("`$` only first", |tokens| {
                    Topic::new(&tokens.join(".")).ok()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever came and went, a publish reaches each subscriber of
            /// the topic and of every pattern that matches it, once.
            #[test]
            fn publish_reaches_what_a_scan_finds(
                ops in proptest::collection::vec((filter(), any::<bool>()), 0..40),
                topics in proptest::collection::vec(topic(), 1..8),
            ) {
                let r = registry();
                let mut held: BTreeMap<Filter, Vec<DeliveryReceiver>> = BTreeMap::new();
                for (filter, subscribe) in ops {
                    let receivers = held.entry(filter.clone()).or_default();
                    if subscribe {
                        receivers.push(r.subscribe(&filter));
                    } else if receivers.pop().is_some() {
                        r.unsubscribe(&filter);
                    }
                }
                held.retain(|_, receivers| !receivers.is_empty());
                prop_assert_eq!(r.len(), held.len());
                for topic in topics {
                    let reached: usize = held
                        .iter()
                        .filter(|(filter, _)| filter.matches(topic.as_str()))
                        .map(|(_, receivers)| receivers.len())
                        .sum();
                    prop_assert_eq!(r.has_subscribers(&topic), reached > 0);
                    prop_assert_eq!(r.publish(delivery(topic.as_str())), reached);
                }
            }
        }
    }
}
