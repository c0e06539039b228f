//! What a subscription gets from its topic's history: the position its
//! `ack` carries, whether the client's own position is void (a reset), and
//! the replay, a cursor read a page at a time.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use starling_protocol::Topic;

use crate::delivery::Delivery;
use crate::history::{HistoryStore, TopicHistory};

/// Where a topic's history stands: what the `ack` of a subscribe carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The history's epoch.
    pub(crate) epoch: Arc<str>,
    /// Its latest offset (0: none yet).
    pub(crate) offset: u64,
}

/// Where a resuming client says it is: `since` and, when it knows it, the
/// epoch of `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    pub(crate) since: u64,
    pub(crate) epoch: Option<Arc<str>>,
}

impl Resume {
    /// Whether this position is void where the history stands at
    /// `position`: another epoch, or an offset it never gave.
    pub(crate) fn is_void_at(&self, position: &Position) -> bool {
        self.epoch.as_ref().is_some_and(|e| *e != position.epoch) || self.since > position.offset
    }
}

/// What a subscription to a topic gets from its history: the position for
/// the `ack`, whether the client's position was void, and the replay.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Where the topic's history stands (`None`: the topic keeps none).
    pub(crate) position: Option<Position>,
    /// The client's position was void: it gets `lagged` with `reset`, then
    /// everything retained.
    pub(crate) reset: bool,
    /// What to send before live messages.
    pub(crate) replay: Option<Replay>,
    /// Live messages up to this position are in the replay already: they
    /// are skipped (a history in a shared store is read apart from the live
    /// subscription, so the two overlap).
    pub(crate) live_after: Option<Position>,
}

/// Whether a live `delivery` was replayed already: it is in the replay's
/// epoch, at or before its end.
pub(crate) fn replayed(live_after: &Option<Position>, delivery: &Delivery) -> bool {
    live_after.as_ref().is_some_and(|end| {
        delivery.epoch.as_ref() == Some(&end.epoch)
            && delivery.offset.is_some_and(|offset| offset <= end.offset)
    })
}

/// What a subscriber with `since` gets before live messages: the topic's
/// messages from offset `next` to `until` (the last one published before
/// the subscription began), read from the history as they are sent.
/// Messages that the history dropped meanwhile are reported as lost.
#[derive(Debug)]
pub(crate) struct Replay(Source);

#[derive(Debug)]
enum Source {
    /// A cursor over a history in memory.
    Memory {
        history: Arc<Mutex<TopicHistory>>,
        next: u64,
        until: u64,
    },
    /// Messages read from a shared store, and how many before them are
    /// no longer retained.
    Fetched {
        lost: u64,
        messages: VecDeque<Arc<Delivery>>,
    },
}

impl Replay {
    /// The replay of what `history` holds after `since`; `None` when there
    /// is nothing after it. Taken under the history's lock (`guard`), with
    /// the subscription's live receiver.
    pub(crate) fn after(
        history: &Arc<Mutex<TopicHistory>>,
        guard: &TopicHistory,
        since: u64,
    ) -> Option<Self> {
        let until = guard.next_offset - 1;
        (since < until).then(|| {
            Replay(Source::Memory {
                history: history.clone(),
                next: since + 1,
                until,
            })
        })
    }

    /// The replay of messages read from a shared store, after `lost` that
    /// it no longer retains; `None` when there is nothing to replay.
    pub(crate) fn fetched(lost: u64, messages: Vec<Arc<Delivery>>) -> Option<Self> {
        (lost > 0 || !messages.is_empty()).then(|| {
            Replay(Source::Fetched {
                lost,
                messages: messages.into(),
            })
        })
    }

    /// Hands the next messages to `each`, in order, until `each` breaks
    /// (after the message it breaks on) or the replay is over, which it
    /// returns. Messages no longer retained are reported first, as one
    /// `Err` with how many they are.
    pub(crate) fn page(
        &mut self,
        mut each: impl FnMut(Result<&Arc<Delivery>, u64>) -> ControlFlow<()>,
    ) -> bool {
        let (history, next, until) = match &mut self.0 {
            Source::Memory {
                history,
                next,
                until,
            } => (history, next, *until),
            Source::Fetched { lost, messages } => {
                if *lost > 0 {
                    let _ = each(Err(std::mem::take(lost)));
                }
                while let Some(delivery) = messages.pop_front() {
                    if each(Ok(&delivery)).is_break() {
                        break;
                    }
                }
                return messages.is_empty();
            }
        };
        let history = HistoryStore::lock(history);
        let first = history.first_offset();
        if *next < first {
            let lost = first.min(until + 1) - *next;
            *next += lost;
            let _ = each(Err(lost));
            if *next > until {
                return true;
            }
        }
        let skip = (*next - first) as usize;
        for delivery in history.messages.iter().skip(skip) {
            let Some(offset) = delivery.offset.filter(|&o| o <= until) else {
                break;
            };
            *next = offset + 1;
            if each(Ok(delivery)).is_break() {
                break;
            }
        }
        *next > until
    }
}

/// The most bytes of messages (payload and topic) one page of a history
/// read without subscribing holds: the page ends before the message that
/// would pass it (but holds at least one message).
pub(crate) const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A page of a topic's history, read without subscribing (`GET
/// /api/history`).
#[derive(Debug)]
pub(crate) struct Excerpt {
    /// Where the topic's history stands.
    pub(crate) position: Position,
    /// The position asked for was void: the page starts at the oldest
    /// retained message.
    pub(crate) reset: bool,
    /// Messages after the position asked for that are no longer retained.
    pub(crate) missed: Option<u64>,
    /// The messages, oldest first.
    pub(crate) messages: Vec<Arc<Delivery>>,
}

impl HistoryStore {
    /// Up to `limit` retained messages of `topic`: the latest ones, or with
    /// `from`, the first ones after its position (from the oldest retained
    /// when that position is void). `None` when the topic keeps no history.
    pub(crate) fn read(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Option<Excerpt> {
        let position = self.position(topic)?;
        let Some(history) = self.get(topic) else {
            return Some(Excerpt {
                reset: from.is_some_and(|r| r.is_void_at(&position)),
                position,
                missed: None,
                messages: Vec::new(),
            });
        };
        let guard = Self::lock(&history);
        // Where the history stands now (it may have moved since `position`).
        let position = guard.position();
        let first = guard.first_offset();
        let (reset, missed, skip) = match from {
            None => (false, 0, guard.messages.len().saturating_sub(limit)),
            Some(from) if from.is_void_at(&position) => (true, 0, 0),
            Some(from) => {
                let wanted = from.since + 1;
                let skip = wanted.saturating_sub(first) as usize;
                (false, first.saturating_sub(wanted), skip)
            }
        };
        // Within the byte bound, from the first message of the page: the
        // oldest after `from`, or the newest.
        let mut bytes = 0;
        let mut within = |delivery: &&Arc<Delivery>| {
            let first = bytes == 0;
            bytes += crate::ring::Weigh::weight(*delivery);
            first || bytes <= PAGE_BYTES
        };
        let page = guard.messages.iter().skip(skip).take(limit);
        let messages = if from.is_some() {
            page.take_while(&mut within).cloned().collect()
        } else {
            let mut newest: Vec<_> = page.rev().take_while(&mut within).cloned().collect();
            newest.reverse();
            newest
        };
        Some(Excerpt {
            position,
            reset,
            missed: (missed > 0).then_some(missed),
            messages,
        })
    }
}
