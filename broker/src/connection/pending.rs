//! Frames whose answer waits for a store in Redis (history, presence): their results
//! are applied in the order the frames came.
//!
//! A publish on a topic whose history is in Redis is sent to Redis at once
//! (so a connection's publishes keep their order), and its `ack` waits for
//! the offset Redis gives. A subscribe to such a topic waits for where the
//! history stands (and the replay). While a subscribe waits, the frames
//! that change subscriptions wait behind it, so that `subscribe` then
//! `unsubscribe` does what it says; publishes do not wait.
//!
//! Once [`MAX_PENDING`] wait, the connection reads nothing more from its
//! socket until Redis answers (the frames of the read that passed the mark
//! are still handled, so a read buffer's worth may wait beyond it), which
//! holds back a client that publishes faster than Redis takes its messages.

use std::future::{Future, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use starling_protocol::{Envelope, Filter, Payload, Topic};

use crate::broker::Broker;
use crate::history::{Position, Recovery, Resume};
use crate::presence::Members;
use crate::registry::DeliveryReceiver;
use crate::relay::{Answer, Published, StoreUnavailable};

/// How many frames may wait for the store per connection.
pub(crate) const MAX_PENDING: usize = 64;

/// A frame's result, once the store answered.
pub(crate) enum Done {
    /// A publish.
    Published {
        id: Option<u64>,
        result: Result<Published, StoreUnavailable>,
    },
    /// A subscribe: its live receiver was made when the frame came.
    Subscribed {
        id: Option<u64>,
        held: Held,
        ask: Ask,
        result: Result<Recovery, StoreUnavailable>,
    },
    /// The `ack` of a subscribe to a topic already subscribed to.
    Position {
        id: Option<u64>,
        result: Result<Option<Position>, StoreUnavailable>,
    },
    /// A `presence` request on a topic whose presence is in Redis.
    Presence {
        id: Option<u64>,
        topic: Topic,
        result: Result<Members, StoreUnavailable>,
    },
    /// A frame that changes subscriptions, held behind a subscribe.
    Deferred(Envelope),
}

/// What a `subscribe` asks besides its topic.
#[derive(Debug, Default)]
pub(crate) struct Ask {
    /// Where to resume from (`since`, `epoch`).
    pub(crate) resume: Option<Resume>,
    /// On a presence topic: the member's name (without auth).
    pub(crate) name: Option<String>,
    /// On a presence topic: the session's info.
    pub(crate) info: Option<Payload>,
}

/// A subscription made in the registry whose subscribe waits for the
/// store: dropped before it is taken (the store failed, the connection
/// ended), it leaves the registry.
pub(crate) struct Held {
    broker: Broker,
    taken: Option<(Filter, DeliveryReceiver)>,
}

impl Held {
    pub(crate) fn new(broker: Broker, filter: Filter, rx: DeliveryReceiver) -> Self {
        Held {
            broker,
            taken: Some((filter, rx)),
        }
    }

    /// The subscription, for the connection to keep.
    pub(crate) fn take(mut self) -> (Filter, DeliveryReceiver) {
        self.taken.take().expect("taken once")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((filter, rx)) = self.taken.take() {
            drop(rx);
            self.broker.unsubscribe(&filter);
        }
    }
}

type Op = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What a connection waits for, in frame order.
#[derive(Default)]
pub(crate) struct Pending {
    ops: FuturesOrdered<Op>,
    /// How many of them are subscribes or frames held behind one.
    subscribing: usize,
}

impl Pending {
    /// Whether no more may wait.
    pub(crate) fn is_full(&self) -> bool {
        self.ops.len() >= MAX_PENDING
    }

    /// Whether a frame that changes subscriptions must wait its turn.
    pub(crate) fn holds_subscriptions(&self) -> bool {
        self.subscribing > 0
    }

    fn push(&mut self, op: Op, subscribing: bool, first: bool) {
        self.subscribing += usize::from(subscribing);
        if first {
            self.ops.push_front(op);
        } else {
            self.ops.push_back(op);
        }
    }

    /// A publish whose ack waits for the store.
    pub(crate) fn publish(&mut self, id: Option<u64>, answer: Answer<Published>, first: bool) {
        let op = async move {
            Done::Published {
                id,
                result: answer.get().await,
            }
        };
        self.push(Box::pin(op), false, first);
    }

    /// A subscribe whose ack and replay wait for the store.
    pub(crate) fn subscribe(
        &mut self,
        id: Option<u64>,
        held: Held,
        ask: Ask,
        answer: Answer<Recovery>,
        first: bool,
    ) {
        let op = async move {
            let result = answer.get().await;
            Done::Subscribed {
                id,
                held,
                ask,
                result,
            }
        };
        self.push(Box::pin(op), true, first);
    }

    /// The ack of a repeated subscribe, which waits for the store.
    pub(crate) fn position(
        &mut self,
        id: Option<u64>,
        answer: Answer<Option<Position>>,
        first: bool,
    ) {
        let op = async move {
            Done::Position {
                id,
                result: answer.get().await,
            }
        };
        self.push(Box::pin(op), true, first);
    }

    /// A `presence` request, answered once Redis has.
    pub(crate) fn presence(&mut self, id: Option<u64>, topic: Topic, answer: Answer<Members>) {
        let op = async move {
            Done::Presence {
                id,
                topic,
                result: answer.get().await,
            }
        };
        self.push(Box::pin(op), false, false);
    }

    /// A frame held until the subscribes before it are done.
    pub(crate) fn defer(&mut self, envelope: Envelope) {
        self.push(Box::pin(ready(Done::Deferred(envelope))), true, false);
    }

    /// The next result, in frame order, when it is there.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        let done = self.ops.poll_next_unpin(cx);
        if let Poll::Ready(Some(
            Done::Subscribed { .. } | Done::Position { .. } | Done::Deferred(_),
        )) = &done
        {
            self.subscribing -= 1;
        }
        done
    }
}
