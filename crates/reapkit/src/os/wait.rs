//! Waits with deadlines — one `poll` over descriptors (a process handle, a pipe, a wake-up,
//! `cgroup.events`), with exact EINTR and timeout semantics — and whether a pid is our child.
//! POSIX only: both backends share it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Waits until every fd in `fds` is readable or `deadline` passes, whichever is first.
///
/// Returns how many are still not readable. One `poll` per wake-up, no sleeping: a process
/// handle becomes readable the moment its process exits, so this costs nothing while we wait.
pub(crate) fn wait_all_readable(fds: &[BorrowedFd<'_>], deadline: Instant) -> usize {
    let mut pending = fds.to_vec();
    while !pending.is_empty() {
        let ready = wait_any_readable(&pending, deadline);
        if ready.is_empty() {
            break;
        }
        pending = pending.into_iter().enumerate().filter(|(i, _)| !ready.contains(i)).map(|(_, fd)| fd).collect();
    }
    pending.len()
}

/// Waits until at least one of `fds` is readable (or hung up) or `deadline` passes.
/// Returns the indices of the ready ones; empty on timeout.
pub(crate) fn wait_any_readable(fds: &[BorrowedFd<'_>], deadline: Instant) -> Vec<usize> {
    let polled: Vec<_> = fds.iter().map(|fd| (*fd, libc::POLLIN)).collect();
    poll_for(&polled, deadline)
}

/// Waits until `read` is readable or `write` (if any) is writable, or `deadline` passes.
/// Returns (readable, writable); a hang-up or error counts as ready, so the caller's read or
/// write sees it. Both `false` means the deadline passed.
#[cfg(feature = "mcp")]
pub(crate) fn wait_pipes(read: BorrowedFd<'_>, write: Option<BorrowedFd<'_>>, deadline: Instant) -> (bool, bool) {
    let mut fds = vec![(read, libc::POLLIN)];
    fds.extend(write.map(|w| (w, libc::POLLOUT)));
    let ready = poll_for(&fds, deadline);
    (ready.contains(&0), ready.contains(&1))
}

/// Waits until `fd` reports an exceptional condition (POLLPRI: a kernfs file such as
/// `cgroup.events` changed) or `deadline` passes; `true` if it did.
pub(crate) fn wait_priority(fd: BorrowedFd<'_>, deadline: Instant) -> bool {
    !poll_for(&[(fd, libc::POLLPRI)], deadline).is_empty()
}

/// One `poll` over `fds`, each with its events, until one is ready or `deadline` passes (EINTR
/// retried). Returns the indices of the ready ones; empty on timeout. A bad fd counts as ready,
/// so that the caller sees its error.
pub(crate) fn poll_for(fds: &[(BorrowedFd<'_>, libc::c_short)], deadline: Instant) -> Vec<usize> {
    let mut polled: Vec<libc::pollfd> =
        fds.iter().map(|(fd, events)| libc::pollfd { fd: fd.as_raw_fd(), events: *events, revents: 0 }).collect();
    loop {
        // SAFETY: `polled` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout_ms(deadline)) };
        if rc > 0 {
            return (0..polled.len()).filter(|&i| polled[i].revents != 0).collect();
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return (0..polled.len()).collect();
        }
        if rc == 0 && Instant::now() >= deadline {
            return Vec::new();
        }
    }
}

/// Waits until `fd` is readable or `deadline` passes; `true` if readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> bool {
    wait_all_readable(&[fd], deadline) == 0
}

/// Milliseconds until `deadline` for `poll`, rounded up so we never wake early and spin.
fn timeout_ms(deadline: Instant) -> libc::c_int {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.min(libc::c_int::MAX as u128) as libc::c_int
}

/// A deadline `d` from now that cannot overflow.
pub(crate) fn deadline_in(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now + Duration::from_secs(86_400 * 365))
}

/// Puts `fd` in non-blocking mode.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd with integer flags.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child's state as `waitid(WNOWAIT)` sees it, without reaping it.
pub(crate) enum ChildState {
    Running,
    Exited,
    NotOurs,
}

pub(crate) fn child_state(pid: i32) -> ChildState {
    // SAFETY: siginfo_t is plain data; waitid fills it for our own child and never reaps here.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a siginfo_t we own.
    let rc = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    if rc != 0 {
        return ChildState::NotOurs;
    }
    // SAFETY: si_pid is valid to read after a successful waitid.
    if unsafe { info.si_pid() } == 0 {
        ChildState::Running
    } else {
        ChildState::Exited
    }
}
