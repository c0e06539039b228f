//! A topic's broadcast ring: every receiver sees every message sent after it
//! subscribed, in order, unless it falls behind by more than the ring's
//! [`Capacity`] (in messages, or in bytes), in which case it is told how many
//! it missed.
//!
//! Unlike a ring allocated whole when the topic appears, this one holds only
//! the messages some receiver has not read yet: an idle topic costs a few
//! dozen bytes, however large `capacity` is. A message is dropped as soon as
//! every receiver that was there when it was sent has taken it. Receivers take
//! everything ready under one lock ([`Receiver::drain`]), so a connection that
//! fell behind catches up at one lock per batch, not per message.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::sync::lock;

/// How much a ring keeps for its slowest receiver: at most `messages`
/// messages, and at most `bytes` bytes of them (as [`Weigh`] counts), the
/// newest message always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Most messages kept.
    pub messages: usize,
    /// Most bytes kept.
    pub bytes: usize,
}

impl From<usize> for Capacity {
    /// A capacity in messages alone.
    fn from(messages: usize) -> Self {
        Capacity {
            messages,
            bytes: usize::MAX,
        }
    }
}

/// The bytes a value held in a ring counts for.
pub(crate) trait Weigh {
    /// Its size in bytes, about.
    fn weight(&self) -> usize;
}

/// What a receiver gets besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// This many messages were dropped for this receiver (it fell behind).
    Lagged(u64),
}

struct Slot<T> {
    value: T,
    weight: usize,
    /// Receivers that were there when it was sent and have not taken it.
    remaining: usize,
}

struct Inner<T> {
    /// Messages with sequence numbers `head..head + slots.len()`.
    slots: VecDeque<Slot<T>>,
    head: u64,
    capacity: Capacity,
    /// The weight of the messages in `slots`.
    bytes: usize,
    receivers: usize,
    /// Receivers waiting for the next message, by receiver id; taken by the
    /// next send, and left by a receiver that goes away before it.
    waiting: Vec<(u64, Waker)>,
    next_receiver_id: u64,
}

impl<T> Inner<T> {
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Drops the message at the front.
    fn pop(&mut self) {
        if let Some(slot) = self.slots.pop_front() {
            self.bytes -= slot.weight;
            self.head += 1;
        }
    }

    /// Drops the messages at the front that every receiver has taken.
    fn release(&mut self) {
        while self.slots.front().is_some_and(|s| s.remaining == 0) {
            self.pop();
        }
        if self.slots.is_empty() && self.slots.capacity() > 64 {
            self.slots.shrink_to(16);
        }
    }
}

/// The sending side, held by the topic registry.
pub(crate) struct Sender<T> {
    shared: Arc<Mutex<Inner<T>>>,
}

/// One subscription's position in the ring.
pub struct Receiver<T> {
    shared: Arc<Mutex<Inner<T>>>,
    at: Position,
}

/// Where a receiver is, apart from the ring it reads.
struct Position {
    id: u64,
    next: u64,
    /// The tail at which this receiver's waker was queued, while it is queued.
    waiting_at: Option<u64>,
}

/// A ring keeping at most `capacity` of unread messages per receiver.
pub(crate) fn channel<T: Clone + Weigh>(capacity: impl Into<Capacity>) -> Sender<T> {
    let capacity = capacity.into();
    Sender {
        shared: Arc::new(Mutex::new(Inner {
            slots: VecDeque::new(),
            head: 0,
            capacity: Capacity {
                messages: capacity.messages.max(1),
                bytes: capacity.bytes,
            },
            bytes: 0,
            receivers: 0,
            waiting: Vec::new(),
            next_receiver_id: 0,
        })),
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.shared);
        f.debug_struct("Sender")
            .field("receivers", &inner.receivers)
            .field("queued", &inner.slots.len())
            .field("capacity", &inner.capacity)
            .finish()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("next", &self.at.next)
            .finish()
    }
}

impl<T: Clone + Weigh> Sender<T> {
    /// A new receiver that sees every message sent from now on.
    pub(crate) fn subscribe(&self) -> Receiver<T> {
        let mut inner = lock(&self.shared);
        inner.receivers += 1;
        inner.next_receiver_id += 1;
        Receiver {
            at: Position {
                id: inner.next_receiver_id,
                next: inner.tail(),
                waiting_at: None,
            },
            shared: self.shared.clone(),
        }
    }

    /// Sends `value` to every receiver; returns how many there are. When the
    /// ring is full (in messages or in bytes), the oldest messages are
    /// dropped for the receivers that have not taken them (they will be told).
    pub(crate) fn send(&self, value: T) -> usize {
        let weight = value.weight();
        let (receivers, waiting) = {
            let mut inner = lock(&self.shared);
            if inner.receivers == 0 {
                return 0;
            }
            while !inner.slots.is_empty()
                && (inner.slots.len() >= inner.capacity.messages
                    || inner.bytes.saturating_add(weight) > inner.capacity.bytes)
            {
                inner.pop();
            }
            let remaining = inner.receivers;
            inner.bytes += weight;
            inner.slots.push_back(Slot {
                value,
                weight,
                remaining,
            });
            (remaining, std::mem::take(&mut inner.waiting))
        };
        for (_, waker) in waiting {
            waker.wake();
        }
        receivers
    }

    /// How many receivers there are.
    #[cfg(test)]
    fn receiver_count(&self) -> usize {
        lock(&self.shared).receivers
    }
}

impl Position {
    fn take<T>(
        &mut self,
        inner: &mut Inner<T>,
        max: usize,
        mut each: impl FnMut(Result<&T, Missed>) -> ControlFlow<()>,
    ) -> usize {
        if self.next < inner.head {
            let _ = each(Err(Missed::Lagged(inner.head - self.next)));
            self.next = inner.head;
        }
        let mut taken = 0;
        while taken < max && self.next < inner.tail() {
            let index = (self.next - inner.head) as usize;
            let slot = &mut inner.slots[index];
            slot.remaining = slot.remaining.saturating_sub(1);
            self.next += 1;
            taken += 1;
            if each(Ok(&slot.value)).is_break() {
                break;
            }
        }
        if taken > 0 {
            inner.release();
        }
        taken
    }

    fn ready_or_wait<T>(&mut self, inner: &mut Inner<T>, waker: &Waker) -> Poll<()> {
        if self.next < inner.tail() || self.next < inner.head {
            // Any queued waker was for an earlier tail and has been taken.
            self.waiting_at = None;
            return Poll::Ready(());
        }
        let tail = inner.tail();
        // Queued already for this tail: the next send wakes it.
        if self.waiting_at != Some(tail) {
            // Grown by doubling from one: a quiet topic with one subscriber
            // keeps one entry, not four.
            if inner.waiting.len() == inner.waiting.capacity() {
                let more = inner.waiting.len().max(1);
                inner.waiting.reserve_exact(more);
            }
            inner.waiting.push((self.id, waker.clone()));
            self.waiting_at = Some(tail);
        }
        Poll::Pending
    }
}

impl<T: Clone> Receiver<T> {
    /// Hands every message that is ready (up to `max`) to `each`, in order,
    /// after reporting what was missed, if anything; all under one lock.
    /// Returns how many messages were handed over.
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(Result<&T, Missed>)) -> usize {
        let mut inner = lock(&self.shared);
        self.at.take(&mut inner, max, |item| {
            each(item);
            ControlFlow::Continue(())
        })
    }

    /// [`Receiver::drain`], but `each` may stop it after any message (by
    /// breaking: that message counts as taken); then, under the same lock,
    /// whether more is ready; when nothing is, `waker` is registered for
    /// the next send, as [`Receiver::poll_ready`] does. One lock for a
    /// subscriber's turn.
    pub fn drain_then_poll(
        &mut self,
        max: usize,
        waker: &Waker,
        each: impl FnMut(Result<&T, Missed>) -> ControlFlow<()>,
    ) -> (usize, Poll<()>) {
        let mut inner = lock(&self.shared);
        let taken = self.at.take(&mut inner, max, each);
        (taken, self.at.ready_or_wait(&mut inner, waker))
    }

    /// Whether a message (or a lag notice) is ready; otherwise registers
    /// `cx`'s waker for the next send.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = lock(&self.shared);
        self.at.ready_or_wait(&mut inner, cx.waker())
    }

    /// Waits until a message (or a lag notice) is ready.
    pub async fn ready(&mut self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.shared);
        inner.receivers -= 1;
        if self.at.waiting_at == Some(inner.tail()) {
            // Still queued: leave, so subscribe/unsubscribe churn on a quiet
            // topic cannot pile up wakers.
            let id = self.at.id;
            inner.waiting.retain(|(waiter, _)| *waiter != id);
        }
        // Messages this receiver was counted for but never took.
        let from = self.at.next.max(inner.head);
        for seq in from..inner.tail() {
            let index = (seq - inner.head) as usize;
            let slot = &mut inner.slots[index];
            slot.remaining = slot.remaining.saturating_sub(1);
        }
        inner.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    fn take(rx: &mut Receiver<u32>) -> Vec<Result<u32, Missed>> {
        let mut got = Vec::new();
        rx.drain(usize::MAX, |m| got.push(m.copied()));
        got
    }

    #[test]
    fn receivers_see_what_was_sent_after_they_subscribed() {
        let tx = channel(8);
        assert_eq!(tx.send(0), 0);
        let mut a = tx.subscribe();
        assert_eq!(tx.send(1), 1);
        let mut b = tx.subscribe();
        assert_eq!(tx.send(2), 2);
        assert_eq!(take(&mut a), vec![Ok(1), Ok(2)]);
        assert_eq!(take(&mut b), vec![Ok(2)]);
        assert_eq!(take(&mut a), vec![]);
    }

    #[test]
    fn a_slow_receiver_is_told_exactly_how_many_it_missed() {
        let tx = channel(4);
        let mut slow = tx.subscribe();
        let mut fast = tx.subscribe();
        for i in 0..10 {
            tx.send(i);
            assert_eq!(take(&mut fast), vec![Ok(i)]);
        }
        assert_eq!(
            take(&mut slow),
            vec![Err(Missed::Lagged(6)), Ok(6), Ok(7), Ok(8), Ok(9)]
        );
    }

    #[test]
    fn the_ring_keeps_at_most_its_bytes_and_always_the_newest() {
        let tx = channel(Capacity {
            messages: 100,
            bytes: 10,
        });
        let mut slow = tx.subscribe();
        for weight in [4, 4, 4] {
            tx.send(weight);
        }
        assert_eq!(
            lock(&tx.shared).bytes,
            8,
            "the first was dropped for the third"
        );
        assert_eq!(take(&mut slow), vec![Err(Missed::Lagged(1)), Ok(4), Ok(4)]);
        // A message over the whole bound is still kept, alone.
        tx.send(3);
        tx.send(50);
        assert_eq!(take(&mut slow), vec![Err(Missed::Lagged(1)), Ok(50)]);
        assert_eq!(lock(&tx.shared).bytes, 0, "taken by its only receiver");
    }

    #[test]
    fn a_drain_stops_after_the_message_that_breaks() {
        let tx = channel(16);
        let mut rx = tx.subscribe();
        for i in 0..5 {
            tx.send(i);
        }
        let waker = futures_util::task::noop_waker();
        let mut got = Vec::new();
        let (taken, more) = rx.drain_then_poll(16, &waker, |m| {
            got.push(*m.unwrap());
            if got.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!((taken, more), (2, Poll::Ready(())));
        assert_eq!(got, vec![0, 1]);
        assert_eq!(take(&mut rx), vec![Ok(2), Ok(3), Ok(4)]);
    }

    #[test]
    fn messages_are_released_once_everyone_took_them() {
        let tx = channel(1024);
        let mut a = tx.subscribe();
        let b = tx.subscribe();
        for i in 0..100 {
            tx.send(i);
        }
        assert_eq!(lock(&tx.shared).slots.len(), 100);
        take(&mut a);
        assert_eq!(lock(&tx.shared).slots.len(), 100, "b has not taken them");
        drop(b);
        assert_eq!(lock(&tx.shared).slots.len(), 0);
        assert_eq!(tx.receiver_count(), 1);
    }

    #[test]
    fn drain_respects_its_budget() {
        let tx = channel(16);
        let mut rx = tx.subscribe();
        for i in 0..10 {
            tx.send(i);
        }
        let mut got = Vec::new();
        assert_eq!(rx.drain(3, |m| got.push(*m.unwrap())), 3);
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(rx.drain(100, |_| {}), 7);
    }

    #[test]
    fn receivers_that_leave_a_quiet_topic_leave_no_waker_behind() {
        let tx = channel::<u32>(4);
        let _stays = tx.subscribe();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut rx = tx.subscribe();
            assert!(rx.poll_ready(&mut cx).is_pending());
            drop(rx);
        }
        assert_eq!(lock(&tx.shared).waiting.len(), 0);
        let mut waiting = tx.subscribe();
        assert!(waiting.poll_ready(&mut cx).is_pending());
        assert!(waiting.poll_ready(&mut cx).is_pending());
        assert_eq!(lock(&tx.shared).waiting.len(), 1, "queued once per tail");
    }

    #[test]
    fn drain_then_poll_waits_only_once_it_has_taken_everything() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let tx = channel::<u32>(8);
        let mut rx = tx.subscribe();
        for n in 0..3 {
            tx.send(n);
        }
        let mut got = Vec::new();
        // Part of what is there: still ready, nothing registered.
        let (taken, more) = rx.drain_then_poll(2, &waker, |m| {
            got.push(m.copied());
            ControlFlow::Continue(())
        });
        assert_eq!((taken, more), (2, Poll::Ready(())));
        assert_eq!(lock(&tx.shared).waiting.len(), 0);
        // The rest: now waiting, and the next send wakes it once.
        let (taken, more) = rx.drain_then_poll(2, &waker, |m| {
            got.push(m.copied());
            ControlFlow::Continue(())
        });
        assert_eq!((taken, more), (1, Poll::Pending));
        assert_eq!(got, vec![Ok(0), Ok(1), Ok(2)]);
        tx.send(3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // A lag notice counts as ready, like a message.
        for n in 4..20 {
            tx.send(n);
        }
        let (_, more) = rx.drain_then_poll(1, &waker, |_| ControlFlow::Continue(()));
        assert!(more.is_ready());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_the_next_send() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        let waiter = tokio::spawn(async move {
            rx.ready().await;
            take(&mut rx)
        });
        tokio::task::yield_now().await;
        tx.send(7u32);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![Ok(7)]);
    }
}
