//! [`Member`]: a process held by an OS handle (a pidfd; on the portable backend our child's
//! waiter or a kqueue), so that nothing done to it can reach a recycled pid.

use std::time::Instant;

use crate::os;
use crate::os::procfs::ProcId;

/// A process of a guarded tree (or a proven leftover), held so that a recycled pid is never
/// signalled.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: ProcId,
    pub(crate) handle: os::Handle,
}

impl Member {
    /// Opens a handle for `id` and checks, *after* opening it, that the pid still has the same
    /// start time: then the handle names that very process, and can never name another.
    pub(crate) fn open(id: ProcId) -> Option<Member> {
        let handle = os::Handle::open(id.pid).ok()?;
        ProcId::of(id.pid).filter(|now| *now == id).map(|id| Member { id, handle })
    }

    /// Whether it has exited (a zombie counts as exited).
    pub(crate) fn has_exited(&self) -> bool {
        os::wait_readable(self.handle.fd(), Instant::now())
    }
}
