//! The operating system below reapkit: one interface, two backends.
//!
//! - **Linux** (`linux.rs`): pidfds, `waitid(P_PIDFD)`, eventfd, signalfd, the child subreaper,
//!   `close_range`, `SO_PEERCRED`, and everything `/proc` gives ([`crate::procfs`]).
//! - **Portable POSIX** (`posix.rs`), on every other Unix — and on Linux with the feature
//!   `portable-backend`, which only reapkit's own suite turns on, so that the code macOS and the
//!   BSDs compile is the code CI runs. It holds a process by `waitid(WNOWAIT)` on our own
//!   children, and kqueue (`EVFILT_PROC`) on macOS and the BSDs for others; it signals with
//!   `kill`/`killpg` only what it holds unreaped; it reads no `/proc`.
//!
//! What each backend can vouch for is [`crate::capabilities()`]'s business; this module only
//! says whether a mechanism exists ([`PROC_TABLE`], [`Handle::open`]'s error). Nothing here
//! decides *whether* to signal: that is `teardown`'s job.

#[cfg(all(target_os = "linux", not(feature = "portable-backend")))]
#[path = "linux.rs"]
mod backend;
#[cfg(not(all(target_os = "linux", not(feature = "portable-backend"))))]
#[path = "posix.rs"]
mod backend;
mod wait;

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
