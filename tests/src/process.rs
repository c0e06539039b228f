//! The test process itself: its open-file limit, and panics on the
//! runtime's threads.

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Raises this process's open-file limit to at least `n` (as far as the hard
/// limit allows), for tests that open many sockets.
pub fn raise_fd_limit(n: u64) -> u64 {
    rlimit::increase_nofile_limit(n).expect("raising RLIMIT_NOFILE")
}

/// Counts panics on the runtime's threads (where the broker's tasks run in
/// `multi_thread` tests), from the first call on. Test code runs on the
/// test's own thread, so in a test binary whose tests spawn no tasks of their
/// own, a count above zero means a broker task panicked.
pub fn worker_panics() -> usize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            // Tokio names its threads `tokio-rt-worker` (or, in older
            // versions, `tokio-runtime-worker`) and `tokio-rt-blocking`.
            if thread.name().is_some_and(|n| n.starts_with("tokio-")) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}
