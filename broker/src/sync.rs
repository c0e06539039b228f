//! Locking without poisoning.
//!
//! Every mutex and read-write lock in the broker guards state whose
//! bookkeeping completes before anything inside the lock can panic, so a
//! panic elsewhere in a holding thread leaves it consistent: the lock is
//! taken whatever its poison flag.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, ignoring poisoning (see the module documentation).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `lock` to read, ignoring poisoning (see the module documentation).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `lock` to write, ignoring poisoning (see the module documentation).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
