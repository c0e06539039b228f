//! Topic history: the last N messages of each topic, with offsets, so that a
//! client that subscribes with `since` catches up with no gap and no
//! duplicate.
//!
//! A topic's offsets start at 1 and grow by one per message for as long as
//! the node runs. Publishing assigns the offset, appends to the history and
//! sends to live subscribers under the topic's lock; subscribing with `since`
//! takes its live receiver and its replay under the same lock, so a message
//! is either replayed or delivered live, never both and never neither.

use std::collections::VecDeque;
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

/// What a subscriber with `since` gets before live messages.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Messages after `since` that are no longer retained.
    pub(crate) lost: u64,
    /// The retained messages after `since`, in order.
    pub(crate) messages: Vec<Arc<Delivery>>,
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

    /// Records a message with the next offset (the caller built it with
    /// [`TopicHistory::next_offset`]).
    pub(crate) fn push(&mut self, delivery: Arc<Delivery>) {
        self.next_offset += 1;
        if self.messages.len() >= self.capacity {
            self.messages.pop_front();
        }
        self.messages.push_back(delivery);
    }

    /// What a subscriber that saw everything up to `since` gets: how many
    /// messages after `since` are no longer retained, and the retained ones
    /// after `since`, in order.
    pub(crate) fn replay(&self, since: u64) -> Replay {
        let first = self
            .messages
            .front()
            .and_then(|d| d.offset)
            .unwrap_or(self.next_offset);
        let lost = first.saturating_sub(since.saturating_add(1));
        let messages = self
            .messages
            .iter()
            .filter(|d| d.offset.is_some_and(|o| o > since))
            .cloned()
            .collect();
        Replay { lost, messages }
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

    #[test]
    fn offsets_grow_and_replay_reports_what_was_evicted() {
        let s = store(3);
        let topic = Topic::new("chat.room").unwrap();
        let offsets: Vec<_> = (0..5).map(|_| publish(&s, &topic).unwrap()).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
        let history = s.get(&topic).unwrap();
        let h = HistoryStore::lock(&history);
        let replay = h.replay(0);
        assert_eq!(replay.lost, 2);
        let offsets: Vec<_> = replay.messages.iter().map(|d| d.offset.unwrap()).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(h.replay(4).lost, 0);
        assert_eq!(h.replay(4).messages.len(), 1);
        assert_eq!(h.replay(5).messages.len(), 0);
        let replay = h.replay(99);
        assert_eq!((replay.lost, replay.messages.len()), (0, 0));
    }

    #[test]
    fn topics_without_history_get_no_offsets() {
        let s = store(3);
        assert_eq!(publish(&s, &Topic::new("metrics.cpu").unwrap()), None);
        assert_eq!(publish(&s, &Topic::new("$sys.x").unwrap()), None);
    }
}
