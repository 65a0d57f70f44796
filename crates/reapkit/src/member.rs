//! [`Member`]: a process held by a pidfd, so that nothing done to it can reach a recycled pid.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use crate::procfs::ProcId;
use crate::sys;

/// A process of a guarded tree (or a proven leftover), held by pidfd so that a recycled pid
/// is never signalled.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: ProcId,
    pub(crate) pidfd: OwnedFd,
}

impl Member {
    /// Opens a pidfd for `id` and checks, *after* opening it, that the pid still has the same
    /// start time: then the fd names that very process, and can never name another.
    pub(crate) fn open(id: ProcId) -> Option<Member> {
        let pidfd = sys::pidfd_open(id.pid).ok()?;
        ProcId::of(id.pid).filter(|now| *now == id).map(|id| Member { id, pidfd })
    }

    /// Whether it has exited (a zombie counts as exited).
    pub(crate) fn has_exited(&self) -> bool {
        sys::wait_readable(self.pidfd.as_fd(), Instant::now())
    }
}
