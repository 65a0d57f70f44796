//! Blocking work awaited from async code without blocking the runtime: a teardown waits up to
//! its graces (event-driven, on pidfds), which must not stall the other tasks of a
//! current-thread runtime. The work runs on a thread of its own and the future completes when
//! it is done, in any executor (nothing here needs a Tokio context: the channel is `futures-channel`'s). A thread per call, not
//! `spawn_blocking`: that needs a Tokio context, and its pool is cut off when the runtime shuts
//! down.
//!
//! If the future is dropped before the work is done, the work still finishes: a teardown that
//! has begun always ends the tree.

use std::future::Future;
use std::sync::{Arc, Mutex};

/// Runs `work` on its own thread; the future resolves to its result, or to its panic.
pub(crate) fn offload<T, F>(work: F) -> impl Future<Output = std::thread::Result<T>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let run = |work: F| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    let (done, result) = futures_channel::oneshot::channel();
    let slot = Arc::new(Mutex::new(Some(work)));
    let spawned = std::thread::Builder::new().name("reapkit-teardown".into()).spawn({
        let slot = Arc::clone(&slot);
        move || {
            if let Some(work) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = done.send(run(work));
            }
        }
    });
    // No thread to be had (the process is at its thread limit): the work runs here, blocking,
    // rather than not at all.
    let (thread, inline) = match spawned {
        Ok(thread) => (Some(thread), None),
        Err(_) => (None, slot.lock().unwrap_or_else(|p| p.into_inner()).take().map(run)),
    };
    async move {
        if let Some(outcome) = inline {
            return outcome;
        }
        let outcome =
            result.await.unwrap_or_else(|_| Err(Box::new("reapkit: the teardown thread ended without a result")));
        // It has sent its result and is exiting: joined, so that whatever it still held (the
        // last reference to a runtime's I/O driver, say) is released when the future completes.
        let _ = thread.map(std::thread::JoinHandle::join);
        outcome
    }
}
