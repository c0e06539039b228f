//! Churners: connections that come and go. Each connects, subscribes to two
//! of the churn topics and to a pattern over all of them, publishes a few
//! small messages, reads the answers and leaves, cleanly (close 1000) or by
//! dropping the socket without a close frame; then again, until the load
//! ends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::Instant;

use super::conn::{self, Seen};
use super::counts::Shared;
use super::plan::{Plan, Stop};
use crate::stats::now_ns;
use crate::ws::{self, Ws};

/// Messages a churner publishes per connection.
const PUBLISHES: u64 = 3;

/// How long a churner waits for the acks of its publishes and their
/// deliveries.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The first id of a churner's publishes (its subscriptions take 1 to 3).
const FIRST_PUBLISH_ID: u64 = 100;

/// A cheap xorshift generator: which topics, how to leave, how long to
/// pause. Nothing here needs to be unpredictable.
#[derive(Debug, Clone)]
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// One churner, until the load ends.
pub(crate) async fn churner(index: usize, plan: Arc<Plan>, counts: Shared, mut stop: Stop) {
    let mut dice = Dice::new(index as u64 ^ now_ns());
    while !stop.is_set() {
        if let Some(mut ws) = conn::open(&plan, &counts, &mut stop).await {
            let usable = visit(&mut ws, &plan, &counts, &mut stop, &mut dice).await;
            if stop.is_set() || (usable && dice.below(2) == 0) {
                conn::close(ws, &counts).await;
            } else if usable {
                // Gone without a word: the broker finds out from the socket.
                drop(ws);
                counts.update(|c| c.dropped += 1);
            }
        }
        // Up to half the pause again, so that the churners drift apart.
        let pause = plan.churn_pause.as_millis() as u64;
        let pause = Duration::from_millis(pause + dice.below(pause / 2 + 1));
        stop.sleep(pause).await;
    }
}

/// What a churner does on one connection; `false` when the connection
/// broke (counted).
async fn visit(
    ws: &mut Ws,
    plan: &Plan,
    counts: &Shared,
    stop: &mut Stop,
    dice: &mut Dice,
) -> bool {
    let churn = &plan.topics.churn;
    let a = dice.below(churn.len() as u64) as usize;
    let b = (a + 1 + dice.below(churn.len() as u64 - 1) as usize) % churn.len();
    let topics = [
        churn[a].as_str(),
        churn[b].as_str(),
        plan.topics.churn_pattern.as_str(),
    ];
    if !conn::subscribe(ws, plan.codec, &topics, counts, stop).await {
        return false;
    }
    for n in 0..PUBLISHES {
        let frame = plan.small.encode(
            topics[(n % 2) as usize],
            Some(FIRST_PUBLISH_ID + n),
            now_ns(),
        );
        match stop.or(ws.feed(frame)).await {
            None => return true,
            Some(Ok(())) => counts.update(|c| c.published += 1),
            Some(Err(e)) => {
                counts.update(|c| c.disconnects.add(ws::failure(&e)));
                return false;
            }
        }
    }
    match stop.or(ws.flush()).await {
        None | Some(Ok(())) => {}
        Some(Err(e)) => {
            counts.update(|c| c.disconnects.add(ws::failure(&e)));
            return false;
        }
    }
    // The acks, and the messages back (through the topic and the pattern).
    let deadline = Instant::now() + ACK_WAIT;
    let (mut answered, mut delivered) = (0, 0);
    while answered < PUBLISHES || delivered < PUBLISHES {
        let read = conn::read(ws, plan.codec, counts, stop);
        match tokio::time::timeout_at(deadline, read).await {
            Err(_) | Ok(None) => return true,
            Ok(Some(Seen::End)) => return false,
            Ok(Some(Seen::Ack { id, .. } | Seen::Error(Some(id)))) if id >= FIRST_PUBLISH_ID => {
                answered += 1;
            }
            Ok(Some(Seen::Message)) => delivered += 1,
            Ok(Some(_)) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_stay_below_their_bound_and_vary() {
        let mut dice = Dice::new(7);
        let rolls: Vec<u64> = (0..1000).map(|_| dice.below(8)).collect();
        assert!(rolls.iter().all(|r| *r < 8));
        for face in 0..8 {
            assert!(rolls.contains(&face), "{face} never came up");
        }
        assert_eq!(Dice::new(0).below(1), 0);
    }
}
