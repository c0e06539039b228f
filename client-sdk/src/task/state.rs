//! The connection task's state, and the frames it queues for the broker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use starling_protocol::{Codec, Envelope, Filter};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, warn};

use crate::command::{Command, Shared};
use crate::connection;
use crate::error::{Error, Result};
use crate::outbox::{Outbox, Outgoing, Pending, answer, fail};
use crate::table::SubTable;
use crate::token::TokenError;

/// Keepalive bookkeeping for one connection.
pub(super) struct Liveness {
    pub(super) last_ping: Instant,
    /// When the unanswered keepalive `ping` was queued.
    pub(super) outstanding: Option<Instant>,
    pub(super) last_heard: Instant,
}

impl Liveness {
    pub(super) fn new(now: Instant) -> Self {
        Liveness {
            last_ping: now,
            outstanding: None,
            last_heard: now,
        }
    }

    pub(super) fn deadline(&self, interval: Duration, timeout: Duration) -> Instant {
        match self.outstanding {
            Some(sent) => sent + timeout,
            None => self.last_ping + interval,
        }
    }
}

/// `close` in progress.
pub(super) struct Closing {
    pub(super) replies: Vec<oneshot::Sender<Result<()>>>,
    pub(super) reason: &'static str,
    pub(super) deadline: Instant,
    pub(super) done: bool,
}

/// The background task behind every handle of one client.
pub(crate) struct Task {
    pub(super) url: String,
    pub(super) shared: Arc<Shared>,
    pub(super) codec: Codec,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) commands_open: bool,
    pub(super) table: SubTable,
    pub(super) out: Outbox,
    pub(super) connected: bool,
    pub(super) alive: Liveness,
    pub(super) closing: Option<Closing>,
    /// Ids of the `subscribe` frames sent again after a reconnect; once all
    /// are answered, `Reconnected` is emitted.
    pub(super) resubscribing: HashSet<u64>,
    /// The token of the current connection, when the broker needs one.
    pub(crate) token: Option<String>,
    /// When to ask the token provider for the next token.
    pub(super) refresh_at: Option<Instant>,
    /// The token provider's answer, while it is being asked.
    pub(super) refreshing: Option<oneshot::Receiver<std::result::Result<String, TokenError>>>,
}

impl Task {
    pub(crate) fn new(
        url: String,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Task {
            url,
            codec: shared.options.codec,
            shared,
            commands,
            commands_open: true,
            table: SubTable::default(),
            out: Outbox::default(),
            connected: false,
            alive: Liveness::new(Instant::now()),
            closing: None,
            resubscribing: HashSet::new(),
            token: None,
            refresh_at: None,
            refreshing: None,
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.shared.next_id()
    }

    fn encode(&self, envelope: &Envelope) -> Option<WsMessage> {
        match self.codec.encode(envelope) {
            Ok(frame) => Some(connection::to_ws(frame)),
            Err(error) => {
                warn!(%error, frame = envelope.type_name(), "cannot encode frame");
                None
            }
        }
    }

    /// Queues a frame with an id; what it waits for is resolved by the answer.
    pub(super) fn push_request(&mut self, envelope: &Envelope, id: u64, pending: Pending) {
        match self.encode(envelope) {
            Some(message) => self.out.queue.push_back(Outgoing {
                message,
                permit: false,
                awaits: Some((id, pending)),
            }),
            None => fail(pending, || Error::Encode("cannot encode frame".into())),
        }
    }

    pub(super) fn push_ping(&mut self, pending: Pending) {
        let id = self.next_id();
        self.push_request(&Envelope::Ping { id: Some(id) }, id, pending);
    }

    pub(super) fn release_permits(&self, n: usize) {
        if n > 0 {
            self.shared.outbound.add_permits(n);
        }
    }

    pub(super) fn send_unsubscribe(
        &mut self,
        filter: Filter,
        reply: Option<oneshot::Sender<Result<()>>>,
    ) {
        if !self.connected {
            // The broker forgot it with the connection; it is not sent again.
            answer(reply, Ok(()));
            return;
        }
        debug!(topic = %filter, "unsubscribing");
        let id = self.next_id();
        self.push_request(
            &Envelope::Unsubscribe {
                id: Some(id),
                topic: filter,
            },
            id,
            Pending::Unsubscribe(reply),
        );
    }
}
