//! The roles that write more than they read: flooders (large messages to the
//! flood topic, as fast as the broker acks them), the history publisher
//! (large messages to the history topic at a modest rate) and replayers
//! (requests for the whole history, never read).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use starling_protocol::{Envelope, Filter};
use tokio::sync::Semaphore;
use tokio::time::{MissedTickBehavior, interval};

use super::conn::{self, Seen};
use super::counts::{Counts, Shared};
use super::plan::{Plan, Stop};
use crate::stats::now_ns;
use crate::ws::{self, Ws};

/// How long a replayer that the broker dropped reads what was left in its
/// socket.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// At most this many publishes unacknowledged.
    InFlight(usize),
    /// This many messages per second, whatever the acks.
    Rate(f64),
}

/// Publishes large messages to `topic` until the load ends, connecting
/// again when the broker drops it.
pub(crate) async fn publisher(
    plan: Arc<Plan>,
    topic: String,
    pace: Pace,
    counts: Shared,
    mut stop: Stop,
) {
    let mut next_id = 1;
    while !stop.is_set() {
        let Some(ws) = conn::open(&plan, &counts, &mut stop).await else {
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        // Publishes the broker has yet to answer, when they are bounded.
        let in_flight = match pace {
            Pace::InFlight(k) => Some(Semaphore::new(k)),
            Pace::Rate(_) => None,
        };
        let write = async {
            let mut ticks = match pace {
                Pace::Rate(rate) => {
                    let mut ticks = interval(Duration::from_secs_f64(1.0 / rate));
                    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    Some(ticks)
                }
                Pace::InFlight(_) => None,
            };
            loop {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                if let Some(in_flight) = &in_flight {
                    match in_flight.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                }
                let frame = plan.large.encode(&topic, Some(next_id), now_ns());
                next_id += 1;
                if let Err(e) = sink.send(frame).await {
                    counts.update(|c| c.disconnects.add(ws::failure(&e)));
                    return;
                }
                counts.update(|c| c.published += 1);
            }
        };
        let read = async {
            loop {
                let next = stream.next().await;
                let mut seen = Seen::Other;
                counts.update(|c| seen = conn::count(plan.codec, next, c));
                match seen {
                    Seen::Ack { .. } | Seen::Error(Some(_)) => {
                        if let Some(in_flight) = &in_flight {
                            in_flight.add_permits(1);
                        }
                    }
                    Seen::End => return,
                    Seen::Message | Seen::Error(None) | Seen::Other => {}
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
            return conn::close(ws, &counts).await;
        }
    }
}

/// A connection that asks, over and over and without reading, for the whole
/// history of the history topic: `subscribe` with `since: 0`, a pause of
/// `plan.replay_pause` (for the broker to start the replay), `unsubscribe`,
/// the same pause again. When the broker drops it, it reads what its socket
/// still holds, to count the close code, and connects again.
pub(crate) async fn replayer(plan: Arc<Plan>, counts: Shared, mut stop: Stop) {
    let topic = match Filter::new(&plan.topics.history) {
        Ok(topic) => topic,
        Err(e) => {
            counts.update(|c| c.errors.add(format!("history topic: {e}")));
            return;
        }
    };
    let mut next_id = 1;
    while !stop.is_set() {
        let Some(mut ws) = conn::open(&plan, &counts, &mut stop).await else {
            continue;
        };
        let broke = 'requests: loop {
            for subscribe in [true, false] {
                let id = next_id;
                next_id += 1;
                let envelope = if subscribe {
                    Envelope::Subscribe {
                        name: None,
                        info: None,
                        id: Some(id),
                        topic: topic.clone(),
                        since: Some(0),
                        epoch: None,
                    }
                } else {
                    Envelope::Unsubscribe {
                        id: Some(id),
                        topic: topic.clone(),
                    }
                };
                match stop.or(request(&mut ws, &plan, &envelope)).await {
                    None => break 'requests None,
                    Some(Ok(())) if subscribe => counts.update(|c| c.replay_requests += 1),
                    Some(Ok(())) => {}
                    Some(Err(e)) => break 'requests Some(e),
                }
                if !stop.sleep(plan.replay_pause).await {
                    break 'requests None;
                }
            }
        };
        let Some(reason) = broke else {
            return conn::close(ws, &counts).await;
        };
        if !conn::drain(&mut ws, plan.codec, &counts, DRAIN_WAIT).await {
            counts.update(|c| c.disconnects.add(reason));
        }
    }
}

/// Writes one request. Pending for as long as the socket takes nothing.
async fn request(ws: &mut Ws, plan: &Plan, envelope: &Envelope) -> Result<(), String> {
    let frame = plan
        .codec
        .encode(envelope)
        .map_err(|e| format!("cannot encode {}: {e}", envelope.type_name()))?;
    ws.send(ws::to_message(frame))
        .await
        .map_err(|e| ws::failure(&e))
}

/// Whether the broker kept history on the history topic, as the history
/// publisher's acks tell: `None` before any ack.
pub(crate) fn history_kept(publisher: &Counts) -> Option<bool> {
    (publisher.acks > 0).then_some(publisher.acks_with_offset > 0)
}
