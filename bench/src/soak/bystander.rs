//! The bystander: one subscriber on a topic of its own and one publisher at
//! a steady rate, both well behaved, on a thread of their own (so that their
//! latency is the broker's, not the wait behind the crowd's tasks). Each
//! payload carries a sequence number and its send time: the bystander must
//! get every message, whatever the crowd does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::{SinkExt, StreamExt};
use starling_protocol::{Envelope, Payload, Topic, Value};
use tokio::time::{Instant, MissedTickBehavior, interval, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use super::conn::{self, Seen};
use super::counts::{Counts, Shared};
use super::plan::{Plan, Stop};
use crate::stats::{Latency, Percentiles, now_ns};
use crate::ws::{self, Ws};

/// How long the bystander's thread may take to end once the load is over:
/// its tail and its closes, each bounded, with room to spare.
const END_WAIT: Duration = Duration::from_secs(8);

/// How long the subscriber waits for the last messages once the load ends.
const TAIL_WAIT: Duration = Duration::from_secs(2);

/// Gaps longer than this are counted as lost without remembering each
/// number (a message of one that arrives later then counts as repeated).
const MAX_REMEMBERED_GAP: u64 = 65_536;

/// Which messages arrived, by sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sequence {
    /// The number after the highest one received.
    next: u64,
    /// Messages received.
    received: u64,
    /// Numbers skipped over and not received since.
    missing: BTreeSet<u64>,
    /// Numbers skipped over in gaps too long to remember.
    forgotten: u64,
    /// Messages that arrived after a higher number (counted as missing
    /// until then).
    late: u64,
    /// Messages whose number had arrived already.
    repeated: u64,
}

impl Sequence {
    /// Message `seq` arrived.
    pub(crate) fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq >= self.next {
            if seq - self.next > MAX_REMEMBERED_GAP {
                self.forgotten += seq - self.next;
            } else {
                self.missing.extend(self.next..seq);
            }
            self.next = seq + 1;
        } else if self.missing.remove(&seq) {
            self.late += 1;
        } else {
            self.repeated += 1;
        }
    }

    /// Messages lost of the `published` (numbered from 0): those skipped
    /// over and never received, and those after the last received.
    pub(crate) fn lost(&self, published: u64) -> u64 {
        self.missing.len() as u64 + self.forgotten + published.saturating_sub(self.next)
    }

    /// Whether every one of `published` messages (or a later one) arrived.
    fn caught_up(&self, published: u64) -> bool {
        self.next >= published
    }
}

/// What the bystander saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct BystanderReport {
    /// The publisher's connection.
    pub(crate) publisher: Counts,
    /// The subscriber's connection.
    pub(crate) subscriber: Counts,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    /// Messages that arrived after a later one.
    pub(crate) late: u64,
    /// Messages that arrived twice.
    pub(crate) repeated: u64,
    /// Messages whose payload had no sequence number or send time.
    pub(crate) unreadable: u64,
    /// Delivery latency, publish to receipt.
    pub(crate) latency: Option<Percentiles>,
}

/// The bystander's thread, once it is subscribed.
#[derive(Debug)]
pub(crate) struct Bystander(mpsc::Receiver<BystanderReport>);

impl Bystander {
    /// Starts the bystander and waits (at most `wait`) until its subscriber
    /// is subscribed; it publishes until `stop` is set.
    pub(crate) fn start(plan: Arc<Plan>, stop: Stop, wait: Duration) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the bystander's runtime")?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (report_tx, report_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("bystander".into())
            .spawn(move || {
                let report = runtime.block_on(run(plan, stop, wait, ready_tx));
                let _ = report_tx.send(report);
            })
            .context("cannot start the bystander's thread")?;
        match ready_rx.recv_timeout(wait + Duration::from_millis(500)) {
            Ok(Ok(())) => Ok(Bystander(report_rx)),
            Ok(Err(reason)) => Err(anyhow!("the bystander could not subscribe: {reason}")),
            Err(_) => Err(anyhow!(
                "the bystander did not subscribe within {:.1} s",
                wait.as_secs_f64()
            )),
        }
    }

    /// Waits for the bystander's figures, once the load is over; `None`
    /// when its thread did not end in time.
    pub(crate) fn join(self) -> Option<BystanderReport> {
        self.0.recv_timeout(END_WAIT).ok()
    }
}

async fn run(
    plan: Arc<Plan>,
    stop: Stop,
    wait: Duration,
    ready: mpsc::SyncSender<Result<(), String>>,
) -> BystanderReport {
    let sub_counts = Shared::default();
    let pub_counts = Shared::default();
    let topic = plan.topics.bystander.clone();
    let setup = async {
        let mut stop = stop.clone();
        let mut ws = conn::open(&plan, &sub_counts, &mut stop).await?;
        conn::subscribe(
            &mut ws,
            plan.codec,
            &[topic.as_str()],
            &sub_counts,
            &mut stop,
        )
        .await
        .then_some(ws)
    };
    let ws = match tokio::time::timeout(wait, setup).await {
        Ok(Some(ws)) if sub_counts.snapshot().subscriptions == 1 => ws,
        other => {
            let c = sub_counts.snapshot();
            let reason = match other {
                Err(_) => "timed out".to_owned(),
                Ok(_) if !c.refused.is_empty() => format!("refused: {}", c.refused),
                Ok(_) if !c.connect_failures.is_empty() => c.connect_failures.to_string(),
                Ok(_) => c.disconnects.to_string(),
            };
            let _ = ready.send(Err(reason));
            return report(
                &pub_counts,
                &sub_counts,
                Sequence::default(),
                &Latency::new(),
                0,
            );
        }
    };
    let _ = ready.send(Ok(()));

    let mut seq = Sequence::default();
    let mut latency = Latency::new();
    let mut unreadable = 0;
    let subscribe = subscriber(
        ws,
        &plan,
        &sub_counts,
        &pub_counts,
        stop.clone(),
        (&mut seq, &mut latency, &mut unreadable),
    );
    let publish = publisher(&plan, &pub_counts, stop);
    tokio::join!(subscribe, publish);
    report(&pub_counts, &sub_counts, seq, &latency, unreadable)
}

fn report(
    publisher: &Shared,
    subscriber: &Shared,
    seq: Sequence,
    latency: &Latency,
    unreadable: u64,
) -> BystanderReport {
    let publisher = publisher.snapshot();
    BystanderReport {
        received: seq.received,
        lost: seq.lost(publisher.published),
        late: seq.late,
        repeated: seq.repeated,
        unreadable,
        latency: latency.percentiles(),
        publisher,
        subscriber: subscriber.snapshot(),
    }
}

/// Reads the bystander topic until the load ends and the last message
/// published has arrived (or [`TAIL_WAIT`] has passed); connects and
/// subscribes again if the broker drops it.
async fn subscriber(
    mut ws: Ws,
    plan: &Plan,
    counts: &Shared,
    publisher: &Shared,
    mut stop: Stop,
    (seq, latency, unreadable): (&mut Sequence, &mut Latency, &mut u64),
) {
    let topic = plan.topics.bystander.as_str();
    let mut tail_until = None;
    loop {
        let next = match tail_until {
            None => match stop.or(ws.next()).await {
                Some(next) => next,
                None => {
                    tail_until = Some(Instant::now() + TAIL_WAIT);
                    continue;
                }
            },
            Some(deadline) => {
                if seq.caught_up(publisher.snapshot().published) {
                    break;
                }
                match timeout_at(deadline, ws.next()).await {
                    Ok(next) => next,
                    Err(_elapsed) => break,
                }
            }
        };
        let received_ns = now_ns();
        if let Some(Ok(message)) = &next
            && let Some((n, sent_ns)) = sequence_of(plan, message)
        {
            counts.update(|c| {
                c.frames_read += 1;
                c.messages += 1;
            });
            seq.record(n);
            latency.record(sent_ns, received_ns);
            continue;
        }
        let mut seen = Seen::Other;
        counts.update(|c| seen = conn::count(plan.codec, next, c));
        match seen {
            Seen::Message => *unreadable += 1,
            Seen::End if tail_until.is_some() => return,
            Seen::End => loop {
                // Dropped: back, and subscribed, as soon as possible.
                let Some(mut again) = conn::open(plan, counts, &mut stop).await else {
                    if stop.is_set() {
                        return;
                    }
                    continue;
                };
                if conn::subscribe(&mut again, plan.codec, &[topic], counts, &mut stop).await {
                    ws = again;
                    break;
                }
                if stop.is_set() {
                    return;
                }
            },
            Seen::Ack { .. } | Seen::Error(_) | Seen::Other => {}
        }
    }
    conn::close(ws, counts).await;
}

/// The sequence number and send time of a bystander message.
fn sequence_of(plan: &Plan, message: &Message) -> Option<(u64, u64)> {
    let Envelope::Message { payload, .. } = plan.codec.decode_bytes(ws::data(message)?).ok()?
    else {
        return None;
    };
    let Value::Map(entries) = payload.to_value() else {
        return None;
    };
    let field = |name: &str| {
        entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::UInt(v)) if k == name => Some(*v),
            _ => None,
        })
    };
    Some((field("seq")?, field("t")?))
}

/// One bystander `publish`: sequence number `seq`, stamped now.
fn publish_frame(plan: &Plan, topic: &Topic, seq: u64) -> Result<Message, String> {
    let payload = Payload::from_json(&format!(r#"{{"seq":{seq},"t":{}}}"#, now_ns()))
        .map_err(|e| format!("bystander payload: {e}"))?;
    let envelope = Envelope::Publish {
        id: Some(seq + 1),
        topic: topic.clone(),
        payload,
    };
    let frame = plan
        .codec
        .encode(&envelope)
        .map_err(|e| format!("cannot encode a publish: {e}"))?;
    Ok(ws::to_message(frame))
}

/// Publishes to the bystander topic at `plan.bystander_rate` until the load
/// ends, reading the acks; connects again if the broker drops it.
async fn publisher(plan: &Plan, counts: &Shared, mut stop: Stop) {
    let topic = match Topic::new(&plan.topics.bystander) {
        Ok(topic) => topic,
        Err(e) => return counts.update(|c| c.errors.add(format!("bystander topic: {e}"))),
    };
    let mut ticks = interval(Duration::from_secs_f64(1.0 / plan.bystander_rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut seq = 0;
    while !stop.is_set() {
        let Some(ws) = conn::open(plan, counts, &mut stop).await else {
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let write = async {
            loop {
                ticks.tick().await;
                let frame = match publish_frame(plan, &topic, seq) {
                    Ok(frame) => frame,
                    Err(reason) => return counts.update(|c| c.errors.add(reason)),
                };
                if let Err(e) = sink.send(frame).await {
                    return counts.update(|c| c.disconnects.add(ws::failure(&e)));
                }
                seq += 1;
                counts.update(|c| c.published += 1);
            }
        };
        let read = async {
            loop {
                let next = stream.next().await;
                let mut seen = Seen::Other;
                counts.update(|c| seen = conn::count(plan.codec, next, c));
                if seen == Seen::End {
                    return;
                }
            }
        };
        let ended = stop
            .or(async {
                tokio::select! {
                    () = write => {}
                    () = read => {}
                }
            })
            .await
            .is_none();
        let ws = sink
            .reunite(stream)
            .expect("the halves of one connection reunite");
        if ended {
            return last_acks(ws, plan, counts).await;
        }
    }
}

/// Reads the acks still on their way (for at most [`TAIL_WAIT`]), then
/// closes.
async fn last_acks(mut ws: Ws, plan: &Plan, counts: &Shared) {
    let deadline = Instant::now() + TAIL_WAIT;
    loop {
        let c = counts.snapshot();
        if c.acks + c.errors.total() >= c.published {
            break;
        }
        let Ok(next) = timeout_at(deadline, ws.next()).await else {
            break;
        };
        let mut seen = Seen::Other;
        counts.update(|c| seen = conn::count(plan.codec, next, c));
        if seen == Seen::End {
            return;
        }
    }
    conn::close(ws, counts).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_without_gaps_loses_nothing() {
        let mut s = Sequence::default();
        for n in 0..10 {
            s.record(n);
        }
        assert_eq!(s.lost(10), 0);
        assert!(s.caught_up(10));
        assert_eq!((s.received, s.late), (10, 0));
    }

    #[test]
    fn gaps_and_a_missing_tail_are_lost() {
        let mut s = Sequence::default();
        for n in [0, 1, 4, 5, 9] {
            s.record(n);
        }
        // 2, 3, 6, 7, 8 skipped; 10 and 11 never came.
        assert_eq!(s.lost(12), 7);
        assert!(!s.caught_up(12));
        assert_eq!(s.received, 5);
    }

    #[test]
    fn late_and_repeated_numbers_are_counted_apart() {
        let mut s = Sequence::default();
        for n in [0, 2, 1, 2, 3] {
            s.record(n);
        }
        assert_eq!((s.received, s.late, s.repeated), (5, 1, 1));
        // 1 came late, not never.
        assert_eq!(s.lost(4), 0);
        // Nothing received of 3 published: all lost.
        assert_eq!(Sequence::default().lost(3), 3);
    }

    #[test]
    fn a_huge_gap_is_lost_without_being_remembered() {
        let mut s = Sequence::default();
        s.record(0);
        s.record(1_000_000);
        assert_eq!(s.lost(1_000_001), 999_999);
        assert!(s.missing.is_empty());
        s.record(5);
        assert_eq!((s.late, s.repeated), (0, 1));
    }
}
