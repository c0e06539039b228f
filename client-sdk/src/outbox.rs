//! The connection task's outbound side: frames waiting to be written, and
//! frames written that wait for the broker's answer.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::Sink;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::error::{Error, Result};
use crate::presence::Presence;

/// What a frame in flight waits for.
pub(crate) enum Pending {
    /// `publish_with_ack`: an `ack` (or `error`).
    Publish(oneshot::Sender<Result<Option<u64>>>),
    /// A `subscribe` of this filter: an `ack` (or `error`).
    Subscribe(Arc<str>),
    /// An `unsubscribe`: an `ack` (or `error`).
    Unsubscribe(Option<oneshot::Sender<Result<()>>>),
    /// `flush`: the `pong`.
    Flush(oneshot::Sender<Result<()>>),
    /// The keepalive: the `pong`.
    Keepalive,
    /// `close`: the `pong` behind everything queued.
    Closing,
    /// A `refresh` with this token: an `ack` (or `error`).
    Refresh(String),
    /// A `presence` request: the broker's `presence` answer (or `error`).
    Presence(oneshot::Sender<Result<Presence>>),
}

/// One frame waiting to be written.
pub(crate) struct Outgoing {
    pub(crate) message: WsMessage,
    /// A publish holds one outbound permit until it is written.
    pub(crate) permit: bool,
    /// The id of the frame and what its answer resolves.
    pub(crate) awaits: Option<(u64, Pending)>,
}

/// Frames to write, and the frames written that wait for an answer.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) queue: VecDeque<Outgoing>,
    pub(crate) inflight: HashMap<u64, Pending>,
    /// Permits of written publishes, given back once per batch.
    pub(crate) written_permits: usize,
    pub(crate) flush_needed: bool,
}

impl Outbox {
    pub(crate) fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.flush_needed
    }

    /// Feeds every queued frame to the sink, then flushes once.
    pub(crate) fn poll_drain<S>(
        &mut self,
        mut sink: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: Sink<WsMessage, Error = WsError>,
    {
        while !self.queue.is_empty() {
            ready!(sink.as_mut().poll_ready(cx))?;
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            if item.permit {
                self.written_permits += 1;
            }
            if let Some((id, pending)) = item.awaits {
                // Registered first, so that a failed write fails the caller
                // with `Disconnected` like any other frame in flight.
                self.inflight.insert(id, pending);
            }
            self.flush_needed = true;
            sink.as_mut().start_send(item.message)?;
        }
        if self.flush_needed {
            ready!(sink.as_mut().poll_flush(cx))?;
            self.flush_needed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Resolves what a frame waited for with an error.
pub(crate) fn fail(pending: Pending, error: impl Fn() -> Error) {
    match pending {
        Pending::Publish(reply) => {
            let _ = reply.send(Err(error()));
        }
        Pending::Flush(reply) => {
            let _ = reply.send(Err(error()));
        }
        Pending::Presence(reply) => {
            let _ = reply.send(Err(error()));
        }
        // Unsubscribing from a connection that is gone succeeded.
        Pending::Unsubscribe(reply) => answer(reply, Ok(())),
        // The table answers waiting subscribers itself; a refresh that got
        // no answer is asked again on the next connection.
        Pending::Subscribe(_) | Pending::Keepalive | Pending::Closing | Pending::Refresh(_) => {}
    }
}

pub(crate) fn answer(reply: Option<oneshot::Sender<Result<()>>>, result: Result<()>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
