//! A connection's subscriptions and the wakers they leave in their topics'
//! rings.
//!
//! Each subscription leaves a small waker in its ring that names the
//! subscription's slot, so a wake-up looks only at the subscriptions that
//! have something; taking a subscription's deliveries copies each one's
//! shared frame bytes into the outbox, under one lock of the ring per chunk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;
use starling_protocol::{Codec, Envelope, Filter};

use crate::connection::outbox::{OUT_INITIAL, Outbox};
use crate::delivery::write_protocol_frame;
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

/// One subscription: what it is to, its receiver and its waker.
pub(crate) struct Sub {
    pub(crate) filter: Filter,
    rx: DeliveryReceiver,
    waker: Waker,
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

    /// Adds a subscription; it is looked at at once when messages came
    /// meanwhile.
    pub(crate) fn insert(&mut self, filter: Filter, rx: DeliveryReceiver) {
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
        let mut sub = Sub { filter, rx, waker };
        // Registers the waker, or finds messages that came meanwhile.
        if sub
            .rx
            .poll_ready(&mut Context::from_waker(&sub.waker))
            .is_ready()
        {
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
    /// while it holds less than `bound` bytes. Calls `lagged` with each
    /// subscription that missed messages and how many.
    pub(crate) fn deliver(
        &mut self,
        out: &mut Outbox,
        codec: Codec,
        bound: usize,
        mut lagged: impl FnMut(&Filter, u64) -> std::ops::ControlFlow<()>,
    ) -> std::ops::ControlFlow<()> {
        for _ in 0..self.ready.len() {
            if out.queued() >= bound {
                break;
            }
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            if let Some((filter, missed)) = self.drain_slot(slot, out, codec, bound) {
                lagged(&filter, missed)?;
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    /// Takes what one subscription has ready, within the budget and the
    /// outbound bound, then waits on it again (or keeps it ready). Returns
    /// its filter and how many messages it missed, when it missed some.
    fn drain_slot(
        &mut self,
        slot: u32,
        out: &mut Outbox,
        codec: Codec,
        bound: usize,
    ) -> Option<(Filter, u64)> {
        let Some(Some(sub)) = self.slots.get_mut(slot as usize) else {
            return None;
        };
        // One allocation for a typical batch, rather than a few regrowths.
        if out.buf.capacity() == 0 {
            out.buf.reserve(OUT_INITIAL);
        }
        let mut budget = DRAIN_BUDGET;
        let mut missed_total = 0;
        // Until the subscription has nothing left (its waker is then
        // registered, under the same lock), or the budget or the room runs out.
        let mut ready = true;
        while ready && budget > 0 && out.queued() < bound {
            let (taken, more) =
                sub.rx
                    .drain_then_poll(budget.min(DRAIN_CHUNK), &sub.waker, |item| match item {
                        Ok(delivery) => {
                            if let Some(wire) = delivery.wire(codec) {
                                out.buf.extend_from_slice(wire);
                                out.delivered += 1;
                            }
                        }
                        // Reported first, before what comes after the gap.
                        Err(Missed::Lagged(missed)) => {
                            missed_total += missed;
                            let lagged = Envelope::Lagged {
                                topic: sub.filter.clone(),
                                missed,
                            };
                            if let Ok(frame) = codec.encode(&lagged) {
                                write_protocol_frame(&mut out.buf, &frame);
                            }
                        }
                    });
            budget = budget.saturating_sub(taken);
            ready = more.is_ready();
        }
        if ready {
            self.ready.push_back(slot);
        }
        (missed_total > 0).then(|| (sub.filter.clone(), missed_total))
    }
}
