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
//! **Epochs.** Each topic history has an epoch, a short string that names
//! one run of its offsets: offsets restart at 1 only with a new epoch (a
//! broker restart, a history dropped for room or expired). A client that
//! resumes with an epoch that is not the topic's, or with an offset beyond
//! the topic's latest, gets a reset: its position is void and it is sent
//! everything retained. A topic's first history in a process takes the
//! process's epoch, so that the epoch a client saw in the `ack` of an empty
//! topic is still right once messages arrive; once the store has dropped any
//! history, new ones take fresh epochs of their own.
//!
//! A replay holds no message of its own: it is a cursor over the topic's
//! history ([`Replay`]), read a page at a time as the subscriber's socket
//! takes what came before, so that a replay never queues more than the
//! connection's outbound bound, and many replays cost no more than one.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use starling_protocol::Topic;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::ring::Weigh;

mod recovery;

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

pub(crate) use recovery::{Excerpt, PAGE_BYTES, Position, Recovery, Replay, Resume, replayed};

/// One topic's retained messages.
#[derive(Debug)]
pub(crate) struct TopicHistory {
    capacity: usize,
    epoch: Arc<str>,
    next_offset: u64,
    messages: VecDeque<Arc<Delivery>>,
    /// The weight of `messages`.
    bytes: usize,
    /// The store's clock when the topic was last published to or replayed.
    last_used: u64,
    /// When the topic was last published to, in seconds since the store
    /// began (what `--history-ttl` counts from).
    published_at: u64,
}

impl TopicHistory {
    /// The offset the next message gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The history's epoch.
    pub(crate) fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Where the history stands.
    pub(crate) fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.next_offset - 1,
        }
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
    /// How long a history is kept after its last message (`None`: as long
    /// as the other bounds allow).
    pub(crate) ttl: Option<Duration>,
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
    /// The epoch of this process's first history of each topic.
    epoch: Arc<str>,
    /// Whether any history was dropped (then new ones take fresh epochs).
    dropped_any: AtomicBool,
    /// Numbers the fresh epochs.
    epochs: AtomicU64,
    /// What `published_at` counts from.
    started: Instant,
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
                ..bounds
            },
            topics: DashMap::new(),
            clock: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            epoch: new_epoch().into(),
            dropped_any: AtomicBool::new(false),
            epochs: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
        }
    }

    /// Whether `topic` keeps history.
    pub(crate) fn keeps(&self, topic: &Topic) -> bool {
        self.enabled && self.policy.length(topic) > 0
    }

    /// The epoch of a topic history created now.
    fn epoch_for_new(&self) -> Arc<str> {
        if !self.dropped_any.load(Ordering::Relaxed) {
            return self.epoch.clone();
        }
        let n = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.epoch).into()
    }

    /// What subscribing to `topic` recovers, for a client at `resume`
    /// (`None`: a plain subscribe), with the subscription's live receiver
    /// taken by `subscribe` under the history's lock, so that each message
    /// is either replayed or delivered live.
    pub(crate) fn recover_with<R>(
        &self,
        topic: &Topic,
        resume: Option<&Resume>,
        subscribe: impl FnOnce() -> R,
    ) -> (R, Recovery) {
        if !self.keeps(topic) {
            return (subscribe(), Recovery::default());
        }
        // A resuming client needs the history locked while its receiver is
        // taken, even before the topic's first message.
        let history = match resume {
            Some(_) => self.for_publish(topic),
            None => self.get(topic),
        };
        let Some(history) = history else {
            // No message yet (or none kept): what its first history will be.
            let position = Position {
                epoch: self.epoch_for_absent(),
                offset: 0,
            };
            let reset = resume.is_some_and(|r| r.is_void_at(&position));
            let recovery = Recovery {
                position: Some(position),
                reset,
                replay: None,
                live_after: None,
            };
            return (subscribe(), recovery);
        };
        let mut guard = Self::lock(&history);
        let position = guard.position();
        let (reset, replay) = match resume {
            None => (false, None),
            Some(resume) => {
                self.touch(&mut guard);
                let reset = resume.is_void_at(&position);
                // A void position gets everything retained, with no count
                // of what it missed (unknown).
                let since = if reset {
                    guard.first_offset() - 1
                } else {
                    resume.since
                };
                (reset, Replay::after(&history, &guard, since))
            }
        };
        let rx = subscribe();
        drop(guard);
        let recovery = Recovery {
            position: Some(position),
            reset,
            replay,
            live_after: None,
        };
        (rx, recovery)
    }

    /// Where the history of `topic` stands (`None`: it keeps none).
    pub(crate) fn position(&self, topic: &Topic) -> Option<Position> {
        if !self.keeps(topic) {
            return None;
        }
        Some(match self.get(topic) {
            Some(history) => Self::lock(&history).position(),
            None => Position {
                epoch: self.epoch_for_absent(),
                offset: 0,
            },
        })
    }

    /// The epoch the `ack` of a topic with no history yet carries: the one
    /// its first history will take, unless histories were dropped.
    fn epoch_for_absent(&self) -> Arc<str> {
        self.epoch.clone()
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
                epoch: self.epoch_for_new(),
                next_offset: 1,
                messages: VecDeque::with_capacity(capacity.min(64)),
                bytes: 0,
                last_used: 0,
                published_at: 0,
            }))
        });
        Some(history.clone())
    }

    /// Appends `delivery` (built with the history's next offset) to the
    /// locked history `guard`. Call [`HistoryStore::enforce`] once the lock
    /// is released.
    pub(crate) fn push(&self, guard: &mut TopicHistory, delivery: Arc<Delivery>) {
        guard.last_used = self.tick();
        if self.bounds.ttl.is_some() {
            guard.published_at = self.started.elapsed().as_secs();
        }
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
            self.drop_topic(&topic, |_| true);
        }
    }

    /// Drops the history of `topic` when `condition` holds for it (checked
    /// under its lock): its messages, offsets and epoch.
    fn drop_topic(&self, topic: &Topic, condition: impl Fn(&TopicHistory) -> bool) {
        self.dropped_any.store(true, Ordering::Relaxed);
        let Some((_, history)) = self
            .topics
            .remove_if(topic, |_, history| condition(&Self::lock(history)))
        else {
            return;
        };
        let mut guard = Self::lock(&history);
        let (freed, dropped) = (guard.bytes, guard.messages.len());
        // A replay still reading it finds the messages gone.
        guard.messages = VecDeque::new();
        guard.bytes = 0;
        drop(guard);
        self.count(-(freed as isize), -(dropped as isize));
    }

    /// Drops the histories whose last message is older than the TTL.
    /// Returns how many went.
    pub(crate) fn expire(&self) -> usize {
        self.expire_at(self.started.elapsed().as_secs())
    }

    /// [`HistoryStore::expire`] at `now`, in seconds since the store began.
    fn expire_at(&self, now: u64) -> usize {
        let Some(ttl) = self.bounds.ttl else {
            return 0;
        };
        let Some(oldest) = now.checked_sub(ttl.as_secs()) else {
            return 0;
        };
        let stale = |h: &TopicHistory| h.published_at < oldest;
        let expired: Vec<Topic> = self
            .topics
            .iter()
            .filter(|entry| stale(&Self::lock(entry.value())))
            .map(|entry| entry.key().clone())
            .collect();
        for topic in &expired {
            self.drop_topic(topic, stale);
        }
        self.metrics.history_expired.inc_by(expired.len() as u64);
        expired.len()
    }

    /// How often [`HistoryStore::expire`] should run: a tenth of the TTL,
    /// between 1 s and 60 s.
    pub(crate) fn expiry_interval(&self) -> Option<Duration> {
        let ttl = self.bounds.ttl?;
        Some((ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
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

/// A fresh epoch: 8 characters of base 36 that differ from run to run (the
/// standard library's randomly keyed hasher, over the time and process id).
pub(crate) fn new_epoch() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    let mut n = hasher.finish();
    let mut epoch = String::with_capacity(8);
    for _ in 0..8 {
        epoch.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
    }
    epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    use starling_protocol::Payload;

    fn bounded(n: usize, topics: usize, bytes: usize) -> HistoryStore {
        HistoryStore::new(
            HistoryPolicy::new(n, &[("metrics.".into(), 0), ("chat.vip.".into(), 10)]),
            HistoryBounds {
                topics,
                bytes,
                ttl: None,
            },
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
    fn a_history_dropped_for_room_comes_back_in_a_new_epoch() {
        let s = bounded(3, 2, usize::MAX);
        let (a, b, c) = (
            Topic::new("a").unwrap(),
            Topic::new("b").unwrap(),
            Topic::new("c").unwrap(),
        );
        publish(&s, &a);
        publish(&s, &b);
        let first = s.position(&a).unwrap();
        assert_eq!(
            s.position(&b).unwrap().epoch,
            first.epoch,
            "the process's epoch"
        );
        // `c` takes the place of `a`, which comes back with offsets from 1.
        publish(&s, &c);
        assert_eq!(s.position(&a).unwrap().offset, 0);
        assert_eq!(publish(&s, &a), Some(1));
        let again = s.position(&a).unwrap();
        assert_ne!(again.epoch, first.epoch);
        let resume = Resume {
            since: 1,
            epoch: Some(first.epoch),
        };
        assert!(resume.is_void_at(&again));
    }

    #[test]
    fn histories_expire_a_ttl_after_their_last_message() {
        let s = HistoryStore::new(
            HistoryPolicy::new(3, &[]),
            HistoryBounds {
                topics: 100,
                bytes: usize::MAX,
                ttl: Some(Duration::from_secs(60)),
            },
            Arc::new(Metrics::new()),
        );
        let (quiet, busy) = (Topic::new("quiet").unwrap(), Topic::new("busy").unwrap());
        publish(&s, &quiet);
        publish(&s, &busy);
        let epoch = s.position(&quiet).unwrap().epoch;
        assert_eq!(s.expire_at(60), 0, "not older than the TTL yet");
        // `busy` gets a message at 30 s.
        HistoryStore::lock(&s.get(&busy).unwrap()).published_at = 30;
        assert_eq!(s.expire_at(61), 1);
        assert_eq!(retained(&s, "quiet"), 0);
        assert_eq!(retained(&s, "busy"), 1);
        assert_eq!(s.metrics.history_expired.get(), 1);
        assert_eq!(s.metrics.history_messages.get(), 1);
        // It starts again in a new epoch.
        assert_eq!(publish(&s, &quiet), Some(1));
        assert_ne!(s.position(&quiet).unwrap().epoch, epoch);
        // At 91 s: `busy` 61 s after its message, `quiet` 91 s after its new one.
        assert_eq!(s.expire_at(91), 2);
        assert_eq!(s.metrics.history_messages.get(), 0);
    }

    #[test]
    fn epochs_are_short_and_differ() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn topics_without_history_get_no_offsets() {
        let s = store(3);
        assert_eq!(publish(&s, &Topic::new("metrics.cpu").unwrap()), None);
        assert_eq!(publish(&s, &Topic::new("$sys.x").unwrap()), None);
    }
}
