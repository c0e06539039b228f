//! One connection of the soak: opening it, counting what the broker sends on
//! it, and ending it, each with a bound on how long it may take.

use std::time::Duration;

use futures_util::StreamExt;
use starling_protocol::{Codec, Envelope};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::counts::{Counts, Shared};
use super::plan::{CLOSE_WAIT, Plan, Stop};
use crate::scan::{Scan, scan};
use crate::ws::{self, Ws};

/// How long a role waits before it tries again after a failed connection.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Opens a connection, counting it or why it failed (then pausing briefly).
/// `None` when it failed or the load ended meanwhile.
pub(crate) async fn open(plan: &Plan, counts: &Shared, stop: &mut Stop) -> Option<Ws> {
    let attempt = ws::connect(&plan.dialer, &plan.url, plan.codec, plan.ws_config);
    match stop.or(attempt).await? {
        Ok((ws, _limits)) => {
            counts.update(|c| c.connections += 1);
            Some(ws)
        }
        Err(reason) => {
            counts.update(|c| c.connect_failures.add(reason));
            stop.sleep(RETRY_PAUSE).await;
            None
        }
    }
}

/// Subscribes to `topics` and counts the answers; `false` when the
/// connection failed (counted) or the load ended.
pub(crate) async fn subscribe(
    ws: &mut Ws,
    codec: Codec,
    topics: &[&str],
    counts: &Shared,
    stop: &mut Stop,
) -> bool {
    match stop.or(ws::subscribe(ws, codec, topics)).await {
        None => false,
        Some(Ok(subscribed)) => {
            counts.update(|c| {
                c.subscriptions += subscribed.acked.len() as u64;
                for code in subscribed.refused {
                    c.refused.add(code);
                }
            });
            true
        }
        Some(Err(reason)) => {
            counts.update(|c| c.disconnects.add(format!("subscribing: {reason}")));
            false
        }
    }
}

/// What one read from a connection gave, once counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A `message`.
    Message,
    /// An `ack` (with the offset it carried).
    Ack { id: u64, offset: Option<u64> },
    /// An `error` for the frame with this id (or none).
    Error(Option<u64>),
    /// Anything else that leaves the connection open (`lagged`, control
    /// frames, a frame that does not decode).
    Other,
    /// The connection is over: the broker's close frame, an error or the
    /// end of the stream (counted).
    End,
}

/// Counts one read of `ws.next()`.
pub(crate) fn count(codec: Codec, read: Option<Result<Message, WsError>>, c: &mut Counts) -> Seen {
    let message = match read {
        Some(Ok(message)) => message,
        Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
            c.disconnects.add("closed without close frame");
            return Seen::End;
        }
        Some(Err(e)) => {
            c.disconnects.add(ws::failure(&e));
            return Seen::End;
        }
    };
    if let Message::Close(frame) = &message {
        c.frames_read += 1;
        c.closes.add(ws::close_code(frame.as_ref()));
        return Seen::End;
    }
    let Some(bytes) = ws::data(&message) else {
        return Seen::Other;
    };
    c.frames_read += 1;
    // Deliveries are the large and frequent frames: known by their first
    // bytes, never decoded.
    if let Scan::Message(_) = scan(codec, bytes) {
        c.messages += 1;
        return Seen::Message;
    }
    match codec.decode_bytes(bytes) {
        Ok(Envelope::Message { .. }) => {
            c.messages += 1;
            Seen::Message
        }
        Ok(Envelope::Ack { id, offset, .. }) => {
            c.acks += 1;
            c.acks_with_offset += u64::from(offset.is_some());
            Seen::Ack { id, offset }
        }
        Ok(Envelope::Lagged { missed, .. }) => {
            c.lagged_frames += 1;
            c.missed += missed.unwrap_or(0);
            Seen::Other
        }
        Ok(Envelope::Error { id, code, .. }) => {
            c.errors.add(code.to_string());
            Seen::Error(id)
        }
        Ok(_) => Seen::Other,
        Err(_) => {
            c.errors.add("undecodable frame");
            Seen::Other
        }
    }
}

/// Reads one frame (or the end) and counts it; `None` when the load ended
/// first.
pub(crate) async fn read(
    ws: &mut Ws,
    codec: Codec,
    counts: &Shared,
    stop: &mut Stop,
) -> Option<Seen> {
    let read = stop.or(ws.next()).await?;
    let mut seen = Seen::Other;
    counts.update(|c| seen = count(codec, read, c));
    Some(seen)
}

/// Reads whatever the broker still sends on a connection that broke or was
/// closed while the bench was not reading, for at most `wait`, and counts
/// it: the `lagged` frames and the close code that were waiting in the
/// socket. Returns whether the end was found (a close frame or an error).
pub(crate) async fn drain(ws: &mut Ws, codec: Codec, counts: &Shared, wait: Duration) -> bool {
    let mut c = Counts::default();
    let ended = timeout(wait, async {
        loop {
            if count(codec, ws.next().await, &mut c) == Seen::End {
                return;
            }
        }
    })
    .await
    .is_ok();
    counts.update(|total| total.merge(&c));
    ended
}

/// Ends a connection the bench still holds: close 1000, then waits (at most
/// [`CLOSE_WAIT`] in all, even when the socket takes nothing) for the
/// broker's answer.
pub(crate) async fn close(mut ws: Ws, counts: &Shared) {
    let answered = timeout(CLOSE_WAIT, ws::close(&mut ws, CLOSE_WAIT))
        .await
        .unwrap_or(false);
    counts.update(|c| {
        if answered {
            c.closed_cleanly += 1;
        } else {
            c.close_unanswered += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn counted(codec: Codec, read: Option<Result<Message, WsError>>) -> (Seen, Counts) {
        let mut c = Counts::default();
        let seen = count(codec, read, &mut c);
        (seen, c)
    }

    #[test]
    fn frames_are_counted_by_kind() {
        let json = |s: &str| Some(Ok(Message::text(s)));
        let (seen, c) = counted(
            Codec::Json,
            json(r#"{"type":"message","topic":"a.b","payload":{"t":1,"p":"x"}}"#),
        );
        assert_eq!((seen, c.frames_read, c.messages), (Seen::Message, 1, 1));

        let (seen, c) = counted(Codec::Json, json(r#"{"type":"ack","id":7,"offset":3}"#));
        assert_eq!(
            seen,
            Seen::Ack {
                id: 7,
                offset: Some(3)
            }
        );
        assert_eq!((c.acks, c.acks_with_offset), (1, 1));

        let (seen, c) = counted(
            Codec::Json,
            json(r#"{"type":"lagged","topic":"a.b","missed":12}"#),
        );
        assert_eq!((seen, c.lagged_frames, c.missed), (Seen::Other, 1, 12));

        let (seen, c) = counted(
            Codec::Json,
            json(r#"{"type":"error","id":4,"code":"rate_limited","message":"slow down"}"#),
        );
        assert_eq!(seen, Seen::Error(Some(4)));
        assert_eq!(c.errors.to_string(), "rate_limited: 1");
    }

    #[test]
    fn the_end_is_counted_with_its_code_or_reason() {
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::from(4008),
            reason: "slow consumer".into(),
        }));
        let (seen, c) = counted(Codec::Json, Some(Ok(close)));
        assert_eq!(seen, Seen::End);
        assert_eq!(c.closes.to_string(), "4008: 1");

        let (seen, c) = counted(Codec::Json, None);
        assert_eq!(seen, Seen::End);
        assert_eq!(c.disconnects.to_string(), "closed without close frame: 1");

        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let (seen, c) = counted(Codec::Json, Some(Err(WsError::Io(reset))));
        assert_eq!(seen, Seen::End);
        assert_eq!(c.disconnects.total(), 1);
    }

    #[test]
    fn pings_are_not_frames_of_the_protocol() {
        let (seen, c) = counted(Codec::Json, Some(Ok(Message::Ping(vec![1].into()))));
        assert_eq!((seen, c.frames_read), (Seen::Other, 0));
    }
}
