//! Connection events, for applications that show or log the connection's state.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::BoxStream;
use starling_protocol::{ErrorCode, Filter, Member, Topic};
use tokio::sync::broadcast;

/// Something that happened to the connection.
///
/// On a reconnect the order is `Disconnected`, then (once a new connection is
/// up) `Connected`, then `Reconnected` once every live subscription has been
/// sent again.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection is up: the broker's `welcome` arrived. Emitted for the
    /// first connection and for every reconnect.
    Connected {
        /// The broker node's id, from `welcome`.
        node: Arc<str>,
    },
    /// The connection was lost or closed. The client reconnects by itself
    /// unless the close code is terminal (1008, 4500-4999) or the client is
    /// closing, in which case [`Event::Closed`] follows.
    Disconnected {
        /// The close code the broker sent, if it sent a close frame.
        code: Option<u16>,
        /// The close reason, or what went wrong with the transport.
        reason: String,
    },
    /// A new connection replaced a lost one and every live subscription was
    /// sent again (with `since` where messages carried offsets).
    Reconnected,
    /// The broker dropped `missed` messages of subscription `topic` for this
    /// connection because it fell behind (the `lagged` frame).
    Lagged {
        /// The subscription (topic or pattern) that fell behind.
        topic: Filter,
        /// How many messages were lost.
        missed: u64,
    },
    /// The broker could not resume subscription `topic` where the client
    /// left it: the topic's history started a new epoch (a broker restart,
    /// an expired history) or no longer reaches back that far. Everything
    /// the topic still retains follows; messages in between may be missing
    /// (the `lagged` frame with `reset`). A chat shows "some messages may
    /// be missing"; a dashboard just carries on.
    Reset {
        /// The subscription (topic).
        topic: Filter,
    },
    /// A member joined presence topic `topic`: its first session
    /// subscribed (the `join` frame). Comes to clients subscribed to the
    /// topic, when the broker keeps presence on it (`--presence`).
    Join {
        /// The topic.
        topic: Topic,
        /// The member: its name and the `info` of its session.
        member: Member,
    },
    /// A member left presence topic `topic`: its last session has been gone
    /// for the broker's grace period (the `leave` frame).
    Leave {
        /// The topic.
        topic: Topic,
        /// The member (its name).
        member: Member,
    },
    /// A [`Subscription`](crate::Subscription)'s queue was full, so messages
    /// for it are being dropped. Emitted once when dropping starts; again
    /// only after a message got through.
    SlowConsumer {
        /// The subscription (topic or pattern).
        topic: Filter,
    },
    /// The broker sent an `error` that answers no pending request (for
    /// example a fire-and-forget publish that was refused, or a resubscribe
    /// after a reconnect that failed).
    ServerError {
        /// The protocol's error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The client stopped for good: closed by the application, a terminal
    /// close code, or reconnect attempts exhausted. The event stream ends
    /// after it.
    Closed {
        /// Why the client stopped.
        reason: String,
    },
}

/// A stream of [`Event`]s, from [`Client::events`](crate::Client::events).
///
/// Every observer gets every event emitted after it subscribed; one that
/// falls more than the event capacity behind skips the oldest. The stream
/// ends after [`Event::Closed`].
pub struct Events {
    inner: BoxStream<'static, Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        let inner = futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        // Nothing follows `Closed`: end the stream after it.
                        let next = (!matches!(event, Event::Closed { .. })).then_some(rx);
                        return Some((event, next));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Events {
            inner: Box::pin(inner),
        }
    }
}

impl Events {
    /// The next event; `None` after [`Event::Closed`]. The same as
    /// `StreamExt::next`, without importing a trait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut events = client.events();
    /// while let Some(event) = events.recv().await {
    ///     println!("{event:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}
