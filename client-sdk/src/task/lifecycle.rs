//! The connection task across connections: taking a new one into use,
//! losing one, reconnecting with backoff, and stopping for good.

use std::future::Future;
use std::sync::atomic::Ordering;

use starling_protocol::Envelope;
use tokio::time::Instant;
use tracing::{debug, info};

use super::state::{Liveness, Task};
use crate::connection::{self, Welcome, Ws};
use crate::error::Error;
use crate::event::Event;
use crate::options::{OfflinePolicy, backoff};
use crate::outbox::{Pending, fail};

impl Task {
    pub(super) fn on_connected(&mut self, welcome: &Welcome, reconnect: bool) {
        info!(url = %self.url, node = %welcome.node, reconnect, "connected");
        let token = self.token.take();
        self.use_token(token);
        self.connected = true;
        self.shared.apply_welcome(welcome);
        self.shared.connected.store(true, Ordering::Relaxed);
        self.alive = Liveness::new(Instant::now());
        self.shared.emit(Event::Connected {
            node: welcome.node.clone(),
        });
        if !reconnect {
            return;
        }
        // Subscriptions go first, then whatever waited while offline.
        let frames = self.table.resubscribe(|| self.shared.next_id());
        let queued = std::mem::take(&mut self.out.queue);
        for (id, filter, position) in frames {
            let key = filter.as_arc().clone();
            debug!(topic = %filter, ?position, "subscribing again");
            self.resubscribing.insert(id);
            let (since, epoch) = position.map(|p| (p.offset, p.epoch)).unzip();
            self.push_request(
                &Envelope::Subscribe {
                    name: self.shared.options.member.clone(),
                    info: self.shared.options.info.clone(),
                    id: Some(id),
                    topic: filter,
                    since,
                    epoch: epoch.flatten(),
                },
                id,
                Pending::Subscribe(key),
            );
        }
        self.out.queue.extend(queued);
        if self.resubscribing.is_empty() {
            self.shared.emit(Event::Reconnected);
        }
    }

    /// The connection is gone: fails what was in flight and keeps (under
    /// [`OfflinePolicy::Queue`]) what was not written yet.
    pub(super) fn on_disconnect(&mut self) {
        self.connected = false;
        self.shared.connected.store(false, Ordering::Relaxed);
        self.resubscribing.clear();
        for (_, pending) in self.out.inflight.drain() {
            fail(pending, || Error::Disconnected);
        }
        let keep_queue = self.shared.options.offline == OfflinePolicy::Queue;
        let queue = std::mem::take(&mut self.out.queue);
        let mut released = 0;
        for item in queue {
            let keep = keep_queue
                && match &item.awaits {
                    None | Some((_, Pending::Publish(_))) => item.permit,
                    Some((_, Pending::Flush(_))) => true,
                    Some(_) => false,
                };
            if keep {
                self.out.queue.push_back(item);
                continue;
            }
            if item.permit {
                released += 1;
            }
            if let Some((_, pending)) = item.awaits {
                fail(pending, || Error::Disconnected);
            }
        }
        self.out.flush_needed = false;
        self.release_permits(released);
        self.table.on_disconnect();
    }

    /// Reconnects with backoff and full jitter, serving commands meanwhile.
    /// `Err` says why the client stops instead.
    pub(super) async fn reconnect(&mut self) -> std::result::Result<(Ws, Welcome), String> {
        let policy = self.shared.options.reconnect;
        let mut attempt: u32 = 0;
        // The last token the broker refused: the provider must do better.
        let mut refused: Option<String> = None;
        self.refreshing = None;
        loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(format!("gave up after {attempt} reconnect attempts"));
            }
            let delay = backoff(attempt, &policy, &mut rand::rng());
            debug!(attempt, ?delay, "reconnecting after a delay");
            self.while_offline(tokio::time::sleep(delay)).await?;
            let shared = self.shared.clone();
            let token = match self
                .while_offline(async move { connection::token(&shared.options).await })
                .await?
            {
                Ok(token) => token,
                Err(error) => {
                    debug!(%error, attempt, "no token for this attempt");
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            if token.is_some() && token == refused {
                return Err("the token provider gave the refused token again".into());
            }
            let shared = self.shared.clone();
            let url = self.url.clone();
            let presented = token.clone();
            let opened = self
                .while_offline(async move {
                    connection::open(&url, &shared.options, presented.as_deref()).await
                })
                .await?;
            match opened {
                Ok(connection) => {
                    self.token = token;
                    return Ok(connection);
                }
                Err(Error::Unauthorized { reason })
                    if self.shared.options.token_provider.is_some() =>
                {
                    debug!(%reason, attempt, "token refused; asking the provider again");
                    refused = token;
                    attempt = attempt.saturating_add(1);
                }
                Err(error) if is_terminal(&error) => {
                    return Err(format!("reconnect refused: {error}"));
                }
                Err(error) => {
                    debug!(%error, attempt, "reconnect attempt failed");
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Runs `fut` while serving commands; `Err` when the client must stop
    /// (closed by the application or every handle dropped).
    async fn while_offline<F: Future>(&mut self, fut: F) -> std::result::Result<F::Output, String> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                output = &mut fut => return Ok(output),
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => {
                        self.on_command(command);
                        if let Some(closing) = &self.closing {
                            return Err(closing.reason.to_owned());
                        }
                    }
                    None => {
                        self.commands_open = false;
                        return Err("every handle was dropped while disconnected".into());
                    }
                },
            }
        }
    }

    /// The client stops: everything waiting fails with `Closed`, every
    /// subscription stream ends, and `Closed` is the last event.
    pub(super) fn finish(mut self, reason: String) {
        info!(url = %self.url, %reason, "client stopped");
        self.connected = false;
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.outbound.close();
        for (_, pending) in self.out.inflight.drain() {
            fail(pending, || Error::Closed);
        }
        for item in self.out.queue.drain(..) {
            if let Some((_, pending)) = item.awaits {
                fail(pending, || Error::Closed);
            }
        }
        self.table.close_all();
        self.commands.close();
        let closing = self.closing.take();
        while let Ok(command) = self.commands.try_recv() {
            self.reject(command);
        }
        if let Some(closing) = closing {
            for reply in closing.replies {
                let _ = reply.send(Ok(()));
            }
        }
        self.shared.emit(Event::Closed { reason });
    }
}

/// Whether a failed reconnect attempt means "stop trying".
fn is_terminal(error: &Error) -> bool {
    match error {
        Error::Refused { status, .. } => {
            (400..500).contains(status) && *status != 408 && *status != 429
        }
        Error::InvalidUrl { .. }
        | Error::InvalidOption { .. }
        | Error::Unauthorized { .. }
        | Error::Tls(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_refusals_stop_reconnecting() {
        let refused = |status| Error::Refused {
            status,
            code: "x".into(),
            message: String::new(),
        };
        assert!(is_terminal(&refused(400)));
        assert!(is_terminal(&refused(403)));
        assert!(!is_terminal(&refused(429)));
        assert!(!is_terminal(&refused(503)));
        assert!(!is_terminal(&Error::Disconnected));
    }
}
