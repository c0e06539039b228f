//! The publisher side: publisher connections on their own current-thread
//! runtime on their own OS thread, either at a fixed rate or keeping a fixed
//! number of acknowledged publishes in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::{FutureExt, SinkExt, StreamExt, stream};
use starling_protocol::{Codec, Envelope};
use tokio::sync::{Notify, oneshot};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::cli::Until;
use crate::frame::PublishEncoder;
use crate::scan::{self, Scan};
use crate::stats::{Latency, Tally, Window, now_ns};
use crate::ws::{self, Dialer, Ws};

/// Most messages written in one go when a rate publisher is behind schedule,
/// so that it still reads what the broker sends.
const BURST: u64 = 1024;
/// After the end, how long a saturating publisher waits for outstanding acks.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// How long each connection waits for the broker to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Publisher connections only read acks and errors.
const READ_BUFFER: usize = 64 * 1024;

/// How the publishers publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// This many messages per second in total, spread evenly over the publishers.
    Rate(f64),
    /// At most this many messages per publisher are in flight: published
    /// and not yet acked, and (with [`Until::Delivered`]) not yet received by
    /// every subscriber. (Publishes carry ids and their acks are timed too.)
    Saturate { in_flight: usize, until: Until },
}

/// Deliveries counted by the subscriber thread, read by the publishers: in
/// `saturate`, a message is in flight until every subscriber has it, so the
/// publishers go exactly as fast as the broker delivers, and nothing is
/// dropped for lack of a bound.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    delivered: AtomicU64,
    published: AtomicU64,
    fanout: AtomicU64,
    wake: Notify,
}

impl Progress {
    /// Sets how many subscribers each message reaches.
    pub(crate) fn set_fanout(&self, subscribers: u64) {
        self.fanout.store(subscribers.max(1), Ordering::Relaxed);
    }

    /// Counts `n` deliveries (those of one read); wakes a publisher when one
    /// more message has (on average) reached every subscriber.
    pub(crate) fn delivered(&self, n: u64) {
        let before = self.delivered.fetch_add(n, Ordering::Relaxed);
        let fanout = self.fanout.load(Ordering::Relaxed).max(1);
        if (before + n) / fanout > before / fanout {
            self.wake.notify_one();
        }
    }

    #[cfg(test)]
    pub(crate) fn delivered_count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> u64 {
        let complete =
            self.delivered.load(Ordering::Relaxed) / self.fanout.load(Ordering::Relaxed).max(1);
        self.published
            .load(Ordering::Relaxed)
            .saturating_sub(complete)
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub(crate) struct PublisherPlan {
    pub(crate) url: String,
    /// The token and TLS configuration of every connection.
    pub(crate) dialer: Dialer,
    pub(crate) codec: Codec,
    pub(crate) payload_bytes: usize,
    /// Message k (over all publishers) goes to topic k mod the number of topics.
    pub(crate) topics: Arc<Vec<String>>,
    pub(crate) publishers: usize,
    pub(crate) mode: Mode,
    pub(crate) progress: Arc<Progress>,
}

/// When to publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Publishing starts (with the warmup).
    pub(crate) begin: Instant,
    /// Publishing stops.
    pub(crate) end: Instant,
    /// The measured window, by send timestamp.
    pub(crate) window: Window,
}

/// The publishers once connected.
#[derive(Debug, Clone)]
pub(crate) struct PublisherReady {
    pub(crate) connected: u64,
    pub(crate) failures: Tally,
}

/// What the publishers did.
#[derive(Debug, Clone)]
pub(crate) struct PublisherReport {
    /// Every publish written.
    pub(crate) published: u64,
    /// Publishes stamped within the window, per topic.
    pub(crate) in_window: Vec<u64>,
    /// Acks received (saturate).
    pub(crate) acks: u64,
    /// Publish-to-ack latency of the measured publishes (saturate).
    pub(crate) ack_latency: Latency,
    /// Publishes still unacknowledged at the end (saturate).
    pub(crate) unacked: u64,
    /// `error` frames by code.
    pub(crate) errors: Tally,
    /// Close codes the broker sent of its own accord.
    pub(crate) closes: Tally,
    /// Connections that failed mid-run, by reason.
    pub(crate) disconnects: Tally,
    /// Most messages a rate publisher was ever behind its schedule.
    pub(crate) max_backlog: u64,
    /// The encoded size of each payload.
    pub(crate) payload_len: usize,
}

impl PublisherReport {
    fn new(topics: usize, payload_len: usize) -> Self {
        PublisherReport {
            published: 0,
            in_window: vec![0; topics],
            acks: 0,
            ack_latency: Latency::new(),
            unacked: 0,
            errors: Tally::default(),
            closes: Tally::default(),
            disconnects: Tally::default(),
            max_backlog: 0,
            payload_len,
        }
    }

    /// Publishes stamped within the window, over all topics.
    pub(crate) fn measured(&self) -> u64 {
        self.in_window.iter().sum()
    }

    fn merge(&mut self, other: PublisherReport) {
        self.published += other.published;
        for (mine, theirs) in self.in_window.iter_mut().zip(other.in_window) {
            *mine += theirs;
        }
        self.acks += other.acks;
        self.ack_latency.add(&other.ack_latency);
        self.unacked += other.unacked;
        self.errors.merge(&other.errors);
        self.closes.merge(&other.closes);
        self.disconnects.merge(&other.disconnects);
        self.max_backlog = self.max_backlog.max(other.max_backlog);
    }
}

/// The publisher thread, seen from the main thread.
pub(crate) struct Publishers {
    go: oneshot::Sender<Schedule>,
    thread: JoinHandle<Result<PublisherReport>>,
}

impl Publishers {
    /// Starts the thread and waits until its connections are open.
    pub(crate) fn start(plan: PublisherPlan) -> Result<(Self, PublisherReady)> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go, go_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("publishers".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build the publishers' runtime")?;
                runtime.block_on(run(plan, ready_tx, go_rx))
            })
            .context("cannot start the publisher thread")?;
        match ready_rx.recv() {
            Ok(ready) => Ok((Publishers { go, thread }, ready)),
            Err(_) => Err(join(thread).err().unwrap_or_else(|| {
                anyhow!("the publisher thread ended before its connections were ready")
            })),
        }
    }

    /// Publishes on `schedule`; returns at once.
    pub(crate) fn go(self, schedule: Schedule) -> Running {
        // A thread that already ended reports why in `join`.
        let _ = self.go.send(schedule);
        Running {
            thread: self.thread,
        }
    }
}

/// The publisher thread at work.
pub(crate) struct Running {
    thread: JoinHandle<Result<PublisherReport>>,
}

impl Running {
    /// Waits for the end of the schedule (and the acks and closes after it).
    pub(crate) fn join(self) -> Result<PublisherReport> {
        join(self.thread)
    }
}

fn join<T>(thread: JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow!("the publisher thread panicked"))?
}

async fn run(
    plan: PublisherPlan,
    ready_tx: mpsc::Sender<PublisherReady>,
    go: oneshot::Receiver<Schedule>,
) -> Result<PublisherReport> {
    let encoder = PublishEncoder::new(plan.codec, plan.payload_bytes);
    let config = ws::config(READ_BUFFER);
    let results: Vec<_> = stream::iter(0..plan.publishers)
        .map(|_| ws::connect(&plan.dialer, &plan.url, plan.codec, config))
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ready = PublisherReady {
        connected: 0,
        failures: Tally::default(),
    };
    let mut conns = Vec::new();
    for result in results {
        match result {
            Ok((ws, _limits)) => {
                ready.connected += 1;
                conns.push(ws);
            }
            Err(reason) => ready.failures.add(reason),
        }
    }
    if ready_tx.send(ready).is_err() {
        return Err(anyhow!("the main thread went away"));
    }
    let mut total = PublisherReport::new(plan.topics.len(), encoder.payload_len());
    let Ok(schedule) = go.await else {
        // Called off: close what was opened.
        for mut ws in conns {
            ws::close(&mut ws, CLOSE_WAIT).await;
        }
        return Ok(total);
    };

    let count = conns.len();
    let each = conns.into_iter().enumerate().map(|(j, ws)| {
        let publisher = Publisher {
            ws,
            codec: plan.codec,
            encoder: &encoder,
            topics: &plan.topics,
            schedule,
            report: PublisherReport::new(plan.topics.len(), encoder.payload_len()),
            pending: HashMap::new(),
            progress: &plan.progress,
        };
        publisher.run(plan.mode, j, count)
    });
    for report in futures_util::future::join_all(each).await {
        total.merge(report);
    }
    Ok(total)
}

/// One publisher connection.
struct Publisher<'a> {
    ws: Ws,
    codec: Codec,
    encoder: &'a PublishEncoder,
    topics: &'a [String],
    schedule: Schedule,
    report: PublisherReport,
    /// Unacknowledged publishes: id to send timestamp.
    pending: HashMap<u64, u64>,
    progress: &'a Progress,
}

impl Publisher<'_> {
    /// Publishes as publisher `j` of `count`, then closes with 1000.
    async fn run(mut self, mode: Mode, j: usize, count: usize) -> PublisherReport {
        let open = match mode {
            Mode::Rate(total) => self.at_rate(total / count as f64, j, count).await,
            Mode::Saturate { in_flight, until } => {
                let bound = match until {
                    // All publishers together against the deliveries.
                    Until::Delivered => in_flight * count,
                    Until::Acked => in_flight,
                };
                self.saturate(bound, until, j).await
            }
        };
        if open {
            ws::close(&mut self.ws, CLOSE_WAIT).await;
        }
        self.report
    }

    /// Writes one publish to topic `topic`. Returns `false` when the
    /// connection failed.
    async fn publish(&mut self, topic: usize, id: Option<u64>) -> bool {
        let sent = now_ns();
        let message = self.encoder.encode(&self.topics[topic], id, sent);
        if let Err(error) = self.ws.feed(message).await {
            self.report.disconnects.add(ws::failure(&error));
            return false;
        }
        self.report.published += 1;
        if self.schedule.window.contains(sent) {
            self.report.in_window[topic] += 1;
        }
        if let Some(id) = id {
            self.pending.insert(id, sent);
        }
        true
    }

    async fn flush(&mut self) -> bool {
        match self.ws.flush().await {
            Ok(()) => true,
            Err(error) => {
                self.report.disconnects.add(ws::failure(&error));
                false
            }
        }
    }

    /// `rate` messages per second; this publisher's k-th message goes to
    /// topic `j + k * stride`. Returns whether the connection is still open.
    async fn at_rate(&mut self, rate: f64, j: usize, stride: usize) -> bool {
        let topics = self.topics.len();
        let mut topic = j % topics;
        let mut sent: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= self.schedule.end {
                return true;
            }
            // Message k is due at begin + k / rate.
            let due = (now.duration_since(self.schedule.begin).as_secs_f64() * rate) as u64 + 1;
            if sent < due {
                self.report.max_backlog = self.report.max_backlog.max(due - sent - 1);
                for _ in 0..(due - sent).min(BURST) {
                    if !self.publish(topic, None).await {
                        return false;
                    }
                    sent += 1;
                    topic = (topic + stride) % topics;
                }
                if !self.flush().await {
                    return false;
                }
                continue;
            }
            let next_at = self.schedule.begin + Duration::from_secs_f64(sent as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(next_at.min(self.schedule.end).into()) => {}
                next = self.ws.next() => {
                    if !self.incoming(next) {
                        return false;
                    }
                }
            }
        }
    }

    /// Keeps `in_flight` publishes with ids outstanding until the end, then
    /// waits a little for their acks. Returns whether the connection is
    /// still open.
    async fn saturate(&mut self, in_flight: usize, until: Until, j: usize) -> bool {
        let topic = j % self.topics.len();
        let mut next_id: u64 = 1;
        let end = tokio::time::sleep_until(self.schedule.end.into());
        tokio::pin!(end);
        loop {
            if Instant::now() >= self.schedule.end {
                break;
            }
            // `in_flight` bounds all publishers together, end to end, or
            // each publisher's unacked publishes.
            let mut wrote = false;
            while self.pending.len() < in_flight
                && (until == Until::Acked || self.progress.in_flight() < in_flight as u64)
            {
                if !self.publish(topic, Some(next_id)).await {
                    return false;
                }
                self.progress.published.fetch_add(1, Ordering::Relaxed);
                next_id += 1;
                wrote = true;
            }
            if wrote && !self.flush().await {
                return false;
            }
            tokio::select! {
                biased;
                next = self.ws.next() => {
                    if !self.incoming(next) {
                        return false;
                    }
                }
                () = self.progress.wake.notified() => {}
                // A wake-up can race with the check above; look again soon.
                () = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = &mut end => break,
            }
            // Take every answer that is already here before writing again.
            while let Some(next) = self.ws.next().now_or_never() {
                if !self.incoming(next) {
                    return false;
                }
            }
        }
        let acks_by = tokio::time::Instant::now() + ACK_WAIT;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(acks_by, self.ws.next()).await {
                Ok(next) => {
                    if !self.incoming(next) {
                        self.report.unacked = self.pending.len() as u64;
                        return false;
                    }
                }
                Err(_) => break,
            }
        }
        self.report.unacked = self.pending.len() as u64;
        true
    }

    /// Handles one frame from the broker. Returns `false` when the
    /// connection is over.
    fn incoming(&mut self, next: Option<Result<Message, WsError>>) -> bool {
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return false,
            Some(Err(error)) => {
                self.report.disconnects.add(ws::failure(&error));
                return false;
            }
            None => {
                self.report.disconnects.add("ended without close frame");
                return false;
            }
        };
        let Some(bytes) = ws::data(&message) else {
            if let Message::Close(frame) = &message {
                self.report.closes.add(ws::close_code(frame.as_ref()));
                return false;
            }
            return true;
        };
        match scan::scan(self.codec, bytes) {
            Scan::Ack(id) => self.ack(id),
            Scan::Message(_) => {}
            Scan::Other => match self.codec.decode_bytes(bytes) {
                Ok(Envelope::Ack { id, .. }) => self.ack(id),
                Ok(Envelope::Error { id, code, .. }) => {
                    self.report.errors.add(code.to_string());
                    if let Some(id) = id {
                        self.pending.remove(&id);
                    }
                }
                _ => {}
            },
        }
        true
    }

    fn ack(&mut self, id: u64) {
        if let Some(sent) = self.pending.remove(&id) {
            self.report.acks += 1;
            if self.schedule.window.contains(sent) {
                self.report.ack_latency.record(sent, now_ns());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_in_batches_wake_the_publishers_per_complete_message() {
        let progress = Progress::default();
        progress.set_fanout(10);
        progress.published.store(5, Ordering::Relaxed);
        let woken = |p: &Progress| p.wake.notified().now_or_never().is_some();
        progress.delivered(9);
        assert!(!woken(&progress));
        assert_eq!(progress.in_flight(), 5);
        progress.delivered(1);
        assert!(woken(&progress));
        assert_eq!(progress.in_flight(), 4);
        // Two more messages complete within one batch: one wake-up.
        progress.delivered(25);
        assert!(woken(&progress));
        assert!(!woken(&progress));
        assert_eq!(progress.in_flight(), 2);
    }
}
