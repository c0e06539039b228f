//! Locking without poisoning.
//!
//! Every mutex in the broker guards state whose bookkeeping completes before
//! anything inside the lock can panic, so a panic elsewhere in a holding
//! thread leaves it consistent: the lock is taken whatever its poison flag.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning (see the module documentation).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
