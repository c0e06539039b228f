//! What the handles send to the connection task, the state they share with
//! it, and waiting for its replies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use starling_protocol::{Filter, Topic};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::connection::Welcome;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::message::Message;
use crate::options::ConnectOptions;
use crate::presence::Presence;

/// What a [`Client`] or a [`Subscription`] asks of the connection task.
///
/// Publishes are bounded by the outbound semaphore (each holds one permit
/// until it is written); every other command is bounded by its caller, who
/// waits for the answer. So the channel itself can be unbounded, which lets
/// `Subscription::drop` unsubscribe without awaiting.
///
/// [`Client`]: crate::Client
/// [`Subscription`]: crate::Subscription
pub(crate) enum Command {
    /// A fire-and-forget publish, already encoded (holds a permit).
    Publish { message: WsMessage },
    /// A publish with an `id`, already encoded (holds a permit).
    PublishAck {
        id: u64,
        message: WsMessage,
        reply: oneshot::Sender<Result<Option<u64>>>,
    },
    /// Attach a local subscription to `filter`, subscribing on the broker if
    /// it is the first one.
    Subscribe {
        filter: Filter,
        local_id: u64,
        sender: mpsc::Sender<Message>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Detach a local subscription; unsubscribe on the broker if it was the
    /// last one. `reply` is `None` when sent by `Drop`.
    Unsubscribe {
        filter: Filter,
        local_id: u64,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Answer once everything queued before has been handled by the broker.
    Flush { reply: oneshot::Sender<Result<()>> },
    /// Ask who is on a presence topic.
    Presence {
        topic: Topic,
        reply: oneshot::Sender<Result<Presence>>,
    },
    /// Flush, close with 1000 and stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// State shared by the handles and the connection task.
pub(crate) struct Shared {
    pub(crate) options: ConnectOptions,
    next_id: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) max_message_bytes: AtomicU64,
    /// One permit per publish that may wait to be written.
    pub(crate) outbound: Semaphore,
    pub(crate) events: broadcast::Sender<Event>,
}

impl Shared {
    /// The state of a client whose first connection got `welcome`.
    pub(crate) fn new(options: ConnectOptions, welcome: &Welcome) -> Self {
        let (events, _) = broadcast::channel(options.event_capacity);
        Shared {
            outbound: Semaphore::new(options.outbound_capacity),
            options,
            next_id: AtomicU64::new(1),
            connected: AtomicBool::new(true),
            max_message_bytes: AtomicU64::new(welcome.limits.max_message_bytes),
            events,
        }
    }

    /// A fresh id, for frames and for local subscriptions alike.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, event: Event) {
        // No observer is fine.
        let _ = self.events.send(event);
    }

    pub(crate) fn apply_welcome(&self, welcome: &Welcome) {
        self.max_message_bytes
            .store(welcome.limits.max_message_bytes, Ordering::Relaxed);
    }
}

/// Waits for the task's answer to a request, at most `timeout`.
pub(crate) async fn await_reply<T>(
    answer: oneshot::Receiver<Result<T>>,
    timeout: Duration,
) -> Result<T> {
    match tokio::time::timeout(timeout, answer).await {
        Err(_) => Err(Error::Timeout(timeout)),
        Ok(Err(_)) => Err(Error::Closed),
        Ok(Ok(result)) => result,
    }
}

#[cfg(test)]
impl Shared {
    /// Shared state with the default options, for unit tests of the task.
    pub(crate) fn for_tests(events: broadcast::Sender<Event>) -> Self {
        let options = ConnectOptions::default();
        Shared {
            outbound: Semaphore::new(options.outbound_capacity),
            options,
            next_id: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            max_message_bytes: AtomicU64::new(1024 * 1024),
            events,
        }
    }
}
