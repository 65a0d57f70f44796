//! Test scopes: afterEach for Rust tests.
//!
//! libtest has no hooks, and its stand-ins change meaning between runners (`ctor` runs once
//! per binary under `cargo test` but once per test under nextest; `#[serial]` does nothing
//! under nextest). A scope is a value instead: entered before the test's body, finished after
//! it — passed, panicked or returned early —, the same under both runners. Finishing runs the
//! deferred teardown, tears down what the test's guards left alive, and checks:
//!
//! - no process carrying this test's marker survives, and no container labelled with it
//!   (a [`Sweep`] scoped to this test: the same evidence and protocol as `reapkit reap`);
//! - the test process has no child the test started and left running;
//! - the FD table is back to its baseline.
//!
//! The last two are process-wide: they can only be pinned on this test when it runs alone in
//! its process ([`Isolation`]). Under nextest it always does. Under `cargo test`, which runs
//! tests as threads of one process, they run only where the test is serialized, and the
//! report says when they did not run rather than guess.
//!
//! Guards register with the scope of the thread that creates them, else with the only scope
//! active in the process when its test runs alone there (threads and tasks the test spawns,
//! under nextest or `--test-threads=1`); a [`ScopeHandle`] carries the scope to other threads
//! where other tests may run beside it.

mod baseline;
mod report;
pub(crate) mod unpinned;

use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::os::fd_snapshot::{Fd, FdSnapshot};
use crate::os::member::Member;
use crate::evidence::ownership::{self, Owner};
use crate::os::procfs::{self, ProcId};
use crate::registry::{self, Registered, Slot};
use crate::sweep::{self, DockerCheck, Scope, Sweep};
use crate::guard::teardown;

use baseline::Baseline;
pub use baseline::{LeakKind, LeakPattern, BASELINE_FILE, ENV_BASELINE};
pub use report::{LeakReport, ScopeLeak};

/// How long the FD and child checks give things that are closing anyway (a thread still
/// dropping a file, a child still exiting) before calling them leaks. Only a check that
/// found something waits: a clean test pays nothing.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(400);
/// The start of the names of serial_test's lock files in the temporary directory.
const SERIAL_TEST_LOCK_PREFIX: &str = "serial-test-";

/// How alone a test is in its process: whether process-wide checks can be pinned on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// nextest: each test is its own process.
    OwnProcess,
    /// `cargo test -- --test-threads=1` (or `RUST_TEST_THREADS=1`): one test at a time.
    OneThread,
    /// Serialized against the other tests: `#[serial]`/`#[file_serial]` under
    /// `#[reapkit::test]`, or [`ScopeBuilder::serialized`].
    Serialized,
    /// Other tests may run in this process at the same moment (`cargo test` threads).
    Shared,
}

impl Isolation {
    /// Whether the FD table and the process's children belong to this test alone.
    pub fn is_exact(self) -> bool {
        self != Isolation::Shared
    }

    fn detect(serialized: bool) -> Isolation {
        static PROCESS: OnceLock<Option<Isolation>> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            if std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test") {
                Some(Isolation::OwnProcess)
            } else if one_test_thread() {
                Some(Isolation::OneThread)
            } else {
                None
            }
        });
        match process {
            Some(isolation) => isolation,
            None if serialized => Isolation::Serialized,
            None => Isolation::Shared,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Isolation::OwnProcess => "exact: nextest runs each test in its own process",
            Isolation::OneThread => "exact: one test thread",
            Isolation::Serialized => {
                "exact as long as the tests that run beside serialized ones open no descriptors and start no \
                 processes (serialized with serial_test)"
            }
            Isolation::Shared => {
                "not checked: other tests may run in this process at the same moment (cargo test runs tests as \
                 threads). Run under nextest, serialize the test (#[serial] or #[file_serial] under \
                 #[reapkit::test]), or use --test-threads=1"
            }
        }
    }
}

fn one_test_thread() -> bool {
    if std::env::var("RUST_TEST_THREADS").is_ok_and(|n| n.trim() == "1") {
        return true;
    }
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test-threads=1") || args.windows(2).any(|w| w[0] == "--test-threads" && w[1] == "1")
}

/// Options of a [`TestScope`]; `#[reapkit::test(...)]` sets the same ones.
#[derive(Debug, Clone)]
pub struct ScopeBuilder {
    name: Option<String>,
    allow: Vec<String>,
    fd_check: bool,
    serialized: bool,
    settle: Duration,
    eof_grace: Option<Duration>,
    term_grace: Option<Duration>,
    baseline: Option<PathBuf>,
}

impl Default for ScopeBuilder {
    fn default() -> Self {
        ScopeBuilder {
            name: None,
            allow: Vec::new(),
            fd_check: true,
            serialized: false,
            settle: DEFAULT_SETTLE,
            eof_grace: None,
            term_grace: None,
            baseline: None,
        }
    }
}

impl ScopeBuilder {
    /// The test's name (default: `NEXTEST_TEST_NAME`, else the libtest thread name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Accepts leaks named by `pattern` (`fd:socket`, `process:node`, `container:*`; see
    /// [`LeakPattern`]): they are listed, but do not fail the test.
    pub fn allow(mut self, pattern: impl Into<String>) -> Self {
        self.allow.push(pattern.into());
        self
    }

    /// Whether to check the FD table (default on; exact only when the test is alone in its process).
    pub fn fd_check(mut self, on: bool) -> Self {
        self.fd_check = on;
        self
    }

    /// Declares that no other test runs in this process meanwhile (serialized by other
    /// means than serial_test), which makes the process-wide checks exact under `cargo test`.
    pub fn serialized(mut self) -> Self {
        self.serialized = true;
        self
    }

    /// How long FD and child checks wait for things still closing (default [`DEFAULT_SETTLE`]).
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The EOF grace of guards created in the scope that set none themselves.
    pub fn eof_grace(mut self, grace: Duration) -> Self {
        self.eof_grace = Some(grace);
        self
    }

    /// The SIGTERM grace of guards created in the scope that set none themselves, and of
    /// leftovers the scope ends.
    pub fn term_grace(mut self, grace: Duration) -> Self {
        self.term_grace = Some(grace);
        self
    }

    /// The file of known leaks (see [`LeakPattern`]); `REAPKIT_BASELINE` overrides it.
    /// `#[reapkit::test]` uses `reapkit-leaks.txt` next to the crate's `Cargo.toml`.
    pub fn baseline(mut self, path: impl Into<PathBuf>) -> Self {
        self.baseline = Some(path.into());
        self
    }

    /// Enters the scope on this thread. Panics on a malformed `allow` pattern: a test with a
    /// typo in its own attribute should fail saying so.
    pub fn enter(self) -> TestScope {
        let allow = self
            .allow
            .iter()
            .map(|p| LeakPattern::parse(p).unwrap_or_else(|e| panic!("reapkit: bad allow pattern: {e}")))
            .collect();
        let test = self.name.as_deref().map_or_else(ownership::current_test_name, ownership::sanitized_test_name);
        // reapkit's own tokio (features `docker`, `rmcp`): its signal socket pair, if tokio has
        // signals, is opened before the first scope's baseline, as the process's own.
        #[cfg(any(feature = "docker", feature = "rmcp"))]
        crate::os::fd_snapshot::note_tokio_signal_pair(|| {
            drop(tokio::runtime::Builder::new_current_thread().enable_io().build());
        });
        let isolation = Isolation::detect(self.serialized);
        let alone = matches!(isolation, Isolation::OwnProcess | Isolation::OneThread);
        let shared = Arc::new(Slot::new(test, alone, self.eof_grace, self.term_grace));
        registry::enter(&shared);
        let exact = isolation.is_exact();
        if !exact {
            unpinned::begin();
        }
        // Orphans of what the test starts then come to this process instead of PID 1, whatever
        // they did to their environment or session: the children check sees them (`sh -c
        // 'server &'`), and ends them — at the test's end where it is alone in its process, at
        // the binary's exit under `cargo test`'s threads.
        ownership::become_subreaper();
        TestScope {
            shared,
            isolation,
            allow,
            settle: self.settle,
            baseline: self.baseline,
            children: if exact { procfs::children(std::process::id() as i32) } else { Vec::new() },
            // Taken last, so that nothing the scope itself opened counts. Numbers only: the
            // targets are read at the end, and only if the count changed.
            fds: if exact && self.fd_check {
                crate::os::procfs::fd_numbers(std::process::id() as i32).ok()
            } else {
                None
            },
            fd_check: self.fd_check,
            unattributed: registry::unattributed(),
            finished: false,
            not_send: PhantomData,
        }
    }
}

/// A test's scope: what the test's guards register with, and the checks after its body.
///
/// ```
/// let scope = reapkit::TestScope::enter();
/// let mut sleep = std::process::Command::new("sleep");
/// sleep.arg("60");
/// let guard = reapkit::ProcessGuard::spawn(sleep)?;
/// scope.defer(|| println!("afterEach: runs first when the scope finishes"));
/// std::mem::forget(guard); // a guard that outlives the test...
/// let report = scope.finish().unwrap_err(); // ...is torn down, and named
/// assert!(report.to_string().contains("sleep 60"), "{report}");
/// # Ok::<(), reapkit::Error>(())
/// ```
///
/// Dropping it unfinished finishes it, and panics with the report if something leaked (only
/// prints it if the thread is already panicking).
pub struct TestScope {
    shared: Arc<Slot>,
    isolation: Isolation,
    allow: Vec<LeakPattern>,
    settle: Duration,
    baseline: Option<PathBuf>,
    /// The children the test process had when the scope was entered.
    children: Vec<i32>,
    /// The descriptor numbers open when the scope was entered.
    fds: Option<Vec<i32>>,
    fd_check: bool,
    unattributed: usize,
    finished: bool,
    /// Finished on the thread that entered it: the thread's stack of scopes must be popped there.
    not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for TestScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestScope")
            .field("test", &self.shared.test)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl TestScope {
    /// Enters a scope with the default options.
    pub fn enter() -> TestScope {
        ScopeBuilder::default().enter()
    }

    /// Options first: `TestScope::builder().allow("fd:socket").enter()`.
    pub fn builder() -> ScopeBuilder {
        ScopeBuilder::default()
    }

    /// The test's name, as guards of the scope carry it in `REAPKIT_TEST`.
    pub fn test_name(&self) -> &str {
        &self.shared.test
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// Runs `teardown` when the scope finishes, before anything is checked; the last deferred
    /// runs first. A panic in one is reported and fails the test; the others still run.
    pub fn defer(&self, teardown: impl FnOnce() + Send + 'static) {
        self.shared.defer(Box::new(teardown));
    }

    /// A handle that attaches other threads to this scope (see [`ScopeHandle::enter`]).
    pub fn handle(&self) -> ScopeHandle {
        ScopeHandle(Arc::clone(&self.shared))
    }

    /// Runs the deferred teardown, tears down what the test's guards left alive, checks, and
    /// returns the report if anything leaked.
    #[must_use = "the report is the verdict: dropping it (`let _ =`) turns the leak check off. Use \
                  `.unwrap()` (or `?`) so that a leak fails the test"]
    pub fn finish(mut self) -> Result<(), Box<LeakReport>> {
        self.conclude()
    }

    fn conclude(&mut self) -> Result<(), Box<LeakReport>> {
        self.finished = true;
        let mut report = LeakReport::new(self.shared.test.clone(), self.isolation);
        self.run_deferred(&mut report);
        self.leave();
        let baseline = Baseline::load(self.baseline.as_deref(), &self.shared.test).unwrap_or_else(|e| {
            report.problems.push(e);
            Baseline::default()
        });
        let accepted =
            |leak: &ScopeLeak| self.allow.iter().chain(baseline.entries.iter().map(|e| &e.pattern)).any(|p| leak.is(p));
        // Taken before the sweep ends them: guards of the test still alive now were never dropped.
        let undropped = self.shared.live_guards();
        let registered = self.shared.take_registered();
        let mut checked = vec![];
        if !registered.ledger_dirs.is_empty() {
            self.sweep(&registered, &undropped, &mut report);
            checked.push(LeakKind::Process);
            if !registered.docker_hosts.is_empty() {
                checked.extend([LeakKind::Container, LeakKind::Network, LeakKind::Volume]);
            }
        }
        // Before the children are ended: who holds the other end of a pipe the test left open.
        let pipes = self.fds.as_ref().map(|before| opened_pipes(before)).unwrap_or_default();
        if self.isolation.is_exact() && !crate::os::PROC_TABLE {
            report.notes.push("children: not checked (the portable backend lists no children of a process)".into());
        } else if self.isolation.is_exact() {
            self.check_children(&mut report);
            checked.push(LeakKind::Process);
        }
        match &self.fds {
            Some(before) => {
                let leaked: Vec<ScopeLeak> =
                    self.leaked_fds(before, &accepted).into_iter().map(|l| l.described(&pipes)).collect();
                unpinned::answered_for(leaked.iter().filter_map(ScopeLeak::descriptor));
                report.leaks.extend(leaked);
                checked.push(LeakKind::Fd);
                report.notes.push(format!("FD table: {}", self.isolation.describe()));
            }
            None if !self.fd_check => report.notes.push("FD table: not checked (fd_check = false)".into()),
            None => report.notes.push(format!("FD table and children: {}", self.isolation.describe())),
        }
        let unattributed = registry::unattributed() - self.unattributed;
        if unattributed > 0 {
            report.notes.push(format!(
                "{unattributed} guards were created meanwhile on threads without a test scope while other tests may \
                 run beside this one: they belong to no scope. If this test spawned them, attach its threads with \
                 `scope.handle().enter()`"
            ));
        }
        if !crate::os::PROC_TABLE {
            self.end_undropped_groups(&undropped, &registered.ledger_dirs, &mut report);
        }
        fold_undropped(&mut report, &undropped);
        apply_acceptance(&mut report, &self.allow, &baseline, &checked);
        if !self.isolation.is_exact() {
            unpinned::end(&self.shared.test);
        }
        if report.fails() {
            Err(Box::new(report))
        } else {
            Ok(())
        }
    }

    /// The descriptors opened during the test and still open, once things that are closing
    /// anyway have closed: like goleak, it re-checks with a bounded backoff while unaccepted
    /// ones remain, for at most `settle`. A sleep, not an event: nothing tells a process that
    /// one of its threads closed a descriptor. Only a test whose table differs pays for it.
    ///
    /// Not the test's: library state that lives as long as the process, and under
    /// `cargo test` the lock files of `#[file_serial]` that tests waiting for the lock hold.
    fn leaked_fds(&self, before: &[i32], accepted: &dyn Fn(&ScopeLeak) -> bool) -> Vec<ScopeLeak> {
        let lock = format!("fd:{}*", std::env::temp_dir().join(SERIAL_TEST_LOCK_PREFIX).display());
        let lock = (self.isolation == Isolation::Serialized).then(|| LeakPattern::parse(&lock)).and_then(Result::ok);
        let the_tests = |fd: &Fd| {
            let leak = ScopeLeak::fd(fd);
            let serial_lock = lock.as_ref().is_some_and(|p| leak.is(p));
            (!serial_lock && !crate::os::fd_snapshot::is_process_lifetime(fd)).then_some(leak)
        };
        let deadline = Instant::now() + self.settle;
        let mut pause = Duration::from_millis(1);
        loop {
            // Counting first (one `stat`); the targets only when the count changed.
            let Some(opened) = opened_since(before) else { return Vec::new() };
            let leaks: Vec<ScopeLeak> = opened.iter().filter_map(the_tests).collect();
            if leaks.iter().all(accepted) || Instant::now() + pause > deadline {
                return leaks;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn run_deferred(&self, report: &mut LeakReport) {
        while let Some(teardown) = self.shared.pop_deferred() {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(teardown)) {
                report.problems.push(format!("a deferred teardown panicked: {}", panic_message(&*panic)));
            }
        }
    }

    /// Detaches the scope: guards created from now on are not the test's any more.
    fn leave(&self) {
        registry::leave(&self.shared);
    }

    /// Ends whatever carries the test's marker, record or labels — guards still alive,
    /// escapees — by the sweep's protocol, and names it.
    fn sweep(&self, registered: &Registered, undropped: &[registry::LiveGuard], report: &mut LeakReport) {
        let scope = Scope::Test { owner: Owner::current().id.clone(), test: self.shared.test.clone() };
        // The cgroups of the test's guards this process made: proof of their members.
        let made: Vec<_> = undropped.iter().filter_map(|g| g.cgroup.clone()).collect();
        let grace = self.shared.term_grace.unwrap_or(sweep::DEFAULT_GRACE);
        for (i, dir) in registered.ledger_dirs.iter().enumerate() {
            // Labels are looked up once, on the first engine; records name their own engines.
            let docker = match registered.docker_hosts.first() {
                Some(host) if i == 0 => DockerCheck::Host(host.clone()),
                _ => DockerCheck::RecordsOnly,
            };
            let sweep = Sweep::new(scope.clone()).ledger_dir(dir).docker(docker).grace(grace).witnessed(made.clone());
            let found = sweep.find().reap();
            report.leaks.extend(found.leaks.iter().map(ScopeLeak::swept));
            report.problems.extend(found.unchecked);
            if !crate::os::PROC_TABLE {
                // What the portable backend's sweep could not check.
                for note in found.notes {
                    if !report.notes.contains(&note) {
                        report.notes.push(note);
                    }
                }
            }
        }
    }

    /// The portable backend's sweep finds no process: the groups of guards the test never
    /// dropped are ended here instead, by their leaders, our unreaped children.
    /// Their records go with them: the scope reports the leak, and no one else could prove it.
    fn end_undropped_groups(&self, undropped: &[registry::LiveGuard], ledgers: &[PathBuf], report: &mut LeakReport) {
        let grace = self.shared.term_grace.unwrap_or(sweep::DEFAULT_GRACE);
        for guard in undropped {
            if let Some(pid) = guard.child.filter(|&pid| teardown::end_own_group(pid, grace)) {
                report.leaks.push(ScopeLeak::group_ended(&guard.id, pid, &guard.what));
                for dir in ledgers {
                    if let Err(e) = crate::evidence::ledger::Entry::at(dir.join(format!("{}.json", guard.id))).remove() {
                        report.problems.push(format!("could not remove the ledger record of guard {}: {e}", guard.id));
                    }
                }
            }
        }
    }

    /// Children of the test process started during the test and still running: ours by
    /// parentage (the test is alone in the process), ended with their trees.
    fn check_children(&self, report: &mut LeakReport) {
        let new: Vec<Member> = procfs::children(std::process::id() as i32)
            .into_iter()
            .filter(|pid| !self.children.contains(pid) && !crate::registry::is_guardian(*pid))
            .filter_map(ProcId::of)
            .filter_map(Member::open)
            .filter(|m| !m.has_exited())
            .collect();
        if new.is_empty() {
            return;
        }
        // A child the test killed may still be exiting: wait for that, not for a timer.
        let fds: Vec<_> = new.iter().map(|m| m.handle.fd()).collect();
        crate::os::wait_all_readable(&fds, Instant::now() + self.settle);
        let leaked: Vec<Member> = new.into_iter().filter(|m| !m.has_exited()).collect();
        // The evidence first, while they still run.
        let mut leaks: Vec<(ProcId, ScopeLeak)> = leaked
            .iter()
            .map(|m| (m.id, ScopeLeak::child(m.id.pid, procfs::cmdline(m.id.pid), "killed with its descendants")))
            .collect();
        let mut members: Vec<Member> =
            leaked.iter().flat_map(|m| procfs::descendants(m.id.pid)).filter_map(Member::open).collect();
        members.extend(leaked);
        let survivors = teardown::end_leftovers(&members, self.shared.term_grace.unwrap_or(sweep::DEFAULT_GRACE));
        for (id, leak) in &mut leaks {
            if survivors.contains(id) {
                leak.action = "survived SIGKILL (uninterruptible sleep?)".into();
            }
        }
        report.leaks.extend(leaks.into_iter().map(|(_, leak)| leak));
    }
}

impl Drop for TestScope {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(report) = self.conclude() {
            if std::thread::panicking() {
                eprintln!("{report}");
            } else {
                panic!("{report}");
            }
        }
    }
}

/// Moves the leaks that `allow` or the baseline accepts out of the failures, and fails on
/// baseline entries that match nothing any more (for kinds that were checked).
fn apply_acceptance(report: &mut LeakReport, allow: &[LeakPattern], baseline: &Baseline, checked: &[LeakKind]) {
    let mut used = vec![false; baseline.entries.len()];
    let leaks = std::mem::take(&mut report.leaks);
    for leak in leaks {
        if let Some(p) = allow.iter().find(|p| leak.is(p)) {
            report.accepted.push((leak, format!("allow = \"{p}\"")));
        } else if let Some(i) = baseline.entries.iter().position(|e| leak.is(&e.pattern)) {
            used[i] = true;
            let entry = &baseline.entries[i];
            report.accepted.push((leak, format!("{}:{} {}", baseline.path.display(), entry.line, entry.pattern)));
        } else {
            report.leaks.push(leak);
        }
    }
    for (entry, _) in baseline.entries.iter().zip(used).filter(|(e, used)| !used && checked.contains(&e.pattern.kind()))
    {
        report.problems.push(format!(
            "{}:{}: `{} {}` no longer leaks. Delete the line: the baseline may only shrink",
            baseline.path.display(),
            entry.line,
            report.test,
            entry.pattern
        ));
    }
}

/// A guard that outlived its test is one finding, with where it was created: its processes
/// and containers (ended by the sweep) and the descriptors it still holds are folded under it,
/// instead of each one a leak of its own with advice that would hide the bug.
fn fold_undropped(report: &mut LeakReport, undropped: &[registry::LiveGuard]) {
    for guard in undropped {
        let (ended, rest): (Vec<ScopeLeak>, Vec<ScopeLeak>) =
            std::mem::take(&mut report.leaks).into_iter().partition(|l| l.belongs_to(guard));
        report.leaks = rest;
        report.leaks.push(ScopeLeak::undropped(guard, &ended));
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

/// Attaches threads the test spawned to its scope, where several tests share the process
/// (`cargo test`): under nextest or a serialized test they are found without it.
///
/// ```
/// let scope = reapkit::TestScope::enter();
/// let handle = scope.handle();
/// std::thread::spawn(move || {
///     let _attached = handle.enter();
///     // guards created here are the test's
/// })
/// .join()
/// .unwrap();
/// scope.finish().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ScopeHandle(Arc<Slot>);

/// Keeps a thread attached to a scope; detaches it on drop.
#[derive(Debug)]
pub struct AttachedThread(Arc<Slot>);

impl ScopeHandle {
    /// Attaches this thread to the scope until the returned value drops.
    pub fn enter(&self) -> AttachedThread {
        registry::enter_thread(&self.0);
        AttachedThread(Arc::clone(&self.0))
    }
}

impl Drop for AttachedThread {
    fn drop(&mut self) {
        registry::leave_thread(&self.0);
    }
}

/// Runs `body` in a scope: the plain-Rust `#[reapkit::test]`. Returns what the body returns
/// (a test's `()` or `Result`); panics with the report if something leaked.
///
/// ```
/// // The body of a plain `#[test] fn server_leaves_nothing()`:
/// reapkit::scope(|scope| {
///     scope.defer(|| { /* afterEach: runs first when the body is done */ });
///     let server = reapkit::ProcessGuard::spawn(std::process::Command::new("true")).unwrap();
///     drop(server);
/// })
/// ```
#[track_caller]
pub fn scope<R: std::process::Termination>(body: impl FnOnce(&TestScope) -> R) -> R {
    let scope = TestScope::enter();
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&scope)));
    conclude(scope, outcome)
}

/// Defers `teardown` to the scope of this thread (else the only active one): for code that
/// has no `&TestScope` at hand, such as a helper or an async test body.
///
/// Panics when no scope is active: the teardown would otherwise never run.
pub fn defer(teardown: impl FnOnce() + Send + 'static) {
    let Some(registry::Attachment(shared)) = registry::Attachment::current() else {
        panic!("reapkit::defer outside a test scope: use #[reapkit::test], reapkit::scope or TestScope::enter")
    };
    shared.defer(Box::new(teardown));
}

/// Ends a scope with the body's outcome: its value when nothing leaked; the leak report as a
/// panic when the body passed; the body's own panic, after the report, when it panicked.
#[track_caller]
pub fn conclude<R: std::process::Termination>(scope: TestScope, outcome: std::thread::Result<R>) -> R {
    let checked = scope.finish();
    match (outcome, checked) {
        (Ok(value), Ok(())) => value,
        (Ok(value), Err(report)) => {
            // A test that also failed on its own says why (an `Err` is printed), then the leaks.
            let _ = value.report();
            panic!("{report}")
        }
        (Err(panic), checked) => {
            if let Err(report) = checked {
                eprintln!("{report}");
            }
            resume_unwind(panic)
        }
    }
}

/// The other holders of the pipes this process opened since `before` (none, and no walk of
/// `/proc`, if its FD table has as many descriptors as then).
fn opened_pipes(before: &[i32]) -> crate::os::sockets::PipeHolders {
    let opened = opened_since(before).unwrap_or_default();
    crate::os::sockets::PipeHolders::find(std::process::id() as i32, opened.iter().map(|fd| fd.target.as_str()))
}

/// The descriptors of this process not among `before`; `None` without reading a target if
/// its FD table has as many descriptors as then (one `stat`).
fn opened_since(before: &[i32]) -> Option<Vec<Fd>> {
    if procfs::fd_count(std::process::id() as i32).is_ok_and(|n| n == before.len()) {
        return None;
    }
    let now = FdSnapshot::capture().ok()?;
    Some(now.fds().iter().filter(|fd| !before.contains(&fd.fd)).cloned().collect())
}

/// The libtest name of test function `function` in module `module_path` (its `module_path!()`):
/// the path without the crate's own name, as `cargo test` and nextest show it.
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{function}"),
        None => function.to_owned(),
    }
}

/// A future whose panic is caught and returned, so that an async test's scope still finishes.
#[derive(Debug)]
pub struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> CatchUnwind<F> {
    pub fn new(future: F) -> CatchUnwind<F> {
        CatchUnwind(Box::pin(future))
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
