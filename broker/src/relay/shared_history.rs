//! A cluster's topic history, kept in Redis ([`streams`](super::streams)):
//! what the Redis relay does for topics that keep history.

use std::sync::Arc;

use starling_protocol::{Payload, Topic};

use crate::history::{Excerpt, HistoryPolicy, PAGE_BYTES, Position, Recovery, Replay, Resume};
use crate::interest::InterestQueue;
use crate::relay::link::{REDIS_TIMEOUT, now_us};
use crate::relay::streams::{Read, StreamHistory};
use crate::relay::wire::{self, Outbound};
use crate::relay::{Answer, Published, StoreUnavailable};

/// Which topics keep history, and the store in Redis.
#[derive(Debug)]
pub(crate) struct SharedHistory {
    policy: HistoryPolicy,
    store: StreamHistory,
    /// The interest the node's Redis link follows.
    interest: Arc<InterestQueue>,
}

impl SharedHistory {
    pub(crate) fn new(
        policy: HistoryPolicy,
        store: StreamHistory,
        interest: Arc<InterestQueue>,
    ) -> Self {
        SharedHistory {
            policy,
            store,
            interest,
        }
    }

    /// How many messages `topic` keeps; `None`: it keeps no history.
    pub(crate) fn length(&self, topic: &Topic) -> Option<usize> {
        Some(self.policy.length(topic)).filter(|&n| n > 0)
    }

    /// Publishes on a topic of history `length`, by node `node`: numbered,
    /// retained and published by Redis, which delivers it to every node
    /// (this one included) in offset order.
    pub(crate) fn publish(
        &self,
        node: &str,
        outbound: Outbound,
        length: usize,
    ) -> Answer<Published> {
        let message = wire::encode(node, &outbound);
        let appended = self.store.append(outbound.topic, message, length);
        Answer::Later(Box::pin(async move {
            let position = appended.await?;
            Ok(Published {
                offset: Some(position.offset),
                epoch: Some(position.epoch),
                subscribers: 0,
            })
        }))
    }

    /// What a subscription to `topic` (whose live receiver is made) gets
    /// from its history: read once the link follows every topic subscribed
    /// to so far, so that what the read does not find arrives live.
    pub(crate) fn recover(&self, topic: Topic, resume: Option<&Resume>) -> Answer<Recovery> {
        let read = Read {
            topic,
            from: resume.cloned(),
            limit: if resume.is_some() { None } else { Some(0) },
            bytes: None,
        };
        let since = resume.map(|r| r.since);
        let settled = self.interest.settled(REDIS_TIMEOUT);
        let store = self.store.clone();
        Answer::Later(Box::pin(async move {
            if !settled.await {
                return Err(StoreUnavailable("the link to redis is down".into()));
            }
            let page = store.read(read).await?;
            let Some(since) = since else {
                return Ok(Recovery {
                    position: Some(page.position),
                    ..Recovery::default()
                });
            };
            let lost = page.lost_after(since);
            Ok(Recovery {
                live_after: Some(page.position.clone()),
                position: Some(page.position),
                reset: page.reset,
                replay: Replay::fetched(lost, page.messages),
            })
        }))
    }

    /// Where `topic`'s history stands.
    pub(crate) fn position(&self, topic: Topic) -> Answer<Option<Position>> {
        let read = self.store.read(Read {
            topic,
            from: None,
            limit: Some(0),
            bytes: None,
        });
        Answer::Later(Box::pin(async move { Ok(Some(read.await?.position)) }))
    }

    /// Up to `limit` retained messages of `topic` (see [`Relay::history`]).
    ///
    /// [`Relay::history`]: crate::relay::Relay::history
    pub(crate) fn excerpt(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Answer<Option<Excerpt>> {
        let since = from.map(|from| from.since);
        let read = self.store.read(Read {
            topic: topic.clone(),
            from: from.cloned(),
            limit: Some(limit),
            bytes: Some(PAGE_BYTES),
        });
        Answer::Later(Box::pin(async move {
            let page = read.await?;
            let missed = since.map_or(0, |since| page.lost_after(since));
            Ok(Some(Excerpt {
                position: page.position,
                reset: page.reset,
                missed: (missed > 0).then_some(missed),
                messages: page.messages,
            }))
        }))
    }
}

/// A message of a topic with history, on its way to Redis.
pub(crate) fn outbound(topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Outbound {
    Outbound {
        topic,
        payload,
        from,
        sent_at_us: now_us(),
    }
}
