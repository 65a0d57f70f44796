//! Who owns a resource: the ownership contract (ARCHITECTURE.md's "The ownership contract").
//!
//! Every guarded child carries these variables, and its descendants inherit them (npx → sh →
//! node, double-forked daemons). They are the proof that lets a teardown, a watchdog or a
//! sweep touch a process; a process without them is never ours. The names are a contract
//! users script against: never rename them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::evidence::identity::OwnerId;
use crate::os::procfs::ProcId;

/// The run: `NEXTEST_RUN_ID`, or the one `cargo xtask`/`reapkit run` set, or one per process.
pub const ENV_RUN_ID: &str = "REAPKIT_RUN_ID";
/// The owning test process: `<pid>:<starttime>:<pid namespace inode>:<boot id>` (see
/// [`OwnerId`]), so that neither a pid namespace nor a reboot can make another process match.
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
/// Set on the watchdog process only: the owner (an [`OwnerId`]) it watches. It is what makes a
/// re-executed test binary a watchdog, and what tells sweeps that a process is a watchdog.
pub const ENV_WATCHDOG_OWNER: &str = "REAPKIT_WATCHDOG_OWNER";
/// Set on a keeper only: the owner (an [`OwnerId`]) whose death makes it end its tree. What
/// makes a re-executed test binary a keeper, and what tells sweeps a process is one.
pub const ENV_KEEPER: &str = "REAPKIT_KEEPER";
/// Set on a keeper only: the guard whose tree it keeps.
pub const ENV_KEEPER_GUARD: &str = "REAPKIT_KEEPER_GUARD";
/// Set on a fixture keeper only: the key of the fixture it keeps (`<name>-<hash>`). What tells
/// sweeps a process is one.
pub const ENV_SHARED: &str = "REAPKIT_SHARED";
/// The prefix of every cgroup reapkit creates (`reapkit-<guard id>`): a name, which proves
/// nothing by itself.
pub const CGROUP_PREFIX: &str = "reapkit-";

/// Labels put on every container and network at create; the sweep finds leftovers by them.
pub const LABEL_RUN_ID: &str = "reapkit.run-id";
pub const LABEL_OWNER: &str = "reapkit.owner";
pub const LABEL_OWNER_HOST: &str = "reapkit.owner-host";
pub const LABEL_GUARD: &str = "reapkit.guard";
pub const LABEL_TEST: &str = "reapkit.test";
pub const LABEL_CREATED: &str = "reapkit.created";
/// The `reapkit run`/`wrap` the owner ran under (`REAPKIT_SUPERVISOR`), when there is one: how
/// a supervisor tells its own run's containers from another job's with the same run id.
pub const LABEL_SUPERVISOR: &str = "reapkit.supervisor";

/// The [`OwnerId`] of a `reapkit run`/`reapkit wrap` supervising this process: the
/// watchdog of a test it supervises directly leaves the clean-up to it while it lives.
pub const ENV_SUPERVISOR: &str = "REAPKIT_SUPERVISOR";

/// The identity of this (test) process, computed once.
#[derive(Debug, Clone)]
pub struct Owner {
    pub run_id: String,
    pub id: OwnerId,
    pub host: String,
}

impl Owner {
    /// This process's ownership identity.
    pub fn current() -> &'static Owner {
        static OWNER: OnceLock<Owner> = OnceLock::new();
        OWNER.get_or_init(|| {
            // Our own stat is always readable; a start time of 0 only if /proc is missing, which
            // spawn reports (`Viewpoint::usable`) before anything carries this identity.
            let id = OwnerId::of_self()
                .unwrap_or_else(|| OwnerId::here(ProcId { pid: std::process::id() as i32, start_time: 0 }));
            Owner { run_id: run_id(), id, host: hostname() }
        })
    }

    /// `REAPKIT_OWNER`'s value: `<pid>:<starttime>:<pidns>:<boot id>`.
    pub fn marker(&self) -> String {
        self.id.to_string()
    }
}

fn run_id() -> String {
    let from_env = |k: &str| {
        let value = std::env::var(k).ok().filter(|v| !v.is_empty())?;
        if valid_id(&value) {
            return Some(value);
        }
        crate::error::warn(&format!(
            "reapkit: ignoring {k}={:?}: a run id is 1 to 128 letters, digits and `._-+@:`",
            crate::evidence::escape::evidence(&value)
        ));
        None
    };
    from_env(ENV_RUN_ID).or_else(|| from_env("NEXTEST_RUN_ID")).unwrap_or_else(fresh_run_id)
}

/// Whether `s` may be a run or guard id: ids name ledger files and reach terminals, so they are
/// 1 to 128 ASCII letters, digits and `._-+@:`, and never start with a dot.
pub fn valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b))
}

/// Whether `s` may be a test name: at most 1024 bytes, no control characters.
pub fn valid_test_name(s: &str) -> bool {
    s.len() <= MAX_TEST_NAME && s == crate::evidence::escape::evidence(s)
}

const MAX_TEST_NAME: usize = 1024;

/// `name` made a valid test name: control characters replaced, cut at 1024 bytes.
pub(crate) fn sanitized_test_name(name: &str) -> String {
    if valid_test_name(name) {
        return name.to_owned();
    }
    let mut out: String = crate::evidence::escape::evidence(name).into_owned();
    while out.len() > MAX_TEST_NAME {
        out.pop();
    }
    out
}

/// A new run id: a random UUID from the kernel's generator, `/dev/urandom` (every Unix has
/// it; no RNG crate for one value).
pub fn fresh_run_id() -> String {
    let mut bytes = [0u8; 16];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)) {
        Ok(()) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
        }
        Err(_) => format!("{:x}-{:x}", std::process::id(), now_nanos()),
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// This machine's host name, as the `reapkit.owner-host` label and the ledger record it.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// A new guard id, unique on this machine: owner pid, start time and PID namespace (pids of
/// two containers collide), sequence number.
pub fn next_guard_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = &Owner::current().id;
    format!("g{}-{}-{}-{}", id.process.pid, id.process.start_time, id.pidns, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The owner a guard id names (`g<pid>-<start>-<pidns>-<n>`, on this boot: the cgroups it
/// names do not outlive one), or `None` for anything else.
pub fn owner_of_guard(guard: &str) -> Option<OwnerId> {
    let mut parts = guard.strip_prefix('g')?.split('-');
    let (pid, start, pidns, seq) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || seq.parse::<u64>().is_err() {
        return None;
    }
    let boot = &crate::evidence::identity::Viewpoint::current().boot;
    format!("{pid}:{start}:{pidns}:{boot}").parse().ok()
}

/// The name of the test running on this thread.
///
/// nextest runs each test in its own process and says its name; libtest (both runners) names
/// the test's thread after the test's full path, which is the fallback.
pub fn current_test_name() -> String {
    if let Ok(name) = std::env::var("NEXTEST_TEST_NAME") {
        return sanitized_test_name(&name);
    }
    sanitized_test_name(std::thread::current().name().unwrap_or("unknown"))
}

/// The supervisor (`reapkit run`/`wrap`) this process runs under, as its environment says: a
/// label for what it creates, never a proof on its own.
pub fn supervisor() -> Option<OwnerId> {
    std::env::var(ENV_SUPERVISOR).ok()?.parse().ok()
}

/// The supervisor (`reapkit wrap`/`run`) named in our environment, if it is our parent: only
/// then is it ours (our death its business, our run its parent's). Nested test processes
/// inherit the variable but not the role.
pub(crate) fn direct_supervisor() -> Option<OwnerId> {
    let named = supervisor()?;
    let parent = nix::unistd::getppid().as_raw();
    (ProcId::of(parent).map(OwnerId::here) == Some(named.clone())).then_some(named)
}

/// Makes this process the child subreaper for its descendants, once.
///
/// A grandchild that double-forks or `setsid`s away is then re-parented to us instead of
/// PID 1, so teardown finds it among our children and can reap its zombie. The flag is per
/// process (not per thread, unlike `PR_SET_PDEATHSIG`), so setting it once from any thread is
/// enough and safe.
pub fn become_subreaper() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| match crate::os::set_child_subreaper() {
        Ok(()) => true,
        // The portable backend finds no escapee anyway: `capabilities()` and each `Teardown` say so.
        Err(_) if !crate::os::PROC_TABLE => false,
        Err(e) => {
            tracing::warn!(
                "reapkit: this process cannot be the subreaper of its children ({e}); escapees will be found by the /proc marker scan only"
            );
            false
        }
    })
}
