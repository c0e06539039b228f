//! The single-node relay: delivery through the local registry, history in
//! memory.

use std::sync::Arc;

use starling_protocol::{Filter, Payload, Topic};

use crate::delivery::Delivery;
use crate::history::{Excerpt, HistoryStore, Position, Recovery, Resume};
use crate::registry::{DeliveryReceiver, TopicRegistry};
use crate::relay::{Answer, Published, Relay};

/// One node on its own.
#[derive(Debug)]
pub(crate) struct MemoryRelay {
    registry: Arc<TopicRegistry>,
    history: Arc<HistoryStore>,
    node: Arc<str>,
}

impl MemoryRelay {
    pub(crate) fn new(registry: Arc<TopicRegistry>, history: HistoryStore, node: Arc<str>) -> Self {
        MemoryRelay {
            registry,
            history: Arc::new(history),
            node,
        }
    }
}

impl Relay for MemoryRelay {
    fn publish(&self, topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Answer<Published> {
        Answer::Now(self.publish_now(topic, payload, from))
    }

    fn subscribe(
        &self,
        filter: &mut Filter,
        resume: Option<&Resume>,
    ) -> (DeliveryReceiver, Answer<Recovery>) {
        let (rx, recovery) = self.subscribe_now(filter, resume);
        (rx, Answer::Now(recovery))
    }

    fn position(&self, filter: &Filter) -> Answer<Option<Position>> {
        Answer::Now(filter.as_topic().and_then(|t| self.history.position(&t)))
    }

    fn history(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Answer<Option<Excerpt>> {
        Answer::Now(self.history.read(topic, from, limit))
    }

    fn start(&self) {
        let Some(every) = self.history.expiry_interval() else {
            return;
        };
        let history = Arc::downgrade(&self.history);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(history) = history.upgrade() else {
                    return;
                };
                let expired = history.expire();
                if expired > 0 {
                    tracing::debug!(expired, "topic histories expired");
                }
            }
        });
    }
}

impl MemoryRelay {
    /// [`Relay::publish`], answered at once.
    pub(crate) fn publish_now(
        &self,
        topic: Topic,
        payload: Payload,
        from: Option<Arc<str>>,
    ) -> Published {
        let Some(history) = self.history.for_publish(&topic) else {
            let delivery = Delivery::new(topic, payload, None, self.node.clone()).with_from(from);
            return Published::unnumbered(self.registry.publish(delivery));
        };
        // Offset, history and live delivery under the topic's lock: a
        // subscriber with `since` gets each message exactly once.
        let mut guard = HistoryStore::lock(&history);
        let offset = guard.next_offset();
        let epoch = guard.epoch().clone();
        let delivery = Arc::new(
            Delivery::new(topic, payload, Some(offset), self.node.clone())
                .with_epoch(epoch.clone())
                .with_from(from),
        );
        self.history.push(&mut guard, delivery.clone());
        let subscribers = self.registry.publish_shared(delivery);
        drop(guard);
        self.history.enforce();
        Published {
            offset: Some(offset),
            epoch: Some(epoch),
            subscribers,
        }
    }

    /// [`Relay::subscribe`], answered at once.
    pub(crate) fn subscribe_now(
        &self,
        filter: &mut Filter,
        resume: Option<&Resume>,
    ) -> (DeliveryReceiver, Recovery) {
        match filter.as_topic() {
            Some(topic) => self
                .history
                .recover_with(&topic, resume, || self.registry.subscribe_shared(filter)),
            None => (self.registry.subscribe_shared(filter), Recovery::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryBounds, HistoryPolicy, Replay};
    use crate::metrics::Metrics;

    fn relay(history: usize) -> MemoryRelay {
        let registry = Arc::new(TopicRegistry::new(16, Arc::new(Metrics::new())));
        let bounds = HistoryBounds {
            topics: 10,
            bytes: usize::MAX,
            ttl: None,
        };
        let metrics = Arc::new(Metrics::new());
        let store = HistoryStore::new(HistoryPolicy::new(history, &[]), bounds, metrics);
        MemoryRelay::new(registry, store, "n1".into())
    }

    fn publish(relay: &MemoryRelay, topic: &str) -> Published {
        relay.publish_now(
            Topic::new(topic).unwrap(),
            Payload::from_json("1").unwrap(),
            None,
        )
    }

    fn resume(since: u64, epoch: Option<&str>) -> Resume {
        Resume {
            since,
            epoch: epoch.map(Into::into),
        }
    }

    /// Reads a whole replay: (lost, offsets).
    fn read(mut replay: Replay) -> (u64, Vec<Option<u64>>) {
        let (mut lost, mut offsets) = (0, Vec::new());
        let done = replay.page(|item| {
            match item {
                Err(n) => lost += n,
                Ok(d) => offsets.push(d.offset),
            }
            std::ops::ControlFlow::Continue(())
        });
        assert!(done);
        (lost, offsets)
    }

    #[test]
    fn publishes_reach_subscribers_with_offsets_when_history_is_kept() {
        let relay = relay(2);
        let mut filter = Filter::new("a.b").unwrap();
        let (mut rx, recovery) = relay.subscribe_now(&mut filter, None);
        assert!(recovery.replay.is_none());
        let epoch = recovery.position.expect("a position").epoch;
        assert_eq!(
            publish(&relay, "a.b"),
            Published {
                offset: Some(1),
                epoch: Some(epoch.clone()),
                subscribers: 1
            }
        );
        assert_eq!(publish(&relay, "a.b").offset, Some(2));
        let mut offsets = Vec::new();
        rx.drain(10, |d| {
            let d = d.unwrap();
            assert_eq!(d.epoch.as_ref(), Some(&epoch));
            offsets.push(d.offset)
        });
        assert_eq!(offsets, vec![Some(1), Some(2)]);
        assert_eq!(publish(&relay, "$sys.x").offset, None);
    }

    #[test]
    fn subscribe_with_since_replays_what_is_retained() {
        let relay = relay(2);
        for _ in 0..3 {
            publish(&relay, "a.b");
        }
        let mut filter = Filter::new("a.b").unwrap();
        let (_rx, recovery) = relay.subscribe_now(&mut filter, Some(&resume(0, None)));
        assert!(!recovery.reset);
        assert_eq!(recovery.position.unwrap().offset, 3);
        let (lost, offsets) = read(recovery.replay.expect("a replay"));
        assert_eq!(lost, 1);
        assert_eq!(offsets, vec![Some(2), Some(3)]);
    }

    #[test]
    fn a_foreign_epoch_or_an_offset_never_given_resets_and_replays_everything_retained() {
        let relay = relay(2);
        for _ in 0..3 {
            publish(&relay, "a.b");
        }
        let epoch = relay
            .history
            .position(&Topic::new("a.b").unwrap())
            .unwrap()
            .epoch;
        for (since, epoch) in [
            (2, Some("other")),
            (0, Some("other")),
            (4, None),
            (9, Some(&*epoch)),
        ] {
            let mut filter = Filter::new("a.b").unwrap();
            let (_rx, recovery) = relay.subscribe_now(&mut filter, Some(&resume(since, epoch)));
            assert!(recovery.reset, "since {since}, epoch {epoch:?}");
            // No count of what was lost: it is unknown.
            assert_eq!(read(recovery.replay.unwrap()), (0, vec![Some(2), Some(3)]));
        }
        // The right epoch and a position it gave: no reset.
        let mut filter = Filter::new("a.b").unwrap();
        let (_rx, recovery) = relay.subscribe_now(&mut filter, Some(&resume(2, Some(&epoch))));
        assert!(!recovery.reset);
        assert_eq!(read(recovery.replay.unwrap()), (0, vec![Some(3)]));
    }

    #[test]
    fn an_empty_topic_announces_the_epoch_its_first_message_gets() {
        let relay = relay(2);
        let mut filter = Filter::new("a.b").unwrap();
        let (_rx, recovery) = relay.subscribe_now(&mut filter, None);
        let position = recovery.position.unwrap();
        assert_eq!(position.offset, 0);
        assert_eq!(publish(&relay, "a.b").epoch, Some(position.epoch));
        // Patterns and topics without history have no position.
        let mut pattern = Filter::new("a.*").unwrap();
        assert!(relay.subscribe_now(&mut pattern, None).1.position.is_none());
        let mut reserved = Filter::new("$sys.x").unwrap();
        assert!(
            relay
                .subscribe_now(&mut reserved, None)
                .1
                .position
                .is_none()
        );
    }
}
