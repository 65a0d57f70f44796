//! Leaks that cannot be pinned on one test: under plain `cargo test`, tests are threads of one
//! process, so a child or a descriptor left behind by a test that is not serialized cannot be
//! told from one of the test beside it. It must still fail the run, and never outlive it.
//!
//! How: the process's baseline (its children and descriptors) is taken by the crate's
//! constructor, before `main` and before any test thread runs; the first scope that shares its
//! process registers an exit hook. Each such scope, when it ends, notes the children
//! and descriptors that appeared since the baseline, with the tests that were running then.
//! When the test binary exits (libtest's `main` returns, `atexit` runs), whatever of those is
//! still there is a leak: the children are ended with their trees, the report names every leak
//! and the tests that were running when it appeared, and the binary exits 101 — the status of a
//! failed libtest run — so `cargo test` fails.
//!
//! Why the exit and not each test's end: only then is every test done, so only then is a child
//! or descriptor that is still there provably leaked rather than still in use. Why not
//! serialize by default: it would change the meaning and speed of every test for everyone.

use std::sync::{Mutex, OnceLock};

use crate::os::fd_snapshot::FdSnapshot;
use crate::os::member::Member;
use crate::os::procfs::{self, ProcId};
use crate::{registry, guard::teardown};

/// What the process had when the first shared scope began.
struct Baseline {
    children: Vec<i32>,
    fds: Vec<i32>,
}

/// A child or descriptor seen at the end of a shared scope that the baseline did not have.
#[derive(Debug, Clone)]
enum Seen {
    Child(ProcId, String),
    /// Its number, target, and description.
    Fd(i32, String, String),
}

static BASELINE: OnceLock<Baseline> = OnceLock::new();
/// Whether the exit check is armed.
static ARMED: OnceLock<()> = OnceLock::new();
/// What was seen, with the tests running when it was first seen.
static SEEN: Mutex<Vec<(Seen, Vec<String>)>> = Mutex::new(Vec::new());
/// Descriptors a scope that was alone in the process already answered for (its test failed
/// naming them, or allowed them): they are that test's, not the run's, even while they stay open.
static ANSWERED: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

/// An exact scope reported (or accepted) these descriptors as its test's.
pub(super) fn answered_for(fds: impl Iterator<Item = (i32, String)>) {
    ANSWERED.lock().unwrap_or_else(|p| p.into_inner()).extend(fds);
}

fn answered(fd: i32, target: &str) -> bool {
    ANSWERED.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(n, t)| *n == fd && t == target)
}

/// Takes the process's baseline: run before `main` (see [`crate::supervisor::reexec`]).
pub(crate) fn take_baseline() {
    BASELINE.get_or_init(|| {
        let me = std::process::id() as i32;
        Baseline { children: procfs::children(me), fds: crate::os::procfs::fd_numbers(me).unwrap_or_default() }
    });
}

/// A scope that shares its process begins: the first one arms the exit check.
pub(super) fn begin() {
    take_baseline();
    ARMED.get_or_init(|| {
        // SAFETY: registers a plain `extern "C" fn()` that lives as long as the process.
        unsafe { libc::atexit(at_exit) };
    });
}

/// A shared scope of `test` ends: notes what appeared since the baseline (the check at exit
/// decides whether it was a leak).
pub(super) fn end(test: &str) {
    let Some(base) = BASELINE.get() else { return };
    let mut new = new_children(base);
    if let Ok(now) = FdSnapshot::capture() {
        for fd in
            now.fds().iter().filter(|fd| !base.fds.contains(&fd.fd) && !crate::os::fd_snapshot::is_process_lifetime(fd))
        {
            new.push(Seen::Fd(fd.fd, fd.target.clone(), fd.to_string()));
        }
    }
    note(new, registry::active_tests(test));
}

/// The children of this process that the baseline did not have, reapkit's own aside.
fn new_children(base: &Baseline) -> Vec<Seen> {
    let me = std::process::id() as i32;
    procfs::children(me)
        .into_iter()
        .filter(|p| !base.children.contains(p) && !registry::is_ours(*p))
        .filter_map(ProcId::of)
        .filter(|id| !procfs::Stat::read(id.pid).is_ok_and(|s| s.is_zombie()))
        .map(|id| Seen::Child(id, procfs::cmdline(id.pid)))
        .collect()
}

/// Adds what was not seen yet, with the tests that were running.
fn note(new: Vec<Seen>, running: Vec<String>) {
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    for s in new {
        if !seen.iter().any(|(k, _)| same(k, &s)) {
            seen.push((s, running.clone()));
        }
    }
}

fn same(a: &Seen, b: &Seen) -> bool {
    match (a, b) {
        (Seen::Child(x, _), Seen::Child(y, _)) => x == y,
        (Seen::Fd(x, t, _), Seen::Fd(y, u, _)) => x == y && t == u,
        _ => false,
    }
}

/// At exit: what is still there of what was seen is a leak of the run.
extern "C" fn at_exit() {
    // Never unwind into libc.
    let leaked = std::panic::catch_unwind(check).unwrap_or_default();
    if !leaked.is_empty() {
        crate::error::warn(&leaked);
        // SAFETY: ends the process at once with libtest's failure status; nothing runs after.
        unsafe { libc::_exit(101) };
    }
}

/// The report of what leaked, empty if nothing; ends the leaked children.
fn check() -> String {
    // A test's last orphans may have come after the last scope ended (re-parented here, the
    // subreaper): a child of this process now that was not before any test ran is seen too. (A
    // descriptor is not: one no scope saw open may be a plain test's, or a library's.)
    if let Some(base) = BASELINE.get() {
        note(new_children(base), registry::active_tests(""));
    }
    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|p| p.into_inner()));
    let open = FdSnapshot::capture().map(|s| s.fds().to_vec()).unwrap_or_default();
    // Before any child is ended: who holds the other end of a pipe left open.
    let me = std::process::id() as i32;
    let targets = seen.iter().filter_map(|(s, _)| match s {
        Seen::Fd(_, target, _) => Some(target.as_str()),
        Seen::Child(..) => None,
    });
    let pipes = crate::os::sockets::PipeHolders::find(me, targets);
    let mut lines = Vec::new();
    let mut children = Vec::new();
    for (s, tests) in seen {
        let (alive, what) = match &s {
            Seen::Child(id, seen_as) => {
                // Read again now: when it was first seen it may have been still in exec.
                let now = procfs::cmdline(id.pid);
                let cmd = if now.is_empty() { seen_as.clone() } else { now };
                // reapkit's own (a watchdog) may have been seen before it was noted as such.
                let alive = id.is_alive()
                    && !procfs::Stat::read(id.pid).is_ok_and(|s| s.is_zombie())
                    && !registry::is_ours(id.pid);
                (alive, format!("child pid {} `{cmd}`: killed with its descendants", id.pid))
            }
            Seen::Fd(fd, target, desc) => {
                let still = open.iter().any(|o| o.fd == *fd && o.target == *target);
                let about = pipes.describe(me, target).map_or_else(String::new, |a| format!(" ({a})"));
                (still && !registry::holds_fd(*fd, target) && !answered(*fd, target), format!("{desc}{about}: still open"))
            }
        };
        if !alive {
            continue;
        }
        if let Seen::Child(id, _) = s {
            children.extend(procfs::descendants(id.pid).into_iter().filter_map(Member::open));
            children.extend(Member::open(id));
        }
        let tests = if tests.is_empty() { "?".to_owned() } else { tests.join(", ") };
        lines.push(format!(
            "  - {}\n    appeared while these tests were running: {tests}",
            crate::evidence::escape::evidence(&what)
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    teardown::end_leftovers(&children, crate::sweep::DEFAULT_GRACE);
    let n = if lines.len() == 1 { "1 resource".to_owned() } else { format!("{} resources", lines.len()) };
    format!(
        "reapkit: this test binary leaked {n} that no single test could be blamed for (under `cargo test`, tests \
         are threads of one process):\n{}\n  Fix: end what each test starts before it returns. To find the test, run \
         under nextest (one process per test), or serialize the tests (#[serial] or #[file_serial] under \
         #[reapkit::test]), or use --test-threads=1: each leak then fails the test that made it",
        lines.join("\n")
    )
}
