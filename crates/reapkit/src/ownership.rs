//! Who owns a resource: the ownership contract of `DESIGN.md`.
//!
//! Every guarded child carries these variables, and its descendants inherit them (npx → sh →
//! node, double-forked daemons). They are the proof that lets a teardown, a watchdog or a
//! sweep touch a process; a process without them is never ours. The names are a contract
//! users script against: never rename them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::procfs::ProcId;

/// The run: `NEXTEST_RUN_ID`, or the one `cargo xtask`/`reapkit run` set, or one per process.
pub const ENV_RUN_ID: &str = "REAPKIT_RUN_ID";
/// `<pid>:<starttime>` of the owning test process.
pub const ENV_OWNER: &str = "REAPKIT_OWNER";
/// The id of the guard that spawned the process.
pub const ENV_GUARD: &str = "REAPKIT_GUARD";
/// The test's name: `NEXTEST_TEST_NAME`, else the libtest thread name.
pub const ENV_TEST: &str = "REAPKIT_TEST";
/// Overrides the ledger directory (default `<target dir>/reapkit/`).
pub const ENV_LEDGER_DIR: &str = "REAPKIT_LEDGER_DIR";
/// `off` (or `0`) stops guards from starting the out-of-process watchdog.
pub const ENV_WATCHDOG: &str = "REAPKIT_WATCHDOG";
/// The watchdog's SIGTERM-to-SIGKILL grace when its owner dies (humantime, default 1 s).
pub const ENV_WATCHDOG_GRACE: &str = "REAPKIT_WATCHDOG_GRACE";
/// Set on the watchdog process only: the `<pid>:<starttime>` it watches. It is what makes a
/// re-executed test binary a watchdog, and what tells sweeps that a process is a watchdog.
pub const ENV_WATCHDOG_OWNER: &str = "REAPKIT_WATCHDOG_OWNER";
/// `<pid>:<starttime>` of a `reapkit run`/`reapkit wrap` supervising this process: the
/// watchdog of a test it supervises directly leaves the clean-up to it while it lives.
pub const ENV_SUPERVISOR: &str = "REAPKIT_SUPERVISOR";

/// The identity of this (test) process, computed once.
#[derive(Debug, Clone)]
pub struct Owner {
    pub run_id: String,
    pub id: ProcId,
    pub host: String,
}

impl Owner {
    /// This process's ownership identity.
    pub fn current() -> &'static Owner {
        static OWNER: OnceLock<Owner> = OnceLock::new();
        OWNER.get_or_init(|| {
            let pid = std::process::id() as i32;
            // Our own stat is always readable; 0 only if /proc is missing, which spawn reports.
            let id = ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 });
            Owner { run_id: run_id(), id, host: hostname() }
        })
    }

    /// `REAPKIT_OWNER`'s value: `<pid>:<starttime>`.
    pub fn marker(&self) -> String {
        self.id.to_string()
    }
}

fn run_id() -> String {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    from_env(ENV_RUN_ID).or_else(|| from_env("NEXTEST_RUN_ID")).unwrap_or_else(fresh_run_id)
}

/// A new run id: a random UUID from the kernel's generator (no RNG crate for one value).
pub fn fresh_run_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("{:x}-{:x}", std::process::id(), now_nanos()))
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// This machine's host name, as the `reapkit.owner-host` label and the ledger record it.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// A new guard id, unique on this machine: owner pid, owner start time, sequence number.
pub fn next_guard_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let owner = Owner::current();
    format!("g{}-{}-{}", owner.id.pid, owner.id.start_time, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The name of the test running on this thread.
///
/// nextest runs each test in its own process and says its name; libtest (both runners) names
/// the test's thread after the test's full path, which is the fallback.
pub fn current_test_name() -> String {
    if let Ok(name) = std::env::var("NEXTEST_TEST_NAME") {
        return name;
    }
    std::thread::current().name().unwrap_or("unknown").to_owned()
}

/// Makes this process the child subreaper for its descendants, once.
///
/// A grandchild that double-forks or `setsid`s away is then re-parented to us instead of
/// PID 1, so teardown finds it among our children and can reap its zombie. The flag is per
/// process (not per thread, unlike `PR_SET_PDEATHSIG`), so setting it once from any thread is
/// enough and safe.
pub fn become_subreaper() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "reapkit: PR_SET_CHILD_SUBREAPER failed ({e}); escapees will be found by the /proc marker scan only"
            );
            false
        }
    })
}
