//! Server-Sent Events: `GET /sse?topic=T` streams a topic's messages (and
//! presence events) as `text/event-stream`, for dashboards where a
//! WebSocket cannot pass (a proxy that refuses upgrades) or is not wanted.
//!
//! Several `topic` parameters (topics and patterns) make one stream. Each
//! event's `data` is the JSON frame a WebSocket client would get, and its
//! `event` field the frame's type (`message`, `join`, `leave`, `lagged`,
//! `error`). On topics with history, the event `id` holds where the stream
//! stands on each of them, `<offset>@<epoch>` per `topic` parameter in
//! order (`-` for one without history), so a browser's `EventSource`
//! resumes through history by itself when it reconnects (`Last-Event-ID`).
//!
//! The same token as a WebSocket's (`?token=` or `Authorization: Bearer`),
//! the same permissions, the same subscription limit; the ring of each
//! subscription is the same as a WebSocket subscriber's, so a stream that
//! falls behind gets `lagged` (or, under `--slow-consumer disconnect`, an
//! `error` event and the end of the stream). Comments keep the connection
//! alive every `--ping-interval-ms`. The stream ends when the broker shuts
//! down (the client reconnects elsewhere) or the token expires.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use starling_protocol::framing::Header;
use starling_protocol::{Codec, Envelope, ErrorCode, Filter, Frame};

use crate::auth::Auth;
use crate::broker::Broker;
use crate::config::SlowConsumerPolicy;
use crate::delivery::Delivery;
use crate::history::{Position, Recovery, Replay, Resume, replayed};
use crate::http_reply::protocol_error;
use crate::registry::DeliveryReceiver;
use crate::ring::Missed;

/// Most events taken from one subscription per turn.
const BATCH: usize = 256;

/// What a stream asks for.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    filters: Vec<Filter>,
    /// From `Last-Event-ID`: where to resume each filter.
    resume: Vec<Option<Resume>>,
}

impl Ask {
    fn parse(
        query: &str,
        last_event_id: Option<&str>,
        max: usize,
    ) -> Result<Ask, (ErrorCode, String)> {
        let mut filters = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name != "topic" {
                continue;
            }
            let filter = Filter::new(&value)
                .map_err(|e| (ErrorCode::InvalidTopic, format!("topic {value:?}: {e}")))?;
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        if filters.is_empty() {
            return Err((
                ErrorCode::BadFrame,
                "give at least one topic: /sse?topic=T".into(),
            ));
        }
        if filters.len() > max {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!("a stream may hold at most {max} subscriptions"),
            ));
        }
        let mut resume: Vec<Option<Resume>> = last_event_id
            .unwrap_or("")
            .split(',')
            .map(parse_position)
            .collect();
        resume.resize(filters.len(), None);
        Ok(Ask { filters, resume })
    }
}

/// One position of an event id, `<offset>@<epoch>`; `None` for `-` or
/// anything else.
fn parse_position(text: &str) -> Option<Resume> {
    let (offset, epoch) = text.trim().split_once('@')?;
    Some(Resume {
        since: offset.parse().ok()?,
        epoch: (!epoch.is_empty()).then(|| epoch.into()),
    })
}

/// `GET /sse`.
pub(crate) async fn sse(State(broker): State<Broker>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("");
    let headers = request.headers();
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let ask = match Ask::parse(query, last_event_id, broker.config().max_subscriptions) {
        Ok(ask) => ask,
        Err((code, message)) => return protocol_error(&broker, code, message),
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let auth = Auth::check(broker.verifier(), Some(query), authorization);
    if let Some(refusal) = auth.refusal() {
        return protocol_error(&broker, ErrorCode::Unauthorized, refusal.to_string());
    }
    for filter in &ask.filters {
        if !auth.may_subscribe(filter) {
            let message = format!("this token may not subscribe to {filter}");
            return protocol_error(&broker, ErrorCode::Unauthorized, message);
        }
    }
    let mut feed = Feed::new(broker.clone(), &auth);
    for (mut filter, resume) in ask.filters.into_iter().zip(ask.resume) {
        let (rx, answer) = broker.subscribe(&mut filter, resume.as_ref());
        // Held from here: dropped (the store failed, the client left), the
        // stream's subscriptions leave the registry.
        feed.subs.push(Sub {
            filter,
            rx,
            replay: None,
            live_after: None,
            position: None,
        });
        let recovery = match answer.get().await {
            Ok(recovery) => recovery,
            Err(error) => return protocol_error(&broker, ErrorCode::Internal, error.to_string()),
        };
        feed.recovered(recovery);
    }
    let keep_alive = broker.config().ping_interval_ms;
    let mut response = Sse::new(feed)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(keep_alive.max(1000))))
        .into_response();
    // Tells nginx not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One subscription of a stream.
struct Sub {
    filter: Filter,
    rx: DeliveryReceiver,
    replay: Option<Replay>,
    live_after: Option<Position>,
    /// The last offset sent, and its epoch.
    position: Option<(u64, Arc<str>)>,
}

/// The events of one stream.
struct Feed {
    broker: Broker,
    subs: Vec<Sub>,
    ready: VecDeque<Event>,
    /// Completes when the broker begins to shut down.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Completes when the token expires.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl Feed {
    fn new(broker: Broker, auth: &Auth) -> Self {
        let watched = broker.clone();
        let shutdown = Box::pin(async move {
            let notified = watched.shutdown_notified();
            if !watched.is_shutting_down() {
                notified.await;
            }
        });
        broker.metrics().sse_streams.inc();
        Feed {
            expiry: auth
                .expires_at()
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            broker,
            subs: Vec::new(),
            ready: VecDeque::new(),
            shutdown,
            ended: false,
        }
    }

    /// The last subscription's history answered.
    fn recovered(&mut self, recovery: Recovery) {
        let sub = self.subs.last_mut().expect("pushed before");
        if recovery.reset {
            self.broker.metrics().history_resets.inc();
            let lagged = Envelope::Lagged {
                topic: sub.filter.clone(),
                missed: None,
                reset: true,
            };
            self.ready.push_back(envelope_event(&lagged));
        }
        sub.position = recovery.position.map(|p| (p.offset, p.epoch));
        sub.replay = recovery.replay;
        sub.live_after = recovery.live_after;
    }

    /// The event id: every subscription's position.
    fn id(&self) -> Option<String> {
        if self.subs.iter().all(|sub| sub.position.is_none()) {
            return None;
        }
        let positions: Vec<String> = self
            .subs
            .iter()
            .map(|sub| match &sub.position {
                Some((offset, epoch)) => format!("{offset}@{epoch}"),
                None => "-".into(),
            })
            .collect();
        Some(positions.join(","))
    }

    /// Takes what is ready from every subscription into `ready`.
    fn fill(&mut self) {
        for i in 0..self.subs.len() {
            let mut taken: Vec<Result<Arc<Delivery>, u64>> = Vec::new();
            let sub = &mut self.subs[i];
            if let Some(replay) = &mut sub.replay {
                let done = replay.page(|item| {
                    taken.push(item.cloned());
                    if taken.len() >= BATCH {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                if done {
                    sub.replay = None;
                }
            } else {
                let live_after = &sub.live_after;
                sub.rx.drain(BATCH, |item| match item {
                    Ok(delivery) if !replayed(live_after, delivery) => {
                        taken.push(Ok(delivery.clone()));
                    }
                    Ok(_) => {}
                    Err(Missed::Lagged(missed)) => taken.push(Err(missed)),
                });
            }
            for item in taken {
                match item {
                    Ok(delivery) => self.push(i, &delivery),
                    Err(missed) => self.lagged(i, missed),
                }
            }
        }
    }

    fn push(&mut self, i: usize, delivery: &Delivery) {
        if let (Some(offset), Some(epoch)) = (delivery.offset, &delivery.epoch) {
            self.subs[i].position = Some((offset, epoch.clone()));
        }
        let Some(data) = delivery.wire(Codec::Json).and_then(frame_payload) else {
            return;
        };
        let mut event = Event::default().event(delivery.kind()).data(data);
        if delivery.offset.is_some()
            && let Some(id) = self.id()
        {
            event = event.id(id);
        }
        self.ready.push_back(event);
    }

    fn lagged(&mut self, i: usize, missed: u64) {
        let sub = &self.subs[i];
        self.broker.metrics().lagged_events.inc();
        self.broker.metrics().lagged_messages.inc_by(missed);
        if sub.replay.is_none()
            && self.broker.config().slow_consumer == SlowConsumerPolicy::Disconnect
        {
            let error = Envelope::error(
                None,
                ErrorCode::Internal,
                "slow consumer: the stream fell behind",
            );
            self.ready.push_back(envelope_event(&error));
            self.ended = true;
            return;
        }
        let lagged = Envelope::Lagged {
            topic: sub.filter.clone(),
            missed: Some(missed),
            reset: false,
        };
        self.ready.push_back(envelope_event(&lagged));
    }
}

impl Stream for Feed {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.ended || this.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let Some(expiry) = &mut this.expiry
                && expiry.as_mut().poll(cx).is_ready()
            {
                this.expiry = None;
                this.ended = true;
                let error = Envelope::error(None, ErrorCode::Unauthorized, "the token expired");
                this.ready.push_back(envelope_event(&error));
                continue;
            }
            this.fill();
            if !this.ready.is_empty() {
                continue;
            }
            // Nothing taken: wait for any subscription (a replay is never
            // waited for: it was taken whole or in batches above).
            let mut more = false;
            for sub in &mut this.subs {
                more |= sub.replay.is_some() || sub.rx.poll_ready(cx).is_ready();
            }
            if !more {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.broker.metrics().sse_streams.dec();
        for sub in &self.subs {
            self.broker.unsubscribe(&sub.filter);
        }
    }
}

/// An event carrying a frame the broker makes itself.
fn envelope_event(envelope: &Envelope) -> Event {
    let data = match Codec::Json.encode(envelope) {
        Ok(Frame::Text(text)) => text,
        _ => String::new(),
    };
    Event::default().event(envelope.type_name()).data(data)
}

/// The JSON text inside a delivery's WebSocket frame.
fn frame_payload(frame: &[u8]) -> Option<&str> {
    let header = Header::parse(frame).ok()??;
    std::str::from_utf8(frame.get(header.header_len..)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_ask_for_topics_and_resume_from_the_last_event_id() {
        let ask = Ask::parse("topic=a.b&topic=c.*&x=1&topic=a.b", Some("12@ep1,-"), 8).unwrap();
        assert_eq!(
            ask.filters,
            [Filter::new("a.b").unwrap(), Filter::new("c.*").unwrap()]
        );
        assert_eq!(
            ask.resume,
            [
                Some(Resume {
                    since: 12,
                    epoch: Some("ep1".into())
                }),
                None
            ]
        );
        let ask = Ask::parse("topic=a", None, 8).unwrap();
        assert_eq!(ask.resume, [None]);
        let code = |q: &str| Ask::parse(q, None, 1).unwrap_err().0;
        assert_eq!(code(""), ErrorCode::BadFrame);
        assert_eq!(code("topic=a..b"), ErrorCode::InvalidTopic);
        assert_eq!(code("topic=a&topic=b"), ErrorCode::TooManySubscriptions);
    }
}
