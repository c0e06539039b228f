//! How the connection task handles each [`Command`] from the handles.

use starling_protocol::{Envelope, Filter};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::state::{Closing, Task};
use crate::command::Command;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::options::OfflinePolicy;
use crate::outbox::{Outgoing, Pending, answer};

impl Task {
    pub(super) fn on_command(&mut self, command: Command) {
        if self.closing.is_some() {
            self.reject(command);
            return;
        }
        let can_queue = self.connected || self.shared.options.offline == OfflinePolicy::Queue;
        match command {
            Command::Publish { message } => {
                if can_queue {
                    self.out.queue.push_back(Outgoing {
                        message,
                        permit: true,
                        awaits: None,
                    });
                } else {
                    self.release_permits(1);
                }
            }
            Command::PublishAck { id, message, reply } => {
                if can_queue {
                    self.out.queue.push_back(Outgoing {
                        message,
                        permit: true,
                        awaits: Some((id, Pending::Publish(reply))),
                    });
                } else {
                    self.release_permits(1);
                    let _ = reply.send(Err(Error::Disconnected));
                }
            }
            Command::Subscribe {
                filter,
                local_id,
                sender,
                reply,
            } => self.subscribe(filter, local_id, sender, reply),
            Command::Unsubscribe {
                filter,
                local_id,
                reply,
            } => match self.table.detach(filter.as_str(), local_id) {
                Some(filter) => self.send_unsubscribe(filter, reply),
                None => answer(reply, Ok(())),
            },
            Command::Flush { reply } => {
                if can_queue {
                    self.push_ping(Pending::Flush(reply));
                } else {
                    let _ = reply.send(Err(Error::Disconnected));
                }
            }
            Command::Close { reply } => self.begin_close(Some(reply), "closed by the application"),
            Command::Presence { topic, reply } => {
                if self.connected {
                    let id = self.next_id();
                    let ask = Envelope::Presence {
                        id: Some(id),
                        topic,
                        count: None,
                        members: None,
                    };
                    self.push_request(&ask, id, Pending::Presence(reply));
                } else {
                    let _ = reply.send(Err(Error::Disconnected));
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        filter: Filter,
        local_id: u64,
        sender: mpsc::Sender<Message>,
        reply: oneshot::Sender<Result<()>>,
    ) {
        let key = filter.as_arc().clone();
        let first = self.table.attach(&filter, local_id, sender);
        if first && self.connected {
            debug!(topic = %filter, "subscribing");
            let id = self.next_id();
            self.table.set_pending(&key, id);
            self.table.add_waiter(&key, local_id, reply);
            self.push_request(
                &Envelope::Subscribe {
                    name: self.shared.options.member.clone(),
                    info: self.shared.options.info.clone(),
                    epoch: None,
                    id: Some(id),
                    topic: filter,
                    since: None,
                },
                id,
                Pending::Subscribe(key),
            );
        } else if self.table.is_pending(&key) {
            self.table.add_waiter(&key, local_id, reply);
        } else if reply.send(Ok(())).is_err()
            && let Some(filter) = self.table.detach(&key, local_id)
        {
            self.send_unsubscribe(filter, None);
        }
    }

    /// Answers a command that comes while the client is closing.
    pub(super) fn reject(&mut self, command: Command) {
        match command {
            Command::Publish { .. } => self.release_permits(1),
            Command::PublishAck { reply, .. } => {
                self.release_permits(1);
                let _ = reply.send(Err(Error::Closed));
            }
            Command::Subscribe { reply, .. } => {
                let _ = reply.send(Err(Error::Closed));
            }
            Command::Unsubscribe { reply, .. } => answer(reply, Ok(())),
            Command::Flush { reply } => {
                let _ = reply.send(Err(Error::Closed));
            }
            Command::Presence { reply, .. } => {
                let _ = reply.send(Err(Error::Closed));
            }
            Command::Close { reply } => match &mut self.closing {
                Some(closing) => closing.replies.push(reply),
                None => {
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }

    /// Starts closing: a `ping` behind everything queued, then (on its
    /// `pong`, or after the request timeout) the close handshake with 1000.
    pub(super) fn begin_close(
        &mut self,
        reply: Option<oneshot::Sender<Result<()>>>,
        reason: &'static str,
    ) {
        if self.closing.is_none() {
            debug!(reason, "closing");
            self.closing = Some(Closing {
                replies: Vec::new(),
                reason,
                deadline: Instant::now() + self.shared.options.request_timeout,
                done: !self.connected,
            });
            if self.connected {
                self.push_ping(Pending::Closing);
            }
        }
        if let (Some(closing), Some(reply)) = (&mut self.closing, reply) {
            closing.replies.push(reply);
        }
    }
}
