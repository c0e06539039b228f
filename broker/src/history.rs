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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use starling_protocol::Topic;

use crate::delivery::Delivery;

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
    /// [`TopicHistory::next_offset`]).
    pub(crate) fn push(&mut self, delivery: Arc<Delivery>) {
        self.next_offset += 1;
        if self.messages.len() >= self.capacity {
            self.messages.pop_front();
        }
        self.messages.push_back(delivery);
    }
}

/// Every topic's history, bounded in topics.
#[derive(Debug)]
pub(crate) struct HistoryStore {
    /// Whether any topic keeps history (the publish path checks only this
    /// when none does).
    enabled: bool,
    policy: HistoryPolicy,
    max_topics: usize,
    topics: DashMap<Topic, Arc<Mutex<TopicHistory>>>,
    full_warned: AtomicBool,
}

/// A locked topic history.
pub(crate) type HistoryGuard<'a> = MutexGuard<'a, TopicHistory>;

impl HistoryStore {
    pub(crate) fn new(policy: HistoryPolicy, max_topics: usize) -> Self {
        HistoryStore {
            enabled: policy.is_enabled(),
            policy,
            max_topics,
            topics: DashMap::new(),
            full_warned: AtomicBool::new(false),
        }
    }

    /// The history of `topic`, created on its first message; `None` when the
    /// topic keeps none (or the store holds `max_topics` already).
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
        if self.topics.len() >= self.max_topics {
            if !self.full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_topics = self.max_topics,
                    "history holds the most topics it may; new topics keep no history"
                );
            }
            return None;
        }
        let history = self.topics.entry(topic.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(TopicHistory {
                capacity,
                next_offset: 1,
                messages: VecDeque::with_capacity(capacity.min(64)),
            }))
        });
        Some(history.clone())
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

    fn store(n: usize) -> HistoryStore {
        HistoryStore::new(
            HistoryPolicy::new(n, &[("metrics.".into(), 0), ("chat.vip.".into(), 10)]),
            100,
        )
    }

    fn publish(store: &HistoryStore, topic: &Topic) -> Option<u64> {
        let history = store.for_publish(topic)?;
        let mut h = HistoryStore::lock(&history);
        let offset = h.next_offset();
        h.push(Arc::new(Delivery::new(
            topic.clone(),
            Payload::from_json("1").unwrap(),
            Some(offset),
            "n".into(),
        )));
        Some(offset)
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
