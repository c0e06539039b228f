//! The subscriber side: every subscriber connection runs on one
//! current-thread tokio runtime on one dedicated OS thread.
//!
//! Each connection is a local task with a tight read loop that classifies
//! frames by their bytes ([`crate::scan`]) and counts into statistics shared
//! by the thread (`Rc<RefCell<_>>`): no cross-thread traffic per message. The
//! main thread steers the phases through a `watch` channel: connect and
//! subscribe everything, measure a window, drain and close.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::{SinkExt, StreamExt, stream};
use starling_protocol::{Codec, Envelope, Limits};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::publisher::Progress;
use crate::scan::{self, Scan};
use crate::stats::{SubscriberStats, Tally, Window, now_ns};
use crate::ws::{self, Ws};

/// After the publishers stop, how long to wait at most for deliveries.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// With every expected delivery received or reported missed, how long the
/// connections must stay quiet before the drain ends early.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// How long each connection waits for the broker to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    Wait,
    Measure(Window),
    Drain { expected: u64 },
}

/// The subscriber thread, seen from the main thread.
pub(crate) struct Subscribers {
    control: watch::Sender<Control>,
    thread: JoinHandle<Result<SubscriberReport>>,
}

impl Subscribers {
    /// Starts the thread and waits until every connection is open and
    /// subscribed (or has failed).
    pub(crate) fn start(plan: SubscriberPlan) -> Result<(Self, Ready)> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (control, control_rx) = watch::channel(Control::Wait);
        let thread = std::thread::Builder::new()
            .name("subscribers".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build the subscribers' runtime")?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run(plan, ready_tx, control_rx))
            })
            .context("cannot start the subscriber thread")?;
        match ready_rx.recv() {
            Ok(ready) => Ok((Subscribers { control, thread }, ready)),
            Err(_) => Err(join(thread).err().unwrap_or_else(|| {
                anyhow!("the subscriber thread ended before its connections were ready")
            })),
        }
    }

    /// Starts measuring deliveries sent within `window`.
    pub(crate) fn measure(&self, window: Window) {
        self.control.send_replace(Control::Measure(window));
    }

    /// Waits for `expected` measured deliveries (at most 2 s), closes every
    /// connection with 1000 and returns what was seen.
    pub(crate) fn finish(self, expected: u64) -> Result<SubscriberReport> {
        self.control.send_replace(Control::Drain { expected });
        join(self.thread)
    }
}

fn join<T>(thread: JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow!("the subscriber thread panicked"))?
}

/// What the connection tasks share, on the subscriber thread.
struct Shared {
    codec: Codec,
    window: Cell<Window>,
    stats: RefCell<SubscriberStats>,
    /// When the last delivery arrived, in ns since the epoch.
    last_delivery_ns: Cell<u64>,
    progress: Arc<Progress>,
}

impl Shared {
    /// Counts one frame. Returns `false` once the broker has closed.
    fn frame(&self, message: &Message) -> bool {
        let Some(bytes) = ws::data(message) else {
            if let Message::Close(frame) = message {
                self.stats
                    .borrow_mut()
                    .closes
                    .add(ws::close_code(frame.as_ref()));
                return false;
            }
            return true;
        };
        match scan::scan(self.codec, bytes) {
            Scan::Message(sent) => self.delivery(sent),
            Scan::Ack(_) => {}
            Scan::Other => self.other(bytes),
        }
        true
    }

    fn delivery(&self, sent_ns: Option<u64>) {
        let now = now_ns();
        self.last_delivery_ns.set(now);
        self.progress.delivered_one();
        self.stats
            .borrow_mut()
            .delivery(self.window.get(), sent_ns, now);
    }

    /// A frame that is not a plainly laid out `message` or `ack`: decode it.
    fn other(&self, bytes: &[u8]) {
        let decoded = self.codec.decode_bytes(bytes);
        if let Ok(Envelope::Message { .. }) = decoded {
            return self.delivery(scan::timestamp(self.codec, bytes));
        }
        let mut stats = self.stats.borrow_mut();
        match decoded {
            Ok(Envelope::Lagged { missed, .. }) => {
                stats.lagged_frames += 1;
                stats.missed += missed;
            }
            Ok(Envelope::Error { code, .. }) => stats.errors.add(code.to_string()),
            Ok(_) => {}
            Err(_) => stats.undecodable += 1,
        }
    }
}

async fn run(
    plan: SubscriberPlan,
    ready_tx: mpsc::Sender<Ready>,
    mut control: watch::Receiver<Control>,
) -> Result<SubscriberReport> {
    let shared = Rc::new(Shared {
        codec: plan.codec,
        window: Cell::new(Window::NONE),
        stats: RefCell::new(SubscriberStats::new()),
        last_delivery_ns: Cell::new(0),
        progress: plan.progress.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let (ready, tasks) = connect_all(&plan, &shared, &stop_rx).await;
    drop(stop_rx);
    if ready_tx.send(ready).is_err() {
        return Err(anyhow!("the main thread went away"));
    }

    let expected = loop {
        if control.changed().await.is_err() {
            break 0;
        }
        let now = *control.borrow_and_update();
        match now {
            Control::Wait => {}
            Control::Measure(window) => shared.window.set(window),
            Control::Drain { expected } => break expected,
        }
    };

    let drain_started = Instant::now();
    loop {
        let done = {
            let stats = shared.stats.borrow();
            let quiet_ns = now_ns().saturating_sub(shared.last_delivery_ns.get());
            stats.received >= expected
                || (stats.received + stats.missed >= expected
                    && quiet_ns >= DRAIN_QUIET.as_nanos() as u64)
                || drain_started.elapsed() >= DRAIN_LIMIT
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_in = drain_started.elapsed();

    // Stop measuring: late deliveries no longer count.
    shared.window.set(Window::NONE);
    stop_tx.send_replace(true);
    let mut closed_cleanly = 0;
    let mut close_timeouts = 0;
    for task in tasks {
        match task.await {
            Ok(Some(true)) => closed_cleanly += 1,
            Ok(Some(false)) => close_timeouts += 1,
            // Ended earlier, counted in closes or disconnects.
            Ok(None) => {}
            Err(_) => close_timeouts += 1,
        }
    }

    let stats = shared.stats.borrow().clone();
    Ok(SubscriberReport {
        stats,
        drained_in,
        closed_cleanly,
        close_timeouts,
    })
}

type ReadTask = tokio::task::JoinHandle<Option<bool>>;

/// Opens and subscribes every connection, `plan.concurrency` at a time, and
/// starts the read loop of each as soon as it is subscribed.
async fn connect_all(
    plan: &SubscriberPlan,
    shared: &Rc<Shared>,
    stop: &watch::Receiver<bool>,
) -> (Ready, Vec<ReadTask>) {
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
    let mut tasks = Vec::with_capacity(plan.per_connection.len());
    let config = ws::config(plan.read_buffer_bytes);
    let mut connecting = stream::iter(plan.per_connection.iter().enumerate())
        .map(|(i, topic_ixs)| async move {
            let url = &plan.urls[i % plan.urls.len()];
            let (mut ws, limits) = ws::connect(url, plan.codec, config).await?;
            let names: Vec<&str> = topic_ixs.iter().map(|&i| plan.topics[i].as_str()).collect();
            let subscribed = ws::subscribe(&mut ws, plan.codec, &names).await?;
            let acked: Vec<usize> = subscribed.acked.iter().map(|&k| topic_ixs[k]).collect();
            Ok::<_, String>((ws, limits, acked, subscribed.refused))
        })
        .buffer_unordered(plan.concurrency.max(1));
    while let Some(result) = connecting.next().await {
        match result {
            Ok((ws, limits, acked, refused)) => {
                ready.connected += 1;
                ready.subscriptions += acked.len() as u64;
                for topic in acked {
                    ready.per_topic[topic] += 1;
                }
                for code in refused {
                    ready.refused.add(code);
                }
                ready.limits.get_or_insert(limits);
                tasks.push(tokio::task::spawn_local(read_loop(
                    ws,
                    shared.clone(),
                    stop.clone(),
                )));
            }
            Err(reason) => ready.failures.add(reason),
        }
    }
    ready.took = started.elapsed();
    (ready, tasks)
}

/// Reads one connection until told to stop, then closes it with 1000.
/// Returns whether our closing handshake completed, or `None` when the
/// connection had already ended.
async fn read_loop(
    mut ws: Ws,
    shared: Rc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<bool> {
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            next = ws.next() => match next {
                Some(Ok(message)) => {
                    if !shared.frame(&message) {
                        // The broker closed; tungstenite answers the close.
                        let _ = ws.flush().await;
                        return None;
                    }
                }
                Some(Err(error)) => {
                    if !matches!(error, WsError::ConnectionClosed | WsError::AlreadyClosed) {
                        shared.stats.borrow_mut().disconnects.add(ws::failure(&error));
                    }
                    return None;
                }
                None => {
                    shared.stats.borrow_mut().disconnects.add("ended without close frame");
                    return None;
                }
            },
            _ = &mut stopped => break,
        }
    }
    Some(ws::close(&mut ws, CLOSE_WAIT).await)
}
