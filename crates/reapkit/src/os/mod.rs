//! The operating system below reapkit: one interface, two backends.
//!
//! - **Linux** (`linux.rs`): pidfds, `waitid(P_PIDFD)`, eventfd, signalfd, the child subreaper,
//!   `close_range`, `SO_PEERCRED`, and everything `/proc` gives ([`crate::os::procfs`]).
//! - **Portable POSIX** (`posix.rs`), on every other Unix — and on Linux when built with
//!   `REAPKIT_PORTABLE_BACKEND=1` (see `build.rs`), which only reapkit's own suite does, so that
//!   the code macOS and the BSDs compile is the code CI runs. It holds a process by `waitid(WNOWAIT)` on our own
//!   children, and kqueue (`EVFILT_PROC`) on macOS and the BSDs for others; it signals with
//!   `kill`/`killpg` only what it holds unreaped; it reads no `/proc`.
//!
//! What each backend can vouch for is [`crate::containment::capabilities::capabilities()`]'s business; this module only
//! says whether a mechanism exists ([`PROC_TABLE`], [`Handle::open`]'s error). Nothing here
//! decides *whether* to signal: that is `teardown`'s job.

#[cfg(all(target_os = "linux", not(reapkit_portable_backend)))]
#[path = "linux.rs"]
mod backend;
#[cfg(not(all(target_os = "linux", not(reapkit_portable_backend))))]
#[path = "posix.rs"]
mod backend;
mod wait;

pub(crate) mod fd_snapshot;
pub(crate) mod member;
pub mod procfs;
pub(crate) mod safe_fs;
pub(crate) mod sockets;

pub(crate) use backend::*;
pub(crate) use wait::*;

/// Which backend this build has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// pidfds, `/proc`, subreaper, cgroups, namespaces.
    Linux,
    /// Process groups, `waitid` on our own children, kqueue where the OS has it, `/dev/fd`.
    Portable,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Linux => "linux",
            Backend::Portable => "portable",
        })
    }
}

/// The backend of this build.
pub fn backend() -> Backend {
    BACKEND
}

/// What to do when `e` is the descriptor limit (EMFILE: this process's; ENFILE: the system's):
/// any other advice ("check the path", "fix its permissions") would send the user the wrong way.
pub(crate) fn fd_limit_hint(e: &std::io::Error) -> Option<String> {
    match e.raw_os_error()? {
        libc::EMFILE => {
            let (soft, hard) = nofile_limit();
            Some(format!(
                "This process has used up its file descriptor limit (EMFILE; `ulimit -n` is {soft}, the hard \
                 limit {hard}). Something keeps descriptors open — a leaked guard holds its pipes, and \
                 #[reapkit::test] names the leaked descriptors — or the limit is too low: raise it with \
                 `ulimit -n 4096` in the shell that runs the tests (or setrlimit(RLIMIT_NOFILE))"
            ))
        }
        libc::ENFILE => {
            let max =
                std::fs::read_to_string("/proc/sys/fs/file-max").map_or_else(|_| "?".into(), |m| m.trim().to_owned());
            Some(format!(
                "The system-wide file table is full (ENFILE; fs.file-max is {max}): some process on this machine \
                 leaks descriptors. Find it (`ls /proc/*/fd | wc -l`, `reapkit ps`), or raise the limit \
                 (`sysctl -w fs.file-max=…`)"
            ))
        }
        _ => None,
    }
}

/// This process's descriptor limits, soft and hard, in words.
fn nofile_limit() -> (String, String) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the valid pointer it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return ("?".into(), "?".into());
    }
    let show = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { "unlimited".to_owned() } else { v.to_string() };
    (show(limit.rlim_cur), show(limit.rlim_max))
}
