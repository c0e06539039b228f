//! One client connection: a single task that reads frames, pulls deliveries
//! from its subscriptions and writes everything ready in one batch.
//!
//! The task never blocks on its socket: replies and deliveries go into a
//! bounded outbound queue that a write step drains whenever the socket takes
//! data, and the task stops pulling deliveries while the queue is full. A
//! subscriber that stays behind then lags in its topic's broadcast ring (and
//! gets `lagged`), or is closed with 4008, without anyone else noticing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::stream::{AbortHandle, Abortable, FuturesUnordered};
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use starling_protocol::{
    CloseCode, Codec, CodecError, Envelope, ErrorCode, Filter, PROTOCOL_VERSION,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn};

use crate::broker::{Admission, Broker, ConnId};
use crate::config::SlowConsumerPolicy;
use crate::delivery::to_message;
use crate::history::Replay;
use crate::metrics::Source;
use crate::rate::RateLimiter;
use crate::registry::DeliveryReceiver;
use crate::ring::Missed;

/// Close code for a peer that sent nothing within the idle timeout.
/// (An extension of PROTOCOL.md: 4000-4499 means the client may reconnect.)
pub const IDLE_TIMEOUT_CLOSE: u16 = 4000;

/// How long the broker waits for the peer's close frame after sending its own.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// How many deliveries one subscription may hand over per wake-up before the
/// task looks at its other work.
const DRAIN_BUDGET: usize = 256;

/// How many deliveries are taken under one lock of the topic's ring.
const DRAIN_CHUNK: usize = 32;

/// Why a connection ended.
#[derive(Debug)]
enum Exit {
    /// The peer sent a close frame (already answered by the WebSocket layer).
    PeerClosed,
    /// The transport failed or the peer vanished; nothing can be sent.
    PeerGone(String),
    /// The broker closes with this code and reason.
    Close(u16, String),
}

impl Exit {
    fn close(code: CloseCode, reason: impl Into<String>) -> Self {
        Exit::Close(code.code(), reason.into())
    }
}

/// Maps a read error of the WebSocket layer to what the broker must do.
/// The WebSocket layer sends no close frame itself, so every error that leaves
/// the transport usable is answered with the close code of PROTOCOL.md.
fn read_error_exit(error: WsError) -> Exit {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Exit::close(
            CloseCode::TooBig,
            format!("message of {size} bytes is over the limit of {max_size}"),
        ),
        WsError::Capacity(e) => Exit::close(CloseCode::TooBig, e.to_string()),
        WsError::Utf8(_) => Exit::close(CloseCode::InvalidPayload, "text frame is not valid UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Exit::PeerGone("reset without closing handshake".into())
        }
        WsError::Protocol(e) => Exit::close(CloseCode::Protocol, e.to_string()),
        WsError::AttackAttempt => Exit::close(CloseCode::Protocol, "attack attempt"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Exit::PeerClosed,
        other => Exit::PeerGone(other.to_string()),
    }
}

/// What came out of one subscription's receiver.
struct Received {
    filter: Filter,
    rx: DeliveryReceiver,
}

type RecvFuture = Abortable<futures_util::future::BoxFuture<'static, Received>>;

/// A connection's subscriptions and the futures waiting on their receivers.
/// Only subscriptions that have something ready are polled.
#[derive(Default)]
struct Subscriptions {
    active: std::collections::HashMap<Filter, AbortHandle>,
    waiting: FuturesUnordered<RecvFuture>,
}

/// Frames waiting to be written, bounded in bytes.
struct Outbox {
    queue: VecDeque<Message>,
    bytes: usize,
    /// The WebSocket layer holds frames of its own (pongs, close replies).
    flush_needed: bool,
    /// Counts since the last flush, added to the shared metrics per batch.
    delivered: u64,
    sent_bytes: u64,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            queue: VecDeque::new(),
            bytes: 0,
            flush_needed: false,
            delivered: 0,
            sent_bytes: 0,
        }
    }

    fn push(&mut self, message: Message) {
        self.bytes += message.len();
        self.queue.push_back(message);
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.flush_needed
    }

    /// Hands every queued frame to the sink, then flushes once: a burst costs
    /// one write, not one per frame.
    fn poll_drain<S>(
        &mut self,
        mut sink: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WsError>>
    where
        S: Sink<Message, Error = WsError>,
    {
        while !self.queue.is_empty() {
            ready!(sink.as_mut().poll_ready(cx))?;
            let message = self.queue.pop_front().expect("queue is not empty");
            self.bytes -= message.len();
            self.sent_bytes += message.len() as u64;
            sink.as_mut().start_send(message)?;
            self.flush_needed = true;
        }
        ready!(sink.as_mut().poll_flush(cx))?;
        self.flush_needed = false;
        Poll::Ready(Ok(()))
    }
}

/// Everything a connection task needs, handed over by the upgrade handler.
pub(crate) struct ConnCtx {
    pub(crate) broker: Broker,
    pub(crate) admission: Admission,
    pub(crate) codec: Codec,
    pub(crate) peer: String,
}

/// The state of one connection, apart from its socket. Dropping it removes
/// the connection's subscriptions from the registry, on every exit path.
struct Connection {
    broker: Broker,
    id: ConnId,
    codec: Codec,
    subs: Subscriptions,
    out: Outbox,
    rate: Option<RateLimiter>,
    last_seen: Instant,
    last_ping: Instant,
    stalled_since: Option<Instant>,
    received_bytes: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for (filter, abort) in self.subs.active.drain() {
            abort.abort();
            self.broker.registry().unsubscribe(&filter);
        }
        self.flush_metrics();
        self.broker.metrics().connections.dec();
    }
}

impl Connection {
    fn send(&mut self, envelope: &Envelope) {
        match self.codec.encode(envelope) {
            Ok(frame) => self.out.push(to_message(frame)),
            Err(error) => warn!(conn_id = %self.id, %error, "cannot encode frame"),
        }
    }

    fn send_error(&mut self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        self.broker.metrics().error(code);
        self.send(&Envelope::error(id, code, message));
    }

    fn flush_metrics(&mut self) {
        let metrics = self.broker.metrics();
        if self.out.delivered > 0 {
            metrics
                .delivered
                .inc_by(std::mem::take(&mut self.out.delivered));
        }
        if self.out.sent_bytes > 0 {
            metrics
                .bytes_out
                .inc_by(std::mem::take(&mut self.out.sent_bytes));
        }
        if self.received_bytes > 0 {
            metrics
                .bytes_in
                .inc_by(std::mem::take(&mut self.received_bytes));
        }
    }

    /// Handles one WebSocket message from the peer.
    fn on_message(&mut self, message: Message) -> Option<Exit> {
        self.last_seen = Instant::now();
        let data = match message {
            Message::Text(text) if self.codec.is_text() => text.into(),
            Message::Binary(bytes) if !self.codec.is_text() => bytes,
            Message::Text(_) | Message::Binary(_) => {
                let reason = if self.codec.is_text() {
                    "binary frame on a JSON connection"
                } else {
                    "text frame on a MessagePack connection"
                };
                return Some(Exit::close(CloseCode::Unsupported, reason));
            }
            Message::Ping(_) | Message::Pong(_) => {
                // The WebSocket layer queued the pong; it goes out with the next flush.
                self.out.flush_needed = true;
                return None;
            }
            Message::Close(_) => {
                self.out.flush_needed = true;
                return None;
            }
            Message::Frame(_) => return None,
        };
        self.received_bytes += data.len() as u64;
        let max = self.broker.config().max_message_bytes;
        if data.len() > max {
            let id = self.codec.probe_id(&data);
            self.send_error(
                id,
                ErrorCode::MessageTooLarge,
                format!("message of {} bytes is over the limit of {max}", data.len()),
            );
            return None;
        }
        if let Some(rate) = &mut self.rate {
            match rate.check(Instant::now()) {
                crate::rate::Verdict::Allow => {}
                crate::rate::Verdict::Deny => {
                    let id = self.codec.probe_id(&data);
                    self.send_error(id, ErrorCode::RateLimited, "too many frames; slow down");
                    return None;
                }
                crate::rate::Verdict::Disconnect => {
                    return Some(Exit::close(
                        CloseCode::RateLimited,
                        "rate limit exceeded repeatedly",
                    ));
                }
            }
        }
        match self.codec.decode_client(&data) {
            Ok(envelope) => self.on_envelope(envelope),
            Err(error) => self.on_bad_frame(&error),
        }
        None
    }

    fn on_bad_frame(&mut self, error: &CodecError) {
        debug!(conn_id = %self.id, %error, "bad frame");
        self.send_error(error.id(), error.code(), error.to_string());
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Subscribe { id, topic, since } => self.subscribe(id, topic, since),
            Envelope::Unsubscribe { id, topic } => {
                if let Some(abort) = self.subs.active.remove(&topic) {
                    abort.abort();
                    self.broker.registry().unsubscribe(&topic);
                    debug!(conn_id = %self.id, %topic, "unsubscribed");
                    self.ack(id, None);
                } else {
                    self.send_error(
                        id,
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to {topic}"),
                    );
                }
            }
            Envelope::Publish { id, topic, payload } => {
                match self.broker.publish(topic, payload, Source::WebSocket) {
                    Ok(published) => self.ack(id, published.offset),
                    Err(error) => self.send_error(id, error.code(), error.to_string()),
                }
            }
            Envelope::Ping { id } => self.send(&Envelope::Pong { id }),
            other => {
                // decode_client only yields client frames.
                self.send_error(
                    other.id(),
                    ErrorCode::UnknownType,
                    format!("{} is not a client frame", other.type_name()),
                );
            }
        }
    }

    fn ack(&mut self, id: Option<u64>, offset: Option<u64>) {
        if let Some(id) = id {
            self.send(&Envelope::Ack { id, offset });
        }
    }

    fn subscribe(&mut self, id: Option<u64>, filter: Filter, since: Option<u64>) {
        if self.subs.active.contains_key(&filter) {
            self.ack(id, None);
            return;
        }
        let max = self.broker.config().max_subscriptions;
        if self.subs.active.len() >= max {
            self.send_error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            );
            return;
        }
        let (rx, replay) = self.broker.subscribe(&filter, since);
        let (abort, registration) = AbortHandle::new_pair();
        self.subs.active.insert(filter.clone(), abort);
        debug!(conn_id = %self.id, topic = %filter, ?since, "subscribed");
        self.ack(id, None);
        if let Some(Replay {
            lost,
            messages: replay,
        }) = replay
        {
            if lost > 0 {
                let metrics = self.broker.metrics();
                metrics.lagged_events.inc();
                metrics.lagged_messages.inc_by(lost);
                self.send(&Envelope::Lagged {
                    topic: filter.clone(),
                    missed: lost,
                });
            }
            for delivery in replay {
                if let Some(message) = delivery.frame(self.codec) {
                    self.out.push(message.clone());
                    self.out.delivered += 1;
                }
            }
        }
        self.subs.arm_with(filter, rx, registration);
    }

    /// Takes what one subscription has ready, within the budget and the
    /// outbound queue bound, then waits on it again.
    fn on_received(&mut self, received: Received, bound: usize) -> Option<Exit> {
        let Received { filter, mut rx } = received;
        let codec = self.codec;
        let mut budget = DRAIN_BUDGET;
        let mut missed_total = 0;
        while budget > 0 && self.out.bytes < bound {
            let out = &mut self.out;
            let taken = rx.drain(budget.min(DRAIN_CHUNK), |item| match item {
                Ok(delivery) => {
                    if let Some(message) = delivery.frame(codec) {
                        out.push(message.clone());
                        out.delivered += 1;
                    }
                }
                // Reported first, before what comes after the gap.
                Err(Missed::Lagged(missed)) => {
                    missed_total += missed;
                    let lagged = Envelope::Lagged {
                        topic: filter.clone(),
                        missed,
                    };
                    if let Ok(frame) = codec.encode(&lagged) {
                        out.push(to_message(frame));
                    }
                }
            });
            if taken == 0 {
                break;
            }
            budget = budget.saturating_sub(taken);
        }
        if missed_total > 0 {
            let metrics = self.broker.metrics();
            metrics.lagged_events.inc();
            metrics.lagged_messages.inc_by(missed_total);
            debug!(conn_id = %self.id, topic = %filter, missed = missed_total, "subscriber lagged");
            if self.broker.config().slow_consumer == SlowConsumerPolicy::Disconnect {
                return Some(Exit::close(
                    CloseCode::SlowConsumer,
                    format!("slow consumer: missed {missed_total} messages on {filter}"),
                ));
            }
        }
        // Still subscribed? Wait for the next one.
        if let Some(abort) = self.subs.active.get_mut(&filter) {
            let (new_abort, registration) = AbortHandle::new_pair();
            *abort = new_abort;
            self.subs.arm_with(filter, rx, registration);
        }
        None
    }

    /// The next time the connection must check on its peer.
    fn next_deadline(&self, ping: Duration, idle: Duration, write_timeout: Duration) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadline = far;
        if !ping.is_zero() {
            deadline = deadline.min(self.last_ping + ping);
        }
        if !idle.is_zero() {
            deadline = deadline.min(self.last_seen + idle);
        }
        if let Some(since) = self.stalled_since {
            deadline = deadline.min(since + write_timeout);
        }
        deadline
    }

    /// Keepalive and stall checks, when the timer fires.
    fn on_timer(
        &mut self,
        ping: Duration,
        idle: Duration,
        write_timeout: Duration,
    ) -> Option<Exit> {
        let now = Instant::now();
        if let Some(since) = self.stalled_since
            && now >= since + write_timeout
        {
            return Some(Exit::close(
                CloseCode::SlowConsumer,
                "slow consumer: the socket took nothing within the write timeout",
            ));
        }
        if !idle.is_zero() && now >= self.last_seen + idle {
            return Some(Exit::Close(
                IDLE_TIMEOUT_CLOSE,
                "idle timeout: no frame or pong from the client".into(),
            ));
        }
        if !ping.is_zero() && now >= self.last_ping + ping {
            self.last_ping = now;
            if now >= self.last_seen + ping {
                self.out.push(Message::Ping(Default::default()));
            }
        }
        None
    }
}

impl Subscriptions {
    fn arm_with(
        &mut self,
        filter: Filter,
        mut rx: DeliveryReceiver,
        registration: futures_util::stream::AbortRegistration,
    ) {
        let fut = async move {
            rx.ready().await;
            Received { filter, rx }
        }
        .boxed();
        self.waiting.push(Abortable::new(fut, registration));
    }
}

/// Runs one connection until it ends, then logs one line about it.
pub(crate) async fn run_connection<S>(mut ws: S, ctx: ConnCtx)
where
    S: Sink<Message, Error = WsError>
        + Stream<Item = Result<Message, WsError>>
        + Unpin
        + Send
        + 'static,
{
    let ConnCtx {
        broker,
        admission,
        codec,
        peer,
    } = ctx;
    let Admission {
        id, mut shutdown, ..
    } = admission;
    let started = Instant::now();
    // Only what the loop needs: the task keeps no copy of the configuration.
    let config = broker.config();
    let rate_limit = config.rate_limit;
    let bound = config.outbound_queue_bytes.max(1);
    let ping = Duration::from_millis(config.ping_interval_ms);
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let write_timeout = config.write_timeout();
    let shutdown_timeout = config.shutdown_timeout();
    broker.metrics().connections.inc();
    broker.metrics().connections_total.inc();
    info!(conn_id = %id, %peer, codec = ?codec, "connected");

    let now = Instant::now();
    let mut conn = Connection {
        rate: (rate_limit > 0).then(|| RateLimiter::new(rate_limit)),
        broker,
        id,
        codec,
        subs: Subscriptions::default(),
        out: Outbox::new(),
        last_seen: now,
        last_ping: now,
        stalled_since: None,
        received_bytes: 0,
    };
    conn.send(&Envelope::Welcome {
        version: PROTOCOL_VERSION,
        node: conn.broker.node_id().clone(),
        codec: codec.name(),
        limits: conn.broker.limits().clone(),
    });

    let timer = tokio::time::sleep_until(conn.next_deadline(ping, idle, write_timeout));
    tokio::pin!(timer);
    // Made once, so the connection registers with the shared shutdown signal
    // once rather than on every turn of the loop.
    let shutdown_signal = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(shutdown_signal);
    let mut reads_first = true;

    let exit = loop {
        let room = conn.out.bytes < bound;
        match (room, conn.stalled_since) {
            (false, None) => {
                conn.stalled_since = Some(Instant::now());
                timer
                    .as_mut()
                    .reset(conn.next_deadline(ping, idle, write_timeout));
            }
            (true, Some(_)) => conn.stalled_since = None,
            _ => {}
        }
        // Frames from the peer and deliveries take turns going first, so
        // neither a flooding client nor a busy topic starves the other.
        reads_first = !reads_first;
        tokio::select! {
            biased;
            () = &mut shutdown_signal => {
                break Exit::close(CloseCode::GoingAway, "broker shutting down");
            }
            () = &mut timer => {
                if let Some(exit) = conn.on_timer(ping, idle, write_timeout) {
                    break exit;
                }
                timer.as_mut().reset(conn.next_deadline(ping, idle, write_timeout));
            }
            event = poll_fn(|cx| poll_io(&mut ws, &mut conn.subs, &mut conn.out, room, reads_first, cx)) => {
                let exit = match event {
                    Io::Read(Ok(message)) => conn.on_message(message),
                    Io::Read(Err(error)) => Some(read_error_exit(error)),
                    Io::Closed => Some(Exit::PeerClosed),
                    Io::Received(received) => conn.on_received(received, bound),
                    Io::Aborted => None,
                    Io::Written(Ok(())) => {
                        conn.flush_metrics();
                        None
                    }
                    Io::Written(Err(error)) => Some(Exit::PeerGone(error.to_string())),
                };
                if let Some(exit) = exit {
                    break exit;
                }
            }
        }
    };

    let reason = match &exit {
        Exit::PeerClosed => "client closed".to_owned(),
        Exit::PeerGone(why) => format!("connection lost: {why}"),
        Exit::Close(code, why) => format!("closed with {code}: {why}"),
    };
    if let Exit::Close(code, why) = exit {
        conn.broker.metrics().close(code);
        if code == CloseCode::SlowConsumer.code() {
            // Its backlog is what made it slow: the close frame goes first.
            conn.out.queue.clear();
            conn.out.bytes = 0;
        }
        let deadline = if code == CloseCode::GoingAway.code() {
            shutdown_timeout
        } else {
            Duration::from_secs(2)
        };
        conn.out.push(Message::Close(Some(CloseFrame {
            code: WsCloseCode::from(code),
            reason: why.into(),
        })));
        // Boxed: the closing steps take no room in every connection's state.
        let closing = tokio::time::timeout(deadline, close_handshake(&mut conn.out, &mut ws));
        let _ = Box::pin(closing).await;
    } else if !conn.out.is_idle() {
        // Send the answer to the peer's close frame.
        let answer = poll_fn(|cx| conn.out.poll_drain(Pin::new(&mut ws), cx));
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), answer)).await;
    }
    info!(
        conn_id = %id,
        %reason,
        duration_ms = started.elapsed().as_millis() as u64,
        "disconnected"
    );
}

/// Writes what is queued (ending with our close frame), then waits a moment
/// for the peer's close frame, so the client sees a clean close.
async fn close_handshake<S>(out: &mut Outbox, ws: &mut S)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    if poll_fn(|cx| out.poll_drain(Pin::new(&mut *ws), cx))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// One thing that happened on a connection's socket or subscriptions.
enum Io {
    /// A message from the peer, or a read error.
    Read(Result<Message, WsError>),
    /// The peer's stream ended.
    Closed,
    /// A subscription produced something.
    Received(Received),
    /// A subscription that was dropped finished; nothing to do.
    Aborted,
    /// Everything queued was written and flushed.
    Written(Result<(), WsError>),
}

/// Polls, in turn, the peer's next frame and the subscriptions (while the
/// outbound queue has room), then the write step, which therefore runs once
/// everything ready has been queued: one flush per batch.
fn poll_io<S>(
    ws: &mut S,
    subs: &mut Subscriptions,
    out: &mut Outbox,
    room: bool,
    reads_first: bool,
    cx: &mut Context<'_>,
) -> Poll<Io>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    if room {
        for read in [reads_first, !reads_first] {
            if read {
                if let Poll::Ready(item) = ws.poll_next_unpin(cx) {
                    return Poll::Ready(item.map_or(Io::Closed, Io::Read));
                }
            } else if !subs.waiting.is_empty()
                && let Poll::Ready(Some(outcome)) = subs.waiting.poll_next_unpin(cx)
            {
                return Poll::Ready(outcome.map_or(Io::Aborted, Io::Received));
            }
        }
    }
    if !out.is_idle()
        && let Poll::Ready(result) = out.poll_drain(Pin::new(ws), cx)
    {
        return Poll::Ready(Io::Written(result));
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn connection_task_state_stays_small() {
        // Every idle connection carries its task's state: keep it small.
        let (server, _client) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let broker = Broker::new(Config::ephemeral());
        let ctx = ConnCtx {
            admission: broker.try_admit().unwrap(),
            broker,
            codec: Codec::Json,
            peer: "test".into(),
        };
        let task = run_connection(ws, ctx);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1600, "connection task state is {size} bytes");
    }
}
