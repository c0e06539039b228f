//! The flood topic's subscribers that do not keep up: slow readers, which
//! read one frame at a time with a pause between, and stalled readers, which
//! never read at all. Both connect again whenever the broker drops them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{self, Seen};
use super::counts::Shared;
use super::plan::{Plan, Stop};

/// How often a stalled reader checks, by writing a WebSocket ping, whether
/// the broker still holds its connection.
const STALL_PROBE: Duration = Duration::from_secs(1);

/// How long a stalled reader waits for its probe to be taken by the socket
/// before it counts the probe as pending and carries on.
const PROBE_WRITE_WAIT: Duration = Duration::from_secs(2);

/// How long a reader dropped by the broker reads what was left in its socket
/// (to count the `lagged` frames and the close code there).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// A subscriber of the flood topic that reads one frame every
/// `plan.read_every`, until the load ends.
pub(crate) async fn slow_reader(plan: Arc<Plan>, counts: Shared, mut stop: Stop) {
    let flood = plan.topics.flood.as_str();
    while !stop.is_set() {
        let Some(mut ws) = conn::open(&plan, &counts, &mut stop).await else {
            continue;
        };
        if !conn::subscribe(&mut ws, plan.codec, &[flood], &counts, &mut stop).await {
            finish(ws, &counts, &stop).await;
            continue;
        }
        loop {
            match conn::read(&mut ws, plan.codec, &counts, &mut stop).await {
                None => return conn::close(ws, &counts).await,
                Some(Seen::End) => break,
                Some(_) => {}
            }
            if !stop.sleep(plan.read_every).await {
                return conn::close(ws, &counts).await;
            }
        }
    }
}

/// A subscriber of the flood topic that never reads its socket after the
/// subscription's `ack`. Once a second it writes a WebSocket ping, which
/// fails once the broker has dropped the connection (the broker answers the
/// write of a closed socket with a reset); then it reads what the socket
/// still holds, to count the close code, and connects again.
pub(crate) async fn stalled_reader(plan: Arc<Plan>, counts: Shared, mut stop: Stop) {
    let flood = plan.topics.flood.as_str();
    while !stop.is_set() {
        let Some(mut ws) = conn::open(&plan, &counts, &mut stop).await else {
            continue;
        };
        if !conn::subscribe(&mut ws, plan.codec, &[flood], &counts, &mut stop).await {
            finish(ws, &counts, &stop).await;
            continue;
        }
        let broke = loop {
            if !stop.sleep(STALL_PROBE).await {
                break None;
            }
            let probe = ws.send(Message::Ping(b"soak".to_vec().into()));
            match stop.or(timeout(PROBE_WRITE_WAIT, probe)).await {
                None => break None,
                // The socket takes nothing: the broker is not reading either.
                Some(Err(_elapsed)) => {}
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => break Some(e),
            }
        };
        let Some(error) = broke else {
            return conn::close(ws, &counts).await;
        };
        // What the broker sent before it went, the close frame last.
        if !conn::drain(&mut ws, plan.codec, &counts, DRAIN_WAIT).await {
            counts.update(|c| c.disconnects.add(crate::ws::failure(&error)));
        }
    }
}

/// Ends a connection whose setup failed: it is gone already, unless the
/// load ended meanwhile, when it is closed as at the end.
async fn finish(ws: crate::ws::Ws, counts: &Shared, stop: &Stop) {
    if stop.is_set() {
        conn::close(ws, counts).await;
    }
}
