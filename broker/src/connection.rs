//! One client connection: a single task that reads frames, pulls deliveries
//! from its subscriptions and writes everything ready in one batch.
//!
//! The task never blocks on its socket: replies and deliveries are appended,
//! as finished WebSocket frames, to one outbound buffer bounded in bytes,
//! which a write step hands to the socket whenever it takes data: a burst of
//! deliveries costs one `write`, not one per frame. While the buffer is full
//! the task stops pulling deliveries; a subscriber that stays behind then lags
//! in its topic's broadcast ring (and gets `lagged`), or is closed with 4008,
//! without anyone else noticing.
//!
//! A quiet connection holds no buffers: the read buffer is freed once every
//! byte in it is parsed, the outbound buffer once everything is written.
//! Subscriptions wake the task through a small waker each, which names the
//! subscription, so a wake-up looks only at the subscriptions that have
//! something.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use starling_protocol::{
    CloseCode, Codec, CodecError, Envelope, ErrorCode, Filter, PROTOCOL_VERSION,
};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::broker::{Admission, Broker};
use crate::config::SlowConsumerPolicy;
use crate::delivery::write_protocol_frame;
use crate::history::Replay;
use crate::metrics::Source;
use crate::rate::{RateLimiter, Verdict};
use crate::registry::DeliveryReceiver;
use crate::ring::Missed;
use crate::ws::{self, Event, FrameReader, Kind};

/// Close code for a peer that sent nothing within the idle timeout.
/// (An extension of PROTOCOL.md: 4000-4499 means the client may reconnect.)
pub const IDLE_TIMEOUT_CLOSE: u16 = 4000;

/// How long the broker waits for the peer's close frame after sending its own.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// How many deliveries one subscription may hand over per turn before the
/// task looks at its other work.
const DRAIN_BUDGET: usize = 256;

/// How many deliveries are taken under one lock of the topic's ring.
const DRAIN_CHUNK: usize = 32;

/// Turns of read, deliver and write per wake-up before the task yields to
/// the other connections.
const TURNS_PER_POLL: usize = 16;

/// The read buffer is topped up to at least this much room before a read.
const MIN_READ_ROOM: usize = 512;

/// What an empty outbound buffer is given when deliveries start to arrive.
const OUT_INITIAL: usize = 4096;

/// Written bytes at the front of the outbound buffer are dropped once there
/// are this many (the buffer is simply freed when all of it is written).
const COMPACT_AFTER: usize = 64 * 1024;

/// Why a connection ended.
#[derive(Debug)]
enum Exit {
    /// The peer sent a close frame; the answer is queued.
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

/// Finished frames waiting for the socket, bounded in bytes by the caller.
///
/// The buffer always starts at a frame boundary; `sent` bytes of it are
/// written already.
#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    sent: usize,
    /// Counts since the last batch, added to the shared metrics per batch
    /// (a batch is bounded by the outbound bound, far below `u32::MAX`).
    delivered: u32,
    sent_bytes: u32,
}

impl Outbox {
    /// Bytes queued and not written yet.
    fn queued(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Writes until everything queued is written or the socket is full.
    /// An emptied buffer gives its memory back.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let written = match Pin::new(&mut *io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    self.compact();
                    return Poll::Pending;
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
            self.sent_bytes = self.sent_bytes.saturating_add(written as u32);
        }
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Drops the written frames at the front, once they are many.
    fn compact(&mut self) {
        if self.sent >= COMPACT_AFTER {
            let (cut, _) = ws::frame_boundaries(&self.buf, self.sent);
            self.buf.drain(..cut);
            self.sent -= cut;
        }
    }

    /// Forgets every frame not started yet; a frame partly written is kept,
    /// so the stream stays well formed.
    fn discard_unsent(&mut self) {
        let (_, end) = ws::frame_boundaries(&self.buf, self.sent);
        self.buf.truncate(end);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing can panic while these locks are held.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which subscriptions of a connection were woken, shared with their wakers.
#[derive(Debug, Default)]
struct Woken {
    task: AtomicWaker,
    slots: Mutex<Vec<u32>>,
}

/// The waker a subscription leaves in its topic's ring: it notes the
/// subscription's slot and wakes the connection's task.
struct SubWaker {
    woken: Arc<Woken>,
    slot: u32,
}

impl Wake for SubWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.slots).push(self.slot);
        self.woken.task.wake();
    }
}

struct Sub {
    filter: Filter,
    rx: DeliveryReceiver,
    waker: Waker,
}

/// A connection's subscriptions, by slot.
#[derive(Default)]
struct Subscriptions {
    slots: Vec<Option<Sub>>,
    /// Made with the first subscription.
    woken: Option<Arc<Woken>>,
    /// Slots to look at: woken, or left with messages when the budget or
    /// the outbound buffer ran out. A slot may appear twice, or after its
    /// subscription ended: looking finds nothing then.
    ready: VecDeque<u32>,
}

impl Subscriptions {
    fn find(&self, filter: &Filter) -> Option<usize> {
        self.slots
            .iter()
            .position(|sub| sub.as_ref().is_some_and(|sub| sub.filter == *filter))
    }

    fn insert(&mut self, filter: Filter, rx: DeliveryReceiver) {
        let woken = self.woken.get_or_insert_with(Default::default).clone();
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                // Grow by doubling from one: most connections hold a few.
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact(self.slots.len().max(1));
                }
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let slot_id = u32::try_from(slot).expect("subscriptions are bounded");
        let waker = Waker::from(Arc::new(SubWaker {
            woken,
            slot: slot_id,
        }));
        let mut sub = Sub { filter, rx, waker };
        // Registers the waker, or finds messages that came meanwhile.
        if sub
            .rx
            .poll_ready(&mut Context::from_waker(&sub.waker))
            .is_ready()
        {
            self.ready.push_back(slot_id);
        }
        self.slots[slot] = Some(sub);
    }

    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn remove(&mut self, slot: usize) -> Option<Sub> {
        let sub = self.slots.get_mut(slot)?.take()?;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Some(sub)
    }

    /// Registers the task's waker (once per poll), then moves what was
    /// woken to `ready`.
    fn collect_woken(&mut self, task: &Waker, registered: &mut bool) {
        if let Some(woken) = &self.woken {
            if !*registered {
                woken.task.register(task);
                *registered = true;
            }
            self.ready.extend(lock(&woken.slots).drain(..));
        }
    }
}

/// Everything a connection task needs, handed over by the upgrade handler.
pub(crate) struct ConnCtx {
    pub(crate) broker: Broker,
    pub(crate) admission: Admission,
    pub(crate) codec: Codec,
    pub(crate) peer: SocketAddr,
}

/// The state of one connection, apart from its socket and read buffer.
/// Dropping it removes the connection's subscriptions from the registry, on
/// every exit path.
struct Session {
    broker: Broker,
    /// The connection's id and its slot under the connection limit.
    admission: Admission,
    codec: Codec,
    subs: Subscriptions,
    out: Outbox,
    /// Boxed: most brokers run without a rate limit.
    rate: Option<Box<RateLimiter>>,
    last_seen: Instant,
    last_ping: Instant,
    stalled_since: Option<Instant>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for sub in self.subs.slots.drain(..).flatten() {
            self.broker.registry().unsubscribe(&sub.filter);
        }
        self.flush_metrics();
        self.broker.metrics().connections.dec();
    }
}

/// Settings the connection loop reads, copied once from the configuration.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    /// Outbound bytes past which no more deliveries are taken.
    bound: usize,
    /// Messages over this close the connection with 1009.
    hard_limit: usize,
    read_chunk: usize,
}

impl Session {
    fn send(&mut self, envelope: &Envelope) {
        match self.codec.encode(envelope) {
            Ok(frame) => write_protocol_frame(&mut self.out.buf, &frame),
            Err(error) => warn!(conn_id = %self.admission.id, %error, "cannot encode frame"),
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
                .inc_by(u64::from(std::mem::take(&mut self.out.delivered)));
        }
        if self.out.sent_bytes > 0 {
            metrics
                .bytes_out
                .inc_by(u64::from(std::mem::take(&mut self.out.sent_bytes)));
        }
    }

    /// Handles one thing the peer sent.
    fn on_event(&mut self, event: Event<'_>) -> ControlFlow<Exit> {
        match event {
            Event::Message(kind, data) => self.on_message(kind, data),
            Event::Ping(data) => {
                ws::write_control(&mut self.out.buf, true, data);
                ControlFlow::Continue(())
            }
            Event::Pong => ControlFlow::Continue(()),
            Event::Close(code) => {
                // Echo the peer's code (RFC 6455, 5.5.1); the answer goes out
                // before the connection ends.
                ws::write_close(&mut self.out.buf, code.unwrap_or(1000), "");
                ControlFlow::Break(Exit::PeerClosed)
            }
        }
    }

    /// Handles one data message from the peer.
    fn on_message(&mut self, kind: Kind, data: &[u8]) -> ControlFlow<Exit> {
        match (kind, self.codec.is_text()) {
            (Kind::Text, true) | (Kind::Binary, false) => {}
            (Kind::Binary, true) => {
                return ControlFlow::Break(Exit::close(
                    CloseCode::Unsupported,
                    "binary frame on a JSON connection",
                ));
            }
            (Kind::Text, false) => {
                return ControlFlow::Break(Exit::close(
                    CloseCode::Unsupported,
                    "text frame on a MessagePack connection",
                ));
            }
        }
        let max = self.broker.config().max_message_bytes;
        if data.len() > max {
            let id = self.codec.probe_id(data);
            self.send_error(
                id,
                ErrorCode::MessageTooLarge,
                format!("message of {} bytes is over the limit of {max}", data.len()),
            );
            return ControlFlow::Continue(());
        }
        if let Some(rate) = &mut self.rate {
            match rate.check(Instant::now()) {
                Verdict::Allow => {}
                Verdict::Deny => {
                    let id = self.codec.probe_id(data);
                    self.send_error(id, ErrorCode::RateLimited, "too many frames; slow down");
                    return ControlFlow::Continue(());
                }
                Verdict::Disconnect => {
                    return ControlFlow::Break(Exit::close(
                        CloseCode::RateLimited,
                        "rate limit exceeded repeatedly",
                    ));
                }
            }
        }
        match self.codec.decode_client(data) {
            Ok(envelope) => self.on_envelope(envelope),
            Err(error) => self.on_bad_frame(&error),
        }
        ControlFlow::Continue(())
    }

    fn on_bad_frame(&mut self, error: &CodecError) {
        debug!(conn_id = %self.admission.id, %error, "bad frame");
        self.send_error(error.id(), error.code(), error.to_string());
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Subscribe { id, topic, since } => self.subscribe(id, topic, since),
            Envelope::Unsubscribe { id, topic } => self.unsubscribe(id, &topic),
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

    fn subscribe(&mut self, id: Option<u64>, mut filter: Filter, since: Option<u64>) {
        if self.subs.find(&filter).is_some() {
            self.ack(id, None);
            return;
        }
        let max = self.broker.config().max_subscriptions;
        if self.subs.len() >= max {
            self.send_error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            );
            return;
        }
        let (rx, replay) = self.broker.subscribe(&mut filter, since);
        debug!(conn_id = %self.admission.id, topic = %filter, ?since, "subscribed");
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
                if let Some(wire) = delivery.wire(self.codec) {
                    self.out.buf.extend_from_slice(wire);
                    self.out.delivered += 1;
                }
            }
        }
        self.subs.insert(filter, rx);
    }

    fn unsubscribe(&mut self, id: Option<u64>, filter: &Filter) {
        match self
            .subs
            .find(filter)
            .and_then(|slot| self.subs.remove(slot))
        {
            Some(sub) => {
                drop(sub);
                self.broker.registry().unsubscribe(filter);
                debug!(conn_id = %self.admission.id, topic = %filter, "unsubscribed");
                self.ack(id, None);
            }
            None => self.send_error(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {filter}"),
            ),
        }
    }

    /// Takes deliveries from the subscriptions that have some, while the
    /// outbound buffer has room.
    fn deliver(&mut self, bound: usize) -> ControlFlow<Exit> {
        for _ in 0..self.subs.ready.len() {
            if self.out.queued() >= bound {
                break;
            }
            let Some(slot) = self.subs.ready.pop_front() else {
                break;
            };
            self.drain_slot(slot, bound)?;
        }
        ControlFlow::Continue(())
    }

    /// Takes what one subscription has ready, within the budget and the
    /// outbound bound, then waits on it again (or keeps it ready).
    fn drain_slot(&mut self, slot: u32, bound: usize) -> ControlFlow<Exit> {
        let Some(Some(sub)) = self.subs.slots.get_mut(slot as usize) else {
            return ControlFlow::Continue(());
        };
        let codec = self.codec;
        let out = &mut self.out;
        // One allocation for a typical batch, rather than a few regrowths.
        if out.buf.capacity() == 0 {
            out.buf.reserve(OUT_INITIAL);
        }
        let mut budget = DRAIN_BUDGET;
        let mut missed_total = 0;
        // Until the subscription has nothing left (its waker is then
        // registered, under the same lock), or the budget or the room runs out.
        let mut ready = true;
        while ready && budget > 0 && out.queued() < bound {
            let (taken, more) =
                sub.rx
                    .drain_then_poll(budget.min(DRAIN_CHUNK), &sub.waker, |item| match item {
                        Ok(delivery) => {
                            if let Some(wire) = delivery.wire(codec) {
                                out.buf.extend_from_slice(wire);
                                out.delivered += 1;
                            }
                        }
                        // Reported first, before what comes after the gap.
                        Err(Missed::Lagged(missed)) => {
                            missed_total += missed;
                            let lagged = Envelope::Lagged {
                                topic: sub.filter.clone(),
                                missed,
                            };
                            if let Ok(frame) = codec.encode(&lagged) {
                                write_protocol_frame(&mut out.buf, &frame);
                            }
                        }
                    });
            budget = budget.saturating_sub(taken);
            ready = more.is_ready();
        }
        if ready {
            self.subs.ready.push_back(slot);
        }
        if missed_total > 0 {
            let filter = sub.filter.clone();
            let metrics = self.broker.metrics();
            metrics.lagged_events.inc();
            metrics.lagged_messages.inc_by(missed_total);
            debug!(conn_id = %self.admission.id, topic = %filter, missed = missed_total, "subscriber lagged");
            if self.broker.config().slow_consumer == SlowConsumerPolicy::Disconnect {
                return ControlFlow::Break(Exit::close(
                    CloseCode::SlowConsumer,
                    format!("slow consumer: missed {missed_total} messages on {filter}"),
                ));
            }
        }
        ControlFlow::Continue(())
    }

    /// Notes when the outbound buffer fills up and when it has room again.
    /// Returns whether that changed.
    fn track_stall(&mut self, bound: usize) -> bool {
        let room = self.out.queued() < bound;
        match (room, self.stalled_since) {
            (false, None) => self.stalled_since = Some(Instant::now()),
            (true, Some(_)) => self.stalled_since = None,
            _ => return false,
        }
        true
    }

    /// The next time the connection must check on its peer.
    fn next_deadline(&self) -> Instant {
        let config = self.broker.config();
        let ping = Duration::from_millis(config.ping_interval_ms);
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let mut deadline = Instant::now() + Duration::from_secs(3600);
        if !ping.is_zero() {
            deadline = deadline.min(self.last_ping + ping);
        }
        if !idle.is_zero() {
            deadline = deadline.min(self.last_seen + idle);
        }
        if let Some(since) = self.stalled_since {
            deadline = deadline.min(since + config.write_timeout());
        }
        deadline
    }

    /// Keepalive and stall checks, when the timer fires.
    fn on_timer(&mut self) -> Option<Exit> {
        let config = self.broker.config();
        let ping = Duration::from_millis(config.ping_interval_ms);
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let now = Instant::now();
        if let Some(since) = self.stalled_since
            && now >= since + config.write_timeout()
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
                ws::write_control(&mut self.out.buf, false, &[]);
            }
        }
        None
    }
}

/// A connection: its socket, what was read and not parsed yet, and the rest.
struct Connection {
    io: TcpStream,
    reader: FrameReader,
    session: Session,
}

/// Reads what the socket has into the reader's buffer. The buffer is
/// allocated only once the socket has data: waiting costs no memory.
fn poll_read(
    io: &TcpStream,
    reader: &mut FrameReader,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_read_ready(cx))?;
        let buf = reader.buffer();
        if buf.capacity() - buf.len() < MIN_READ_ROOM {
            buf.reserve(chunk.max(MIN_READ_ROOM));
        }
        match io.try_read_buf(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // A stale readiness, now cleared: wait for the next one.
                if buf.is_empty() {
                    *buf = Vec::new();
                }
            }
            result => return Poll::Ready(result),
        }
    }
}

/// Handles every complete frame in the reader's buffer; `Some` when the
/// connection must end.
fn parse_input(reader: &mut FrameReader, session: &mut Session, hard_limit: usize) -> Option<Exit> {
    match reader.parse(hard_limit, |event| session.on_event(event)) {
        Ok(ControlFlow::Continue(())) => None,
        Ok(ControlFlow::Break(exit)) => Some(exit),
        Err(violation) => Some(Exit::close(violation.code, violation.reason)),
    }
}

impl Connection {
    /// Reads, delivers and writes, in turns, until nothing is ready (or the
    /// turns run out, and the task yields); ready with why it must end.
    fn poll_io(&mut self, tuning: Tuning, cx: &mut Context<'_>) -> Poll<Exit> {
        let Connection {
            io,
            reader,
            session,
        } = self;
        let mut registered = false;
        for _ in 0..TURNS_PER_POLL {
            // Another turn is needed after a read that got data (the socket
            // may hold more) or while subscriptions have something and the
            // outbound buffer has room.
            let mut progress = false;
            if session.out.queued() < tuning.bound {
                match poll_read(io, reader, tuning.read_chunk, cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Exit::PeerGone("closed without a close frame".into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        session.broker.metrics().bytes_in.inc_by(n as u64);
                        session.last_seen = Instant::now();
                        if let Some(exit) = parse_input(reader, session, tuning.hard_limit) {
                            return Poll::Ready(exit);
                        }
                    }
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Exit::PeerGone(error.to_string()));
                    }
                    Poll::Pending => {}
                }
            }
            // After the read, which may have added the first subscription.
            session.subs.collect_woken(cx.waker(), &mut registered);
            if session.out.queued() < tuning.bound
                && let ControlFlow::Break(exit) = session.deliver(tuning.bound)
            {
                return Poll::Ready(exit);
            }
            if session.out.queued() > 0 {
                match session.out.poll_write(io, cx) {
                    Poll::Ready(Ok(())) => session.flush_metrics(),
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Exit::PeerGone(error.to_string()));
                    }
                    Poll::Pending => {}
                }
            }
            progress |= !session.subs.ready.is_empty() && session.out.queued() < tuning.bound;
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what is queued (ending with our close frame), then waits a
    /// moment for the peer's close frame, so the client sees a clean close.
    async fn close_handshake(&mut self, hard_limit: usize, read_chunk: usize) {
        let Connection {
            io,
            reader,
            session,
        } = self;
        if poll_fn(|cx| session.out.poll_write(io, cx)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            loop {
                match poll_fn(|cx| poll_read(io, reader, read_chunk, cx)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let closed = reader.parse(hard_limit, |event| match event {
                    Event::Close(_) => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                });
                if !matches!(closed, Ok(ControlFlow::Continue(()))) {
                    break;
                }
            }
        })
        .await;
        let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
    }

    /// Serves the connection until it must end; returns why.
    async fn run(&mut self, tuning: Tuning) -> Exit {
        // Frames the client sent right behind its upgrade request.
        if !self.reader.buffer().is_empty()
            && let Some(exit) = parse_input(&mut self.reader, &mut self.session, tuning.hard_limit)
        {
            return exit;
        }
        let broker = self.session.broker.clone();
        let shutdown = broker.shutdown_notified();
        tokio::pin!(shutdown);
        let timer = tokio::time::sleep_until(self.session.next_deadline());
        tokio::pin!(timer);
        // The waker the shutdown signal and the timer were last polled with.
        // They keep it, so they are polled again only when the task's waker
        // changes (a spawned task's never does) or the timer has fired:
        // polling the shutdown signal locks a mutex every connection shares.
        let mut registered: Option<Waker> = None;
        poll_fn(|cx| {
            let new_waker = !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if new_waker {
                registered = Some(cx.waker().clone());
            }
            // The flag is checked after registering, so a shutdown begun
            // before is seen.
            if (new_waker && shutdown.as_mut().poll(cx).is_ready()) || broker.is_shutting_down() {
                return Poll::Ready(Exit::close(CloseCode::GoingAway, "broker shutting down"));
            }
            // After a reset the timer is polled again, which registers it.
            let poll_timer = new_waker || timer.is_elapsed();
            while poll_timer && timer.as_mut().poll(cx).is_ready() {
                if let Some(exit) = self.session.on_timer() {
                    return Poll::Ready(exit);
                }
                timer.as_mut().reset(self.session.next_deadline());
            }
            let io = self.poll_io(tuning, cx);
            if io.is_pending() && self.session.track_stall(tuning.bound) {
                timer.as_mut().reset(self.session.next_deadline());
                // Registers the new deadline; a deadline already past wakes at once.
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            io
        })
        .await
    }

    /// How the connection ends after `exit`, when there is anything to send.
    fn closing(
        &mut self,
        exit: Exit,
        tuning: Tuning,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        match exit {
            Exit::Close(code, why) => {
                self.session.broker.metrics().close(code);
                if code == CloseCode::SlowConsumer.code() {
                    // Its backlog is what made it slow: the close frame goes first.
                    self.session.out.discard_unsent();
                }
                ws::write_close(&mut self.session.out.buf, code, &why);
                let deadline = if code == CloseCode::GoingAway.code() {
                    self.session.broker.config().shutdown_timeout()
                } else {
                    Duration::from_secs(2)
                };
                let closing = self.close_handshake(tuning.hard_limit, tuning.read_chunk);
                Some(Box::pin(async move {
                    let _ = tokio::time::timeout(deadline, closing).await;
                }))
            }
            Exit::PeerClosed => Some(Box::pin(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.answer_close()).await;
            })),
            Exit::PeerGone(_) => None,
        }
    }

    /// Writes the answer to the peer's close frame, then ends the stream.
    async fn answer_close(&mut self) {
        let Connection { io, session, .. } = self;
        if poll_fn(|cx| session.out.poll_write(io, cx)).await.is_ok() {
            let _ = poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx)).await;
        }
    }
}

/// Runs one connection until it ends, then logs one line about it.
/// `read` is what the client sent after its upgrade request, if anything.
///
/// The setup is done here, outside the returned future, so that only what
/// the connection needs while it lives is kept in its task.
pub(crate) fn run_connection(
    io: TcpStream,
    read: Bytes,
    ctx: ConnCtx,
) -> impl Future<Output = ()> + Send {
    let ConnCtx {
        broker,
        admission,
        codec,
        peer,
    } = ctx;
    let id = admission.id;
    let started = Instant::now();
    let config = broker.config();
    let tuning = Tuning {
        bound: config.outbound_queue_bytes.max(1),
        hard_limit: config.hard_message_limit(),
        read_chunk: config.read_buffer_bytes,
    };
    let rate_limit = config.rate_limit;
    broker.metrics().connections.inc();
    broker.metrics().connections_total.inc();
    info!(conn_id = %id, %peer, codec = ?codec, "connected");

    let mut reader = FrameReader::default();
    reader.buffer().extend_from_slice(&read);
    let mut conn = Connection {
        io,
        reader,
        session: Session {
            rate: (rate_limit > 0).then(|| Box::new(RateLimiter::new(rate_limit))),
            broker,
            admission,
            codec,
            subs: Subscriptions::default(),
            out: Outbox::default(),
            last_seen: started,
            last_ping: started,
            stalled_since: None,
        },
    };
    let welcome = Envelope::Welcome {
        version: PROTOCOL_VERSION,
        node: conn.session.broker.node_id().clone(),
        codec: codec.name(),
        limits: conn.session.broker.limits().clone(),
    };
    conn.session.send(&welcome);

    async move {
        let exit = conn.run(tuning).await;
        let reason = match &exit {
            Exit::PeerClosed => "client closed".to_owned(),
            Exit::PeerGone(why) => format!("connection lost: {why}"),
            Exit::Close(code, why) => format!("closed with {code}: {why}"),
        };
        if let Some(closing) = conn.closing(exit, tuning) {
            closing.await;
        }
        info!(
            conn_id = %id,
            %reason,
            duration_ms = started.elapsed().as_millis() as u64,
            "disconnected"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn connection_task_state_stays_small() {
        // Every idle connection carries its task's state: keep it small.
        let (_client, server, peer) = crate::test_support::tcp_pair().await;
        let broker = Broker::new(Config::ephemeral());
        let ctx = ConnCtx {
            admission: broker.try_admit().unwrap(),
            broker,
            codec: Codec::Json,
            peer,
        };
        let task = run_connection(server, Bytes::new(), ctx);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 704, "connection task state is {size} bytes");
    }

    #[test]
    fn discarding_keeps_a_partly_written_frame() {
        let mut out = Outbox::default();
        ws::write_message(&mut out.buf, Kind::Text, b"first");
        ws::write_message(&mut out.buf, Kind::Text, b"second");
        out.sent = 3;
        out.discard_unsent();
        assert_eq!(out.buf.len(), 7, "the first frame stays whole");
        out.sent = 7;
        out.discard_unsent();
        assert_eq!(out.buf.len(), 7);
    }
}
