//! The thin syscall layer: pidfds, `poll`, `eventfd`, `waitid`.
//!
//! Everything here is a direct wrapper of one Linux system call that neither `std` nor `nix`
//! exposes in a stable form (pidfds) or that we need with exact EINTR and timeout semantics
//! (`poll`). Nothing in this module decides *whether* to signal: that is `teardown`'s job.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Opens a pidfd for `pid`. The fd names one process for its whole life: signals sent through
/// it can never reach a later process that recycled the pid.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `sig` to the process behind `pidfd`.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    pidfd_send(pidfd, sig, 0)
}

fn pidfd_send(pidfd: BorrowedFd<'_>, sig: i32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, a null siginfo (the kernel fills in SI_USER), flags.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), flags)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps the zombie behind `pidfd` if it is our child and has exited; never blocks.
///
/// Returns `true` when a zombie was collected. `waitid(P_PIDFD)` only ever touches that one
/// process, unlike `waitpid(-1)`, which would steal exit statuses other code waits for.
pub(crate) fn reap_pidfd(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a siginfo_t we own; P_PIDFD takes the fd as id.
    let rc = unsafe {
        libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
    };
    // SAFETY: si_pid is valid to read after a successful waitid.
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// Waits until every fd in `fds` is readable or `deadline` passes, whichever is first.
///
/// Returns how many are still not readable. One `poll` per wake-up, no sleeping: a pidfd
/// becomes readable the moment its process exits, so this costs nothing while we wait.
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

/// A non-blocking, close-on-exec eventfd: the stop signal for background drain threads.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success returns a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the eventfd readable.
pub(crate) fn eventfd_notify(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to a valid fd. A failure (counter overflow)
    // still leaves the fd readable, which is all we need.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
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
