//! The subscriber side: every subscriber connection is read by one
//! single-threaded epoll loop on one dedicated OS thread.
//!
//! Connections are opened and subscribed with tokio-tungstenite (on a
//! current-thread runtime of that thread, `concurrency` handshakes at a
//! time). As soon as a connection has read the answer to each of its
//! subscriptions, the loop takes its socket back from tungstenite and
//! registers it with one `mio::Poll`, edge-triggered (with its TLS session,
//! for `wss://`: see [`crate::tls`]). Taking the socket drops
//! whatever tungstenite has read but not returned yet; there is nothing such:
//! the broker sends a connection nothing after its subscribe answers until
//! something is published, and the publishers start only once every
//! subscriber connection has been taken over (their thread starts after
//! [`Subscribers::start`] returns). The one frame the broker sends of its
//! own accord is a keepalive ping (by default after 25 s without a frame from
//! the client): one that came in that instant would go unanswered, and the
//! broker would ping again.
//!
//! From then on, the loop's [`Reader`] reads each readable socket and counts
//! what arrives. After a pass over the ready sockets the loop pauses briefly
//! instead of waiting in epoll at once, so that the broker does not have to
//! wake it for every few frames ([`pause_after`]).
//!
//! The main thread steers the phases through a channel and a `mio::Waker`:
//! connect and subscribe everything, measure a window, drain and close.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::{StreamExt, stream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use starling_protocol::{Codec, Limits};

use crate::handover;
use crate::publisher::Progress;
use crate::reader::{Conn, Reader, WAKER};
use crate::socket::Socket;
use crate::stats::{SubscriberStats, Tally, Window, now_ns};
use crate::ws::{self, Dialer};

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
/// How long the loop lets deliveries gather after a pass (see
/// [`pause_after`]): the shortest sleep, which the kernel's timer slack (50 µs
/// for an ordinary thread) stretches to some 50 µs.
const PAUSE: Duration = Duration::from_micros(1);
/// Socket events taken per poll.
const EVENTS: usize = 1024;

/// Who subscribes to what.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberPlan {
    /// Subscriber connection `i` goes to `urls[i % urls.len()]`.
    pub(crate) urls: Vec<String>,
    /// The token and TLS configuration of every connection.
    pub(crate) dialer: Dialer,
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
            let (ws, limits) = ws::connect(&plan.dialer, url, plan.codec, config).await?;
            let names: Vec<&str> = topic_ixs.iter().map(|&i| plan.topics[i].as_str()).collect();
            // Taken after `welcome`, before anything else can arrive.
            let mut stream = ws.into_inner();
            let (subscribed, carry) = handover::subscribe(&mut stream, plan.codec, &names).await?;
            let socket = Socket::take(stream)?;
            let acked: Vec<usize> = subscribed.acked.iter().map(|&k| topic_ixs[k]).collect();
            Ok::<_, String>((socket, carry, limits, acked, subscribed.refused))
        })
        .buffer_unordered(plan.concurrency.max(1));
    while let Some(result) = connecting.next().await {
        let (mut socket, carry, limits, acked, refused) = match result {
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
        conns.push(Some(Conn::with_carry(socket, carry)));
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
