//! The connection task: the one owner of the WebSocket, the subscription
//! table and the outbound queue. It reconnects by itself.
//!
//! Each turn of its loop either takes every command that is ready, handles
//! one frame from the broker, fires the keepalive timer, or writes: it feeds
//! every queued frame to the socket and flushes once, so a burst of
//! publishes costs one write. Reading and writing are separate arms, so a
//! socket that does not take data never stops the task from reading.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use starling_protocol::{CloseCode, Codec, Envelope, ErrorCode};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tracing::{debug, info, warn};

use crate::connection::{Welcome, Ws};
use crate::error::Error;
use crate::event::Event;
use crate::message::Message;
use crate::outbox::{Pending, answer};
use crate::presence::Presence;
use crate::table::Answered;
use crate::token::{TokenError, refresh_delay};

mod commands;
mod lifecycle;
mod state;

pub(crate) use state::Task;

/// Commands taken per turn before the task looks at its other work.
const COMMAND_BUDGET: usize = 1024;

/// How long the close handshake may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long after a failed token provider the refresh is tried again.
const TOKEN_RETRY: Duration = Duration::from_secs(5);

/// How one connection ended.
enum Ended {
    /// Closed on purpose (the close handshake is done).
    Finished(&'static str),
    /// Lost: the broker closed it, or the transport failed.
    Lost { code: Option<u16>, reason: String },
}

impl Task {
    /// Serves connections until the client is closed, every handle is
    /// dropped, or reconnecting is given up.
    pub(crate) async fn run(mut self, mut ws: Ws, mut welcome: Welcome) {
        let mut reconnect = false;
        let reason = loop {
            self.on_connected(&welcome, reconnect);
            match self.serve(ws).await {
                Ended::Finished(reason) => break reason.to_owned(),
                Ended::Lost { code, reason } => {
                    info!(url = %self.url, ?code, %reason, "connection lost");
                    // State first, so that an observer of the event sees it.
                    self.on_disconnect();
                    self.shared.emit(Event::Disconnected {
                        code,
                        reason: reason.clone(),
                    });
                    if let Some(closing) = &self.closing {
                        break closing.reason.to_owned();
                    }
                    // A refused or expired token: the provider may have a new one.
                    let renewable = code == Some(CloseCode::Policy.code())
                        && self.shared.options.token_provider.is_some();
                    if let Some(code) = code
                        && !CloseCode::may_reconnect(code)
                        && !renewable
                    {
                        break format!("the broker closed with terminal code {code}: {reason}");
                    }
                    match self.reconnect().await {
                        Ok((new_ws, new_welcome)) => {
                            ws = new_ws;
                            welcome = new_welcome;
                            reconnect = true;
                        }
                        Err(reason) => break reason,
                    }
                }
            }
        };
        self.finish(reason);
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let interval = self.shared.options.ping_interval;
        let ping_timeout = self.shared.options.ping_timeout;
        let timer = tokio::time::sleep_until(self.deadline(interval, ping_timeout));
        tokio::pin!(timer);

        let ended = loop {
            if let Some(closing) = &self.closing
                && closing.done
            {
                break Ended::Finished(closing.reason);
            }
            tokio::select! {
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => {
                        self.on_command(command);
                        for _ in 1..COMMAND_BUDGET {
                            match self.commands.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        self.commands_open = false;
                        self.begin_close(None, "every handle was dropped");
                    }
                },
                item = stream.next() => match item {
                    Some(Ok(message)) => {
                        self.alive.last_heard = Instant::now();
                        if let Some(ended) = self.on_ws_message(message) {
                            // Let the WebSocket layer answer the close frame.
                            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                                while let Some(Ok(_)) = stream.next().await {}
                            })
                            .await;
                            break ended;
                        }
                    }
                    Some(Err(error)) => break Ended::Lost { code: None, reason: error.to_string() },
                    None => break Ended::Lost {
                        code: None,
                        reason: "the connection was closed without a close frame".into(),
                    },
                },
                answer = async { self.refreshing.as_mut().expect("checked").await }, if self.refreshing.is_some() => {
                    self.refreshing = None;
                    self.on_new_token(answer.ok());
                },
                () = &mut timer => {
                    if let Some(ended) = self.on_timer(interval, ping_timeout) {
                        break ended;
                    }
                    timer.as_mut().reset(self.deadline(interval, ping_timeout));
                },
                result = poll_fn(|cx| self.out.poll_drain(Pin::new(&mut sink), cx)), if self.out.has_work() => {
                    let written = std::mem::take(&mut self.out.written_permits);
                    self.release_permits(written);
                    if let Err(error) = result {
                        break Ended::Lost { code: None, reason: format!("write failed: {error}") };
                    }
                },
            }
            // A command or a frame may have moved the next deadline closer.
            let deadline = self.deadline(interval, ping_timeout);
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        };

        if let Ended::Finished(_) = ended {
            let close = WsMessage::Close(Some(CloseFrame {
                code: WsCloseCode::Normal,
                reason: "client closed".into(),
            }));
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                let written = poll_fn(|cx| self.out.poll_drain(Pin::new(&mut sink), cx)).await;
                if written.is_ok() && sink.send(close).await.is_ok() {
                    // Wait for the broker's close frame.
                    while let Some(Ok(_)) = stream.next().await {}
                }
            })
            .await;
            let written = std::mem::take(&mut self.out.written_permits);
            self.release_permits(written);
        }
        ended
    }

    fn deadline(&self, interval: Duration, ping_timeout: Duration) -> Instant {
        let mut deadline = self.alive.deadline(interval, ping_timeout);
        if let Some(closing) = &self.closing {
            deadline = deadline.min(closing.deadline);
        }
        if let Some(refresh) = self.refresh_at {
            deadline = deadline.min(refresh);
        }
        deadline
    }

    /// Asks the token provider for the next token, in a task of its own (the
    /// answer comes back through `refreshing`).
    fn start_refresh(&mut self) {
        self.refresh_at = None;
        let Some(provider) = &self.shared.options.token_provider else {
            return;
        };
        let (answer, refreshing) = tokio::sync::oneshot::channel();
        let token = provider.call();
        tokio::spawn(async move {
            let _ = answer.send(token.await);
        });
        self.refreshing = Some(refreshing);
    }

    /// The token provider answered: send `refresh` with the new token, or
    /// try again a little later.
    fn on_new_token(&mut self, answer: Option<std::result::Result<String, TokenError>>) {
        match answer {
            Some(Ok(token)) => {
                let id = self.shared.next_id();
                let refresh = Envelope::Refresh {
                    id: Some(id),
                    token: token.clone(),
                };
                self.push_request(&refresh, id, Pending::Refresh(token));
            }
            Some(Err(error)) => {
                warn!(%error, "the token provider failed; trying again in 5 s");
                self.refresh_at = Some(Instant::now() + TOKEN_RETRY);
            }
            None => {}
        }
    }

    /// The token in use changed (a new connection, or an accepted refresh):
    /// plans the next refresh from its expiry.
    pub(super) fn use_token(&mut self, token: Option<String>) {
        self.refresh_at = None;
        if self.shared.options.token_provider.is_some()
            && let Some(delay) = token
                .as_deref()
                .and_then(|token| refresh_delay(token, SystemTime::now()))
        {
            self.refresh_at = Some(Instant::now() + delay);
        }
        self.token = token;
    }

    /// Keepalive: a `ping` every interval; no frame at all within the ping
    /// timeout after it means the connection is dead.
    fn on_timer(&mut self, interval: Duration, ping_timeout: Duration) -> Option<Ended> {
        let now = Instant::now();
        if self.refresh_at.is_some_and(|at| now >= at) {
            self.start_refresh();
        }
        if let Some(closing) = &mut self.closing
            && now >= closing.deadline
        {
            closing.done = true;
        }
        if let Some(sent) = self.alive.outstanding
            && now >= sent + ping_timeout
        {
            if self.alive.last_heard > sent {
                // Frames keep coming; the pong is just behind them.
                self.alive.outstanding = None;
            } else {
                return Some(Ended::Lost {
                    code: None,
                    reason: format!("no answer to ping within {ping_timeout:?}"),
                });
            }
        }
        if self.alive.outstanding.is_none() && now >= self.alive.last_ping + interval {
            self.alive.last_ping = now;
            self.alive.outstanding = Some(now);
            self.push_ping(Pending::Keepalive);
        }
        None
    }

    fn on_ws_message(&mut self, message: WsMessage) -> Option<Ended> {
        let decoded = match (&message, self.codec) {
            (WsMessage::Text(text), Codec::Json) => self.codec.decode_bytes(text.as_bytes()),
            (WsMessage::Binary(bytes), Codec::MsgPack) => self.codec.decode_bytes(bytes),
            (WsMessage::Text(_) | WsMessage::Binary(_), _) => {
                warn!("frame of the wrong kind for the codec; ignored");
                return None;
            }
            (WsMessage::Close(frame), _) => {
                let (code, reason) = match frame {
                    Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
                    None => (None, "closed by the broker".to_owned()),
                };
                return Some(Ended::Lost { code, reason });
            }
            _ => return None,
        };
        match decoded {
            Ok(envelope) => self.on_envelope(envelope),
            Err(error) => warn!(%error, "cannot decode a frame from the broker; ignored"),
        }
        None
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Message {
                topic,
                payload,
                offset,
                epoch,
                sub,
                from,
            } => {
                let key = sub
                    .as_ref()
                    .map_or(topic.as_arc().clone(), |f| f.as_arc().clone());
                let message = Message {
                    topic,
                    payload,
                    offset,
                    epoch,
                    pattern: sub,
                    from,
                };
                let done = self.table.dispatch(&key, message);
                for topic in done.slow {
                    warn!(%topic, "subscription queue full; dropping messages");
                    self.shared.emit(Event::SlowConsumer { topic });
                }
                if let Some(filter) = done.emptied {
                    self.send_unsubscribe(filter, None);
                }
            }
            Envelope::Ack { id, offset, epoch } => match self.out.inflight.remove(&id) {
                Some(Pending::Publish(reply)) => {
                    let _ = reply.send(Ok(offset));
                }
                Some(Pending::Subscribe(key)) => {
                    if let Some(offset) = offset {
                        self.table.positioned(&key, offset, epoch);
                    }
                    self.on_subscribe_answer(&key, id, Ok(()))
                }
                Some(Pending::Unsubscribe(reply)) => answer(reply, Ok(())),
                Some(Pending::Refresh(token)) => {
                    debug!("token refreshed");
                    self.use_token(Some(token));
                }
                Some(pending) => self.on_pong(pending),
                None => debug!(id, "ack for nothing in flight"),
            },
            Envelope::Error { id, code, message } => {
                let pending = id.and_then(|id| self.out.inflight.remove(&id).map(|p| (id, p)));
                match pending {
                    Some((_, Pending::Publish(reply))) => {
                        let _ = reply.send(Err(Error::Server { code, message }));
                    }
                    Some((id, Pending::Subscribe(key))) => {
                        self.on_subscribe_answer(&key, id, Err((code, message)))
                    }
                    Some((_, Pending::Unsubscribe(reply))) => {
                        if code == ErrorCode::NotSubscribed {
                            // Gone already: that is what was asked.
                            answer(reply, Ok(()));
                        } else if let Some(reply) = reply {
                            let _ = reply.send(Err(Error::Server { code, message }));
                        } else {
                            self.server_error(code, message);
                        }
                    }
                    Some((_, Pending::Flush(reply))) => {
                        let _ = reply.send(Err(Error::Server { code, message }));
                    }
                    Some((_, Pending::Presence(reply))) => {
                        let _ = reply.send(Err(Error::Server { code, message }));
                    }
                    Some((_, pending)) => {
                        // An answer all the same (for example `rate_limited`).
                        self.on_pong(pending);
                        self.server_error(code, message);
                    }
                    None => self.server_error(code, message),
                }
            }
            Envelope::Pong { id } => {
                if let Some(pending) = id.and_then(|id| self.out.inflight.remove(&id)) {
                    self.on_pong(pending);
                }
            }
            Envelope::Lagged {
                topic,
                missed,
                reset,
            } => {
                if reset {
                    warn!(%topic, "the broker cannot resume this subscription where it was");
                    self.shared.emit(Event::Reset { topic });
                } else {
                    let missed = missed.unwrap_or(0);
                    warn!(%topic, missed, "the broker dropped messages for this subscription");
                    self.shared.emit(Event::Lagged { topic, missed });
                }
            }
            Envelope::Presence {
                id: Some(id),
                count: Some(count),
                members,
                ..
            } => match self.out.inflight.remove(&id) {
                Some(Pending::Presence(reply)) => {
                    let members = members.unwrap_or_default();
                    let _ = reply.send(Ok(Presence { count, members }));
                }
                Some(other) => self.on_pong(other),
                None => debug!(id, "presence answer for nothing in flight"),
            },
            Envelope::Join { topic, member } => self.shared.emit(Event::Join { topic, member }),
            Envelope::Leave { topic, member } => self.shared.emit(Event::Leave { topic, member }),
            other => debug!(frame = other.type_name(), "unexpected frame; ignored"),
        }
    }

    fn on_pong(&mut self, pending: Pending) {
        match pending {
            Pending::Flush(reply) => {
                let _ = reply.send(Ok(()));
            }
            Pending::Keepalive => self.alive.outstanding = None,
            Pending::Closing => {
                if let Some(closing) = &mut self.closing {
                    closing.done = true;
                }
            }
            Pending::Publish(reply) => {
                let _ = reply.send(Ok(None));
            }
            Pending::Unsubscribe(reply) => answer(reply, Ok(())),
            Pending::Presence(reply) => {
                let _ = reply.send(Err(Error::Disconnected));
            }
            // An error: the broker keeps the old token until it expires, then
            // the client reconnects with a new one.
            Pending::Subscribe(_) | Pending::Refresh(_) => {}
        }
    }

    fn server_error(&self, code: ErrorCode, message: String) {
        warn!(%code, %message, "error from the broker");
        self.shared.emit(Event::ServerError { code, message });
    }

    fn on_subscribe_answer(
        &mut self,
        key: &str,
        id: u64,
        result: std::result::Result<(), (ErrorCode, String)>,
    ) {
        let refusal = result.as_ref().err().cloned();
        match self.table.answer(key, id, result) {
            Answered::Acked {
                emptied: Some(filter),
            } => self.send_unsubscribe(filter, None),
            Answered::Refused { orphaned: true } => {
                if let Some((code, message)) = refusal {
                    self.server_error(code, format!("subscription {key} ended: {message}"));
                }
            }
            _ => {}
        }
        if self.resubscribing.remove(&id) && self.resubscribing.is_empty() {
            self.shared.emit(Event::Reconnected);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::state::Liveness;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_then_declares_silence_dead() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let (events, _) = tokio::sync::broadcast::channel(4);
        let shared = Arc::new(crate::command::Shared::for_tests(events));
        let mut task = Task::new("ws://test/ws".into(), shared, rx);
        task.connected = true;
        let interval = Duration::from_secs(15);
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        task.alive = Liveness::new(start);
        assert_eq!(task.deadline(interval, timeout), start + interval);

        tokio::time::advance(interval).await;
        assert!(task.on_timer(interval, timeout).is_none());
        assert_eq!(task.out.queue.len(), 1, "a ping is queued");
        assert_eq!(task.deadline(interval, timeout), start + interval + timeout);

        // Any frame heard after the ping keeps the connection alive.
        tokio::time::advance(Duration::from_secs(5)).await;
        task.alive.last_heard = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(task.on_timer(interval, timeout).is_none());
        assert!(task.alive.outstanding.is_none());

        // Silence for the whole timeout after a ping: dead.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(task.on_timer(interval, timeout).is_none());
        assert!(task.alive.outstanding.is_some());
        tokio::time::advance(timeout).await;
        assert!(matches!(
            task.on_timer(interval, timeout),
            Some(Ended::Lost { code: None, .. })
        ));
    }
}
