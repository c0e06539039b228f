//! A connection's subscriptions and the wakers they leave in their topics'
//! rings.
//!
//! Each subscription leaves a small waker in its ring that names the
//! subscription's slot, so a wake-up looks only at the subscriptions that
//! have something; taking a subscription's deliveries copies each one's
//! shared frame bytes into the outbox, under one lock of the ring per chunk,
//! and stops at the message that fills the outbox to its bound. A
//! subscription with `since` first reads its replay from the topic's history
//! the same way, a page per turn, before its live messages.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;
use starling_protocol::{Codec, Envelope, Filter};

use crate::connection::outbox::{OUT_INITIAL, Outbox};
use crate::delivery::{Delivery, write_protocol_frame};
use crate::history::{Position, Replay, replayed};
use crate::presence;
use crate::registry::DeliveryReceiver;
use crate::ring::Missed;
use crate::sync::lock;

/// How many deliveries one subscription may hand over per turn before the
/// task looks at its other work.
const DRAIN_BUDGET: usize = 256;

/// How many deliveries are taken under one lock of the topic's ring.
const DRAIN_CHUNK: usize = 32;

/// Which subscriptions of a connection were woken, shared with their wakers.
#[derive(Debug, Default)]
struct Woken {
    task: AtomicWaker,
    slots: Mutex<Vec<u32>>,
}

/// The waker a subscription leaves in its topic's ring: it notes the
/// subscription's slot and wakes the connection's task.
struct SubWaker {
    woken: Arc<Woken>,
    slot: u32,
}

impl Wake for SubWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.slots).push(self.slot);
        self.woken.task.wake();
    }
}

/// One subscription: what it is to, its receiver and its waker, and what
/// it still has to replay before its live messages.
pub(crate) struct Sub {
    pub(crate) filter: Filter,
    rx: DeliveryReceiver,
    waker: Waker,
    replay: Option<Replay>,
    /// Live messages up to here were replayed: skip them.
    live_after: Option<Position>,
    /// Its session on the topic's presence, which ends with it.
    _member: Option<presence::Session>,
}

/// Messages a subscription did not get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lag {
    /// It fell behind its live messages by this many.
    Live(u64),
    /// This many of the messages it asked to replay are no longer retained.
    Replay(u64),
}

impl Lag {
    /// How many messages.
    pub(crate) fn missed(self) -> u64 {
        match self {
            Lag::Live(n) | Lag::Replay(n) => n,
        }
    }
}

/// A connection's subscriptions, by slot.
#[derive(Default)]
pub(crate) struct Subscriptions {
    slots: Vec<Option<Sub>>,
    /// Made with the first subscription.
    woken: Option<Arc<Woken>>,
    /// Slots to look at: woken, or left with messages when the budget or
    /// the outbound buffer ran out. A slot may appear twice, or after its
    /// subscription ended: looking finds nothing then.
    ready: VecDeque<u32>,
}

impl Subscriptions {
    /// The slot of the subscription to `filter`.
    pub(crate) fn find(&self, filter: &Filter) -> Option<usize> {
        self.slots
            .iter()
            .position(|sub| sub.as_ref().is_some_and(|sub| sub.filter == *filter))
    }

    /// Adds a subscription, which first replays `replay` when given; it is
    /// looked at at once when it has a replay or messages came meanwhile.
    pub(crate) fn insert(
        &mut self,
        filter: Filter,
        rx: DeliveryReceiver,
        replay: Option<Replay>,
        live_after: Option<Position>,
        member: Option<presence::Session>,
    ) {
        let woken = self.woken.get_or_insert_with(Default::default).clone();
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                // Grow by doubling from one: most connections hold a few.
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact(self.slots.len().max(1));
                }
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let slot_id = u32::try_from(slot).expect("subscriptions are bounded");
        let waker = Waker::from(Arc::new(SubWaker {
            woken,
            slot: slot_id,
        }));
        let mut sub = Sub {
            filter,
            rx,
            waker,
            replay,
            live_after,
            _member: member,
        };
        // Registers the waker, or finds messages that came meanwhile.
        let live = sub
            .rx
            .poll_ready(&mut Context::from_waker(&sub.waker))
            .is_ready();
        if live || sub.replay.is_some() {
            self.ready.push_back(slot_id);
        }
        self.slots[slot] = Some(sub);
    }

    /// How many subscriptions there are.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// How many of them are patterns.
    pub(crate) fn patterns(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|sub| sub.filter.is_pattern())
            .count()
    }

    /// Removes the subscription in `slot`.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<Sub> {
        let sub = self.slots.get_mut(slot)?.take()?;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Some(sub)
    }

    /// Removes the subscriptions whose filter `gone` picks, and returns them.
    pub(crate) fn remove_where(&mut self, mut gone: impl FnMut(&Filter) -> bool) -> Vec<Sub> {
        let slots: Vec<usize> = (0..self.slots.len())
            .filter(|&slot| {
                self.slots[slot]
                    .as_ref()
                    .is_some_and(|sub| gone(&sub.filter))
            })
            .collect();
        slots
            .into_iter()
            .filter_map(|slot| self.remove(slot))
            .collect()
    }

    /// Removes every subscription.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Sub> + '_ {
        self.slots.drain(..).flatten()
    }

    /// Whether some subscription has something to deliver.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Registers the task's waker (once per poll), then moves what was
    /// woken to the ready list.
    pub(crate) fn collect_woken(&mut self, task: &Waker, registered: &mut bool) {
        if let Some(woken) = &self.woken {
            if !*registered {
                woken.task.register(task);
                *registered = true;
            }
            self.ready.extend(lock(&woken.slots).drain(..));
        }
    }

    /// Takes deliveries from the subscriptions that have some into `out`,
    /// while it holds less than `bound` bytes (the message that reaches the
    /// bound is the last). Calls `lagged` with each subscription that missed
    /// messages and how many.
    pub(crate) fn deliver(
        &mut self,
        out: &mut Outbox,
        codec: Codec,
        bound: usize,
        mut lagged: impl FnMut(&Filter, Lag) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for _ in 0..self.ready.len() {
            if out.queued() >= bound {
                break;
            }
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            if let Some((filter, lag)) = self.drain_slot(slot, out, codec, bound) {
                lagged(&filter, lag)?;
            }
        }
        ControlFlow::Continue(())
    }

    /// Takes what one subscription has ready (its replay first), within the
    /// budget and the outbound bound, then waits on it again (or keeps it
    /// ready). Returns its filter and what it missed, when it missed some.
    fn drain_slot(
        &mut self,
        slot: u32,
        out: &mut Outbox,
        codec: Codec,
        bound: usize,
    ) -> Option<(Filter, Lag)> {
        let Some(Some(sub)) = self.slots.get_mut(slot as usize) else {
            return None;
        };
        // One allocation for a typical batch, rather than a few regrowths.
        if out.buf.capacity() == 0 {
            out.buf.reserve(OUT_INITIAL);
        }
        if let Some(replay) = &mut sub.replay {
            let mut lost = 0;
            let done = replay.page(|item| match item {
                Ok(delivery) => copy(delivery, out, codec, bound),
                Err(missed) => {
                    lost += missed;
                    write_lagged(out, codec, &sub.filter, missed);
                    ControlFlow::Continue(())
                }
            });
            if done {
                sub.replay = None;
            }
            // Live messages wait for the rest of the replay, or are taken
            // at the next turn.
            self.ready.push_back(slot);
            return (lost > 0).then(|| (sub.filter.clone(), Lag::Replay(lost)));
        }
        let mut budget = DRAIN_BUDGET;
        let mut missed_total = 0;
        // Until the subscription has nothing left (its waker is then
        // registered, under the same lock), or the budget or the room runs out.
        let mut ready = true;
        let live_after = &mut sub.live_after;
        while ready && budget > 0 && out.queued() < bound {
            let (taken, more) =
                sub.rx
                    .drain_then_poll(budget.min(DRAIN_CHUNK), &sub.waker, |item| match item {
                        Ok(delivery) if live_after.is_some() => {
                            if replayed(live_after, delivery) {
                                return ControlFlow::Continue(());
                            }
                            // Past the replay (events carry no offset).
                            if delivery.offset.is_some() {
                                *live_after = None;
                            }
                            copy(delivery, out, codec, bound)
                        }
                        Ok(delivery) => copy(delivery, out, codec, bound),
                        // Reported first, before what comes after the gap.
                        Err(Missed::Lagged(missed)) => {
                            missed_total += missed;
                            write_lagged(out, codec, &sub.filter, missed);
                            ControlFlow::Continue(())
                        }
                    });
            budget = budget.saturating_sub(taken);
            ready = more.is_ready();
        }
        if ready {
            self.ready.push_back(slot);
        }
        (missed_total > 0).then(|| (sub.filter.clone(), Lag::Live(missed_total)))
    }
}

/// Queues a `lagged` notice for `filter`.
fn write_lagged(out: &mut Outbox, codec: Codec, filter: &Filter, missed: u64) {
    let lagged = Envelope::Lagged {
        topic: filter.clone(),
        missed: Some(missed),
        reset: false,
    };
    if let Ok(frame) = codec.encode(&lagged) {
        write_protocol_frame(&mut out.buf, &frame);
    }
}

/// Copies a delivery's frame into the outbox; breaks once the outbox holds
/// `bound` bytes.
#[inline]
fn copy(delivery: &Delivery, out: &mut Outbox, codec: Codec, bound: usize) -> ControlFlow<()> {
    if let Some(wire) = delivery.wire(codec) {
        out.buf.extend_from_slice(wire);
        out.delivered += 1;
    }
    if out.queued() >= bound {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}
