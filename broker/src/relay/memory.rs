//! The single-node relay: delivery through the local registry, history in
//! memory.

use std::sync::Arc;

use starling_protocol::{Filter, Payload, Topic};

use crate::delivery::Delivery;
use crate::history::{HistoryStore, Replay};
use crate::registry::{DeliveryReceiver, TopicRegistry};
use crate::relay::{Published, Relay};

/// One node on its own.
#[derive(Debug)]
pub(crate) struct MemoryRelay {
    registry: Arc<TopicRegistry>,
    history: HistoryStore,
    node: Arc<str>,
}

impl MemoryRelay {
    pub(crate) fn new(registry: Arc<TopicRegistry>, history: HistoryStore, node: Arc<str>) -> Self {
        MemoryRelay {
            registry,
            history,
            node,
        }
    }
}

impl Relay for MemoryRelay {
    fn publish(&self, topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Published {
        let Some(history) = self.history.for_publish(&topic) else {
            let delivery = Delivery::new(topic, payload, None, self.node.clone()).with_from(from);
            return Published {
                offset: None,
                subscribers: self.registry.publish(delivery),
            };
        };
        // Offset, history and live delivery under the topic's lock: a
        // subscriber with `since` gets each message exactly once.
        let mut guard = HistoryStore::lock(&history);
        let offset = guard.next_offset();
        let delivery = Arc::new(
            Delivery::new(topic, payload, Some(offset), self.node.clone()).with_from(from),
        );
        self.history.push(&mut guard, delivery.clone());
        let subscribers = self.registry.publish_shared(delivery);
        drop(guard);
        self.history.enforce();
        Published {
            offset: Some(offset),
            subscribers,
        }
    }

    fn subscribe(
        &self,
        filter: &mut Filter,
        since: Option<u64>,
    ) -> (DeliveryReceiver, Option<Replay>) {
        if let (Some(since), Some(topic)) = (since, filter.as_topic())
            && let Some(history) = self.history.get(&topic)
        {
            let mut guard = HistoryStore::lock(&history);
            self.history.touch(&mut guard);
            let rx = self.registry.subscribe_shared(filter);
            return (rx, Replay::after(&history, &guard, since));
        }
        (self.registry.subscribe_shared(filter), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryBounds, HistoryPolicy};
    use crate::metrics::Metrics;

    fn relay(history: usize) -> MemoryRelay {
        let registry = Arc::new(TopicRegistry::new(16, Arc::new(Metrics::new())));
        let bounds = HistoryBounds {
            topics: 10,
            bytes: usize::MAX,
        };
        let metrics = Arc::new(Metrics::new());
        let store = HistoryStore::new(HistoryPolicy::new(history, &[]), bounds, metrics);
        MemoryRelay::new(registry, store, "n1".into())
    }

    fn publish(relay: &MemoryRelay, topic: &str) -> Published {
        relay.publish(
            Topic::new(topic).unwrap(),
            Payload::from_json("1").unwrap(),
            None,
        )
    }

    #[test]
    fn publishes_reach_subscribers_with_offsets_when_history_is_kept() {
        let relay = relay(2);
        let mut filter = Filter::new("a.b").unwrap();
        let (mut rx, replay) = relay.subscribe(&mut filter, None);
        assert!(replay.is_none());
        assert_eq!(
            publish(&relay, "a.b"),
            Published {
                offset: Some(1),
                subscribers: 1
            }
        );
        assert_eq!(publish(&relay, "a.b").offset, Some(2));
        let mut offsets = Vec::new();
        rx.drain(10, |d| offsets.push(d.unwrap().offset));
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
        let (_rx, replay) = relay.subscribe(&mut filter, Some(0));
        let (mut lost, mut offsets) = (0, Vec::new());
        let done = replay.expect("a replay").page(|item| {
            match item {
                Err(n) => lost += n,
                Ok(d) => offsets.push(d.offset),
            }
            std::ops::ControlFlow::Continue(())
        });
        assert!(done);
        assert_eq!(lost, 1);
        assert_eq!(offsets, vec![Some(2), Some(3)]);
    }
}
