//! Topic history: the last N messages of each topic, with offsets, so that a
//! client that subscribes with `since` catches up with no gap and no
//! duplicate.
//!
//! A topic's offsets start at 1 and grow by one per message for as long as
//! the node runs. Publishing assigns the offset, appends to the history and
//! sends to live subscribers under the topic's lock; subscribing with `since`
//! takes its live receiver and its replay under the same lock, so a message
//! is either replayed or delivered live, never both and never neither.
//!
//! A replay holds no message of its own: it is a cursor over the topic's
//! history ([`Replay`]), read a page at a time as the subscriber's socket
//! takes what came before, so that a replay never queues more than the
//! connection's outbound bound, and many replays cost no more than one.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use starling_protocol::Topic;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::ring::Weigh;

/// How many messages each topic keeps: a default and per-prefix refinements.
#[derive(Debug, Clone, Default)]
pub(crate) struct HistoryPolicy {
    default: usize,
    /// (prefix, length), longest prefix first.
    prefixes: Vec<(String, usize)>,
}

impl HistoryPolicy {
    /// Keep `default` messages per topic, refined by `PREFIX=N` rules (the
    /// longest matching prefix wins).
    pub(crate) fn new(default: usize, rules: &[(String, usize)]) -> Self {
        let mut prefixes = rules.to_vec();
        prefixes.sort_by_key(|rule| std::cmp::Reverse(rule.0.len()));
        HistoryPolicy { default, prefixes }
    }

    /// How many messages `topic` keeps (0: none). Broker topics keep none.
    pub(crate) fn length(&self, topic: &Topic) -> usize {
        if topic.is_reserved() {
            return 0;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| topic.as_str().starts_with(prefix.as_str()))
            .map_or(self.default, |(_, n)| *n)
    }

    /// Whether any topic keeps history.
    pub(crate) fn is_enabled(&self) -> bool {
        self.default > 0 || self.prefixes.iter().any(|(_, n)| *n > 0)
    }
}

/// What a subscriber with `since` gets before live messages: the topic's
/// messages from offset `next` to `until` (the last one published before
/// the subscription began), read from the history as they are sent.
/// Messages that the history dropped meanwhile are reported as lost.
#[derive(Debug)]
pub(crate) struct Replay {
    history: Arc<Mutex<TopicHistory>>,
    next: u64,
    until: u64,
}

impl Replay {
    /// The replay of what `history` holds after `since`; `None` when there
    /// is nothing after it. Taken under the history's lock (`guard`), with
    /// the subscription's live receiver.
    pub(crate) fn after(
        history: &Arc<Mutex<TopicHistory>>,
        guard: &TopicHistory,
        since: u64,
    ) -> Option<Self> {
        let until = guard.next_offset - 1;
        (since < until).then(|| Replay {
            history: history.clone(),
            next: since + 1,
            until,
        })
    }

    /// Hands the next messages to `each`, in order, until `each` breaks
    /// (after the message it breaks on) or the replay is over, which it
    /// returns. Messages no longer retained are reported first, as one
    /// `Err` with how many they are.
    pub(crate) fn page(
        &mut self,
        mut each: impl FnMut(Result<&Arc<Delivery>, u64>) -> ControlFlow<()>,
    ) -> bool {
        let history = HistoryStore::lock(&self.history);
        let first = history.first_offset();
        if self.next < first {
            let lost = first.min(self.until + 1) - self.next;
            self.next += lost;
            let _ = each(Err(lost));
            if self.next > self.until {
                return true;
            }
        }
        let skip = (self.next - first) as usize;
        for delivery in history.messages.iter().skip(skip) {
            let Some(offset) = delivery.offset.filter(|&o| o <= self.until) else {
                break;
            };
            self.next = offset + 1;
            if each(Ok(delivery)).is_break() {
                break;
            }
        }
        self.next > self.until
    }
}

/// One topic's retained messages.
#[derive(Debug)]
pub(crate) struct TopicHistory {
    capacity: usize,
    next_offset: u64,
    messages: VecDeque<Arc<Delivery>>,
    /// The weight of `messages`.
    bytes: usize,
    /// The store's clock when the topic was last published to or replayed.
    last_used: u64,
}

impl TopicHistory {
    /// The offset the next message gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The offset of the oldest message retained (the next offset when
    /// none is).
    fn first_offset(&self) -> u64 {
        self.messages
            .front()
            .and_then(|d| d.offset)
            .unwrap_or(self.next_offset)
    }

    /// Records a message with the next offset (the caller built it with
    /// [`TopicHistory::next_offset`]); returns the weight added and the
    /// weight and count of the messages it pushed out.
    fn push(&mut self, delivery: Arc<Delivery>) -> (usize, usize, usize) {
        self.next_offset += 1;
        let (mut freed, mut dropped) = (0, 0);
        if self.messages.len() >= self.capacity {
            freed = self.pop_front();
            dropped = 1;
        }
        let added = delivery.weight();
        self.bytes += added;
        self.messages.push_back(delivery);
        (added, freed, dropped)
    }

    /// Drops the oldest message; returns its weight.
    fn pop_front(&mut self) -> usize {
        let weight = self.messages.pop_front().map_or(0, |d| d.weight());
        self.bytes -= weight;
        weight
    }
}

/// How much the history may hold, all topics together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryBounds {
    /// Most topics with a history.
    pub(crate) topics: usize,
    /// Most bytes of retained messages (payload and topic).
    pub(crate) bytes: usize,
}

/// Every topic's history, bounded in topics and in bytes: beyond either
/// bound, the histories used least recently (published to or replayed) give
/// way, so that no topic is refused history because of names seen earlier.
#[derive(Debug)]
pub(crate) struct HistoryStore {
    /// Whether any topic keeps history (the publish path checks only this
    /// when none does).
    enabled: bool,
    policy: HistoryPolicy,
    bounds: HistoryBounds,
    topics: DashMap<Topic, Arc<Mutex<TopicHistory>>>,
    /// Ticks once per use of a history: what "recently" is measured in.
    clock: AtomicU64,
    /// Weight and count of every retained message.
    bytes: AtomicUsize,
    messages: AtomicUsize,
    /// Held by the one caller that makes room at a time.
    evicting: Mutex<()>,
    metrics: Arc<Metrics>,
}

/// A locked topic history.
pub(crate) type HistoryGuard<'a> = MutexGuard<'a, TopicHistory>;

impl HistoryStore {
    pub(crate) fn new(policy: HistoryPolicy, bounds: HistoryBounds, metrics: Arc<Metrics>) -> Self {
        HistoryStore {
            enabled: policy.is_enabled(),
            policy,
            bounds: HistoryBounds {
                topics: bounds.topics.max(1),
                bytes: bounds.bytes,
            },
            topics: DashMap::new(),
            clock: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            metrics,
        }
    }

    /// The history of `topic`, created on its first message (the least
    /// recently used histories give way when the store holds its most
    /// topics); `None` when the topic keeps none.
    pub(crate) fn for_publish(&self, topic: &Topic) -> Option<Arc<Mutex<TopicHistory>>> {
        if !self.enabled {
            return None;
        }
        if let Some(history) = self.topics.get(topic) {
            return Some(history.clone());
        }
        let capacity = self.policy.length(topic);
        if capacity == 0 {
            return None;
        }
        if self.topics.len() >= self.bounds.topics {
            self.drop_least_used_topics();
        }
        let history = self.topics.entry(topic.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(TopicHistory {
                capacity,
                next_offset: 1,
                messages: VecDeque::with_capacity(capacity.min(64)),
                bytes: 0,
                last_used: 0,
            }))
        });
        Some(history.clone())
    }

    /// Appends `delivery` (built with the history's next offset) to the
    /// locked history `guard`. Call [`HistoryStore::enforce`] once the lock
    /// is released.
    pub(crate) fn push(&self, guard: &mut TopicHistory, delivery: Arc<Delivery>) {
        guard.last_used = self.tick();
        let (added, freed, dropped) = guard.push(delivery);
        self.count(added as isize - freed as isize, 1 - dropped as isize);
    }

    /// Marks the locked history `guard` as used (a replay).
    pub(crate) fn touch(&self, guard: &mut TopicHistory) {
        guard.last_used = self.tick();
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds to the store's totals and their gauges.
    fn count(&self, bytes: isize, messages: isize) {
        let bytes = if bytes >= 0 {
            self.bytes.fetch_add(bytes as usize, Ordering::Relaxed) + bytes as usize
        } else {
            self.bytes
                .fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed)
                - bytes.unsigned_abs()
        };
        let messages = if messages >= 0 {
            self.messages
                .fetch_add(messages as usize, Ordering::Relaxed)
                + messages as usize
        } else {
            self.messages
                .fetch_sub(messages.unsigned_abs(), Ordering::Relaxed)
                - messages.unsigned_abs()
        };
        self.metrics.history_bytes.set(bytes as i64);
        self.metrics.history_messages.set(messages as i64);
    }

    /// Keeps the store within its bytes: when it holds more, the oldest
    /// messages of the least recently used histories are dropped until it
    /// holds nine tenths of its bound. Called with no history locked.
    pub(crate) fn enforce(&self) {
        if self.bytes.load(Ordering::Relaxed) <= self.bounds.bytes {
            return;
        }
        // One caller makes room; the others go on (the store is over its
        // bound by their messages for a moment).
        let Ok(_evicting) = self.evicting.try_lock() else {
            return;
        };
        let target = self.bounds.bytes / 10 * 9;
        for history in self.least_used_first() {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut guard = Self::lock(&history);
            let (mut freed, mut dropped) = (0, 0);
            while !guard.messages.is_empty() && self.bytes.load(Ordering::Relaxed) > target + freed
            {
                freed += guard.pop_front();
                dropped += 1;
            }
            drop(guard);
            self.count(-(freed as isize), -(dropped as isize));
        }
    }

    /// Every history, the least recently used first.
    fn least_used_first(&self) -> Vec<Arc<Mutex<TopicHistory>>> {
        let mut all: Vec<_> = self
            .topics
            .iter()
            .map(|entry| {
                let history = entry.value().clone();
                let last_used = Self::lock(&history).last_used;
                (last_used, history)
            })
            .collect();
        all.sort_unstable_by_key(|(last_used, _)| *last_used);
        all.into_iter().map(|(_, history)| history).collect()
    }

    /// Drops the least recently used hundredth of the histories (one at
    /// least), messages and offsets: a topic that comes back starts again
    /// at offset 1.
    fn drop_least_used_topics(&self) {
        let Ok(_evicting) = self.evicting.lock() else {
            return;
        };
        if self.topics.len() < self.bounds.topics {
            return;
        }
        let mut all: Vec<(u64, Topic)> = self
            .topics
            .iter()
            .map(|entry| (Self::lock(entry.value()).last_used, entry.key().clone()))
            .collect();
        let n = (all.len() / 100).max(1);
        all.select_nth_unstable_by_key(n - 1, |(last_used, _)| *last_used);
        for (_, topic) in all.into_iter().take(n) {
            if let Some((_, history)) = self.topics.remove(&topic) {
                let mut guard = Self::lock(&history);
                let (freed, dropped) = (guard.bytes, guard.messages.len());
                // A replay still reading it finds the messages gone.
                guard.messages = VecDeque::new();
                guard.bytes = 0;
                drop(guard);
                self.count(-(freed as isize), -(dropped as isize));
            }
        }
    }

    /// The history of `topic`, when it has one.
    pub(crate) fn get(&self, topic: &Topic) -> Option<Arc<Mutex<TopicHistory>>> {
        self.topics.get(topic).map(|h| h.clone())
    }

    /// Locks one topic's history.
    pub(crate) fn lock(history: &Mutex<TopicHistory>) -> HistoryGuard<'_> {
        crate::sync::lock(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::Payload;

    fn bounded(n: usize, topics: usize, bytes: usize) -> HistoryStore {
        HistoryStore::new(
            HistoryPolicy::new(n, &[("metrics.".into(), 0), ("chat.vip.".into(), 10)]),
            HistoryBounds { topics, bytes },
            Arc::new(Metrics::new()),
        )
    }

    fn store(n: usize) -> HistoryStore {
        bounded(n, 100, usize::MAX)
    }

    /// Publishes a payload of `bytes` bytes (a JSON string), as the relay does.
    fn publish_sized(store: &HistoryStore, topic: &Topic, bytes: usize) -> Option<u64> {
        let history = store.for_publish(topic)?;
        let mut h = HistoryStore::lock(&history);
        let offset = h.next_offset();
        let payload = Payload::from_json(&format!("\"{}\"", "x".repeat(bytes - 2))).unwrap();
        store.push(
            &mut h,
            Arc::new(Delivery::new(
                topic.clone(),
                payload,
                Some(offset),
                "n".into(),
            )),
        );
        drop(h);
        store.enforce();
        Some(offset)
    }

    fn publish(store: &HistoryStore, topic: &Topic) -> Option<u64> {
        publish_sized(store, topic, 3)
    }

    /// How many messages `topic` retains.
    fn retained(store: &HistoryStore, topic: &str) -> usize {
        let topic = Topic::new(topic).unwrap();
        store
            .get(&topic)
            .map_or(0, |h| HistoryStore::lock(&h).messages.len())
    }

    #[test]
    fn beyond_its_bytes_the_least_recently_used_topics_give_way() {
        // Topic names are 1 byte, payloads 99: 100 bytes a message.
        let s = bounded(100, 100, 1_000);
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        for _ in 0..5 {
            publish_sized(&s, &a, 99);
        }
        for _ in 0..5 {
            publish_sized(&s, &b, 99);
        }
        assert_eq!(s.bytes.load(Ordering::Relaxed), 1_000);
        // A replay makes `a` more recently used than `b`.
        let history = s.get(&a).unwrap();
        s.touch(&mut HistoryStore::lock(&history));
        publish_sized(&s, &Topic::new("c").unwrap(), 99);
        // Over 1,000: down to 900, from the oldest messages of `b`.
        assert_eq!(s.bytes.load(Ordering::Relaxed), 900);
        assert_eq!(
            (retained(&s, "a"), retained(&s, "b"), retained(&s, "c")),
            (5, 3, 1)
        );
        assert_eq!(s.metrics.history_bytes.get(), 900);
        assert_eq!(s.metrics.history_messages.get(), 9);
        // Offsets go on where they were.
        assert_eq!(publish_sized(&s, &b, 99), Some(6));
    }

    #[test]
    fn beyond_its_topics_new_topics_take_the_place_of_the_least_used() {
        let s = bounded(3, 10, usize::MAX);
        for n in 0..10 {
            publish(&s, &Topic::new(&format!("t.{n}")).unwrap());
        }
        // t.0 is used again: t.1 is the least recently used now.
        publish(&s, &Topic::new("t.0").unwrap());
        assert_eq!(publish(&s, &Topic::new("new").unwrap()), Some(1));
        assert_eq!(s.topics.len(), 10);
        assert_eq!(retained(&s, "t.1"), 0, "dropped");
        assert_eq!(retained(&s, "t.0"), 2);
        assert_eq!(retained(&s, "new"), 1);
        assert_eq!(s.metrics.history_messages.get(), 11);
    }

    #[test]
    fn policy_prefers_the_longest_prefix() {
        let policy = HistoryPolicy::new(3, &[("chat.".into(), 5), ("chat.vip.".into(), 50)]);
        let t = |s: &str| Topic::new(s).unwrap();
        assert_eq!(policy.length(&t("other")), 3);
        assert_eq!(policy.length(&t("chat.room")), 5);
        assert_eq!(policy.length(&t("chat.vip.x")), 50);
        assert_eq!(policy.length(&t("$sys.stats")), 0);
        assert!(!HistoryPolicy::new(0, &[]).is_enabled());
    }

    fn replay(s: &HistoryStore, topic: &Topic, since: u64) -> Option<Replay> {
        let history = s.get(topic).unwrap();
        let guard = HistoryStore::lock(&history);
        Replay::after(&history, &guard, since)
    }

    /// Takes up to `max` messages of a page: (lost, offsets, done).
    fn page(replay: &mut Replay, max: usize) -> (u64, Vec<u64>, bool) {
        let (mut lost, mut offsets) = (0, Vec::new());
        let done = replay.page(|item| match item {
            Err(n) => {
                lost += n;
                ControlFlow::Continue(())
            }
            Ok(d) => {
                offsets.push(d.offset.unwrap());
                if offsets.len() == max {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
        });
        (lost, offsets, done)
    }

    #[test]
    fn offsets_grow_and_replay_reports_what_was_evicted() {
        let s = store(3);
        let topic = Topic::new("chat.room").unwrap();
        let offsets: Vec<_> = (0..5).map(|_| publish(&s, &topic).unwrap()).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
        let mut all = replay(&s, &topic, 0).unwrap();
        assert_eq!(page(&mut all, 10), (2, vec![3, 4, 5], true));
        assert_eq!(
            page(&mut replay(&s, &topic, 4).unwrap(), 10),
            (0, vec![5], true)
        );
        assert!(replay(&s, &topic, 5).is_none());
        assert!(replay(&s, &topic, 99).is_none());
    }

    #[test]
    fn a_replay_is_read_in_pages_and_ends_where_the_subscription_began() {
        let s = store(3);
        let topic = Topic::new("chat.room").unwrap();
        for _ in 0..3 {
            publish(&s, &topic);
        }
        let mut r = replay(&s, &topic, 0).unwrap();
        assert_eq!(page(&mut r, 1), (0, vec![1], false));
        // Published after the subscription began: delivered live, not replayed.
        publish(&s, &topic);
        publish(&s, &topic);
        // Offset 1 was taken; 2 was dropped from the history meanwhile.
        assert_eq!(page(&mut r, 10), (1, vec![3], true));
        // Everything it was to replay was dropped.
        let mut r = replay(&s, &topic, 0).unwrap();
        for _ in 0..5 {
            publish(&s, &topic);
        }
        assert_eq!(page(&mut r, 10), (5, vec![], true));
    }

    #[test]
    fn topics_without_history_get_no_offsets() {
        let s = store(3);
        assert_eq!(publish(&s, &Topic::new("metrics.cpu").unwrap()), None);
        assert_eq!(publish(&s, &Topic::new("$sys.x").unwrap()), None);
    }
}
