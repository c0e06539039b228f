//! The protocol session of one connection: what each client frame does.
//!
//! A new client frame type is one arm of [`Session::on_envelope`] (and one
//! variant of the protocol crate's `Envelope`).
//!
//! `Session<true>` is the echo mode of `internals::echo_broker`, for
//! conformance tests of the framing (the Autobahn TestSuite, see
//! docs/conformance.md): it sends no `welcome`, and sends every message back
//! as it came instead of reading it as an envelope. Everything else (frame
//! rules, UTF-8 of text, the size limit, pings, the close handshake, the
//! outbound buffer) is the broker's own. `ECHO` is a constant: the
//! broker's connections (`Session<false>`) carry no check of it.

use std::ops::ControlFlow;

use starling_protocol::{
    CloseCode, Codec, CodecError, Envelope, ErrorCode, Filter, Payload, Topic,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth::{Auth, AuthError};

/// The least time between two `refresh` frames of one connection.
const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
use crate::broker::{Admission, Broker};
use crate::config::SlowConsumerPolicy;
use crate::connection::exit::Exit;
use crate::connection::outbox::Outbox;
use crate::connection::pending::{Ask, Done, Held, Pending};
use crate::connection::subscriptions::{Lag, Subscriptions};
use crate::delivery::write_protocol_frame;
use crate::history::{Position, Recovery, Resume};
use crate::metrics::Source;
use crate::rate::{RateLimiter, Verdict};
use crate::registry::DeliveryReceiver;
use crate::relay::Answer;
use starling_protocol::framing::{self, Event, Kind};

/// The state of one connection, apart from its socket, read buffer and
/// timers. Dropping it removes the connection's subscriptions from the
/// registry, on every exit path.
pub(crate) struct Session<const ECHO: bool = false> {
    pub(crate) broker: Broker,
    /// The connection's id and its slot under the connection limit.
    pub(crate) admission: Admission,
    codec: Codec,
    pub(crate) subs: Subscriptions,
    pub(crate) out: Outbox,
    /// Boxed: most brokers run without a rate limit.
    rate: Option<Box<RateLimiter>>,
    /// Who the client is and what it may do.
    pub(super) auth: Auth,
    /// Whether a `refresh` changed the token's expiry since the connection's
    /// timer last looked.
    expiry_changed: bool,
    /// Frames waiting for the history store; boxed, and only while some do.
    pending: Option<Box<Pending>>,
}

impl<const ECHO: bool> Drop for Session<ECHO> {
    fn drop(&mut self) {
        for sub in self.subs.drain() {
            self.broker.unsubscribe(&sub.filter);
        }
        self.flush_metrics();
        self.broker.metrics().connections.dec();
    }
}

impl<const ECHO: bool> Session<ECHO> {
    /// A session of a client with credentials `auth`; it starts by sending
    /// `welcome`, unless its token was refused (or it echoes).
    pub(crate) fn new(broker: Broker, admission: Admission, codec: Codec, auth: Auth) -> Self {
        let rate_limit = broker.config().rate_limit;
        broker.metrics().connections.inc();
        broker.metrics().connections_total.inc();
        let mut session = Session {
            rate: (rate_limit > 0).then(|| Box::new(RateLimiter::new(rate_limit))),
            broker,
            admission,
            codec,
            subs: Subscriptions::default(),
            out: Outbox::default(),
            auth,
            expiry_changed: false,
            pending: None,
        };
        if ECHO || session.auth.refusal().is_some() {
            return session;
        }
        {
            let welcome = Envelope::Welcome {
                version: starling_protocol::PROTOCOL_VERSION,
                node: session.broker.node_id().clone(),
                codec: codec.name(),
                limits: session.broker.limits().clone(),
            };
            session.send(&welcome);
        }
        session
    }

    /// Why the connection must close before it starts: a refused token.
    pub(crate) fn refusal(&self) -> Option<Exit> {
        let error = self.auth.refusal()?;
        Some(Exit::close(
            CloseCode::Policy,
            format!("unauthorized: {error}"),
        ))
    }

    /// When the connection's token expires, if it does.
    pub(crate) fn token_expires(&self) -> Option<Instant> {
        self.auth.expires_at()
    }

    /// Whether a `refresh` changed the token's expiry since the last call.
    pub(crate) fn take_expiry_changed(&mut self) -> bool {
        std::mem::take(&mut self.expiry_changed)
    }

    pub(super) fn send(&mut self, envelope: &Envelope) {
        match self.codec.encode(envelope) {
            Ok(frame) => write_protocol_frame(&mut self.out.buf, &frame),
            Err(error) => warn!(conn_id = %self.admission.id, %error, "cannot encode frame"),
        }
    }

    pub(super) fn send_error(
        &mut self,
        id: Option<u64>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.broker.metrics().error(code);
        self.send(&Envelope::error(id, code, message));
    }

    /// Adds the counts of the last batch to the shared metrics.
    pub(crate) fn flush_metrics(&mut self) {
        let metrics = self.broker.metrics();
        if self.out.delivered > 0 {
            metrics
                .delivered
                .inc_by(u64::from(std::mem::take(&mut self.out.delivered)));
        }
        if self.out.sent_bytes > 0 {
            metrics
                .bytes_out
                .inc_by(u64::from(std::mem::take(&mut self.out.sent_bytes)));
        }
    }

    /// Handles one thing the peer sent.
    pub(crate) fn on_event(&mut self, event: Event<'_>) -> ControlFlow<Exit> {
        match event {
            Event::Message(kind, data) => self.on_message(kind, data),
            Event::Ping(data) => {
                framing::write_control(&mut self.out.buf, true, data);
                ControlFlow::Continue(())
            }
            Event::Pong => ControlFlow::Continue(()),
            Event::Close(code) => {
                // Echo the peer's code (RFC 6455, 5.5.1); the answer goes out
                // before the connection ends.
                framing::write_close(&mut self.out.buf, code.unwrap_or(1000), "");
                ControlFlow::Break(Exit::PeerClosed)
            }
        }
    }

    /// Handles one data message from the peer.
    fn on_message(&mut self, kind: Kind, data: &[u8]) -> ControlFlow<Exit> {
        if ECHO {
            // The reader has checked the frames, the size (up to the hard
            // limit: 1009 over it) and the UTF-8 of text.
            framing::write_message(&mut self.out.buf, kind, data);
            return ControlFlow::Continue(());
        }
        match (kind, self.codec.is_text()) {
            (Kind::Text, true) | (Kind::Binary, false) => {}
            (Kind::Binary, true) => {
                return ControlFlow::Break(Exit::close(
                    CloseCode::Unsupported,
                    "binary frame on a JSON connection",
                ));
            }
            (Kind::Text, false) => {
                return ControlFlow::Break(Exit::close(
                    CloseCode::Unsupported,
                    "text frame on a MessagePack connection",
                ));
            }
        }
        let max = self.broker.config().max_message_bytes;
        if data.len() > max {
            let id = self.codec.probe_id(data);
            self.send_error(
                id,
                ErrorCode::MessageTooLarge,
                format!("message of {} bytes is over the limit of {max}", data.len()),
            );
            return ControlFlow::Continue(());
        }
        if let Some(rate) = &mut self.rate {
            match rate.check(Instant::now()) {
                Verdict::Allow => {}
                Verdict::Deny => {
                    let id = self.codec.probe_id(data);
                    self.send_error(id, ErrorCode::RateLimited, "too many frames; slow down");
                    return ControlFlow::Continue(());
                }
                Verdict::Disconnect => {
                    return ControlFlow::Break(Exit::close(
                        CloseCode::RateLimited,
                        "rate limit exceeded repeatedly",
                    ));
                }
            }
        }
        match self.codec.decode_client(data) {
            Ok(envelope) => self.on_envelope(envelope),
            Err(error) => self.on_bad_frame(&error),
        }
        ControlFlow::Continue(())
    }

    fn on_bad_frame(&mut self, error: &CodecError) {
        debug!(conn_id = %self.admission.id, %error, "bad frame");
        self.send_error(error.id(), error.code(), error.to_string());
    }

    /// Handles a client frame as it comes.
    fn on_envelope(&mut self, envelope: Envelope) {
        self.handle(envelope, false);
    }

    /// One arm per client frame type. `first`: the frame was held behind a
    /// subscribe (see [`pending`](super::pending)) and its turn has come:
    /// what it waits for goes before what came after it.
    fn handle(&mut self, envelope: Envelope, first: bool) {
        let changes_subscriptions = matches!(
            envelope,
            Envelope::Subscribe { .. } | Envelope::Unsubscribe { .. } | Envelope::Refresh { .. }
        );
        if changes_subscriptions
            && !first
            && let Some(pending) = &mut self.pending
            && pending.holds_subscriptions()
        {
            return pending.defer(envelope);
        }
        match envelope {
            Envelope::Subscribe {
                id,
                topic,
                since,
                epoch,
                name,
                info,
            } => {
                let ask = Ask {
                    resume: since.map(|since| Resume { since, epoch }),
                    name,
                    info,
                };
                self.subscribe(id, topic, ask, first);
            }
            Envelope::Presence { id, topic, .. } => self.presence(id, topic),
            Envelope::Unsubscribe { id, topic } => self.unsubscribe(id, &topic),
            Envelope::Publish { id, topic, payload } => self.publish(id, topic, payload, first),
            Envelope::Ping { id } => self.send(&Envelope::Pong { id }),
            Envelope::Refresh { id, token } => self.refresh(id, &token),
            other => {
                // decode_client only yields client frames.
                self.send_error(
                    other.id(),
                    ErrorCode::UnknownType,
                    format!("{} is not a client frame", other.type_name()),
                );
            }
        }
    }

    fn ack(&mut self, id: Option<u64>, position: Option<Position>) {
        if let Some(id) = id {
            let (offset, epoch) = position.map(|p| (p.offset, p.epoch)).unzip();
            self.send(&Envelope::Ack { id, offset, epoch });
        }
    }

    /// The queue of frames waiting for the store, made when first needed.
    pub(super) fn pending(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Default::default)
    }

    /// Whether so many frames wait for the store that no more are read.
    pub(crate) fn pending_full(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.is_full())
    }

    /// Applies the results of waiting frames that are done, in frame order;
    /// returns whether there were any.
    pub(crate) fn poll_pending(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let mut progress = false;
        while let Some(pending) = &mut self.pending {
            match pending.poll_next(cx) {
                std::task::Poll::Ready(Some(done)) => {
                    progress = true;
                    self.finish(done);
                }
                std::task::Poll::Ready(None) => {
                    // Nothing waits: give the queue's memory back.
                    self.pending = None;
                }
                std::task::Poll::Pending => break,
            }
        }
        progress
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Published { id, result } => match result {
                Ok(published) => self.ack(id, published.position()),
                Err(error) => self.send_error(id, ErrorCode::Internal, error.to_string()),
            },
            Done::Subscribed {
                id,
                held,
                ask,
                result,
            } => match result {
                Ok(recovery) => {
                    let (filter, rx) = held.take();
                    self.subscribed(id, filter, rx, ask, recovery);
                }
                Err(error) => {
                    // Dropping `held` ends the subscription.
                    drop(held);
                    self.send_error(id, ErrorCode::Internal, error.to_string());
                }
            },
            Done::Position { id, result } => match result {
                Ok(position) => self.ack(id, position),
                Err(error) => self.send_error(id, ErrorCode::Internal, error.to_string()),
            },
            Done::Presence { id, topic, result } => match result {
                Ok(members) => self.answer_presence(id, topic, members),
                Err(error) => self.send_error(id, ErrorCode::Internal, error.to_string()),
            },
            Done::Deferred(envelope) => self.handle(envelope, true),
        }
    }

    fn publish(&mut self, id: Option<u64>, topic: Topic, payload: Payload, first: bool) {
        // `$` topics are refused by the broker whatever the token says.
        let from = match self.auth.identity() {
            _ if self.auth.is_off() => None,
            Some(identity) if topic.is_reserved() || identity.permissions.may_publish(&topic) => {
                Some(identity.sub.clone())
            }
            _ => {
                let message = format!("this token may not publish to {topic}");
                return self.send_error(id, ErrorCode::Unauthorized, message);
            }
        };
        let published = self
            .broker
            .publish_as(topic, payload, Source::WebSocket, from);
        match published {
            Ok(Answer::Now(published)) => self.ack(id, published.position()),
            Ok(later) => self.pending().publish(id, later, first),
            Err(error) => self.send_error(id, error.code(), error.to_string()),
        }
    }

    /// Whether the connection may subscribe to `filter`; when not, says so
    /// to the client (an `error` answering `id`).
    pub(super) fn may_subscribe(&mut self, id: Option<u64>, filter: &Filter) -> bool {
        let allowed = self.auth.may_subscribe(filter);
        if !allowed {
            let message = format!("this token may not subscribe to {filter}");
            self.send_error(id, ErrorCode::Unauthorized, message);
        }
        allowed
    }

    fn subscribe(&mut self, id: Option<u64>, mut filter: Filter, ask: Ask, first: bool) {
        if !self.may_subscribe(id, &filter) {
            return;
        }
        if self.subs.find(&filter).is_some() {
            match self.broker.position(&filter) {
                Answer::Now(position) => self.ack(id, position),
                later => self.pending().position(id, later, first),
            }
            return;
        }
        let max = self.broker.config().max_subscriptions;
        if self.subs.len() >= max {
            self.send_error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            );
            return;
        }
        let max = self.broker.config().max_patterns;
        if filter.is_pattern() && self.subs.patterns() >= max {
            self.send_error(
                id,
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} pattern subscriptions"),
            );
            return;
        }
        if let Err(error) = crate::presence::check(ask.name.as_deref(), ask.info.as_ref()) {
            return self.send_error(id, ErrorCode::BadFrame, error.to_string());
        }
        let (rx, answer) = self.broker.subscribe(&mut filter, ask.resume.as_ref());
        match answer {
            Answer::Now(recovery) => self.subscribed(id, filter, rx, ask, recovery),
            later => {
                let held = Held::new(self.broker.clone(), filter, rx);
                self.pending().subscribe(id, held, ask, later, first);
            }
        }
    }

    /// Completes a subscribe once its topic's history has answered.
    fn subscribed(
        &mut self,
        id: Option<u64>,
        filter: Filter,
        rx: DeliveryReceiver,
        ask: Ask,
        recovery: Recovery,
    ) {
        debug!(conn_id = %self.admission.id, topic = %filter, resume = ?ask.resume, reset = recovery.reset, "subscribed");
        self.ack(id, recovery.position);
        if recovery.reset {
            self.broker.metrics().history_resets.inc();
            self.send(&Envelope::Lagged {
                topic: filter.clone(),
                missed: None,
                reset: true,
            });
        }
        // After the ack: the member's own `join` comes after it.
        let member = self.enter_presence(&filter, ask);
        // The replay is read as the socket takes it, before live messages.
        self.subs
            .insert(filter, rx, recovery.replay, recovery.live_after, member);
    }

    fn unsubscribe(&mut self, id: Option<u64>, filter: &Filter) {
        match self
            .subs
            .find(filter)
            .and_then(|slot| self.subs.remove(slot))
        {
            Some(sub) => {
                drop(sub);
                self.broker.unsubscribe(filter);
                debug!(conn_id = %self.admission.id, topic = %filter, "unsubscribed");
                self.ack(id, None);
            }
            None => self.send_error(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {filter}"),
            ),
        }
    }

    /// Replaces the connection's token: same `sub`, new permissions and
    /// expiry. Subscriptions the new permissions do not allow end, each with
    /// an `error`.
    fn refresh(&mut self, id: Option<u64>, token: &str) {
        let (Some(verifier), Some(current)) = (self.broker.verifier(), self.auth.identity_mut())
        else {
            // Auth is off: there is no token to replace.
            return self.ack(id, None);
        };
        // Verifying a signature costs far more than any other frame: one
        // attempt per second, whether it succeeds or not.
        let now = Instant::now();
        if current
            .last_refresh
            .is_some_and(|at| now.duration_since(at) < REFRESH_INTERVAL)
        {
            let message = "at most one refresh per second";
            return self.send_error(id, ErrorCode::RateLimited, message);
        }
        current.last_refresh = Some(now);
        let sub = current.sub.clone();
        let identity = match verifier.verify(token) {
            Ok(identity) if identity.sub != sub => Err(AuthError::OtherSubject),
            other => other,
        };
        let mut identity = match identity {
            Ok(identity) => identity,
            Err(error) => {
                debug!(conn_id = %self.admission.id, %error, "refresh refused");
                return self.send_error(
                    id,
                    ErrorCode::Unauthorized,
                    format!("unauthorized: {error}"),
                );
            }
        };
        let ended = self
            .subs
            .remove_where(|filter| !identity.permissions.may_subscribe(filter));
        for sub in ended {
            self.broker.unsubscribe(&sub.filter);
            let message = format!(
                "subscription to {} ended: the new token does not allow it",
                sub.filter
            );
            self.send_error(None, ErrorCode::Unauthorized, message);
        }
        identity.last_refresh = Some(now);
        self.auth = Auth::verified(identity);
        self.expiry_changed = true;
        self.ack(id, None);
    }

    /// Takes deliveries from the subscriptions that have some, while the
    /// outbound buffer holds less than `bound` bytes.
    pub(crate) fn deliver(&mut self, bound: usize) -> ControlFlow<Exit> {
        let Session {
            broker,
            admission,
            codec,
            subs,
            out,
            ..
        } = self;
        let mut exit = None;
        let _ = subs.deliver(out, *codec, bound, |filter, lag| {
            let missed = lag.missed();
            let metrics = broker.metrics();
            metrics.lagged_events.inc();
            metrics.lagged_messages.inc_by(missed);
            debug!(conn_id = %admission.id, topic = %filter, ?lag, "subscriber lagged");
            // Messages a replay no longer finds are the history's loss,
            // not the subscriber's slowness.
            if matches!(lag, Lag::Live(_))
                && broker.config().slow_consumer == SlowConsumerPolicy::Disconnect
            {
                exit = Some(Exit::close(
                    CloseCode::SlowConsumer,
                    format!("slow consumer: missed {missed} messages on {filter}"),
                ));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        match exit {
            Some(exit) => ControlFlow::Break(exit),
            None => ControlFlow::Continue(()),
        }
    }
}
