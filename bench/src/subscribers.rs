//! The subscriber side: every subscriber connection is read by one
//! single-threaded epoll loop on one dedicated OS thread.
//!
//! Connections are opened and subscribed with tokio-tungstenite (on a
//! current-thread runtime of that thread, `concurrency` handshakes at a
//! time). As soon as a connection has read the answer to each of its
//! subscriptions, the loop takes its socket back from tungstenite and
//! registers it with one `mio::Poll`, edge-triggered. Taking the socket drops
//! whatever tungstenite has read but not returned yet; there is nothing such:
//! the broker sends a connection nothing after its subscribe answers until
//! something is published, and the publishers start only once every
//! subscriber connection has been taken over (their thread starts after
//! [`Subscribers::start`] returns). The one frame the broker sends of its
//! own accord is a keepalive ping (by default after 25 s without a frame from
//! the client): one that came in that instant would go unanswered, and the
//! broker would ping again.
//!
//! From then on, each readable socket is read into one buffer shared by all
//! connections, and the frames are parsed in place ([`crate::wire`]),
//! classified by their bytes ([`crate::scan`]) and counted into statistics
//! the loop owns. The clock is read once per read: a frame's receive time is
//! when its bytes were read. A connection keeps only the start of a frame that has
//! not fully arrived, the message a fragmented message has so far, and any
//! control frame the socket did not take at once. The loop answers pings
//! and the broker's close with masked frames, as a client must. After a pass
//! over the ready sockets it pauses briefly instead of waiting in epoll at
//! once, so that the broker does not have to wake it for every few frames
//! ([`pause_after`]).
//!
//! The main thread steers the phases through a channel and a `mio::Waker`:
//! connect and subscribe everything, measure a window, drain and close.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::{StreamExt, stream};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use starling_protocol::framing::{Header, opcode};
use starling_protocol::{Codec, Envelope, Limits};
use tokio_tungstenite::MaybeTlsStream;

use crate::publisher::Progress;
use crate::scan::{self, Scan};
use crate::stats::{SubscriberStats, Tally, Window, now_ns};
use crate::wire::{self, Broken, Masks};
use crate::ws::{self, Ws};

/// After the publishers stop, how long to wait at most for deliveries.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// With every expected delivery received or reported missed, how long the
/// connections must stay quiet before the drain ends early.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// How often the drain checks whether it is done.
const DRAIN_TICK: Duration = Duration::from_millis(5);
/// How long each connection waits for the broker to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for socket events before looking at the control channel
/// (the main thread also wakes the loop when it sends something).
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// The smallest shared read buffer.
const MIN_READ_BUFFER: usize = 4 * 1024;
/// A read gets at least this much room in the shared buffer.
const MIN_READ: usize = 1024;
/// A connection's carried-over bytes keep at most this much capacity
/// between reads (10,000+ idle connections hold one each).
const CARRY_KEEP: usize = 4 * 1024;
/// How long the loop lets deliveries gather after a pass (see
/// [`pause_after`]): the shortest sleep, which the kernel's timer slack (50 µs
/// for an ordinary thread) stretches to some 50 µs.
const PAUSE: Duration = Duration::from_micros(1);
/// Socket events taken per poll.
const EVENTS: usize = 1024;
/// The token of the main thread's waker.
const WAKER: Token = Token(usize::MAX);

/// Who subscribes to what.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberPlan {
    /// Subscriber connection `i` goes to `urls[i % urls.len()]`.
    pub(crate) urls: Vec<String>,
    pub(crate) codec: Codec,
    /// Every topic of the run.
    pub(crate) topics: Arc<Vec<String>>,
    /// For each connection, the indexes of its (distinct) topics.
    pub(crate) per_connection: Vec<Vec<usize>>,
    /// Handshakes in progress at once.
    pub(crate) concurrency: usize,
    /// The read buffer of a connection while it connects and subscribes, and
    /// the size of the buffer all of them are read into afterwards.
    pub(crate) read_buffer_bytes: usize,
    /// Every delivery is counted here for the publishers (end-to-end in flight).
    pub(crate) progress: Arc<Progress>,
}

/// The subscribers, once every connection has been tried and subscribed.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    /// Connections open and subscribed (even partly).
    pub(crate) connected: u64,
    /// Connections that failed, by reason.
    pub(crate) failures: Tally,
    /// Subscriptions acked.
    pub(crate) subscriptions: u64,
    /// Subscriptions refused with an `error`, by code.
    pub(crate) refused: Tally,
    /// For each topic, how many connections hold an acked subscription to it.
    pub(crate) per_topic: Vec<u64>,
    /// From the first handshake to the last answer.
    pub(crate) took: Duration,
    /// The limits the broker announced.
    pub(crate) limits: Option<Limits>,
}

/// What the subscribers saw, at the end.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberReport {
    pub(crate) stats: SubscriberStats,
    /// How long the drain waited after the publishers stopped.
    pub(crate) drained_in: Duration,
    /// Connections whose closing handshake completed.
    pub(crate) closed_cleanly: u64,
    /// Connections still open at the end (not counted as closed).
    pub(crate) close_timeouts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Control {
    Measure(Window),
    Drain { expected: u64 },
}

/// The subscriber thread, seen from the main thread.
pub(crate) struct Subscribers {
    control: mpsc::Sender<Control>,
    waker: Waker,
    thread: JoinHandle<Result<SubscriberReport>>,
}

impl Subscribers {
    /// Starts the thread and waits until every connection is open and
    /// subscribed (or has failed).
    pub(crate) fn start(plan: SubscriberPlan) -> Result<(Self, Ready)> {
        let poll = Poll::new().context("cannot create the subscribers' epoll instance")?;
        let waker =
            Waker::new(poll.registry(), WAKER).context("cannot create the subscribers' waker")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (control, control_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("subscribers".into())
            .spawn(move || run(plan, poll, ready_tx, control_rx))
            .context("cannot start the subscriber thread")?;
        match ready_rx.recv() {
            Ok(ready) => Ok((
                Subscribers {
                    control,
                    waker,
                    thread,
                },
                ready,
            )),
            Err(_) => Err(join(thread).err().unwrap_or_else(|| {
                anyhow!("the subscriber thread ended before its connections were ready")
            })),
        }
    }

    /// Starts measuring deliveries sent within `window`.
    pub(crate) fn measure(&self, window: Window) {
        self.send(Control::Measure(window));
    }

    /// Waits for `expected` measured deliveries (at most 2 s), closes every
    /// connection with 1000 and returns what was seen.
    pub(crate) fn finish(self, expected: u64) -> Result<SubscriberReport> {
        self.send(Control::Drain { expected });
        join(self.thread)
    }

    fn send(&self, control: Control) {
        // A thread that has ended reports why when joined.
        if self.control.send(control).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

fn join<T>(thread: JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow!("the subscriber thread panicked"))?
}

/// The subscriber thread.
fn run(
    plan: SubscriberPlan,
    poll: Poll,
    ready_tx: mpsc::Sender<Ready>,
    control: Receiver<Control>,
) -> Result<SubscriberReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the subscribers' runtime")?;
    let (ready, conns) = runtime.block_on(connect_all(&plan, poll.registry()));
    drop(runtime);
    let buffer = plan.read_buffer_bytes.max(MIN_READ_BUFFER);
    let mut reader = Reader::new(poll, conns, buffer, plan.codec, plan.progress);
    if ready_tx.send(ready).is_err() {
        return Err(anyhow!("the main thread went away"));
    }
    let mut events = Events::with_capacity(EVENTS);

    // Read until told to drain (or until the main thread is gone).
    let (expected, drain_started) = 'read: loop {
        let sockets = reader.turn(&mut events, CONTROL_TICK)?;
        pause_after(sockets);
        loop {
            match control.try_recv() {
                Ok(Control::Measure(window)) => reader.counter.window = window,
                Ok(Control::Drain { expected }) => break 'read (expected, Instant::now()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'read (0, Instant::now()),
            }
        }
    };
    loop {
        let done = {
            let stats = &reader.counter.stats;
            let quiet_ns = now_ns().saturating_sub(reader.counter.last_delivery_ns);
            stats.received >= expected
                || (stats.received + stats.missed >= expected
                    && quiet_ns >= DRAIN_QUIET.as_nanos() as u64)
                || drain_started.elapsed() >= DRAIN_LIMIT
        };
        if done {
            break;
        }
        let sockets = reader.turn(&mut events, DRAIN_TICK)?;
        pause_after(sockets);
    }
    let drained_in = drain_started.elapsed();

    // Stop measuring: late deliveries no longer count.
    reader.counter.window = Window::NONE;
    reader.close_all();
    let deadline = Instant::now() + CLOSE_WAIT;
    while reader.open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        reader.turn(&mut events, left)?;
    }
    reader.close_timeouts += reader.open as u64;

    Ok(SubscriberReport {
        stats: reader.counter.stats,
        drained_in,
        closed_cleanly: reader.closed_cleanly,
        close_timeouts: reader.close_timeouts,
    })
}

/// After a pass over `sockets` ready sockets, lets deliveries gather for
/// [`PAUSE`] unless more sockets were ready than one poll takes.
///
/// A thread waiting in `epoll_wait` has to be woken by whoever makes a
/// socket readable, and on loopback that is the broker, on its own core: an
/// epoll loop that drains its sockets the moment a frame arrives and waits
/// again has the broker wake it for every few frames it writes, which costs
/// the broker a share of its core (inter-processor interrupts, in a VM exits
/// to the hypervisor) and makes it slower than with a client that reads less
/// eagerly. Sleeping outside `epoll_wait` instead costs the broker nothing:
/// the next poll finds every socket that became readable meanwhile. The
/// price is that a delivery arriving during the pause is read, and stamped,
/// up to the pause (about 50 µs) later.
fn pause_after(sockets: usize) {
    if sockets > 0 && sockets < EVENTS {
        std::thread::sleep(PAUSE);
    }
}

/// Opens and subscribes every connection, `plan.concurrency` at a time, and
/// registers each with `registry` as soon as it is subscribed; connection
/// `i` of the result has token `i`.
async fn connect_all(plan: &SubscriberPlan, registry: &Registry) -> (Ready, Vec<Option<Conn>>) {
    let started = Instant::now();
    let mut ready = Ready {
        connected: 0,
        failures: Tally::default(),
        subscriptions: 0,
        refused: Tally::default(),
        per_topic: vec![0; plan.topics.len()],
        took: Duration::ZERO,
        limits: None,
    };
    let mut conns = Vec::with_capacity(plan.per_connection.len());
    let config = ws::config(plan.read_buffer_bytes);
    let mut connecting = stream::iter(plan.per_connection.iter().enumerate())
        .map(|(i, topic_ixs)| async move {
            let url = &plan.urls[i % plan.urls.len()];
            let (mut ws, limits) = ws::connect(url, plan.codec, config).await?;
            let names: Vec<&str> = topic_ixs.iter().map(|&i| plan.topics[i].as_str()).collect();
            // Reads the answer to every subscribe: only then is the socket taken.
            let subscribed = ws::subscribe(&mut ws, plan.codec, &names).await?;
            let socket = take_socket(ws)?;
            let acked: Vec<usize> = subscribed.acked.iter().map(|&k| topic_ixs[k]).collect();
            Ok::<_, String>((socket, limits, acked, subscribed.refused))
        })
        .buffer_unordered(plan.concurrency.max(1));
    while let Some(result) = connecting.next().await {
        let (mut socket, limits, acked, refused) = match result {
            Ok(subscribed) => subscribed,
            Err(reason) => {
                ready.failures.add(reason);
                continue;
            }
        };
        let token = Token(conns.len());
        if let Err(e) =
            registry.register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
        {
            ready.failures.add(format!("cannot poll the socket: {e}"));
            continue;
        }
        conns.push(Some(Conn::new(socket)));
        ready.connected += 1;
        ready.subscriptions += acked.len() as u64;
        for topic in acked {
            ready.per_topic[topic] += 1;
        }
        for code in refused {
            ready.refused.add(code);
        }
        ready.limits.get_or_insert(limits);
    }
    ready.took = started.elapsed();
    (ready, conns)
}

/// The socket under a subscribed connection, nonblocking, for mio. The
/// caller makes sure that tungstenite holds no unread frame.
fn take_socket(ws: Ws) -> Result<TcpStream, String> {
    match ws.into_inner() {
        MaybeTlsStream::Plain(tcp) => {
            let std = tcp
                .into_std()
                .map_err(|e| format!("cannot take the socket: {e}"))?;
            // tokio hands it over nonblocking, as mio needs it.
            Ok(TcpStream::from_std(std))
        }
        _ => Err("not a plain TCP connection".to_owned()),
    }
}

/// One subscriber connection in the loop.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Our close is sent: the connection waits for the broker's.
    closing: bool,
    /// The start of a frame that has not fully arrived (usually empty).
    carry: Vec<u8>,
    /// A fragmented message so far.
    message: Option<Vec<u8>>,
    /// Bytes of control frames the socket has not taken yet.
    outbox: Vec<u8>,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// It received a close frame (and answered it if it had not sent one).
    Closed,
    /// It broke: end of stream without a close frame, or an error.
    Broken(Broken),
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            closing: false,
            carry: Vec::new(),
            message: None,
            outbox: Vec::new(),
        }
    }

    /// Handles one complete frame. `Ok(true)` once the connection has
    /// received a close frame.
    fn frame(
        &mut self,
        header: Header,
        payload: &[u8],
        counter: &mut Counter,
        masks: &mut Masks,
        now: u64,
    ) -> Result<bool, Broken> {
        match header.opcode {
            opcode::TEXT | opcode::BINARY => {
                if self.message.is_some() {
                    return Err(wire::expected_fragment(header.opcode).into());
                }
                if !header.fin {
                    self.message = Some(payload.to_vec());
                } else if !self.closing {
                    counter.data(payload, now);
                }
            }
            opcode::CONTINUATION => {
                let Some(message) = self.message.as_mut() else {
                    return Err(wire::unexpected_continue().into());
                };
                message.extend_from_slice(payload);
                if header.fin {
                    let message = self.message.take().expect("checked above");
                    if !self.closing {
                        counter.data(&message, now);
                    }
                }
            }
            // No pong after our close.
            opcode::PING if !self.closing => {
                self.send(&wire::masked_control(opcode::PONG, payload, masks.next()))?;
            }
            opcode::CLOSE => {
                let code = wire::close_code(payload)?;
                if !self.closing {
                    counter
                        .stats
                        .closes
                        .add(code.map_or_else(|| "no code".to_owned(), |c| c.to_string()));
                    // The answer is a courtesy: the connection ends either way.
                    let reply = wire::close_reply(code);
                    let _ = self.send(&wire::masked_control(opcode::CLOSE, &reply, masks.next()));
                }
                return Ok(true);
            }
            // Pongs, and pings after our close: nothing to do. The header
            // parser refused other opcodes.
            _ => {}
        }
        Ok(false)
    }

    /// Writes `bytes`, keeping what the socket does not take for later.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.outbox.is_empty() {
            let written = write_some(&mut self.stream, bytes)?;
            self.outbox.extend_from_slice(&bytes[written..]);
        } else {
            self.outbox.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Writes what is waiting, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        if !self.outbox.is_empty() {
            let written = write_some(&mut self.stream, &self.outbox)?;
            self.outbox.drain(..written);
        }
        Ok(())
    }
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Classifies frames and counts them, for every connection.
struct Counter {
    codec: Codec,
    window: Window,
    stats: SubscriberStats,
    /// When the last delivery arrived, in ns since the epoch.
    last_delivery_ns: u64,
    progress: Arc<Progress>,
    /// Deliveries of the current read, not yet told to `progress`.
    unreported: u64,
}

impl Counter {
    /// Counts one data message received at `now`.
    fn data(&mut self, bytes: &[u8], now: u64) {
        match scan::scan(self.codec, bytes) {
            Scan::Message(sent) => self.delivery(sent, now),
            Scan::Ack(_) => {}
            Scan::Other => self.other(bytes, now),
        }
    }

    fn delivery(&mut self, sent_ns: Option<u64>, now: u64) {
        self.unreported += 1;
        self.stats.delivery(self.window, sent_ns, now);
    }

    /// A frame that is not a plainly laid out `message` or `ack`: decode it.
    fn other(&mut self, bytes: &[u8], now: u64) {
        let decoded = self.codec.decode_bytes(bytes);
        if let Ok(Envelope::Message { .. }) = decoded {
            return self.delivery(scan::timestamp(self.codec, bytes), now);
        }
        match decoded {
            Ok(Envelope::Lagged { missed, .. }) => {
                self.stats.lagged_frames += 1;
                self.stats.missed += missed;
            }
            Ok(Envelope::Error { code, .. }) => self.stats.errors.add(code.to_string()),
            Ok(_) => {}
            Err(_) => self.stats.undecodable += 1,
        }
    }

    /// After each read: tells the publishers about its deliveries.
    fn end_of_read(&mut self, now: u64) {
        if self.unreported > 0 {
            self.progress.delivered(self.unreported);
            self.unreported = 0;
            self.last_delivery_ns = now;
        }
    }
}

/// The epoll loop's state: every connection, the shared read buffer and
/// what was counted.
struct Reader {
    poll: Poll,
    /// By token; `None` once ended.
    conns: Vec<Option<Conn>>,
    /// Connections not ended yet.
    open: usize,
    /// Every read goes here; frames are parsed in place.
    buffer: Vec<u8>,
    counter: Counter,
    masks: Masks,
    closed_cleanly: u64,
    close_timeouts: u64,
}

impl Reader {
    fn new(
        poll: Poll,
        conns: Vec<Option<Conn>>,
        buffer: usize,
        codec: Codec,
        progress: Arc<Progress>,
    ) -> Self {
        Reader {
            poll,
            open: conns.iter().flatten().count(),
            conns,
            buffer: vec![0; buffer.max(MIN_READ)],
            counter: Counter {
                codec,
                window: Window::NONE,
                stats: SubscriberStats::new(),
                last_delivery_ns: 0,
                progress,
                unreported: 0,
            },
            masks: Masks::new(now_ns()),
            closed_cleanly: 0,
            close_timeouts: 0,
        }
    }

    /// Waits at most `timeout` for socket events and handles them. Returns
    /// how many sockets had events.
    fn turn(&mut self, events: &mut Events, timeout: Duration) -> Result<usize> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e).context("epoll_wait failed"),
        }
        let mut sockets = 0;
        for event in events.iter() {
            let Token(i) = event.token();
            if event.token() == WAKER {
                continue;
            }
            sockets += 1;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(i);
            }
            if event.is_writable()
                && let Some(conn) = self.conns[i].as_mut()
                && let Err(e) = conn.flush()
            {
                self.end(i, End::Broken(e.into()));
            }
        }
        Ok(sockets)
    }

    /// Reads connection `i` until the socket has nothing more (edge-triggered
    /// polling reports a socket again only once more bytes arrive).
    fn read(&mut self, i: usize) {
        let Reader {
            conns,
            buffer,
            counter,
            masks,
            ..
        } = self;
        let Some(conn) = conns[i].as_mut() else {
            return;
        };
        // Frames are parsed from buffer[start..filled].
        let mut start = 0;
        let mut filled = conn.carry.len();
        // The length of the incomplete frame at `start`, when known.
        let mut need: usize = 0;
        if filled > 0 {
            if buffer.len() < filled + MIN_READ {
                buffer.resize(filled + MIN_READ, 0);
            }
            buffer[..filled].copy_from_slice(&conn.carry);
            conn.carry.clear();
            if conn.carry.capacity() > CARRY_KEEP {
                conn.carry = Vec::new();
            }
        }
        let end = loop {
            // Room for a read, and for the whole of a frame that has begun.
            if buffer.len() - filled < MIN_READ || start + need > buffer.len() {
                buffer.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
                let want = (filled + MIN_READ).max(need);
                if buffer.len() < want {
                    buffer.resize(want, 0);
                }
            }
            let room = buffer.len() - filled;
            match conn.stream.read(&mut buffer[filled..]) {
                Ok(0) => break Some(End::Broken(wire::reset_without_close().into())),
                Ok(n) => {
                    filled += n;
                    // The frames of this read were received now.
                    let now = now_ns();
                    let parsed = frames(conn, &buffer[start..filled], counter, masks, now);
                    counter.end_of_read(now);
                    match parsed {
                        Ok(Parsed::Closed) => break Some(End::Closed),
                        Ok(Parsed::Partial { used, frame_len }) => {
                            start += used;
                            need = frame_len;
                        }
                        Err(e) => break Some(End::Broken(e)),
                    }
                    if start == filled {
                        start = 0;
                        filled = 0;
                    }
                    // A short read emptied the socket's receive queue: bytes
                    // that arrive later raise a new edge (as nginx relies on).
                    if n < room {
                        break None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(End::Broken(e.into())),
            }
        };
        match end {
            None => conn.carry.extend_from_slice(&buffer[start..filled]),
            Some(end) => self.end(i, end),
        }
    }

    /// Ends connection `i`, counting how.
    fn end(&mut self, i: usize, end: End) {
        let Some(mut conn) = self.conns[i].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.open -= 1;
        match (conn.closing, end) {
            // The broker's close is counted in `closes`.
            (false, End::Closed) => {}
            (false, End::Broken(e)) => self.counter.stats.disconnects.add(e.failure()),
            (true, End::Closed) => self.closed_cleanly += 1,
            (true, End::Broken(_)) => self.close_timeouts += 1,
        }
    }

    /// Sends close 1000 on every open connection.
    fn close_all(&mut self) {
        let payload = wire::close_payload(1000, "bench done");
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            conn.closing = true;
            let frame = wire::masked_control(opcode::CLOSE, &payload, self.masks.next());
            if let Err(e) = conn.send(&frame) {
                self.end(i, End::Broken(e.into()));
            }
        }
    }
}

/// What [`frames`] did with the bytes it got.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Every complete frame is handled: they took `used` bytes; the rest is
    /// the start of a frame of `frame_len` bytes (0: not known yet).
    Partial { used: usize, frame_len: usize },
    /// A close frame came: the connection ends.
    Closed,
}

/// Handles the complete frames at the start of `bytes`.
fn frames(
    conn: &mut Conn,
    bytes: &[u8],
    counter: &mut Counter,
    masks: &mut Masks,
    now: u64,
) -> Result<Parsed, Broken> {
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        let Some((header, len)) = wire::parse_header(rest)? else {
            return Ok(Parsed::Partial {
                used: at,
                frame_len: 0,
            });
        };
        if rest.len() < len {
            return Ok(Parsed::Partial {
                used: at,
                frame_len: len,
            });
        }
        at += len;
        if conn.frame(header, &rest[header.header_len..len], counter, masks, now)? {
            return Ok(Parsed::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::framing::{self, FIN};
    use std::net::{TcpListener, TcpStream as StdStream};

    /// A reader with one connection, and the server's end of it.
    fn pair(codec: Codec) -> (Reader, StdStream, Arc<Progress>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let mut socket = TcpStream::from_std(client);
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut socket,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let progress = Arc::new(Progress::default());
        progress.set_fanout(1);
        // A small buffer, so that frames span reads and the buffer grows.
        let mut reader = Reader::new(
            poll,
            vec![Some(Conn::new(socket))],
            0,
            codec,
            progress.clone(),
        );
        reader.counter.window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        (reader, server, progress)
    }

    /// Turns the loop until `done` holds (at most 5 s).
    fn turn_until(reader: &mut Reader, mut done: impl FnMut(&Reader) -> bool) {
        let mut events = Events::with_capacity(16);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(reader) {
            assert!(Instant::now() < deadline, "timed out");
            reader.turn(&mut events, Duration::from_millis(10)).unwrap();
        }
    }

    /// An unmasked server frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let head = if fin { FIN | opcode } else { opcode };
        let mut out = Vec::new();
        framing::write_frame_raw(&mut out, head, payload, None);
        out
    }

    /// A JSON delivery stamped `t`, padded to about `pad` bytes.
    fn delivery(t: u64, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"type":"message","topic":"bench.x","payload":{{"t":{t},"p":"{}"}}}}"#,
            "x".repeat(pad)
        )
        .into_bytes()
    }

    /// The next frame the client sent: opcode and unmasked payload.
    fn client_frame(server: &mut StdStream) -> (u8, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut byte = [0u8];
        loop {
            if let Some(header) = Header::parse(&bytes).unwrap()
                && bytes.len() as u64 == header.frame_len()
            {
                header.check(framing::Role::Server).unwrap();
                let mask = header.mask.expect("a client masks its frames");
                let mut payload = bytes[header.header_len..].to_vec();
                framing::apply_mask(&mut payload, mask);
                return (header.opcode, payload);
            }
            server.read_exact(&mut byte).unwrap();
            bytes.push(byte[0]);
        }
    }

    #[test]
    fn counts_deliveries_of_every_length_split_anywhere() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        let sent = now_ns() - 2_000_000;
        let mut stream = Vec::new();
        // 7-, 16- and 64-bit lengths.
        for pad in [10, 300, 70_000, 20] {
            stream.extend(frame(true, opcode::TEXT, &delivery(sent, pad)));
        }
        // Written and read in small pieces: frames and headers span reads.
        let mut events = Events::with_capacity(16);
        for piece in stream.chunks(7) {
            server.write_all(piece).unwrap();
            reader.turn(&mut events, Duration::ZERO).unwrap();
        }
        turn_until(&mut reader, |r| r.counter.stats.received_total == 4);
        let stats = &reader.counter.stats;
        assert_eq!(
            (stats.received, stats.unstamped, stats.undecodable),
            (4, 0, 0)
        );
        let latency = stats.latency.percentiles().unwrap();
        assert!(latency.p50 >= 2_000, "{latency:?}");
        assert!(reader.counter.last_delivery_ns >= sent);
        // Nothing is left over once every frame is in.
        assert!(reader.conns[0].as_ref().unwrap().carry.is_empty());
    }

    #[test]
    fn reassembles_fragments_and_answers_pings_between_them() {
        let (mut reader, mut server, progress) = pair(Codec::Json);
        let message = delivery(now_ns(), 100);
        let (a, rest) = message.split_at(30);
        let (b, c) = rest.split_at(50);
        let mut stream = frame(false, opcode::TEXT, a);
        stream.extend(frame(true, opcode::PING, b"are you there"));
        stream.extend(frame(false, opcode::CONTINUATION, b));
        stream.extend(frame(true, opcode::CONTINUATION, c));
        server.write_all(&stream).unwrap();
        turn_until(&mut reader, |r| r.counter.stats.received_total == 1);
        assert_eq!(
            client_frame(&mut server),
            (opcode::PONG, b"are you there".to_vec())
        );
        assert_eq!(reader.counter.stats.received, 1);
        assert_eq!(progress.delivered_count(), 1);
    }

    #[test]
    fn other_frames_are_decoded_and_counted() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        let frames = [
            r#"{"type":"lagged","topic":"bench.x","missed":7}"#,
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#,
            r#"{"type":"ack","id":3}"#,
            r#"{"type":"message","payload":{"t":5},"topic":"bench.x"}"#,
            "not json",
        ];
        for f in frames {
            server
                .write_all(&frame(true, opcode::TEXT, f.as_bytes()))
                .unwrap();
        }
        turn_until(&mut reader, |r| r.counter.stats.undecodable == 1);
        let stats = &reader.counter.stats;
        assert_eq!((stats.lagged_frames, stats.missed), (1, 7));
        assert_eq!(stats.errors.to_string(), "rate_limited: 1");
        assert_eq!(stats.received_total, 1);
    }

    #[test]
    fn the_brokers_close_is_counted_and_answered() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        server
            .write_all(&frame(
                true,
                opcode::CLOSE,
                &wire::close_payload(4000, "idle"),
            ))
            .unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(client_frame(&mut server), (opcode::CLOSE, vec![0x0f, 0xa0]));
        assert_eq!(reader.counter.stats.closes.to_string(), "4000: 1");
        assert!(reader.counter.stats.disconnects.is_empty());
        assert_eq!((reader.closed_cleanly, reader.close_timeouts), (0, 0));
    }

    #[test]
    fn our_close_completes_when_the_broker_answers() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        reader.close_all();
        let (opcode, payload) = client_frame(&mut server);
        assert_eq!(opcode, opcode::CLOSE);
        assert_eq!(payload, wire::close_payload(1000, "bench done"));
        // A late delivery, then the answer.
        server
            .write_all(&frame(true, opcode::TEXT, &delivery(now_ns(), 1)))
            .unwrap();
        server
            .write_all(&frame(true, opcode::CLOSE, &1000u16.to_be_bytes()))
            .unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!((reader.closed_cleanly, reader.close_timeouts), (1, 0));
        assert_eq!(reader.counter.stats.received_total, 0);
        assert!(reader.counter.stats.closes.is_empty());
    }

    #[test]
    fn a_connection_that_just_ends_is_a_disconnect() {
        let (mut reader, server, _) = pair(Codec::Json);
        drop(server);
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(
            reader.counter.stats.disconnects.to_string(),
            "protocol: Connection reset without closing handshake: 1"
        );
    }

    #[test]
    fn a_masked_frame_from_the_broker_breaks_the_connection() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        server.write_all(&[0x81, 0x81, 1, 2, 3, 4, 5]).unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(
            reader.counter.stats.disconnects.to_string(),
            "protocol: server frames must not be masked: 1"
        );
    }

    #[test]
    fn msgpack_deliveries_are_counted() {
        use crate::frame::PublishEncoder;
        use starling_protocol::Topic;
        let (mut reader, mut server, _) = pair(Codec::MsgPack);
        let publish = PublishEncoder::new(Codec::MsgPack, 64).encode("bench.x", None, 42);
        let Ok(Envelope::Publish { payload, .. }) =
            Codec::MsgPack.decode_client(ws::data(&publish).unwrap())
        else {
            panic!("a publish");
        };
        let message = Codec::MsgPack
            .encode(&Envelope::Message {
                topic: Topic::new("bench.x").unwrap(),
                payload,
                offset: None,
                sub: None,
                from: None,
            })
            .unwrap();
        server
            .write_all(&frame(true, opcode::BINARY, message.as_bytes()))
            .unwrap();
        turn_until(&mut reader, |r| r.counter.stats.received_total == 1);
        assert_eq!(reader.counter.stats.received, 1);
    }
}
