//! The connection task's subscription table: which local [`Subscription`]s
//! listen to which filter, and what the broker has confirmed.
//!
//! The broker holds at most one subscription per filter and connection, so
//! the table keeps one entry per filter with every local subscription that
//! names it. Messages are dispatched by filter: the frame's `sub` for a
//! pattern, its `topic` otherwise, exactly as the broker matched them.
//!
//! [`Subscription`]: crate::Subscription

use std::collections::HashMap;
use std::sync::Arc;

use starling_protocol::{ErrorCode, Filter};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::message::Message;

/// One local subscription.
struct Local {
    id: u64,
    sender: mpsc::Sender<Message>,
    /// Dropping messages for it since the last one that got through.
    overflowing: bool,
}

/// Where a subscription to a topic stands in the topic's history: what a
/// reconnect resumes from (`since` and `epoch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The last offset seen (or, before any message, the topic's latest
    /// when the subscription began).
    pub(crate) offset: u64,
    /// The epoch of `offset`, when the broker gave one.
    pub(crate) epoch: Option<Arc<str>>,
}

/// Everything subscribed to one filter.
struct Entry {
    filter: Filter,
    locals: Vec<Local>,
    /// Callers of `subscribe` waiting for the broker's answer.
    waiters: Vec<(u64, oneshot::Sender<Result<()>>)>,
    /// The id of the `subscribe` frame in flight, if any.
    subscribe_id: Option<u64>,
    /// Where it stands in the topic's history, for `since` after a reconnect.
    position: Option<Position>,
}

/// What a dispatch did, for the task to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dispatched {
    /// Subscriptions whose queue just became full.
    pub(crate) slow: Vec<Filter>,
    /// An entry whose every local subscription is gone: unsubscribe it.
    pub(crate) emptied: Option<Filter>,
}

/// The outcome of the broker's answer to a `subscribe`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// The answer is for a frame the table no longer waits for.
    Stale,
    /// Acked; `emptied` when every waiter had given up meanwhile.
    Acked { emptied: Option<Filter> },
    /// Refused: the entry is gone. `orphaned` when live subscriptions (not
    /// waiting callers) ended because of it.
    Refused { orphaned: bool },
}

#[derive(Default)]
pub(crate) struct SubTable {
    entries: HashMap<Arc<str>, Entry>,
}

impl SubTable {
    /// Attaches a local subscription; returns `true` when it is the first
    /// for its filter (the broker must be told).
    pub(crate) fn attach(
        &mut self,
        filter: &Filter,
        local_id: u64,
        sender: mpsc::Sender<Message>,
    ) -> bool {
        let local = Local {
            id: local_id,
            sender,
            overflowing: false,
        };
        match self.entries.get_mut(filter.as_str()) {
            Some(entry) => {
                entry.locals.push(local);
                false
            }
            None => {
                self.entries.insert(
                    filter.as_arc().clone(),
                    Entry {
                        filter: filter.clone(),
                        locals: vec![local],
                        waiters: Vec::new(),
                        subscribe_id: None,
                        position: None,
                    },
                );
                true
            }
        }
    }

    /// Records the `subscribe` frame sent for `filter`.
    pub(crate) fn set_pending(&mut self, filter: &str, id: u64) {
        if let Some(entry) = self.entries.get_mut(filter) {
            entry.subscribe_id = Some(id);
        }
    }

    /// Whether a `subscribe` for `filter` waits for its answer.
    pub(crate) fn is_pending(&self, filter: &str) -> bool {
        self.entries
            .get(filter)
            .is_some_and(|e| e.subscribe_id.is_some())
    }

    /// Makes `reply` wait for the answer to the pending `subscribe`.
    pub(crate) fn add_waiter(
        &mut self,
        filter: &str,
        local_id: u64,
        reply: oneshot::Sender<Result<()>>,
    ) {
        match self.entries.get_mut(filter) {
            Some(entry) => entry.waiters.push((local_id, reply)),
            None => {
                let _ = reply.send(Err(Error::Closed));
            }
        }
    }

    /// Detaches a local subscription. Returns the filter when it was the last
    /// one (the entry is removed; the broker must be told).
    pub(crate) fn detach(&mut self, filter: &str, local_id: u64) -> Option<Filter> {
        let entry = self.entries.get_mut(filter)?;
        entry.locals.retain(|l| l.id != local_id);
        entry.waiters.retain(|(id, _)| *id != local_id);
        if entry.locals.is_empty() {
            self.entries.remove(filter).map(|e| e.filter)
        } else {
            None
        }
    }

    /// Hands a message to every local subscription of the filter that
    /// matched (`key`: the frame's `sub`, or its topic).
    pub(crate) fn dispatch(&mut self, key: &str, message: Message) -> Dispatched {
        let mut done = Dispatched::default();
        let Some(entry) = self.entries.get_mut(key) else {
            // A message still in flight when we unsubscribed.
            return done;
        };
        if let Some(offset) = message.offset {
            let epoch = message
                .epoch
                .clone()
                .or_else(|| entry.position.take().and_then(|p| p.epoch));
            entry.position = Some(Position { offset, epoch });
        }
        let mut closed = false;
        let last = entry.locals.len().saturating_sub(1);
        let mut message = Some(message);
        for (i, local) in entry.locals.iter_mut().enumerate() {
            let copy = if i == last {
                message.take()
            } else {
                message.clone()
            };
            let Some(copy) = copy else { break };
            match local.sender.try_send(copy) {
                Ok(()) => local.overflowing = false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !local.overflowing {
                        local.overflowing = true;
                        done.slow.push(entry.filter.clone());
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            // Its `Subscription` is gone (its unsubscribe is on the way, or it
            // was dropped without a runtime): forget it now.
            entry.locals.retain(|l| !l.sender.is_closed());
            if entry.locals.is_empty() && entry.waiters.is_empty() {
                done.emptied = self.entries.remove(key).map(|e| e.filter);
            }
        }
        done
    }

    /// Applies the broker's answer to `subscribe` frame `id` for `filter`.
    pub(crate) fn answer(
        &mut self,
        filter: &str,
        id: u64,
        result: std::result::Result<(), (ErrorCode, String)>,
    ) -> Answered {
        let Some(entry) = self.entries.get_mut(filter) else {
            return Answered::Stale;
        };
        if entry.subscribe_id != Some(id) {
            return Answered::Stale;
        }
        entry.subscribe_id = None;
        match result {
            Ok(()) => {
                for (local_id, reply) in std::mem::take(&mut entry.waiters) {
                    if reply.send(Ok(())).is_err() {
                        // The caller gave up (timeout or cancelled).
                        entry.locals.retain(|l| l.id != local_id);
                    }
                }
                let emptied = if entry.locals.is_empty() {
                    self.entries.remove(filter).map(|e| e.filter)
                } else {
                    None
                };
                Answered::Acked { emptied }
            }
            Err((code, message)) => {
                let Some(entry) = self.entries.remove(filter) else {
                    return Answered::Stale;
                };
                let orphaned = entry
                    .locals
                    .iter()
                    .any(|l| !entry.waiters.iter().any(|(id, _)| *id == l.id));
                for (_, reply) in entry.waiters {
                    let _ = reply.send(Err(Error::Server {
                        code,
                        message: message.clone(),
                    }));
                }
                Answered::Refused { orphaned }
            }
        }
    }

    /// The connection is gone: nothing is in flight any more. Callers
    /// waiting for an answer get `Ok`, as their subscription is registered
    /// and will be sent with the reconnect.
    pub(crate) fn on_disconnect(&mut self) {
        self.entries.retain(|_, entry| {
            entry.subscribe_id = None;
            for (local_id, reply) in std::mem::take(&mut entry.waiters) {
                if reply.send(Ok(())).is_err() {
                    entry.locals.retain(|l| l.id != local_id);
                }
            }
            !entry.locals.is_empty()
        });
    }

    /// Records where the topic's history stood when the broker acked the
    /// subscribe of `key` (the ack's `offset` and `epoch`). A new
    /// subscription starts there; one whose position the broker cannot
    /// honour (another epoch, an offset beyond the latest: the broker
    /// answers with a reset and replays everything retained) starts over
    /// from the beginning of the new epoch; otherwise the position stays.
    pub(crate) fn positioned(&mut self, key: &str, offset: u64, epoch: Option<Arc<str>>) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let at_ack = Position { offset, epoch };
        entry.position = match entry.position.take() {
            None => Some(at_ack),
            // A position without an epoch (messages from a broker that gave
            // none) is checked on its offset alone, as the broker does.
            Some(mine)
                if mine.offset > at_ack.offset
                    || mine.epoch.is_some() && mine.epoch != at_ack.epoch =>
            {
                Some(Position {
                    offset: 0,
                    epoch: at_ack.epoch,
                })
            }
            Some(mine) => Some(Position {
                offset: mine.offset,
                epoch: at_ack.epoch,
            }),
        };
    }

    /// Every filter to subscribe again on a new connection, with its
    /// position (for concrete topics only: offsets belong to a topic, so
    /// they mean nothing for a pattern). Marks each as pending under a
    /// fresh id from `next_id`.
    pub(crate) fn resubscribe(
        &mut self,
        mut next_id: impl FnMut() -> u64,
    ) -> Vec<(u64, Filter, Option<Position>)> {
        let mut frames: Vec<(u64, Filter, Option<Position>)> = self
            .entries
            .values_mut()
            .map(|entry| {
                let id = next_id();
                entry.subscribe_id = Some(id);
                let position = if entry.filter.is_pattern() {
                    None
                } else {
                    entry.position.clone()
                };
                (id, entry.filter.clone(), position)
            })
            .collect();
        frames.sort_by_key(|(id, ..)| *id);
        frames
    }

    /// The client stops: waiting callers get `Closed` and every stream ends.
    pub(crate) fn close_all(&mut self) {
        for (_, entry) in self.entries.drain() {
            for (_, reply) in entry.waiters {
                let _ = reply.send(Err(Error::Closed));
            }
        }
    }

    /// How many filters are subscribed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::{Payload, Topic};

    fn message(topic: &str, offset: Option<u64>) -> Message {
        Message {
            epoch: None,
            topic: Topic::new(topic).unwrap(),
            payload: Payload::from_json("1").unwrap(),
            offset,
            pattern: None,
            from: None,
        }
    }

    fn filter(name: &str) -> Filter {
        Filter::new(name).unwrap()
    }

    #[test]
    fn two_locals_of_one_filter_each_get_every_message() {
        let mut table = SubTable::default();
        let (a, mut ra) = mpsc::channel(8);
        let (b, mut rb) = mpsc::channel(8);
        assert!(table.attach(&filter("chat.lobby"), 1, a));
        assert!(!table.attach(&filter("chat.lobby"), 2, b));
        assert_eq!(table.len(), 1);
        let done = table.dispatch("chat.lobby", message("chat.lobby", None));
        assert_eq!(done, Dispatched::default());
        assert_eq!(ra.try_recv().unwrap().topic.as_str(), "chat.lobby");
        assert_eq!(rb.try_recv().unwrap().topic.as_str(), "chat.lobby");
        // Detaching the first keeps the broker subscription; the last removes it.
        assert_eq!(table.detach("chat.lobby", 1), None);
        assert_eq!(table.detach("chat.lobby", 2), Some(filter("chat.lobby")));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_reports_once_per_episode() {
        let mut table = SubTable::default();
        let (a, mut ra) = mpsc::channel(1);
        table.attach(&filter("t"), 1, a);
        assert!(table.dispatch("t", message("t", None)).slow.is_empty());
        assert_eq!(table.dispatch("t", message("t", None)).slow, [filter("t")]);
        assert!(table.dispatch("t", message("t", None)).slow.is_empty());
        ra.try_recv().unwrap();
        assert!(table.dispatch("t", message("t", None)).slow.is_empty());
        assert_eq!(table.dispatch("t", message("t", None)).slow, [filter("t")]);
    }

    #[test]
    fn a_dropped_receiver_empties_the_entry() {
        let mut table = SubTable::default();
        let (a, ra) = mpsc::channel(1);
        table.attach(&filter("t"), 1, a);
        drop(ra);
        assert_eq!(
            table.dispatch("t", message("t", None)).emptied,
            Some(filter("t"))
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn resubscribe_uses_the_last_offset_of_topics_only() {
        let mut table = SubTable::default();
        let (a, _ra) = mpsc::channel(8);
        let (b, _rb) = mpsc::channel(8);
        table.attach(&filter("orders.new"), 1, a);
        table.attach(&filter("orders.*"), 2, b);
        table.dispatch("orders.new", message("orders.new", Some(41)));
        table.dispatch("orders.new", message("orders.new", Some(42)));
        table.dispatch("orders.*", message("orders.new", Some(42)));
        let mut ids = 100..;
        let mut frames = table.resubscribe(|| ids.next().unwrap());
        frames.sort_by(|x, y| x.1.as_str().cmp(y.1.as_str()));
        let got: Vec<(&str, Option<u64>)> = frames
            .iter()
            .map(|(_, f, p)| (f.as_str(), p.as_ref().map(|p| p.offset)))
            .collect();
        assert_eq!(got, [("orders.*", None), ("orders.new", Some(42))]);
        assert!(table.is_pending("orders.new"));
    }

    /// The position a resubscribe of `key` would send.
    fn resume_at(table: &mut SubTable, key: &str) -> Option<(u64, Option<String>)> {
        let mut ids = 100..;
        table
            .resubscribe(|| ids.next().unwrap())
            .into_iter()
            .find(|(_, f, _)| f.as_str() == key)
            .and_then(|(_, _, p)| p)
            .map(|p| (p.offset, p.epoch.map(|e| e.to_string())))
    }

    fn with_epoch(mut message: Message, epoch: &str) -> Message {
        message.epoch = Some(epoch.into());
        message
    }

    #[test]
    fn a_subscription_resumes_from_its_ack_then_from_its_messages() {
        let mut table = SubTable::default();
        let (a, _ra) = mpsc::channel(8);
        table.attach(&filter("chat.room"), 1, a);
        assert_eq!(resume_at(&mut table, "chat.room"), None);
        // Acked on an empty topic: a reconnect asks for everything after 0.
        table.positioned("chat.room", 0, Some("e1".into()));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((0, Some("e1".into())))
        );
        table.dispatch("chat.room", with_epoch(message("chat.room", Some(7)), "e1"));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((7, Some("e1".into())))
        );
        // The resubscribe's ack in the same epoch leaves the position alone
        // (the replay that follows moves it).
        table.positioned("chat.room", 9, Some("e1".into()));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((7, Some("e1".into())))
        );
    }

    #[test]
    fn a_void_position_starts_over_in_the_new_epoch() {
        let mut table = SubTable::default();
        let (a, _ra) = mpsc::channel(8);
        table.attach(&filter("chat.room"), 1, a);
        table.dispatch(
            "chat.room",
            with_epoch(message("chat.room", Some(41)), "e1"),
        );
        // The broker restarted: a new epoch.
        table.positioned("chat.room", 5, Some("e2".into()));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((0, Some("e2".into())))
        );
        // Same epoch but fewer offsets than the client saw: void too.
        table.dispatch(
            "chat.room",
            with_epoch(message("chat.room", Some(41)), "e2"),
        );
        table.positioned("chat.room", 5, Some("e2".into()));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((0, Some("e2".into())))
        );
    }

    #[test]
    fn a_position_without_an_epoch_is_checked_on_its_offset_alone() {
        let mut table = SubTable::default();
        let (a, _ra) = mpsc::channel(8);
        table.attach(&filter("chat.room"), 1, a);
        table.dispatch("chat.room", message("chat.room", Some(3)));
        table.positioned("chat.room", 5, Some("e1".into()));
        assert_eq!(
            resume_at(&mut table, "chat.room"),
            Some((3, Some("e1".into())))
        );
    }

    #[test]
    fn a_refused_subscribe_fails_its_waiters_and_ends_the_entry() {
        let mut table = SubTable::default();
        let (a, mut ra) = mpsc::channel(8);
        table.attach(&filter("t"), 1, a);
        table.set_pending("t", 7);
        let (reply, mut answer) = oneshot::channel();
        table.add_waiter("t", 1, reply);
        assert_eq!(table.answer("t", 6, Ok(())), Answered::Stale);
        let outcome = table.answer(
            "t",
            7,
            Err((ErrorCode::TooManySubscriptions, "full".into())),
        );
        assert_eq!(outcome, Answered::Refused { orphaned: false });
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(Error::Server {
                code: ErrorCode::TooManySubscriptions,
                ..
            })
        ));
        // The stream ends.
        assert!(ra.try_recv().is_err());
        assert!(ra.is_closed());
    }

    #[test]
    fn disconnect_answers_waiters_and_forgets_those_that_gave_up() {
        let mut table = SubTable::default();
        let (a, _ra) = mpsc::channel(8);
        let (b, _rb) = mpsc::channel(8);
        table.attach(&filter("x"), 1, a);
        table.attach(&filter("y"), 2, b);
        table.set_pending("x", 10);
        table.set_pending("y", 11);
        let (kept, mut kept_answer) = oneshot::channel();
        let (gone, gone_answer) = oneshot::channel();
        table.add_waiter("x", 1, kept);
        table.add_waiter("y", 2, gone);
        drop(gone_answer);
        table.on_disconnect();
        assert!(matches!(kept_answer.try_recv(), Ok(Ok(()))));
        assert_eq!(table.len(), 1);
        assert!(!table.is_pending("x"));
    }
}
