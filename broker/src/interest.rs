//! The node's interest: which topics and patterns have local subscribers,
//! as the registry reports it to a relay that spans nodes.
//!
//! The registry tells a change under the lock of the filter's entry, so the
//! changes of one filter come in the order they happened and alternate
//! (watch, unwatch, watch, ...). The [`InterestQueue`] keeps, for each
//! filter, only the change the relay has not taken yet: a change that undoes
//! the one waiting removes both, since the relay's view of that filter is
//! then right already. So the queue holds at most one entry per filter that
//! has local subscribers or that the relay still follows, however fast
//! subscribers come and go, and telling never waits.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::Duration;

use starling_protocol::Filter;
use tokio::sync::{Notify, watch};

use crate::sync::lock;

/// A change in what this node needs from the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interest {
    /// The first local subscriber of a topic or pattern arrived.
    Watch(Filter),
    /// Its last local subscriber left.
    Unwatch(Filter),
}

/// The interest changes the relay has not taken yet, the latest per filter
/// (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct InterestQueue {
    /// Per filter: whether the relay should watch it (`true`) or stop.
    waiting: Mutex<HashMap<Filter, bool>>,
    /// Wakes the relay when something may be waiting.
    changed: Notify,
    /// How many times the relay took the changes (under `waiting`'s lock).
    taken: Mutex<u64>,
    /// The last take whose changes the relay has made (in Redis: confirmed).
    applied: watch::Sender<u64>,
}

impl InterestQueue {
    /// Records a change; never waits for the relay.
    pub(crate) fn tell(&self, interest: Interest) {
        let (filter, watch) = match interest {
            Interest::Watch(filter) => (filter, true),
            Interest::Unwatch(filter) => (filter, false),
        };
        match lock(&self.waiting).entry(filter) {
            Entry::Vacant(entry) => {
                entry.insert(watch);
            }
            // It undoes the change that waits: the relay has what it needs.
            Entry::Occupied(entry) if *entry.get() != watch => {
                entry.remove();
            }
            Entry::Occupied(_) => {}
        }
        self.changed.notify_one();
    }

    /// Takes every change that waits: at most one per filter, in no
    /// particular order (the changes of different filters are independent).
    pub(crate) fn take(&self) -> Vec<Interest> {
        self.take_numbered().0
    }

    /// [`InterestQueue::take`], and the number of this take, for
    /// [`InterestQueue::applied`].
    pub(crate) fn take_numbered(&self) -> (Vec<Interest>, u64) {
        let mut waiting = lock(&self.waiting);
        let mut taken = lock(&self.taken);
        *taken += 1;
        let number = *taken;
        let waiting = std::mem::take(&mut *waiting);
        let changes = waiting
            .into_iter()
            .map(|(filter, watch)| {
                if watch {
                    Interest::Watch(filter)
                } else {
                    Interest::Unwatch(filter)
                }
            })
            .collect();
        (changes, number)
    }

    /// The relay has made the changes of every take up to `number`.
    pub(crate) fn applied(&self, number: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = number > *applied;
            if newer {
                *applied = number;
            }
            newer
        });
    }

    /// Waits (at most `patience`) until every change told so far is made:
    /// a topic subscribed to just before is then followed in Redis. Returns
    /// whether it is.
    pub(crate) fn settled(&self, patience: Duration) -> impl Future<Output = bool> + use<> {
        // Changes told before now are in a take after this one.
        let target = {
            let _waiting = lock(&self.waiting);
            *lock(&self.taken) + 1
        };
        let mut applied = self.applied.subscribe();
        // A take with nothing in it still counts.
        self.changed.notify_one();
        async move {
            tokio::time::timeout(patience, applied.wait_for(|&n| n >= target))
                .await
                .is_ok_and(|seen| seen.is_ok())
        }
    }

    /// Waits until a change may be waiting (it may have been taken already:
    /// [`InterestQueue::take`] then returns nothing).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// How many filters have a change waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.waiting).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::new(s).unwrap()
    }

    fn sorted(mut changes: Vec<Interest>) -> Vec<Interest> {
        changes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        changes
    }

    #[test]
    fn the_latest_change_of_each_filter_is_kept() {
        let queue = InterestQueue::default();
        queue.tell(Interest::Watch(f("a")));
        queue.tell(Interest::Watch(f("b.*")));
        queue.tell(Interest::Watch(f("c")));
        queue.tell(Interest::Unwatch(f("c")));
        assert_eq!(
            sorted(queue.take()),
            [Interest::Watch(f("a")), Interest::Watch(f("b.*"))]
        );
        assert!(queue.take().is_empty());

        // Watched (and taken), then unwatched and watched again: nothing to
        // do; unwatched after that: the relay must stop watching it.
        queue.tell(Interest::Unwatch(f("a")));
        queue.tell(Interest::Watch(f("a")));
        assert!(queue.take().is_empty());
        queue.tell(Interest::Unwatch(f("a")));
        queue.tell(Interest::Watch(f("a")));
        queue.tell(Interest::Unwatch(f("a")));
        assert_eq!(queue.take(), [Interest::Unwatch(f("a"))]);
    }

    #[test]
    fn churn_holds_one_entry_per_filter_at_most() {
        let queue = InterestQueue::default();
        for round in 0..1_000 {
            for i in 0..10 {
                queue.tell(Interest::Watch(f(&format!("t.{i}"))));
            }
            if round == 500 {
                // The relay takes the watches: their unwatches wait from now
                // on, until the next round's watches undo them.
                assert_eq!(queue.take().len(), 10);
            }
            // Topics that come and go between two takes leave nothing.
            queue.tell(Interest::Watch(f(&format!("brief.{round}"))));
            queue.tell(Interest::Unwatch(f(&format!("brief.{round}"))));
            for i in 0..10 {
                queue.tell(Interest::Unwatch(f(&format!("t.{i}"))));
            }
            assert!(queue.len() <= 10);
        }
        assert_eq!(queue.take().len(), 10);
        queue.tell(Interest::Watch(f("t.0")));
        assert_eq!(queue.take(), [Interest::Watch(f("t.0"))]);
    }

    #[tokio::test]
    async fn a_change_wakes_the_relay_even_when_it_was_not_waiting_yet() {
        let queue = std::sync::Arc::new(InterestQueue::default());
        queue.tell(Interest::Watch(f("a")));
        tokio::time::timeout(std::time::Duration::from_secs(1), queue.changed())
            .await
            .expect("woken");
        assert_eq!(queue.take(), [Interest::Watch(f("a"))]);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move {
                queue.changed().await;
                queue.take()
            }
        });
        tokio::task::yield_now().await;
        queue.tell(Interest::Unwatch(f("a")));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(taken, [Interest::Unwatch(f("a"))]);
    }
}
