//! The Linux backend: the system calls that neither `std` nor `nix` expose in a stable form
//! (pidfds), or that only Linux has (eventfd, signalfd, `PR_SET_CHILD_SUBREAPER`,
//! `close_range`, `SO_PEERCRED`). Process facts come from `/proc` ([`crate::os::procfs`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigSet, Signal};

use super::Backend;

pub(crate) const BACKEND: Backend = Backend::Linux;

/// Whether this backend reads the process table (`/proc`): children, descendants,
/// environments, command lines, sockets.
pub(crate) const PROC_TABLE: bool = true;

/// A process held by a pidfd: it names one process for its whole life, so a signal sent
/// through it can never reach a later process that recycled the pid. Readable once the
/// process has exited.
#[derive(Debug)]
pub(crate) struct Handle(OwnedFd);

impl Handle {
    /// Opens a pidfd for `pid` (any process we may see, child or not).
    pub(crate) fn open(pid: i32) -> io::Result<Handle> {
        // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed us this fd and nothing else owns it.
        Ok(Handle(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// What to `poll` for readability: it becomes readable when the process exits.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Sends `sig` to the process, never to a later one with its pid.
    pub(crate) fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: a valid fd, a signal number, a null siginfo (the kernel fills in SI_USER), no flags.
        let rc = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reaps the process if it is our child and has exited; never blocks. `true` when a zombie
    /// was collected. `waitid(P_PIDFD)` only ever touches that one process, unlike
    /// `waitpid(-1)`, which would steal exit statuses other code waits for.
    pub(crate) fn reap(&self) -> bool {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t we own; P_PIDFD takes the fd as id.
        let rc = unsafe {
            libc::waitid(libc::P_PIDFD, self.0.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
        };
        // SAFETY: si_pid is valid to read after a successful waitid.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// The descriptors it holds, for the FD accounting of a test.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        vec![self.0.as_raw_fd()]
    }
}

/// A descriptor another thread, or a signal handler, makes readable: an eventfd.
#[derive(Debug)]
pub(crate) struct Wakeup(OwnedFd);

impl Wakeup {
    /// A non-blocking, close-on-exec eventfd.
    pub(crate) fn new() -> io::Result<Wakeup> {
        // SAFETY: plain syscall; on success returns a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        Ok(Wakeup(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// What a signal handler passes to [`notify_raw`].
    pub(crate) fn notify_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Makes it readable.
    pub(crate) fn notify(&self) {
        notify_raw(self.notify_fd());
    }

    /// The descriptors it holds.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        vec![self.0.as_raw_fd()]
    }
}

/// Makes the wake-up behind `fd` readable: one `write(2)`, async-signal-safe. A failure
/// (counter overflow) still leaves it readable, which is all we need.
pub(crate) fn notify_raw(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64; a stale fd only makes the write fail.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Signals delivered as readable data (a signalfd): blocked in the calling thread, so that
/// they queue instead of being lost. A command spawned afterwards must unblock them itself.
#[derive(Debug)]
pub(crate) struct Signals(OwnedFd);

impl Signals {
    pub(crate) fn catch(signals: &[Signal]) -> io::Result<Signals> {
        let set = SigSet::from_iter(signals.iter().copied());
        set.thread_block().map_err(io::Error::from)?;
        // SAFETY: a valid sigset pointer; returns a new fd we own.
        let fd = unsafe { libc::signalfd(-1, set.as_ref(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned it.
        Ok(Signals(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The signals that arrived since the last call, in order.
    pub(crate) fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads one record into a value we own from a non-blocking fd we own.
        while unsafe { libc::read(self.0.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) }
            == size as isize
        {
            out.extend(Signal::try_from(info.ssi_signo as i32).ok());
        }
        out
    }
}

/// Makes this process the child subreaper of its descendants (`PR_SET_CHILD_SUBREAPER`).
/// Async-signal-safe: the keeper calls it between fork and exec.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every descriptor from `first` on, between fork and exec (`close_range`).
///
/// # Safety
/// Only in a child between fork and exec, or where no other thread uses those descriptors.
pub(crate) unsafe fn close_from(first: u32) {
    // SAFETY: the caller's promise; close_range takes integers only.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
}

/// One `send` that never raises SIGPIPE (`MSG_NOSIGNAL`): the peer may have died.
pub(crate) fn send_nosignal(conn: BorrowedFd<'_>, buf: &[u8]) -> nix::Result<usize> {
    nix::sys::socket::send(conn.as_raw_fd(), buf, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
}

/// The peer of a Unix connection, as the kernel saw it at `connect`/`listen`.
pub(crate) struct Peer {
    pub(crate) pid: i32,
    pub(crate) uid: u32,
}

/// `SO_PEERCRED`.
pub(crate) fn peer_of(conn: BorrowedFd<'_>) -> io::Result<Peer> {
    let cred = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(Peer { pid: cred.pid(), uid: cred.uid() })
}

/// `pid`'s start time (field 22 of `/proc/<pid>/stat`, clock ticks after boot), or `None` if
/// it does not exist.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    crate::os::procfs::Stat::read(pid).ok().map(|s| s.start_time)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub(crate) fn boot_id() -> Option<String> {
    let mut buf = Vec::with_capacity(64);
    crate::os::procfs::read_into("/proc/sys/kernel/random/boot_id", &mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).trim().to_owned())
}

/// The inode of `/proc/<pid>/ns/pid` (`pid` may be `self`).
pub(crate) fn pidns_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether `pidns` can be a PID namespace's inode.
pub(crate) fn valid_pidns(pidns: u64) -> bool {
    pidns > 0
}

/// The test binary, to re-execute as a watchdog, keeper or fixture keeper: the very file this
/// process runs, even if it was replaced or deleted since.
pub(crate) fn self_exe() -> std::path::PathBuf {
    "/proc/self/exe".into()
}

/// A watch on a directory (inotify): readable when a file lands in it by rename or is closed
/// after writing — a ledger record arriving — so that a watchdog sees its owner's records as
/// they are written, without reading the directory again and again.
#[derive(Debug)]
pub(crate) struct DirWatch(OwnedFd);

impl DirWatch {
    pub(crate) fn new(dir: &std::path::Path) -> io::Result<DirWatch> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: plain syscall; on success it returns a new fd we own.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed us this fd and nothing else owns it.
        let watch = DirWatch(unsafe { OwnedFd::from_raw_fd(fd) });
        let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_ONLYDIR;
        // SAFETY: a valid inotify fd and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(watch)
    }

    /// What to `poll` for readability: a file arrived.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The names of the files that arrived since the last call; never blocks.
    pub(crate) fn arrived(&self) -> Vec<std::ffi::OsString> {
        use std::os::unix::ffi::OsStrExt;
        let mut names = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut at = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte buffer.
                let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name = &buf[at + header..(at + header + event.len as usize).min(n as usize)];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                if !name.is_empty() {
                    names.push(std::ffi::OsStr::from_bytes(name).to_owned());
                }
                at += header + event.len as usize;
            }
        }
    }
}

/// The watchdog learns of its owner's death through a pidfd of the owner rather than a pipe:
/// the test process then holds no extra descriptor, and a child that the test forks without
/// exec cannot keep a pipe end — and the watchdog — alive. So there is no lifeline here.
pub(crate) enum Lifeline {}

impl Lifeline {
    pub(crate) fn attach(_cmd: &mut std::process::Command) -> io::Result<Option<Lifeline>> {
        Ok(None)
    }

    pub(crate) fn keep(self) -> RawFd {
        match self {}
    }

    pub(crate) fn inherited() -> Option<OwnedFd> {
        None
    }
}
