//! One client connection: a single task that reads frames, pulls deliveries
//! from its subscriptions and writes everything ready in one batch.
//!
//! The task never blocks on its socket: replies and deliveries are appended,
//! as finished WebSocket frames, to one outbound buffer bounded in bytes
//! ([`outbox`]), which a write step hands to the socket whenever it takes
//! data: a burst of deliveries costs one `write`, not one per frame. While
//! the buffer is full the task stops pulling deliveries; a subscriber that
//! stays behind then lags in its topic's broadcast ring (and gets `lagged`),
//! or is closed with 4008, without anyone else noticing.
//!
//! A quiet connection holds no buffers: the read buffer is freed once every
//! byte in it is parsed, the outbound buffer once everything is written.
//!
//! | module | what |
//! | --- | --- |
//! | this one | the poll loop (read, deliver, write in turns), the close handshake, failing a connection that breaks the rules |
//! | [`session`] | the protocol: one arm per client frame type (or the echo mode of conformance tests) |
//! | [`subscriptions`] | subscriptions, their wakers, taking their deliveries |
//! | [`outbox`] | the outbound buffer, one write per batch |
//! | [`keepalive`] | pings, idle and write timeouts |
//! | [`exit`] | why a connection ends |

use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use starling_protocol::{CloseCode, Codec};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tracing::info;

use crate::auth::Auth;
use crate::broker::{Admission, Broker};
use crate::connection::exit::Exit;
use crate::connection::keepalive::Keepalive;
use crate::connection::session::Session;
use crate::stream::Stream;
use starling_protocol::framing::{self, Event, FrameReader};

mod exit;
mod keepalive;
mod outbox;
mod pending;
mod presence;
mod session;
mod subscriptions;

/// How long the broker waits for the peer's close frame after sending its own.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Turns of read, deliver and write per wake-up before the task yields to
/// the other connections.
const TURNS_PER_POLL: usize = 16;

/// The read buffer is topped up to at least this much room before a read.
const MIN_READ_ROOM: usize = 512;

/// Everything a connection task needs, handed over by the handshake.
pub(crate) struct ConnCtx {
    pub(crate) broker: Broker,
    pub(crate) admission: Admission,
    pub(crate) codec: Codec,
    pub(crate) peer: SocketAddr,
    /// The client's address: the peer's, or behind a trusted proxy the one
    /// it forwarded.
    pub(crate) client: IpAddr,
    pub(crate) auth: Auth,
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

/// A connection: its socket, what was read and not parsed yet, and the rest.
/// `ECHO`: whether its session echoes messages (see [`session`]).
struct Connection<const ECHO: bool> {
    io: Stream,
    reader: FrameReader,
    session: Session<ECHO>,
    keepalive: Keepalive,
}

/// Reads what the socket has into the reader's buffer. The buffer is
/// allocated only once the socket has data: waiting costs no memory.
fn poll_read(
    io: &mut Stream,
    reader: &mut FrameReader,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    io.poll_read_into(reader.buffer(), MIN_READ_ROOM, chunk, cx)
}

/// Handles every complete frame in the reader's buffer; `Some` when the
/// connection must end.
fn parse_input<const ECHO: bool>(
    reader: &mut FrameReader,
    session: &mut Session<ECHO>,
    hard_limit: usize,
) -> Option<Exit> {
    match reader.parse(hard_limit, |event| session.on_event(event)) {
        Ok(ControlFlow::Continue(())) => None,
        Ok(ControlFlow::Break(exit)) => Some(exit),
        Err(violation) => Some(Exit::Fail(violation.code, violation.reason)),
    }
}

impl<const ECHO: bool> Connection<ECHO> {
    /// Reads, delivers and writes, in turns, until nothing is ready (or the
    /// turns run out, and the task yields); ready with why it must end.
    fn poll_io(&mut self, tuning: Tuning, cx: &mut Context<'_>) -> Poll<Exit> {
        let Connection {
            io,
            reader,
            session,
            keepalive,
        } = self;
        let mut registered = false;
        for _ in 0..TURNS_PER_POLL {
            // Another turn is needed after a read that got data (the socket
            // may hold more), and when the outbound buffer has room while
            // subscriptions have something or the read was skipped for want
            // of room (the socket's readiness is registered only by a read).
            let mut progress = false;
            let full = session.out.queued() >= tuning.bound;
            // Past the frames that may wait for the store, reading waits.
            let held = session.pending_full();
            if !full && !held {
                match poll_read(io, reader, tuning.read_chunk, cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Exit::PeerGone("closed without a close frame".into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        session.broker.metrics().bytes_in.inc_by(n as u64);
                        keepalive.last_seen = Instant::now();
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
            // After the read, which may have added frames that wait.
            if session.poll_pending(cx) && held {
                progress = true;
            }
            // After the read, which may have added the first subscription.
            session.subs.collect_woken(cx.waker(), &mut registered);
            if session.out.queued() < tuning.bound
                && let ControlFlow::Break(exit) = session.deliver(tuning.bound)
            {
                return Poll::Ready(exit);
            }
            if session.out.queued() > 0 || io.wants_flush() {
                match session.out.poll_write(io, cx) {
                    Poll::Ready(Ok(())) => session.flush_metrics(),
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Exit::PeerGone(error.to_string()));
                    }
                    Poll::Pending => {}
                }
            }
            progress |= (full || session.subs.has_ready()) && session.out.queued() < tuning.bound;
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
            ..
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
        // A refused token gets its close at once, and no welcome.
        if let Some(exit) = self.session.refusal() {
            return exit;
        }
        // Frames the client sent right behind its upgrade request.
        if !self.reader.buffer().is_empty()
            && let Some(exit) = parse_input(&mut self.reader, &mut self.session, tuning.hard_limit)
        {
            return exit;
        }
        let broker = self.session.broker.clone();
        let shutdown = broker.shutdown_notified();
        tokio::pin!(shutdown);
        let timer = tokio::time::sleep_until(
            self.keepalive
                .next_deadline(broker.config(), self.session.token_expires()),
        );
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
                let token = self.session.token_expires();
                if let Some(exit) =
                    self.keepalive
                        .on_timer(broker.config(), &mut self.session.out, token)
                {
                    return Poll::Ready(exit);
                }
                timer
                    .as_mut()
                    .reset(self.keepalive.next_deadline(broker.config(), token));
            }
            let io = self.poll_io(tuning, cx);
            let room = self.session.out.queued() < tuning.bound;
            let stalled = io.is_pending() && self.keepalive.track_stall(room);
            if stalled | self.session.take_expiry_changed() {
                let token = self.session.token_expires();
                timer
                    .as_mut()
                    .reset(self.keepalive.next_deadline(broker.config(), token));
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
                if code == CloseCode::SlowConsumer {
                    // Its backlog is what made it slow: the close frame goes first.
                    self.session.out.discard_unsent();
                }
                framing::write_close(&mut self.session.out.buf, code.code(), &why);
                let deadline = if code == CloseCode::GoingAway {
                    self.session.broker.config().shutdown_timeout()
                } else {
                    Duration::from_secs(2)
                };
                let closing = self.close_handshake(tuning.hard_limit, tuning.read_chunk);
                Some(Box::pin(async move {
                    let _ = tokio::time::timeout(deadline, closing).await;
                }))
            }
            Exit::Fail(code, why) => {
                self.session.broker.metrics().close(code);
                framing::write_close(&mut self.session.out.buf, code.code(), &why);
                Some(Box::pin(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.fail(tuning)).await;
                }))
            }
            Exit::PeerClosed => Some(Box::pin(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.answer_close()).await;
            })),
            Exit::PeerGone(_) => None,
        }
    }

    /// Writes what is queued (ending with our close frame) and ends the
    /// stream at once: after a violation the peer's frames are not read any
    /// more, so no close frame is waited for. What the peer still sends is
    /// read and dropped until it ends its side (for a moment at most), so
    /// that the close frame is not lost to a reset of the connection.
    async fn fail(&mut self, tuning: Tuning) {
        let Connection {
            io,
            reader,
            session,
            ..
        } = self;
        if poll_fn(|cx| session.out.poll_write(io, cx)).await.is_err()
            || poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx))
                .await
                .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while let Ok(1..) = poll_fn(|cx| poll_read(io, reader, tuning.read_chunk, cx)).await {
                reader.buffer().clear();
            }
        })
        .await;
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
/// `ECHO` is false for the broker's clients; true for the echo mode of
/// conformance tests (see [`session`]).
///
/// The setup is done here, outside the returned future, so that only what
/// the connection needs while it lives is kept in its task.
pub(crate) fn run_connection<const ECHO: bool>(
    io: Stream,
    read: Bytes,
    ctx: ConnCtx,
) -> impl Future<Output = ()> + Send {
    let ConnCtx {
        broker,
        admission,
        codec,
        peer,
        client,
        auth,
    } = ctx;
    let id = admission.id;
    let started = Instant::now();
    let config = broker.config();
    let tuning = Tuning {
        bound: config.outbound_queue_bytes.max(1),
        hard_limit: config.hard_message_limit(),
        read_chunk: config.read_buffer_bytes,
    };
    match (auth.identity(), auth.refusal()) {
        (Some(identity), _) => {
            info!(conn_id = %id, %client, %peer, codec = ?codec, sub = %identity.sub, "connected");
        }
        (None, Some(error)) => {
            info!(conn_id = %id, %client, %peer, %error, "refused: unauthorized")
        }
        (None, None) => info!(conn_id = %id, %client, %peer, codec = ?codec, "connected"),
    }
    let mut reader = FrameReader::default();
    reader.buffer().extend_from_slice(&read);
    let mut conn = Connection::<ECHO> {
        io,
        reader,
        session: Session::new(broker, admission, codec, auth),
        keepalive: Keepalive::new(started),
    };

    async move {
        let exit = conn.run(tuning).await;
        let reason = exit.describe();
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
        let broker = Broker::new(Config::ephemeral()).unwrap();
        let ctx = ConnCtx {
            admission: broker.try_admit().unwrap(),
            broker,
            codec: Codec::Json,
            peer,
            client: peer.ip(),
            auth: Auth::OFF,
        };
        let task = run_connection::<false>(Stream::Plain(server), Bytes::new(), ctx);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 712, "connection task state is {size} bytes");
    }
}
