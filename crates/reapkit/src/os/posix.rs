//! The portable POSIX backend: macOS, the BSDs, any Unix — and Linux when built with
//! `REAPKIT_PORTABLE_BACKEND=1` (reapkit's own suite), so that CI runs the code those systems
//! compile.
//!
//! Built on what every Unix has (`waitid`, `kill`/`killpg`, `poll`, pipes, `sigaction`), plus,
//! where the OS has them, kqueue for processes that are not our children, a start time
//! (`proc_pidinfo` on macOS, `kinfo_proc` on FreeBSD, `/proc/<pid>/stat` on Linux) and a boot
//! identity (`kern.bootsessionuuid`, `kern.boottime`, `/proc/sys/kernel/random/boot_id`). It
//! reads no process table: no children, environments or sockets of other processes.
//!
//! Where each call is documented for each target: the `libc` crate's per-target modules (which
//! targets declare it) and the systems' manual pages — waitid(2), kill(2), poll(2) and
//! sigaction(2) in POSIX.1-2008; kqueue(2) and proc_pidinfo in macOS's and FreeBSD's;
//! procctl(2) (`PROC_REAP_ACQUIRE`) in FreeBSD's.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use nix::sys::signal::Signal;

use super::{child_state, Backend, ChildState};

pub(crate) const BACKEND: Backend = Backend::Portable;

/// This backend reads no process table.
pub(crate) const PROC_TABLE: bool = false;

/// A process we hold, readable once it has exited.
///
/// Our own child: a thread blocked in `waitid(WEXITED | WNOWAIT)` — which leaves the zombie
/// for its owner to reap — writes to a socket pair when it exits, so waits stay one `poll`. Its pid
/// cannot be recycled while it is unreaped, so a signal checked against `waitid` reaches only
/// it. Another process: kqueue's `EVFILT_PROC`/`NOTE_EXIT` where the OS has it; elsewhere it
/// cannot be held (`Unsupported`).
#[derive(Debug)]
pub(crate) struct Handle {
    pid: i32,
    exit: OwnedFd,
    /// The waiter thread of a child (none for a kqueue), joined once it has written.
    waiter: Mutex<Option<Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    thread: JoinHandle<()>,
    /// Its end of the socket pair, closed when the thread ends.
    write_fd: RawFd,
}

impl Handle {
    pub(crate) fn open(pid: i32) -> io::Result<Handle> {
        match child_state(pid) {
            ChildState::NotOurs => Handle::open_other(pid),
            _ => Handle::open_child(pid),
        }
    }

    fn open_child(pid: i32) -> io::Result<Handle> {
        // A socket pair, not a pipe: the handle may be dropped before its child exits, and the
        // waiter's late write must not raise SIGPIPE (`send_nosignal`) where std has not
        // ignored it (a watchdog runs before `main`).
        let (read, write) = socket_pair()?;
        let write_fd = write.as_raw_fd();
        let thread =
            std::thread::Builder::new().name(format!("reapkit-wait-{pid}")).stack_size(64 * 1024).spawn(move || {
                loop {
                    // SAFETY: as in `child_state`, blocking: returns when the child has exited.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    // SAFETY: a valid pointer to a siginfo_t we own.
                    let rc = unsafe {
                        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
                    };
                    if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        break;
                    }
                }
                let _ = send_nosignal(write.as_fd(), b"!");
            })?;
        Ok(Handle { pid, exit: read, waiter: Mutex::new(Some(Waiter { thread, write_fd })) })
    }

    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    fn open_other(pid: i32) -> io::Result<Handle> {
        // SAFETY: plain syscall; returns a new fd we own (not inherited across fork).
        let kq = unsafe { libc::kqueue() };
        if kq < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        let kq = unsafe { OwnedFd::from_raw_fd(kq) };
        set_cloexec(kq.as_fd())?;
        // SAFETY: kevent is plain data; zeroed fills the fields some BSDs add.
        let mut change: libc::kevent = unsafe { std::mem::zeroed() };
        change.ident = pid as _;
        change.filter = libc::EVFILT_PROC as _;
        change.flags = (libc::EV_ADD | libc::EV_ONESHOT) as _;
        change.fflags = libc::NOTE_EXIT as _;
        // SAFETY: one change from a value we own, no events out, no timeout needed.
        let rc = unsafe { libc::kevent(kq.as_raw_fd(), &change, 1, std::ptr::null_mut(), 0, std::ptr::null()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Handle { pid, exit: kq, waiter: Mutex::new(None) })
    }

    #[cfg(not(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd"
    )))]
    fn open_other(pid: i32) -> io::Result<Handle> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "pid {pid} is not a child of this process, and this OS has no handle on another process (no pidfd, \
                 no kqueue) that would keep a recycled pid from being signalled"
            ),
        ))
    }

    /// Readable once the process has exited.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.exit.as_fd()
    }

    fn has_exited(&self) -> bool {
        !super::poll_for(&[(self.fd(), libc::POLLIN)], std::time::Instant::now()).is_empty()
    }

    /// `kill`, only while the process is provably the one we hold: an unreaped child of ours
    /// that has not exited, or (kqueue) a process whose exit has not been reported.
    pub(crate) fn signal(&self, sig: i32) -> io::Result<()> {
        let held = self.lock_waiter().is_some();
        let alive = if held { matches!(child_state(self.pid), ChildState::Running) } else { !self.has_exited() };
        if !alive || self.has_exited() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), Signal::try_from(sig)?)?;
        Ok(())
    }

    /// Reaps the process if it is our child and has exited; never blocks, never another pid.
    pub(crate) fn reap(&self) -> bool {
        if !self.has_exited() {
            return false;
        }
        let Some(waiter) = self.lock_waiter().take() else { return false };
        let _ = waiter.thread.join();
        // SAFETY: siginfo_t is plain data; reaps exactly our child `pid`, which has exited.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a siginfo_t we own.
        let rc = unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
        // SAFETY: si_pid is valid to read after a successful waitid.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// The descriptors it holds, for the FD accounting of a test: the waiter's end too, while
    /// the waiter runs.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.exit.as_raw_fd()];
        fds.extend(self.lock_waiter().as_ref().filter(|w| !w.thread.is_finished()).map(|w| w.write_fd));
        fds
    }

    fn lock_waiter(&self) -> std::sync::MutexGuard<'_, Option<Waiter>> {
        self.waiter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A waiter that has written ends at once: joined, so its descriptor is closed when
        // the handle is gone. One still waiting ends when its child does.
        if self.has_exited() {
            if let Some(waiter) = self.lock_waiter().take() {
                let _ = waiter.thread.join();
            }
        }
    }
}

/// A close-on-exec pipe, both ends non-blocking (a full pipe is still readable, and a writer —
/// a signal handler — never blocks).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe()?;
    for fd in [read.as_fd(), write.as_fd()] {
        set_cloexec(fd)?;
        super::set_nonblocking(fd)?;
    }
    Ok((read, write))
}

/// A close-on-exec, non-blocking pair of connected Unix stream sockets.
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty())?;
    for fd in [a.as_fd(), b.as_fd()] {
        set_cloexec(fd)?;
        super::set_nonblocking(fd)?;
    }
    Ok((a, b))
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// A descriptor another thread, or a signal handler, makes readable: a self-pipe.
#[derive(Debug)]
pub(crate) struct Wakeup {
    read: OwnedFd,
    write: OwnedFd,
}

impl Wakeup {
    pub(crate) fn new() -> io::Result<Wakeup> {
        let (read, write) = pipe()?;
        Ok(Wakeup { read, write })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// What a signal handler passes to [`notify_raw`].
    pub(crate) fn notify_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    pub(crate) fn notify(&self) {
        notify_raw(self.notify_fd());
    }

    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        vec![self.read.as_raw_fd(), self.write.as_raw_fd()]
    }
}

/// Makes the wake-up behind `fd` readable: one `write(2)`, async-signal-safe. A full pipe is
/// already readable, so a failed write loses nothing.
pub(crate) fn notify_raw(fd: RawFd) {
    // SAFETY: writes one byte from a static; a stale fd only makes the write fail.
    unsafe { libc::write(fd, b"!".as_ptr().cast(), 1) };
}

/// The write end of the one [`Signals`] pipe of this process.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: one write(2) of one byte to a descriptor stored before the handler was installed
    // and never closed: async-signal-safe.
    unsafe { libc::write(SIGNAL_PIPE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1) };
}

/// Signals delivered as readable data: handlers that write the signal's number to a
/// self-pipe (one per process; its handlers reset to the default at `exec`).
#[derive(Debug)]
pub(crate) struct Signals {
    read: OwnedFd,
    _write: OwnedFd,
}

impl Signals {
    pub(crate) fn catch(signals: &[Signal]) -> io::Result<Signals> {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
        let (read, write) = pipe()?;
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        for &signal in signals {
            // SAFETY: the handler only loads an atomic and calls write(2).
            unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
        }
        Ok(Signals { read, _write: write })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signals that arrived since the last call, in order.
    pub(crate) fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a buffer we own from a non-blocking fd we own.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend(buf[..n as usize].iter().filter_map(|&b| Signal::try_from(i32::from(b)).ok()));
        }
    }
}

/// Makes this process the reaper of its descendants' orphans where the OS has one
/// (`procctl(PROC_REAP_ACQUIRE)` on FreeBSD and DragonFly). Async-signal-safe.
#[cfg(any(target_os = "freebsd", target_os = "dragonfly"))]
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: procctl on our own pid with no data argument.
    let rc = unsafe {
        libc::procctl(libc::P_PID, libc::getpid() as libc::id_t, libc::PROC_REAP_ACQUIRE, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(any(target_os = "freebsd", target_os = "dragonfly")))]
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "this OS has no child subreaper"))
}

/// Closes every descriptor from `first` on, between fork and exec.
///
/// # Safety
/// Only in a child between fork and exec, or where no other thread uses those descriptors.
pub(crate) unsafe fn close_from(first: u32) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a struct we own; close takes an integer.
    unsafe {
        // `rlim_t` is u64 here, i64 on FreeBSD: the cast is needed there.
        #[allow(clippy::unnecessary_cast)]
        let last = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            (limit.rlim_cur as u64).min(1 << 16) as u32
        } else {
            1024
        };
        for fd in first..last {
            libc::close(fd as i32);
        }
    }
}

/// One `send` that never raises SIGPIPE: `SO_NOSIGPIPE` on Apple's systems (no
/// `MSG_NOSIGNAL` there), `MSG_NOSIGNAL` elsewhere.
pub(crate) fn send_nosignal(conn: BorrowedFd<'_>, buf: &[u8]) -> nix::Result<usize> {
    #[cfg(target_vendor = "apple")]
    let flags = {
        let on: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: sets an integer option from a value we own, with its size.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&on as *const libc::c_int).cast(),
                size,
            )
        };
        if rc != 0 {
            return Err(nix::errno::Errno::last());
        }
        0
    };
    #[cfg(not(target_vendor = "apple"))]
    let flags = libc::MSG_NOSIGNAL;
    // SAFETY: sends from a buffer we own on a socket we hold.
    let n = unsafe { libc::send(conn.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(n as usize)
}

/// The peer of a Unix connection, as the kernel saw it at `connect`/`listen`.
pub(crate) struct Peer {
    pub(crate) pid: i32,
    pub(crate) uid: u32,
}

/// No portable call names the process at the other end of a Unix socket (`getpeereid` gives
/// only its uid): shared fixtures, which need it, refuse to start on this backend.
pub(crate) fn peer_of(_conn: BorrowedFd<'_>) -> io::Result<Peer> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the portable backend cannot name the process at the other end of a Unix socket",
    ))
}

/// `pid`'s start time in microseconds since the epoch (see [`crate::os::procfs::BootClock`]), or
/// `None` if it does not exist. Where the OS keeps no start time, `Some(0)` for a live pid:
/// then only our own unreaped children are told apart from a recycled pid.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    facts::start_time(pid)
}

/// An identity of this boot, in the form of Linux's boot id (36 characters of lowercase hex
/// and dashes), or `None` where the OS gives none.
pub(crate) fn boot_id() -> Option<String> {
    facts::boot_id()
}

/// The portable backend sees no PID namespaces: every process it can name is in its own.
pub(crate) fn pidns_of(_pid: &str) -> Option<u64> {
    Some(NO_PIDNS)
}

/// The PID namespace inode this backend reports: none.
pub(crate) const NO_PIDNS: u64 = 0;

#[cfg(target_os = "macos")]
mod facts {
    pub(super) fn start_time(pid: i32) -> Option<u64> {
        // SAFETY: proc_bsdinfo is plain data; proc_pidinfo fills at most its size.
        let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        // SAFETY: a buffer we own with its size.
        let n = unsafe {
            libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&mut info as *mut libc::proc_bsdinfo).cast(), size)
        };
        (n == size).then(|| info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
    }

    pub(super) fn boot_id() -> Option<String> {
        let mut buf = [0u8; 64];
        let mut len = buf.len();
        // SAFETY: a NUL-terminated name, a buffer we own with its size.
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.bootsessionuuid".as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return None;
        }
        let s = std::str::from_utf8(&buf[..len]).ok()?.trim_end_matches('\0');
        Some(s.to_ascii_lowercase())
    }
}

#[cfg(target_os = "freebsd")]
mod facts {
    pub(super) fn start_time(pid: i32) -> Option<u64> {
        let mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
        // SAFETY: kinfo_proc is plain data; sysctl fills at most its size.
        let mut info: libc::kinfo_proc = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::kinfo_proc>();
        // SAFETY: a mib we own, a buffer we own with its size.
        let rc = unsafe {
            libc::sysctl(mib.as_ptr(), 4, (&mut info as *mut libc::kinfo_proc).cast(), &mut len, std::ptr::null(), 0)
        };
        (rc == 0 && len == std::mem::size_of::<libc::kinfo_proc>())
            .then(|| info.ki_start.tv_sec as u64 * 1_000_000 + info.ki_start.tv_usec as u64)
    }

    pub(super) fn boot_id() -> Option<String> {
        // SAFETY: timeval is plain data.
        let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::timeval>();
        // SAFETY: a NUL-terminated name, a buffer we own with its size.
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.boottime".as_ptr(),
                (&mut tv as *mut libc::timeval).cast(),
                &mut len,
                std::ptr::null(),
                0,
            )
        };
        // In the form of Linux's boot id, from the boot time, which is all FreeBSD gives.
        let (sec, usec) = (tv.tv_sec as u64, tv.tv_usec as u64);
        (rc == 0).then(|| {
            format!("{:08x}-{:04x}-0000-0000-{:012x}", (sec >> 16) & 0xffff_ffff, sec & 0xffff, usec & 0xffff_ffff_ffff)
        })
    }
}

/// Linux, when the suite forces this backend: the start time and boot id Linux offers are in
/// `/proc` (two files, read here and nowhere else in this backend).
#[cfg(target_os = "linux")]
mod facts {
    pub(super) fn start_time(pid: i32) -> Option<u64> {
        static BOOT: std::sync::OnceLock<crate::os::procfs::BootClock> = std::sync::OnceLock::new();
        let mut buf = Vec::with_capacity(512);
        crate::os::procfs::read_into(&format!("/proc/{pid}/stat"), &mut buf).ok()?;
        let ticks = crate::os::procfs::Stat::parse(&buf)?.start_time;
        let boot = BOOT.get_or_init(crate::os::procfs::BootClock::read_linux);
        let started = boot.started(ticks).duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(started.as_micros() as u64)
    }

    pub(super) fn boot_id() -> Option<String> {
        let mut buf = Vec::with_capacity(64);
        crate::os::procfs::read_into("/proc/sys/kernel/random/boot_id", &mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).trim().to_owned())
    }
}

/// Any other Unix: liveness from `kill(pid, 0)` only, and no boot identity (so no guard:
/// spawn says why).
#[cfg(not(any(target_os = "macos", target_os = "freebsd", target_os = "linux")))]
mod facts {
    /// `kill(pid, 0)`: the pid exists (EPERM: it does, as another user's).
    pub(super) fn start_time(pid: i32) -> Option<u64> {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
        matches!(alive, Ok(()) | Err(nix::errno::Errno::EPERM)).then_some(0)
    }

    pub(super) fn boot_id() -> Option<String> {
        None
    }
}

/// Whether `pidns` is what this backend writes: [`NO_PIDNS`].
pub(crate) fn valid_pidns(pidns: u64) -> bool {
    pidns == NO_PIDNS
}

/// The test binary, to re-execute as a watchdog or fixture keeper (by path: no `/proc/self/exe`).
pub(crate) fn self_exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| std::env::args_os().next().unwrap_or_default().into())
}

/// A watch on a directory: the portable backend has none (and no cgroups for a watchdog to
/// witness).
#[derive(Debug)]
pub(crate) enum DirWatch {}

impl DirWatch {
    pub(crate) fn new(_dir: &std::path::Path) -> io::Result<DirWatch> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no directory watch on the portable backend"))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match *self {}
    }

    pub(crate) fn arrived(&self) -> Vec<std::ffi::OsString> {
        match *self {}
    }
}

/// The argument that names a watchdog's end of its [`Lifeline`].
const LIFELINE_ARG: &str = "--reapkit-lifeline=";

/// How a watchdog learns that its owner died without a handle on another process: a pipe
/// whose only writer is the owner. The kernel closes it when the owner dies, however it dies,
/// and the watchdog's end reads EOF. The owner keeps its end, close-on-exec, for its whole
/// life (one descriptor, known to the FD checks); a child it forks *without* exec holds it too,
/// and then only delays the watchdog.
pub(crate) struct Lifeline {
    read: OwnedFd,
    write: OwnedFd,
}

impl Lifeline {
    /// A pipe whose read end `cmd` (the watchdog) inherits, named in its arguments.
    pub(crate) fn attach(cmd: &mut std::process::Command) -> io::Result<Option<Lifeline>> {
        use std::os::unix::process::CommandExt;
        let (read, write) = pipe()?;
        let fd = read.as_raw_fd();
        cmd.arg(format!("{LIFELINE_ARG}{fd}"));
        // SAFETY: fcntl is async-signal-safe and touches only that descriptor of the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Some(Lifeline { read, write }))
    }

    /// After the spawn: closes the child's end here and keeps ours open until this process
    /// exits. Returns the descriptor kept.
    pub(crate) fn keep(self) -> RawFd {
        drop(self.read);
        let fd = self.write.as_raw_fd();
        std::mem::forget(self.write);
        fd
    }

    /// In the watchdog: its end, if its arguments name one that is a pipe.
    pub(crate) fn inherited() -> Option<OwnedFd> {
        let fd: RawFd = std::env::args().find_map(|a| a.strip_prefix(LIFELINE_ARG)?.parse().ok())?;
        // SAFETY: stat is plain data; fstat on a descriptor number (a closed one fails).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a stat we own.
        if fd < 3 || unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return None;
        }
        // SAFETY: the owner passed this descriptor to us alone, at exec; nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
